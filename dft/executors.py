"""Parsl configurations for the executor profiles: threads, local, slurm, pbs.

Each call builds a fresh ``parsl.Config`` (Parsl configs hold live executors and cannot
be reused). One label is one Parsl app on ``cores_per_label`` cores; HighThroughput
workers get the virtual environment's ``bin/`` on PATH before ``worker_init`` runs.
Ready-to-edit cluster profiles are in ``deploy/parsl/``.
"""

import re
import shlex
import sys
from pathlib import Path
from typing import Literal

from parsl.config import Config
from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor
from parsl.launchers import MpiExecLauncher, SingleNodeLauncher, SrunLauncher
from parsl.providers import LocalProvider, PBSProProvider, SlurmProvider
from pydantic import Field, ValidationInfo, field_validator

from sapis.config import Strict
from sapis.errors import InputError

_WALLTIME = re.compile(r"^\d+:\d{2}:\d{2}$")
#: A queue, partition or account name: nothing a shell or a batch system's command
#: line would read as more than one word, an option or a substitution.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+,-]*$")
#: Control characters other than tab and newline (a carriage return, NUL, escapes).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
#: Characters of a folder path that Parsl may paste unquoted into a shell command.
_SHELL_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+,@%:=~-]+$")
#: The directive each batch profile's ``scheduler_options`` lines must start with.
DIRECTIVES = {"slurm": ("#SBATCH",), "pbs": ("#PBS",)}


class ExecutorConfig(Strict):
    """Where labels run (Parsl).

    ``threads``: in-process threads (tests); ``local``: HighThroughputExecutor on this
    machine; ``slurm`` / ``pbs``: batch jobs of ``nodes`` nodes each, at most
    ``max_blocks`` at once, ``workers`` labels at once per node, ``walltime`` HH:MM:SS.
    ``queue`` is the Slurm partition or PBS queue and ``account`` the account to charge:
    plain names (letters, digits, ``_ . + - ,``). ``scheduler_options`` are extra
    ``#SBATCH`` (slurm) or ``#PBS`` (pbs) directive lines, nothing else. ``worker_init``
    is your own shell snippet, run as written before workers start (module loads,
    conda activation; no control characters but tab and newline); the virtual
    environment's ``bin/`` is put on PATH for you. ``run_dir`` is where Parsl writes
    its logs (a campaign file's default: ``runinfo/`` in the campaign folder); Parsl
    pastes it unquoted into shell commands, so outside the ``threads`` profile it may
    hold no spaces or shell characters.
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

    @field_validator("queue", "account")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError(
                "must be a plain name of letters, digits and _ . + - , (no spaces, quotes, "
                "shell characters or leading -)"
            )
        return value

    @field_validator("worker_init")
    @classmethod
    def _worker_init(cls, value: str) -> str:
        _refuse_control(value)
        return value

    @field_validator("scheduler_options")
    @classmethod
    def _scheduler_options(cls, value: str, info: ValidationInfo) -> str:
        """Directive lines only: a line that is not one ends the job script's header,
        and the batch system then ignores every directive after it (the partition and
        account among them) and the shell runs the line."""
        _refuse_control(value)
        profile = info.data.get("profile")
        directives = DIRECTIVES.get(profile, DIRECTIVES["slurm"] + DIRECTIVES["pbs"])
        lines = [line.strip() for line in value.split("\n") if line.strip()]
        for line in lines:
            if line.split(maxsplit=1)[0] not in directives:
                raise ValueError(
                    f"every line must be a {' or '.join(directives)} directive"
                    f"{f' for profile {profile}' if profile in DIRECTIVES else ''}; {line!r} "
                    "is not (put shell commands in worker_init)"
                )
        return "\n".join(lines)

    @field_validator("run_dir")
    @classmethod
    def _run_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        problem = run_dir_problem(info.data.get("profile", "local"), value)
        if problem:
            raise ValueError(problem)
        return value


def _refuse_control(value: str) -> None:
    bad = _CONTROL.search(value)
    if bad:
        raise ValueError(
            f"holds the control character {bad.group()!r}; only tabs and newlines may appear"
        )


def run_dir_problem(profile: str, run_dir: str | Path | None) -> str | None:
    """Why ``run_dir`` cannot be Parsl's run folder for ``profile`` (None if it can):
    Parsl pastes it unquoted into the shell commands that start workers and submit
    jobs, so outside the in-process ``threads`` profile it must hold no spaces or shell
    characters."""
    if run_dir is None or profile == "threads" or _SHELL_SAFE_PATH.match(str(run_dir)):
        return None
    return (
        f"{run_dir} has spaces or shell characters, which Parsl would paste unquoted into "
        "shell commands; choose a folder of letters, digits and _ . / + , @ % : = ~ -"
    )


def worker_init(executor: ExecutorConfig, bin_dir: str | Path | None = None) -> str:
    """Shell lines run before a worker pool starts: ``bin_dir`` (default this Python's
    ``bin/``) first on PATH, quoted, then the user's own lines as written (module loads,
    conda activation)."""
    bin_dir = Path(sys.executable).parent if bin_dir is None else bin_dir
    lines = [f'export PATH={shlex.quote(str(bin_dir))}:"$PATH"']
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
    problem = run_dir_problem(executor.profile, run_dir)
    if problem:
        raise InputError(f"executor.run_dir: {problem}")
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
            # a worker pool that hears nothing from the interchange for a minute (this
            # process and its interchange killed) exits and so ends its batch job; the
            # interchange gives up on a silent pool as soon (its labels are retried)
            heartbeat_threshold=60,
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
