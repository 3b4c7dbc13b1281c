"""The dynamics model's part of a round: continue some of the round's MD frames with
rollouts of a trained dynamics model, keep every ``every``-th generated frame, drop the
unphysical ones, and score the rest with the ensemble.

The model (``dynamics.model``, made by ``sapis train-dynamics``) is not changed by the
campaign. The kept frames go to ``round-NNN/dynamics.extxyz`` and what happened to
``dynamics.json``; a rerun reads both back.
"""

import math
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

from sapis.campaign.campaign import Campaign
from sapis.campaign.exploration import save_candidates, saved_candidates, score
from sapis.errors import InputError
from sapis.generator.dynamics.model import DynamicsModel
from sapis.generator.dynamics.settings import DynamicsSourceConfig
from sapis.structures import structure_hash
from sapis.surrogate.ensemble import Ensemble
from sapis.validity import ValidityFilter


def rollout_frames(settings: DynamicsSourceConfig, md_frames: int) -> int:
    """How many rollout frames a round proposes next to ``md_frames`` MD frames: so that
    they are ``share`` of the round's proposals."""
    if settings.share <= 0:
        return 0
    return math.ceil(settings.share / (1.0 - settings.share) * md_frames)


def start_velocities(frames: list[Atoms], rng: np.random.Generator) -> np.ndarray:
    """Velocities ``[S, N, 3]`` (ASE units) of start ``frames``: their own (MD frames carry
    momenta), else Maxwell–Boltzmann at their ``temperature`` without drift or rotation."""
    out = []
    for k, atoms in enumerate(frames):
        if "momenta" in atoms.arrays:
            out.append(atoms.get_velocities())
            continue
        temperature = atoms.info.get("temperature")
        if not isinstance(temperature, int | float) or temperature <= 0:
            raise InputError(f"start frame {k} has neither momenta nor a temperature")
        drawn = Atoms(atoms.numbers, atoms.positions)
        thermalize_momenta(drawn, temperature, rng=rng)
        Stationary(drawn)
        ZeroRotation(drawn)
        out.append(drawn.get_velocities())
    return np.array(out)


def roll_out(
    model: DynamicsModel,
    x0: np.ndarray,
    v0: np.ndarray,
    windows: int,
    check: ValidityFilter,
    seed: int,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Positions and velocities ``[T, N, 3]`` of each start's generated frames (the start
    left out), ``windows`` windows chained. A rollout ends early after a window whose last
    frame is unphysical (the model's samples are always finite: it bounds x̂0)."""
    count = len(x0)
    xs: list[list[np.ndarray]] = [[] for _ in range(count)]
    vs: list[list[np.ndarray]] = [[] for _ in range(count)]
    alive = list(range(count))
    x, v = np.asarray(x0, dtype=float), np.asarray(v0, dtype=float)
    for k in range(windows):
        w = model.sample(x, v, seed=seed + k)
        still = []
        for index, wx, wv in zip(alive, w.positions, w.velocities):
            xs[index].append(wx[1:])
            vs[index].append(wv[1:])
            if check.check(Atoms(model.numbers, wx[-1])) is None:
                still.append((index, wx[-1], wv[-1]))
        if not still:
            break
        alive = [i for i, _, _ in still]
        x = np.array([p for _, p, _ in still])
        v = np.array([q for _, _, q in still])
    n = len(model.numbers)
    empty = np.zeros((0, n, 3))
    return (
        [np.concatenate(p) if p else empty for p in xs],
        [np.concatenate(p) if p else empty for p in vs],
    )


def dynamics_round(
    campaign: Campaign, ensemble_dir: Path, r: int, md_frames: list[Atoms]
) -> tuple[list[Atoms], dict]:
    """The dynamics model's valid rollout frames of round ``r`` with their uncertainty,
    and what the rollouts did (none, and an empty summary, when ``dynamics.share`` is 0).

    Rollouts start from a seeded random subset of the round's ``md_frames``; each frame
    keeps ``source: dynamics``, the round, its ``parent`` (the start's hash) and its
    ``frame`` (generated frames since the start, ``frame · dt`` later in time).
    """
    path = campaign.folder.dynamics_path(r)
    summary_path = path.with_name("dynamics.json")
    if (saved := saved_candidates(path, summary_path)) is not None:
        return saved
    settings = campaign.config.dynamics
    n = rollout_frames(settings, len(md_frames))
    if settings.share <= 0:
        return [], {}
    if not n:  # MD gave no frame to start from
        summary = {"by_source": {"dynamics": {"proposed": 0, "valid": 0}}, "rollouts": 0}
        return save_candidates(path, summary_path, [], summary), summary
    model = DynamicsModel.load(settings.model)
    generated = settings.windows * model.config.frames
    per_rollout = generated // settings.every
    rng = np.random.default_rng([settings.seed, r])
    count = math.ceil(n / per_rollout)
    picks = rng.choice(len(md_frames), size=count, replace=count > len(md_frames))
    starts = [md_frames[i] for i in picks]
    x0 = np.array([a.positions for a in starts])
    v0 = start_velocities(starts, rng)
    check = ValidityFilter.from_reference(
        campaign.seeds[0], min_dist=campaign.config.explore.min_distance
    )
    xs, vs = roll_out(model, x0, v0, settings.windows, check, seed=settings.seed + 1000 * r)
    proposals: list[Atoms] = []
    for start, x, v in zip(starts, xs, vs):
        parent = structure_hash(start)
        for t in range(settings.every, len(x) + 1, settings.every):
            atoms = Atoms(model.numbers, x[t - 1])
            atoms.set_velocities(v[t - 1])
            atoms.info.update(source="dynamics", round=r, parent=parent, frame=t)
            proposals.append(atoms)
    proposals = proposals[:n]
    valid, rejected = check.split(proposals)
    for atoms in valid:
        atoms.info["hash"] = structure_hash(atoms)
    frames = score(Ensemble.load(ensemble_dir), valid)
    summary = {
        "by_source": {"dynamics": {"proposed": len(proposals), "valid": len(valid)}},
        "rejected": rejected,
        "rollouts": count,
        "ended_early": sum(len(x) < generated for x in xs),
        "model": str(settings.model),
    }
    return save_candidates(path, summary_path, frames, summary), summary
