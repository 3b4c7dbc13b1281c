"""Claims on rows being labelled: who holds one, and whether it still holds.

A driver that labels a row first claims it: the row's ``status`` becomes ``running`` and
its key-value pairs name the ``owner`` (``run@host:pid``), the ``owner_machine`` (boot id
and process namespace, to tell whether the owner's process still lives), the last
``heartbeat`` and the time the claim lapses, ``lease_until`` (Unix seconds). The owner
renews the lease while it works; another driver takes a claim over only when the lease
has lapsed, or at once when the owner ran on this same machine and its process is gone
(a driver killed with SIGKILL). Leases compare wall clocks: the machines sharing a store
must keep their clocks in step (NTP), to well within a lease.
"""

import os
import socket
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from sapis.errors import InputError

#: Seconds a claim lasts without a heartbeat; a running batch renews it every third.
LEASE_SECONDS = 600.0

#: Environment variable that sets the lease of the claims a driver takes (seconds).
LEASE_ENV = "SAPIS_CLAIM_LEASE"

#: The key-value pairs of a claim, removed when it ends.
CLAIM_KEYS = ("owner", "owner_machine", "heartbeat", "lease_until")


def lease_seconds() -> float:
    """The lease of new claims: ``$SAPIS_CLAIM_LEASE`` seconds, else
    :data:`LEASE_SECONDS`. An :class:`InputError` when it is not a positive number."""
    text = os.environ.get(LEASE_ENV, "").strip()
    if not text:
        return LEASE_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise InputError(f"{LEASE_ENV}={text!r}: give the lease of a claim in seconds (> 0)")
    return value


@cache
def this_machine() -> str:
    """This machine's boot and process namespace ('' where unknown): two processes with
    the same token see each other's pids."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


@dataclass(frozen=True)
class Owner:
    """Who holds a claim: one label run in one process of one machine."""

    run: str
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    machine: str = field(default_factory=this_machine)

    def __str__(self) -> str:
        return f"{self.run}@{self.host}:{self.pid}"


def run_of(owner: str) -> str:
    """The run id of an ``owner`` text (``run@host:pid``)."""
    return owner.rsplit("@", 1)[0]


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


@dataclass
class Claim:
    """A row's claim as stored: ``owner`` text, ``heartbeat`` and ``lease_until`` (Unix
    seconds), and ``machine`` of the owner."""

    row_id: int
    owner: str
    heartbeat: float
    lease_until: float
    machine: str = ""

    @property
    def run(self) -> str:
        return run_of(self.owner)

    def lapsed(self, now: float) -> bool:
        """Whether another driver may take it over at ``now``: its lease has run out, or
        its owner ran on this machine and that process is gone."""
        if self.lease_until <= now:
            return True
        if not self.machine or self.machine != this_machine():
            return False
        try:
            pid = int(self.owner.rsplit(":", 1)[1])
        except (IndexError, ValueError):
            return False
        return _process_gone(pid)

    @classmethod
    def of(cls, row) -> "Claim | None":
        """The claim of an ASE row whose status is ``running``, else None."""
        if row.get("status") != "running":
            return None
        return cls(
            row.id,
            str(row.get("owner", "?")),
            float(row.get("heartbeat", 0.0)),
            float(row.get("lease_until", 0.0)),
            str(row.get("owner_machine", "")),
        )
