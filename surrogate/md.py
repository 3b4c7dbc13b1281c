"""Exploration by Langevin MD on the ensemble-mean potential.

Every sampled frame becomes a candidate carrying its provenance (``source=md``,
temperature, step, parent hash), its momenta (a rollout of the dynamics model goes on
from them) and the ensemble's uncertainty at that frame. A
trajectory ends early when the uncertainty passes the configured bound or the structure
becomes unphysical (see :mod:`sapis.validity`).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

from sapis.dynamics import langevin
from sapis.errors import InputError
from sapis.structures import structure_hash
from sapis.surrogate.calculator import EnsembleCalculator
from sapis.surrogate.ensemble import Ensemble
from sapis.surrogate.settings import ExploreConfig
from sapis.validity import ValidityFilter, invalid_reason


@dataclass
class Trajectory:
    """What one trajectory did."""

    seed_index: int
    temperature: float
    steps: int
    stopped_by: str
    frames: int
    seconds: float


@dataclass
class Exploration:
    candidates: list[Atoms] = field(default_factory=list)
    trajectories: list[Trajectory] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return sum(t.steps for t in self.trajectories)


def _frame(
    atoms: Atoms, results: dict, temperature: float, step: int, parent: str, round_: int | None
) -> Atoms:
    frame = Atoms(
        atoms.numbers,
        atoms.positions,
        momenta=atoms.get_momenta(),
        cell=atoms.cell,
        pbc=atoms.pbc,
    )
    frame.info.update(
        source="md",
        temperature=float(temperature),
        step=step,
        parent=parent,
        energy_std=results["energy_std"],
        max_force_dev=results["max_force_dev"],
        max_force_dev_calibrated=results["max_force_dev_calibrated"],
    )
    if round_ is not None:
        frame.info["round"] = round_
    frame.arrays["force_std"] = np.asarray(results["forces_std"])
    return frame


def explore(
    ensemble: Ensemble,
    seeds: Sequence[Atoms],
    settings: ExploreConfig,
    round_: int | None = None,
    progress: bool = True,
) -> Exploration:
    """Run one trajectory per (seed, temperature); return the sampled candidates."""
    import time

    if not seeds:
        raise InputError("exploration needs at least one seed structure")
    ensemble.check(seeds)
    for i, seed in enumerate(seeds):
        reason = invalid_reason(seed, None, settings.min_distance)
        if reason:
            raise InputError(f"seed structure {i} is unphysical: {reason}")
    result = Exploration()
    rng = np.random.default_rng(settings.seed)
    jobs = [(i, t) for i in range(len(seeds)) for t in settings.temperatures]
    bar = _progress(progress, len(jobs) * settings.steps)
    with bar:
        task = bar.add_task("MD exploration", total=len(jobs) * settings.steps)
        for i, temperature in jobs:
            started = time.perf_counter()
            atoms = Atoms(
                seeds[i].numbers, seeds[i].positions, cell=seeds[i].cell, pbc=seeds[i].pbc
            )
            atoms.calc = EnsembleCalculator(ensemble, bias=settings.bias)
            parent = seeds[i].info.get("hash") or structure_hash(seeds[i])
            check = (
                ValidityFilter.from_reference(seeds[i], settings.min_distance)
                if settings.check_bonds
                else None
            )
            dyn = langevin(atoms, temperature, settings.timestep, settings.friction, rng)
            stopped_by, step, frames = "completed", 0, 0
            while step < settings.steps:
                dyn.run(1)
                step += 1
                results = atoms.calc.results
                reason = (
                    check.reason(atoms)
                    if check
                    else invalid_reason(atoms, None, settings.min_distance)
                )
                if reason:
                    stopped_by = f"unphysical: {reason}"
                    break
                too_uncertain = results["max_force_dev_calibrated"] > settings.stop_force_dev
                if step % settings.sample_every == 0 or too_uncertain:
                    result.candidates.append(
                        _frame(atoms, results, temperature, step, parent, round_)
                    )
                    frames += 1
                if too_uncertain:
                    stopped_by = "uncertainty"
                    break
            bar.advance(task, settings.steps)
            result.trajectories.append(
                Trajectory(
                    i,
                    temperature,
                    step,
                    stopped_by,
                    frames,
                    round(time.perf_counter() - started, 3),
                )
            )
    return result


def _progress(enabled: bool, total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=True,
    )
