"""Train an ensemble: K members with their own seed and bootstrap resample, one after
another, as MPI ranks (``mpiexec -n K``), or as Parsl apps; then calibrate it.

Fine-tuning warm-starts member k from member k of a parent ensemble on the grown data;
asking for a different size than the parent's trains that size from scratch instead.

A member that finished is never trained again: its folder keeps ``job.json``, a
fingerprint of what it was trained on and how, and ``record.json``, written last; training
the same ensemble again into the same folder (a killed run resumed) reuses every finished
member whose fingerprint matches and trains only the rest.
"""

import hashlib
import json
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms

from sapis.io import write_text_atomically
from sapis.surrogate.calibration import Calibration, fit_calibration, plot_calibration
from sapis.surrogate.checkpoints import vet_checkpoint
from sapis.surrogate.ensemble import Ensemble
from sapis.surrogate.manifest import EnsembleManifest, Member
from sapis.surrogate.model import type_names_of
from sapis.surrogate.settings import TrainingConfig
from sapis.surrogate.training import (
    BEST,
    RECORD,
    TrainRecord,
    check_training_data,
    train_member,
)

JOB = "job.json"


def bootstrap(images: Sequence[Atoms], seed: int) -> list[Atoms]:
    """A resample with replacement of ``images``, same size, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    return [images[i] for i in rng.integers(0, len(images), len(images))]


def mpi_world():
    """``(comm, rank, size)`` when launched by ``mpiexec`` with more than one rank, else None."""
    launched = any(
        v in os.environ for v in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")
    )
    if not launched:
        return None
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return (comm, comm.Get_rank(), comm.Get_size()) if comm.Get_size() > 1 else None


def _plan(training: TrainingConfig, members: int, parent: str | Path | None, size: str | None):
    """Per member: (seed, parent checkpoint or None); and the size trained."""
    seeds = [training.seed + 1000 * k for k in range(members)]
    if parent is None:
        return [(s, None) for s in seeds], size or training.size
    manifest = EnsembleManifest.read(parent)
    if size is not None and size != manifest.size:
        return [(s, None) for s in seeds], size  # a bigger (or smaller) model from scratch
    checkpoints = manifest.checkpoints(parent)
    for checkpoint in checkpoints:  # before anything is written
        vet_checkpoint(checkpoint)
    return [(s, checkpoints[k % len(checkpoints)]) for k, s in enumerate(seeds)], manifest.size


def _member_data(train: Sequence[Atoms], training: TrainingConfig, seed: int) -> list[Atoms]:
    return bootstrap(train, seed) if training.bootstrap else list(train)


def _train_one(
    train_file: str,
    val_file: str,
    folder: str,
    training_json: str,
    member: int,
    seed: int,
    parent: str | None,
    size: str,
    refit_shifts: bool = False,
    progress: bool = False,
) -> dict:
    """Train member ``member`` from files (the form a Parsl app or an MPI rank gets), or
    return its record if it finished this very job before."""
    member_dir = Path(folder)
    job = _fingerprint(
        train_file, val_file, training_json, member, seed, parent, size, refit_shifts
    )
    if _finished(member_dir, job):
        return TrainRecord.load(member_dir).__dict__
    (member_dir / RECORD).unlink(missing_ok=True)  # another job's record is not this one's
    write_text_atomically(member_dir / JOB, json.dumps({"fingerprint": job}))
    training = TrainingConfig.model_validate_json(training_json)
    record = train_member(
        ase.io.read(train_file, ":", parallel=False),
        ase.io.read(val_file, ":", parallel=False),
        folder,
        training,
        member=member,
        seed=seed,
        parent=parent,
        size=size,
        progress=progress,
        refit_shifts=refit_shifts,
    )
    return record.__dict__


def _fingerprint(*job) -> str:
    """A hash of a member's job: the bytes of its data and parent files, and the rest of
    its arguments."""
    h = hashlib.sha256()
    for item in job:
        h.update(repr(item).encode())
        if isinstance(item, str) and os.path.isfile(item):
            h.update(Path(item).read_bytes())
    return h.hexdigest()


def _finished(member_dir: Path, job: str) -> bool:
    """Whether ``member_dir`` holds a finished training of the job ``job``."""
    try:
        saved = json.loads((member_dir / JOB).read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return saved == job and (member_dir / RECORD).is_file() and (member_dir / BEST).is_file()


def train_ensemble(
    train: Sequence[Atoms],
    val: Sequence[Atoms],
    folder: str | Path,
    training: TrainingConfig,
    members: int | None = None,
    parent: str | Path | None = None,
    size: str | None = None,
    parsl_config=None,
    progress: bool = True,
    on_member=None,
    refit_shifts: bool = False,
) -> EnsembleManifest | None:
    """Train and calibrate an ensemble in ``folder``; returns its manifest.

    Members run one after another, or one per rank when started under ``mpiexec`` (rank 0
    calibrates and returns the manifest; other ranks return None), or as Parsl apps on
    ``parsl_config``. ``on_member(record)`` is called as each member finishes.
    ``refit_shifts`` refits the parent's per-type energy shifts to ``train`` (fine-tuning
    on another level of theory).
    """
    members = members or training.members
    check_training_data(train, val)
    plan, size = _plan(training, members, parent, size)
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    world = mpi_world()
    ase.io.write(folder / "val.xyz", list(val), format="extxyz", parallel=False)
    job = training.model_dump_json()
    jobs = []  # the arguments of _train_one, one tuple per member
    for k, (seed, ckpt) in enumerate(plan):
        member_dir = folder / f"member-{k}"
        member_dir.mkdir(exist_ok=True)
        if world is None or world[1] == k % world[2]:
            data = _member_data(train, training, seed)
            ase.io.write(member_dir / "bootstrap.xyz", data, format="extxyz", parallel=False)
        jobs.append(
            (
                str(member_dir / "bootstrap.xyz"),
                str(folder / "val.xyz"),
                str(member_dir),
                job,
                k,
                seed,
                str(ckpt) if ckpt else None,
                size,
                refit_shifts and ckpt is not None,
            )
        )
    if parsl_config is not None:
        records = _train_with_parsl(jobs, parsl_config, on_member)
    elif world is not None:
        records = _train_on_ranks(jobs, world, progress, on_member)
        if records is None:
            return None
    else:
        records = []
        for args in jobs:
            records.append(_train_one(*args, progress=progress))
            if on_member:
                on_member(TrainRecord(**records[-1]))
    manifest = EnsembleManifest(
        size=size,
        type_names=type_names_of(train),
        r_max=training.r_max,
        dtype=training.dtype,
        members=[
            Member(
                checkpoint=f"member-{r['member']}/best.ckpt",
                **{k: r[k] for k in ("seed", "parent", "parameters", "steps", "flops")},
                **{k: r[k] for k in ("epochs", "stopped_by")},
                **{k: r[k] for k in ("val_force_mae", "val_energy_mae", "wall_seconds")},
            )
            for r in records
        ],
        n_train=len(train),
        n_val=len(val),
        training=training.model_dump(mode="json"),
        parent=str(Path(parent).resolve()) if parent is not None else None,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        wall_seconds=round(time.perf_counter() - started, 2),
    )
    manifest.write(folder)
    manifest.calibration = calibrate(folder, val).to_dict()
    manifest.write(folder)
    if world is not None:
        world[0].Barrier()
    return manifest


def _train_on_ranks(jobs: list[tuple], world, progress: bool, on_member) -> list[dict] | None:
    """Each rank trains the members ``k`` with ``k % ranks == rank``; rank 0 gathers the
    records (the other ranks get None)."""
    import torch

    comm, rank, ranks = world
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks))
    try:
        mine = [
            _train_one(*args, progress=progress and rank == 0)
            for k, args in enumerate(jobs)
            if k % ranks == rank
        ]
    except BaseException:
        import traceback

        traceback.print_exc()
        comm.Abort(1)  # the other ranks would wait for this one forever
    gathered = comm.gather(mine, root=0)
    if rank != 0:
        comm.Barrier()
        return None
    records = sorted((r for part in gathered for r in part), key=lambda r: r["member"])
    if on_member:
        for r in records:
            on_member(TrainRecord(**r))
    return records


def _train_with_parsl(jobs: list[tuple], parsl_config, on_member) -> list[dict]:
    """Each member as a Parsl python app on a private DataFlowKernel."""
    from parsl import python_app
    from parsl.dataflow.dflow import DataFlowKernel

    dfk = DataFlowKernel(config=parsl_config)
    try:
        app = python_app(_train_one, data_flow_kernel=dfk)
        futures = [app(*args, progress=False) for args in jobs]
        records = []
        for future in futures:
            record = future.result()
            records.append(record)
            if on_member:
                on_member(TrainRecord(**record))
        return records
    finally:
        dfk.cleanup()


def calibrate(folder: str | Path, val: Sequence[Atoms]):
    """Fit the spread-to-error map of the ensemble in ``folder`` on ``val`` and plot it
    (``calibration.png``). A single model gets the identity map."""
    ensemble = Ensemble.load(folder)
    if ensemble.member_count < 2:  # one model has no spread to calibrate
        return Calibration()
    pred = ensemble.predict(val)
    spread = [pred.force_std(i) for i in range(len(val))]
    errors = [pred.force_mean(i) - a.get_forces() for i, a in enumerate(val)]
    e_err = pred.energy_mean - np.array([a.get_potential_energy() for a in val])
    cal = fit_calibration(spread, errors, pred.energy_std, e_err)
    plot_calibration(cal, spread, errors, Path(folder) / "calibration.png")
    return cal
