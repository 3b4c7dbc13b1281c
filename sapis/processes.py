"""Nothing left running when a command ends, however it ends (Linux).

:func:`stop_on_sigterm` turns SIGTERM into the same unwinding as Ctrl-C: a
:class:`Terminated` exception (exit status 143) raised in the main thread, so every
``finally`` and context manager runs (Parsl shuts its interchange and workers down, a
Prefect server is stopped).

SIGKILL cannot be caught. :func:`guard_children` marks every process this one starts
from then on with a random token in its environment (``SAPIS_GUARD``, inherited by all
descendants, even those that leave the process group or are re-parented, as Parsl's local
worker pool is) and starts a watchdog, ``python -m sapis.processes``, in a session of its
own. Once this process is gone, whatever the reason, the watchdog ends every process
whose ``/proc/<pid>/environ`` carries the token (SIGTERM, then SIGKILL after a grace
period), then exits; after a normal end it finds none. Processes under a batch system's
step (an ancestor ``slurmstepd`` or ``pbs_mom``) are left to the batch system; Parsl's
workers there stop by themselves once they miss the interchange's heartbeats. A process
that clears its environment (``env -i``) or overwrites ``/proc/<pid>/environ`` escapes;
``SPT_NOENV`` keeps ``setproctitle`` from doing so.
"""

import contextlib
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ENV = "SAPIS_GUARD"
BATCH_DAEMONS = frozenset({"slurmstepd", "pbs_mom"})
_WATCHDOG: list[subprocess.Popen] = []


class Terminated(SystemExit):
    """SIGTERM arrived: unwind like Ctrl-C, then exit with status 143 (128 + 15)."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Inside, SIGTERM raises :class:`Terminated` in the main thread (outside the main
    thread nothing changes: Python only lets the main thread handle signals)."""

    def handler(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stat(pid: int) -> tuple[str, str, int, int] | None:
    """(command name, state, parent pid, start time in clock ticks) of ``pid``, or None
    when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    head, _, rest = text.rpartition(")")
    fields = rest.split()
    return head.partition("(")[2], fields[0], int(fields[1]), int(fields[19])


def _alive(pid: int, started: int) -> bool:
    """Whether ``pid`` is still the process that started at ``started`` (a zombie is
    not alive; a new process with a reused pid is another one)."""
    stat = _stat(pid)
    return stat is not None and stat[1] != "Z" and stat[3] == started


def guard_children(grace: float = 10.0) -> str:
    """Mark every process started from now on with a token and start the watchdog that
    ends them once this process is gone (by SIGKILL too); returns the token. Once per
    process: a second call returns the same token. Inside a guarded command (the token
    already in the environment) the new token is added, so both watchdogs know them."""
    if _WATCHDOG:
        return os.environ[ENV].rsplit(":", 1)[-1]
    token = secrets.token_hex(8)
    outer = os.environ.get(ENV)
    os.environ[ENV] = f"{outer}:{token}" if outer else token
    # setproctitle (Parsl's interchange names itself) would overwrite /proc/<pid>/environ
    os.environ.setdefault("SPT_NOENV", "1")
    me = os.getpid()
    stat = _stat(me)
    started = stat[3] if stat else 0
    _WATCHDOG.append(
        subprocess.Popen(
            [sys.executable, "-m", "sapis.processes", str(me), str(started), token, str(grace)],
            start_new_session=True,  # not ended with this process group, nor by its Ctrl-C
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    return token


def _carries(pid: int, token: bytes) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or another user's
        return False
    for item in environ.split(b"\0"):
        if item.startswith(ENV.encode() + b"="):
            return token in item.partition(b"=")[2].split(b":")
    return False


def _under_batch_step(pid: int) -> bool:
    while pid > 1:
        stat = _stat(pid)
        if stat is None:
            return False
        if stat[0] in BATCH_DAEMONS:
            return True
        pid = stat[2]
    return False


def carriers(token: str) -> list[int]:
    """Live processes (other than this one) whose environment carries ``token``, less
    those under a batch system's step."""
    mine, raw = os.getpid(), token.encode()
    return [
        pid
        for pid in (int(e.name) for e in os.scandir("/proc") if e.name.isdigit())
        if pid != mine and _carries(pid, raw) and not _under_batch_step(pid)
    ]


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def end_carriers(token: str, grace: float = 10.0, poll: float = 0.1) -> int:
    """End every process carrying ``token``: SIGTERM, then SIGKILL to those still there
    after ``grace`` seconds; returns how many there were."""
    first = carriers(token)
    _signal(first, signal.SIGTERM)
    deadline = time.monotonic() + grace
    left = first
    while left and time.monotonic() < deadline:
        time.sleep(poll)
        left = carriers(token)
    for _ in range(5):  # started while we were ending the others: no grace any more
        if not left:
            break
        _signal(left, signal.SIGKILL)
        time.sleep(poll)
        left = carriers(token)
    return len(first)


def _wait_for_exit(pid: int, started: int) -> None:
    """Return once ``pid`` (the process started at ``started``) has ended."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # already gone, or a kernel older than 5.3
        fd = None
    if fd is not None:
        try:
            if _alive(pid, started):  # the pid was not reused before we opened it
                select.select([fd], [], [])  # readable once the process has exited
            return
        finally:
            os.close(fd)
    while _alive(pid, started):
        time.sleep(0.5)


def main(argv: list[str]) -> None:
    pid, started, token, grace = int(argv[0]), int(argv[1]), argv[2], float(argv[3])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _wait_for_exit(pid, started)
    end_carriers(token, grace)


if __name__ == "__main__":
    main(sys.argv[1:])
