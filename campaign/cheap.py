"""Broad pretraining data at a cheap level (``pretrain.cheap``): Langevin MD at GFN-xTB
from every seed structure, its frames labelled by the MD itself and stored at that level;
and, when asked, the fixed test set: frames of separate cheap trajectories, stored
pending at the expensive level.

Each trajectory is one job (a Parsl app when the session has Parsl), written to
``round-000/cheap/<job>.extxyz`` as it finishes and stored at once, so a killed run
reruns only the trajectories that had not finished and stores nothing twice.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from sapis.campaign.campaign import Campaign
from sapis.campaign.config import CheapPretraining
from sapis.dft.xtb import CheapTrajectory, xtb_md
from sapis.io import read_frames, write_frames, write_text_atomically
from sapis.store import SplitConfig


@dataclass(frozen=True)
class CheapJob:
    """One cheap trajectory: from seed ``seed_index`` at ``temperature`` K for ``steps``
    steps; ``purpose`` ``train`` (pretraining data) or ``test`` (the fixed test set, of
    which it gives its first ``keep`` frames)."""

    name: str
    seed_index: int
    temperature: float
    steps: int
    rng_seed: int
    purpose: str
    keep: int | None = None


def cheap_jobs(campaign: Campaign) -> list[CheapJob]:
    """Every trajectory ``pretrain.cheap`` asks for, in a fixed order with fixed seeds."""
    cheap = campaign.config.pretrain.cheap
    if cheap is None:
        return []
    jobs = []
    combos = [(i, t) for i in range(len(campaign.seeds)) for t in cheap.temperatures]
    for i, t in combos:
        for k in range(cheap.trajectories):
            seed = _seed(cheap.seed, 0, i, k, t)
            jobs.append(CheapJob(f"train-{i}-{t:g}K-{k}", i, t, cheap.steps, seed, "train"))
    if cheap.test_frames:
        per_job = math.ceil(cheap.test_frames / len(combos))
        extra = per_job * len(combos) - cheap.test_frames  # the first ones give one less
        for k, (i, t) in enumerate(combos):
            seed = _seed(cheap.seed, 1, i, 0, t)
            steps = per_job * cheap.sample_every
            keep = per_job - (1 if k < extra else 0)
            jobs.append(CheapJob(f"test-{i}-{t:g}K", i, t, steps, seed, "test", keep))
    return jobs


def _seed(*parts: float) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _run(job: CheapJob, atoms: Atoms, cheap: CheapPretraining, charge: int, mult: int):
    return xtb_md(
        atoms,
        cheap,
        job.temperature,
        job.steps,
        cheap.sample_every,
        cheap.timestep,
        cheap.friction,
        job.rng_seed,
        charge,
        mult,
    )


def sample_cheap_level(campaign: Campaign, dfk=None, on_job=None) -> dict:
    """Run the trajectories of :func:`cheap_jobs` not yet finished (on ``dfk`` when
    given), store each as it finishes, and return what the cheap level gave and cost:
    ``trajectories``, ``frames`` (stored at the cheap level), ``test_frames`` (pending at
    the expensive level), ``core_seconds`` and the reasons trajectories stopped early.
    ``on_job(job, trajectory)`` is called as each finishes."""
    cheap, folder = campaign.config.pretrain.cheap, campaign.folder
    if cheap is None:
        return {}
    out_dir = folder.round_dir(0) / "cheap"
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = cheap_jobs(campaign)
    todo = [j for j in jobs if not (out_dir / f"{j.name}.json").is_file()]
    system = campaign.config.system
    args = [
        (j, campaign.seeds[j.seed_index], cheap, system.charge, system.multiplicity) for j in todo
    ]
    if dfk is not None and todo:
        from parsl import python_app

        app = python_app(_run, data_flow_kernel=dfk)
        futures = [(a[0], app(*a)) for a in args]
        finished = ((job, future.result()) for job, future in futures)
    else:
        finished = ((a[0], _run(*a)) for a in args)
    for job, trajectory in finished:
        _save(out_dir, job, trajectory)  # stored as read back, as a resumed run stores it
        _store(campaign, job, read_frames(out_dir / f"{job.name}.extxyz"))
        if on_job is not None:
            on_job(job, trajectory)
    for job in jobs:  # those of an earlier run too (the store skips what it holds)
        if job not in todo:
            _store(campaign, job, read_frames(out_dir / f"{job.name}.extxyz"))
    return _summary(campaign, out_dir, jobs)


def _save(out_dir: Path, job: CheapJob, trajectory: CheapTrajectory) -> None:
    """The frames first, then the record that marks the trajectory finished."""
    write_frames(out_dir / f"{job.name}.extxyz", trajectory.frames)
    record = {
        "steps": trajectory.steps,
        "stopped_by": trajectory.stopped_by,
        "seconds": round(trajectory.seconds, 3),
        "frames": len(trajectory.frames),
    }
    write_text_atomically(out_dir / f"{job.name}.json", json.dumps(record, indent=1))


def _store(campaign: Campaign, job: CheapJob, frames: list[Atoms]) -> None:
    """Training frames at the cheap level (train or val by hash); a test job's ``keep``
    frames pending at the expensive level in the test split."""
    config = campaign.config
    for atoms in frames:
        atoms.info["round"] = 0
    if job.purpose == "train":
        fractions = SplitConfig(val=config.split.val, test=0.0)
        campaign.store.add(frames, fractions=fractions)
        return
    plain = []
    for atoms in frames[: job.keep]:
        copy = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        copy.info.update(source="cheap-md", temperature=job.temperature, round=0)
        plain.append(copy)
    campaign.store.add(plain, split="test", level=campaign.level)


def _summary(campaign: Campaign, out_dir: Path, jobs: list[CheapJob]) -> dict:
    records = {j.name: json.loads((out_dir / f"{j.name}.json").read_text()) for j in jobs}
    early = {n: r["stopped_by"] for n, r in records.items() if r["stopped_by"] != "completed"}
    return {
        "trajectories": len(jobs),
        "frames": sum(r["frames"] for n, r in records.items() if n.startswith("train")),
        "test_frames": campaign.store.count(split="test", level=campaign.level),
        "core_seconds": round(sum(r["seconds"] for r in records.values()), 2),
        "stopped_early": early,
    }
