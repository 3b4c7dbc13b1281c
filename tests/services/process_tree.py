"""The processes a command starts, found by scanning /proc, for tests that kill it."""

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

MARK = "SAPIS_TEST_MARK"


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of ``pid``, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return int(fields[1]), fields[0], int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _marked(pid: int, mark: str) -> bool:
    try:
        return f"{MARK}={mark}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


class Tree:
    """Every process a command started, seen by scanning /proc while it runs: its
    descendants, and the processes carrying the test's mark in their environment (they
    inherit it when re-parented to init, as Parsl's worker pool is), kept as (pid, start
    time) so that a reused pid is never taken for one of them."""

    def __init__(self, root: int, mark: str):
        self.root, self.mark = root, mark
        self.seen: dict[tuple[int, int], str] = {}

    def scan(self) -> None:
        table = {int(p): _stat(int(p)) for p in os.listdir("/proc") if p.isdigit()}
        tree = {self.root}
        grew = True
        while grew:
            kids = {p for p, s in table.items() if s and s[0] in tree} - tree
            tree |= kids
            grew = bool(kids)
        for pid, stat in table.items():
            if stat and stat[1] != "Z" and (pid in tree or _marked(pid, self.mark)):
                key = (pid, stat[2])  # its latest command: a fork shows its parent's until exec
                self.seen[key] = _cmdline(pid) or self.seen.get(key, "")

    def commands(self) -> list[str]:
        return list(self.seen.values())

    def has(self, *words: str) -> bool:
        """Whether one of the commands seen has all ``words``."""
        return any(all(w in cmd for w in words) for cmd in self.commands())

    def alive(self) -> dict[int, str]:
        """Those still running, the command itself aside (a zombie waiting for its parent
        is not running)."""
        out = {}
        for (pid, started), cmd in self.seen.items():
            stat = _stat(pid)
            if stat and stat[1] != "Z" and stat[2] == started and pid != self.root:
                out[pid] = cmd
        return out

    def wait_until_at_most(self, left: int, seconds: float = 60) -> dict[int, str]:
        """Those running once at most ``left`` are, or after ``seconds``."""
        deadline = time.monotonic() + seconds
        while len(self.alive()) > left and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.alive()

    def kill_left(self) -> None:
        for pid in self.alive():
            os.kill(pid, signal.SIGKILL)


def run_and_kill(cmd, env, ready, sig, log: Path, wait_ready=600.0, wait_gone=90.0):
    """Start ``cmd`` (its stderr into ``log``), scan its processes until ``ready(tree)``
    holds, send ``sig`` to the command alone (not its group), and return (its exit
    status, the tree, what was still running once all was gone or after ``wait_gone``
    seconds). Whatever is left is killed before returning."""
    mark = uuid.uuid4().hex
    with log.open("w") as err:
        proc = subprocess.Popen(
            cmd,
            env={**env, MARK: mark},
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    tree = Tree(proc.pid, mark)
    try:
        deadline = time.monotonic() + wait_ready
        while not ready(tree):
            assert proc.poll() is None, f"ended before it was ready: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"never ready: {tree.commands()}"
            time.sleep(0.2)
            tree.scan()
        os.kill(proc.pid, sig)
        code = proc.wait(timeout=wait_gone)
        return code, tree, tree.wait_until_at_most(0, wait_gone)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        tree.kill_left()  # a failed test leaves nothing behind either
