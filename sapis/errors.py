"""Errors that SAPIS-MD raises for a user to read, and telling a full disk apart."""

import errno
import shutil
from collections.abc import Iterable
from pathlib import Path

#: errno values that mean "no room to write": a full disk, a quota, a file-size limit.
NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}

#: Below this many free bytes a filesystem counts as full (libraries that hide the errno,
#: torch.save's "file write failed" or SQLite's "database or disk is full", are told so).
FULL_BELOW = 1 << 20


class InputError(ValueError):
    """Bad input (structure, file, configuration): raised before any expensive work."""


class StoreUnavailable(RuntimeError):
    """The dataset store's server went away mid-run and did not come back in time."""


def _chain(err: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def no_space(err: BaseException, paths: Iterable[str | Path]) -> str | None:
    """What to tell a user when ``err`` came from a full disk, else None.

    A full disk is an ``OSError`` with an errno of :data:`NO_SPACE` anywhere in the chain
    of ``err``, or any error while the filesystem of one of ``paths`` (the folders a
    command writes to) has less than :data:`FULL_BELOW` bytes free."""
    full = [p for p in map(Path, paths) if _free_bytes(p) < FULL_BELOW]
    coded = next((e for e in _chain(err) if isinstance(e, OSError) and e.errno in NO_SPACE), None)
    if coded is None and not full:
        return None
    where = coded.filename if coded is not None and coded.filename else None
    where = where or (full[0] if full else None)
    detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return (
        f"no space left on the disk{f' writing {where}' if where else ''} ({detail}). "
        "What finished is kept and no half-written file counts as done: free some space "
        "and run the same command again to resume."
    )


def _free_bytes(path: Path) -> int:
    """Free bytes on the filesystem of ``path`` (its nearest existing parent)."""
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return FULL_BELOW
