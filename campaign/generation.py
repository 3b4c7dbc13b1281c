"""The generator's part of a round: retrain it (warm-started) on what the campaign has
seen, sample, keep the valid samples, and score them with the ensemble.

The generator is either kind (``generator.kind``: the diffusion model or the flow,
loaded by :func:`~sapis.generator.kinds.load_generator`). Each round's generator is kept
in ``round-NNN/generator/``, trained on top of the previous round's copy, so the campaign
folder holds every checkpoint. The samples go to ``round-NNN/generated.extxyz`` (a
flow's with their ``log_density`` when the selection weighs by density) and what
happened, with the training record, to ``generated.json``; a rerun reads both back.
:func:`candidate_log_densities` gives the round's candidates their density under the
round's flow, for the selection's density weight.
"""

import math
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
from ase import Atoms

from sapis.campaign.campaign import Campaign
from sapis.campaign.exploration import save_candidates, saved_candidates, score
from sapis.campaign.selection import LOG_DENSITY
from sapis.errors import InputError
from sapis.generator.kinds import AnyGenerator, load_generator
from sapis.generator.model import META
from sapis.generator.settings import GeneratorConfig
from sapis.generator.training import GeneratorTraining, train_generator
from sapis.io import read_frames
from sapis.structures import structure_hash
from sapis.surrogate.ensemble import Ensemble
from sapis.surrogate.guidance import disagreement_guide
from sapis.validity import ValidityFilter


def generated_count(settings: GeneratorConfig, md_frames: int) -> int:
    """How many structures the generator proposes next to ``md_frames`` MD frames: so
    that they are ``share`` of the round's proposals, and at least ``min_samples``."""
    if settings.share <= 0:
        return 0
    return max(math.ceil(settings.share / (1.0 - settings.share) * md_frames), settings.min_samples)


def explored_frames(campaign: Campaign, rounds: range) -> list[Atoms]:
    """The MD frames explored in ``rounds`` (not the generator's own samples)."""
    frames: list[Atoms] = []
    for k in rounds:
        path = campaign.folder.explored_path(k)
        if path.is_file():
            frames += read_frames(path)
    return frames


def train_round_generator(
    campaign: Campaign, r: int, frames: list[Atoms]
) -> tuple[AnyGenerator, GeneratorTraining | None]:
    """Round ``r``'s generator: the latest earlier round's, trained further on ``frames``
    for ``generator.train_steps`` (from scratch in the first round that uses it); one
    trained before a kill is kept as it is (no training record then)."""
    folder = campaign.folder
    out = folder.generator_dir(r)
    if (out / META).is_file():
        done = load_generator(out)
        if done.meta.get("round") == out.parent.name:
            return done, None
    earlier = [folder.generator_dir(k) for k in range(r - 1, -1, -1)]
    previous = next((d for d in earlier if d.is_dir()), None)
    if out.exists():
        shutil.rmtree(out)
    if previous is not None:
        shutil.copytree(previous, out)
    reference = campaign.seeds[0]
    gen, record = train_generator(frames, out, campaign.config.generator, reference=reference)
    gen.meta["round"] = out.parent.name
    gen.save(out)
    return gen, record


def generate_round(
    campaign: Campaign, ensemble_dir: Path, r: int, md_frames: list[Atoms]
) -> tuple[list[Atoms], dict]:
    """The generator's valid proposals of round ``r`` with their uncertainty, and what it
    did (none, and an empty summary, when ``generator.share`` is 0)."""
    path = campaign.folder.generated_path(r)
    summary_path = path.with_name("generated.json")
    if (saved := saved_candidates(path, summary_path)) is not None:
        return saved
    settings = campaign.config.generator
    n = generated_count(settings, len(md_frames))
    if not n:
        return [], {}
    seen = explored_frames(campaign, range(r)) + list(md_frames)
    gen, training = train_round_generator(campaign, r, campaign.store.structures() + seen)
    ensemble = Ensemble.load(ensemble_dir)
    guide = disagreement_guide(ensemble, gen.numbers) if settings.guidance > 0 else None
    check = ValidityFilter.from_reference(
        campaign.seeds[0], min_dist=campaign.config.explore.min_distance
    )
    if gen.kind == "flow":  # one pass per sample; the density (≈35 passes' cost) if used
        density = campaign.config.selection.density_weight > 0
        samples = gen.sample(n, seed=settings.seed + r, round_=r, density=density)
    else:
        samples = gen.sample(n, seed=settings.seed + r, guide=guide, round_=r)
    valid, rejected = check.split(samples)
    for atoms in valid:
        atoms.info["hash"] = structure_hash(atoms)
    frames = score(ensemble, valid)
    summary = {
        "by_source": {"generator": {"proposed": n, "valid": len(valid)}},
        "rejected": rejected,
        "training": asdict(training) if training else "resumed",
    }
    return save_candidates(path, summary_path, frames, summary), summary


def candidate_log_densities(campaign: Campaign, r: int, frames: list[Atoms]) -> None:
    """Give each of round ``r``'s candidate ``frames`` that has none its
    ``info["log_density"]``: log q(x) per Å^(3N−3) under the round's trained flow (the
    flow's own samples carry theirs from sampling). The importance draws are seeded with
    ``generator.seed + r``, so a rerun on the same frames gets the same numbers."""
    lacking = [a for a in frames if LOG_DENSITY not in a.info]
    if not lacking:
        return
    folder = campaign.folder.generator_dir(r)
    try:
        gen = load_generator(folder)
    except InputError as err:
        raise InputError(
            f"selection.density_weight: round {r} has no trained flow to weigh its "
            f"candidates with ({err})"
        ) from None
    if gen.kind != "flow":
        raise InputError(
            f"selection.density_weight: {folder} holds a {gen.kind} generator, which has no "
            "tractable density; the density weight needs generator.kind: flow"
        )
    numbers = gen.numbers.tolist()
    for atoms in lacking:
        if atoms.numbers.tolist() != numbers:
            raise InputError(
                f"selection.density_weight: a {atoms.info.get('source', '?')} candidate is "
                f"{atoms.get_chemical_formula()}, not the flow's molecule "
                f"{gen.reference().get_chemical_formula()} in its atom order"
            )
    positions = np.array([a.positions for a in lacking])
    seed = campaign.config.generator.seed + r
    for atoms, ell in zip(lacking, gen.log_density(positions, seed=seed)):
        atoms.info[LOG_DENSITY] = float(ell)
