"""Parsl configurations for the executor profiles: threads, local, slurm, pbs.

Each call builds a fresh ``parsl.Config`` (Parsl configs hold live executors and cannot
be reused). One label is one Parsl app on ``cores_per_label`` cores; HighThroughput
workers get the virtual environment's ``bin/`` on PATH before ``worker_init`` runs.
Ready-to-edit cluster profiles are in ``deploy/parsl/``.
"""

import re
import sys
from pathlib import Path
from typing import Literal

from parsl.config import Config
from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor
from parsl.launchers import MpiExecLauncher, SingleNodeLauncher, SrunLauncher
from parsl.providers import LocalProvider, PBSProProvider, SlurmProvider
from pydantic import Field, field_validator

from sapis.config import Strict

_WALLTIME = re.compile(r"^\d+:\d{2}:\d{2}$")


class ExecutorConfig(Strict):
    """Where labels run (Parsl).

    ``threads``: in-process threads (tests); ``local``: HighThroughputExecutor on this
    machine; ``slurm`` / ``pbs``: batch jobs of ``nodes`` nodes each, at most
    ``max_blocks`` at once, ``workers`` labels at once per node, ``walltime`` HH:MM:SS.
    ``queue`` is the Slurm partition or PBS queue. ``worker_init`` runs before workers
    start (module loads); the virtual environment's ``bin/`` is put on PATH for you.
    ``run_dir`` is where Parsl writes its logs (a campaign file's default: ``runinfo/``
    in the campaign folder).
    """

    profile: Literal["threads", "local", "slurm", "pbs"] = "local"
    workers: int = Field(2, ge=1)
    retries: int = Field(2, ge=0)
    walltime: str = "01:00:00"
    nodes: int = Field(1, ge=1)
    max_blocks: int = Field(1, ge=1)
    queue: str | None = None
    account: str | None = None
    scheduler_options: str = ""
    worker_init: str = ""
    run_dir: Path | None = None

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, value: str) -> str:
        if not _WALLTIME.match(value):
            raise ValueError(f"walltime must be HH:MM:SS, got {value!r}")
        return value


def worker_init(executor: ExecutorConfig) -> str:
    """Shell lines run before a worker pool starts: this Python's ``bin/`` first on PATH,
    then the user's own lines (module loads, conda activation)."""
    lines = [f'export PATH="{Path(sys.executable).parent}:$PATH"']
    if executor.worker_init.strip():
        lines.append(executor.worker_init.strip())
    return "\n".join(lines)


def parsl_config(executor: ExecutorConfig, cores_per_label: int, run_dir: str | Path) -> Config:
    """A new Parsl ``Config`` for ``executor.profile``.

    Parameters
    ----------
    executor
        Profile, labels at once per node (``workers``), retries, and batch settings.
    cores_per_label
        Cores one label uses (``dft.threads``); batch jobs ask for
        ``workers * cores_per_label`` cores per node.
    run_dir
        Where Parsl writes its logs (``runinfo``).
    """
    ex: ThreadPoolExecutor | HighThroughputExecutor
    if executor.profile == "threads":
        ex = ThreadPoolExecutor(label="threads", max_threads=executor.workers)
    else:
        ex = HighThroughputExecutor(
            label=executor.profile,
            max_workers_per_node=executor.workers,
            cores_per_worker=cores_per_label,
            provider=_provider(executor, cores_per_label),
            heartbeat_period=5,  # a dead worker is noticed (and its label retried) within ~5 s
            # the interchange runs here: start it with this Python, whatever PATH says
            interchange_launch_cmd=[
                sys.executable,
                str(Path(sys.executable).parent / "interchange.py"),
            ],
            **({"address": "127.0.0.1"} if executor.profile == "local" else {}),
        )
    return Config(
        executors=[ex],
        retries=executor.retries,
        run_dir=str(run_dir),
        strategy="simple",
        # how often Parsl decides whether to start blocks; cheap, since the provider
        # rate-limits its own squeue/qstat polling. 0.5 s instead of 5 s puts the first
        # block (and so the first label) ~4 s earlier.
        strategy_period=0.5,
    )


def _provider(executor: ExecutorConfig, cores_per_label: int):
    init = worker_init(executor)
    if executor.profile == "local":
        return LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1, worker_init=init)
    batch = {
        "account": executor.account,
        "nodes_per_block": executor.nodes,
        "init_blocks": 1,
        "min_blocks": 0,
        "max_blocks": executor.max_blocks,
        "walltime": executor.walltime,
        "scheduler_options": executor.scheduler_options,
        "worker_init": init,
    }
    cores = executor.workers * cores_per_label
    if executor.profile == "slurm":
        return SlurmProvider(
            partition=executor.queue,
            cores_per_node=cores,
            exclusive=False,
            launcher=SrunLauncher() if executor.nodes > 1 else SingleNodeLauncher(),
            **batch,
        )
    if executor.profile == "pbs":
        return PBSProProvider(
            queue=executor.queue,
            cpus_per_node=cores,
            launcher=MpiExecLauncher() if executor.nodes > 1 else SingleNodeLauncher(),
            **batch,
        )
    raise ValueError(f"unknown executor profile {executor.profile!r}")
