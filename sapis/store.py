"""The dataset store: an ASE database (SQLite file or PostgreSQL URL).

Each row holds a structure, its labels (energy in eV, forces in eV/Å, through ASE's own
columns), and key-value pairs: ``status`` (pending | running | labelled | failed),
``reason`` for failures, ``level`` of theory, ``round``, ``split`` (train | val | test),
provenance (``source``, ``temperature``, ``parent``), ``uncertainty`` at selection time,
and label details (``rung``, ``label_seconds``, ``program``, ``run``).

A structure may carry labels at several levels of theory (a cheap GFN2-xTB label beside
a DFT one): a row is one (structure, level). Its ``unique_id`` is ``hash:level`` (see
:func:`row_key`), so the database itself refuses a second copy of a structure at one
level, and labelling is idempotent even with several writers at once. A pending row
names the level it waits for; rows stored without a level (older stores, or pending
rows added with none) keep the bare hash and count as stored at every level until
labelled. Readers pick a level; nothing mixes levels silently.

A PostgreSQL server that goes away mid-run (a restart, a failover) is waited for: every
store operation that loses its connection is retried on a new one for up to
``SAPIS_DB_RECONNECT`` seconds (default 300), then :class:`~sapis.errors.StoreUnavailable`
says so; operations are written to be repeated (claims, labels and new rows are
idempotent), so nothing is lost or stored twice.

A row being labelled is claimed (``running``, with an owner, a heartbeat and a lease that
lapses; see :mod:`sapis.claims`): drivers sharing a store each claim the rows they label,
skip the rows another live driver holds and take over lapsed claims, so no row is paid
for twice, and a label is stored only by its claim's owner.
"""

import contextlib
import functools
import logging
import os
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import psycopg2
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.db.row import AtomsRow, atoms2dict
from ase.db.sqlite import SQLite3Database
from ase_db_backends.postgresql import Connection as PostgresConnection
from ase_db_backends.postgresql import PostgreSQLDatabase
from pydantic import Field, model_validator

from sapis.claims import CLAIM_KEYS, LEASE_SECONDS, Claim, Owner, run_of
from sapis.config import Strict, is_url, redact
from sapis.errors import InputError, StoreUnavailable
from sapis.io import carries_labels, label_problem
from sapis.labels import LabelResult
from sapis.structures import structure_hash

STATUSES = ("pending", "running", "labelled", "failed")
SPLITS = ("train", "val", "test")
PROVENANCE_KEYS = ("source", "round", "temperature", "parent", "uncertainty")
_DUPLICATE = (sqlite3.IntegrityError, psycopg2.IntegrityError)
log = logging.getLogger(__name__)


class SplitConfig(Strict):
    """Fractions of new structures sent to the validation and test splits (by hash)."""

    val: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _fractions(self) -> "SplitConfig":
        if self.val + self.test >= 1.0:
            raise ValueError("val + test must leave something for train")
        return self


def new_run_id() -> str:
    """A label run's id. The prefix keeps ASE from refusing one that reads as a number
    (``"9319e8815124"`` is a float to it)."""
    return f"run-{uuid.uuid4().hex[:12]}"


def check_split(split: str | None) -> None:
    """Raise :class:`InputError` unless ``split`` is None or one of :data:`SPLITS`."""
    if split is not None and split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def row_key(structure_hash: str, level: str | None) -> str:
    """A row's ``unique_id``: the structure hash and, when known, the level."""
    return structure_hash if not level else f"{structure_hash}:{level}"


def hash_of(unique_id: str) -> str:
    """The structure hash of a row's ``unique_id``."""
    return unique_id.split(":", 1)[0]


def split_for(structure_id: str, fractions: SplitConfig) -> str:
    """Deterministic split of a structure from its hash: same answer on every machine."""
    u = int(structure_id[:8], 16) / 16**8
    if u < fractions.val:
        return "val"
    if u < fractions.val + fractions.test:
        return "test"
    return "train"


def _provenance(atoms: Atoms) -> dict:
    """The searchable provenance keys of ``atoms.info`` as ASE-db key-value pairs."""
    kvp: dict = {"source": str(atoms.info.get("source", "seed")), "round": 0}
    for key in PROVENANCE_KEYS:
        value = atoms.info.get(key)
        if value is None:
            continue
        if key == "round":
            kvp[key] = int(value)
        elif key in ("temperature", "uncertainty"):
            kvp[key] = float(value)
        elif key == "parent":
            kvp[key] = int(value) if isinstance(value, int | np.integer) else f"h:{value}"
        else:
            kvp[key] = str(value)
    return kvp


@dataclass
class AddReport:
    """What :meth:`DatasetStore.add` did: ids of new rows, and how many were duplicates
    of rows already stored or of structures earlier in the same input."""

    added: list[int] = field(default_factory=list)
    duplicates: int = 0


@dataclass
class ClaimOutcome:
    """What :meth:`DatasetStore.claim` did with each row id: ``claimed`` (of those,
    ``taken_over`` from a lapsed claim), ``busy`` (held by another live driver) or
    ``done`` (labelled, failed, at another level or gone)."""

    claimed: list[int] = field(default_factory=list)
    taken_over: list[int] = field(default_factory=list)
    busy: list[int] = field(default_factory=list)
    done: list[int] = field(default_factory=list)


#: Seconds a connection attempt waits for the server (libpq's default is forever, so a
#: firewalled host would hang a command for minutes).
CONNECT_TIMEOUT = 10


def connect_options(url: str) -> dict:
    """Keyword options of ``psycopg2.connect`` for ``url``: a short ``connect_timeout``
    unless the URL or ``PGCONNECT_TIMEOUT`` sets one."""
    try:
        given = "connect_timeout" in psycopg2.extensions.parse_dsn(url)
    except psycopg2.Error:
        given = False  # connect itself then says what is wrong with the URL
    if given or os.environ.get("PGCONNECT_TIMEOUT"):
        return {}
    return {"connect_timeout": CONNECT_TIMEOUT}


class _Connection(PostgresConnection):
    def rollback(self) -> None:  # missing upstream; ASE calls it when a transaction fails
        self.con.rollback()


class _PostgreSQLDatabase(PostgreSQLDatabase):
    """ase-db-backends' PostgreSQL database with two concurrency bugs fixed: a new row's
    id was read as the sequence's global ``last_value``, so with two writers a row's
    search keys could land on the other writer's row (or on none, failing the foreign
    key); ``currval`` is this session's own. Failed transactions can roll back. And two
    processes opening a new database at once no longer both create its tables (one
    failed on a duplicate type): the first holds a lock while it creates them."""

    def _initialize(self, con) -> None:
        if not self.initialized:  # the lock lasts until the creator commits its tables
            con.cursor().execute("SELECT pg_advisory_xact_lock(hashtext('sapis ase schema'))")
        super()._initialize(con)

    def _connect(self):
        return _Connection(psycopg2.connect(self.filename, **connect_options(self.filename)))

    def get_last_id(self, cur) -> int:
        cur.execute("SELECT currval('systems_id_seq')")
        return int(cur.fetchone()[0])


class _SQLiteDatabase(SQLite3Database):
    """ASE's SQLite database, whose tables a new file gets in one transaction: two
    processes opening a new store at once no longer both create them (one failed with
    "table systems already exists", or read a half-made schema). The first holds SQLite's
    exclusive lock while it creates them; the others wait for it and find them."""

    def _initialize(self, con) -> None:
        if self.initialized:
            return
        fresh = con.execute("SELECT COUNT(*) FROM sqlite_master WHERE name='systems'")
        if fresh.fetchone()[0] == 0:
            con.execute("BEGIN EXCLUSIVE")  # waits (up to ASE's 20 s) for another creator
        super()._initialize(con)
        if con.in_transaction:  # another process had made them: nothing to commit
            con.commit()


#: File name endings of a SQLite store.
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_SQLITE_MAGIC = b"SQLite format 3\x00"


def database_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a store's address, or None: a store is a SQLite file
    (ending in one of :data:`SQLITE_SUFFIXES`) or a ``postgresql://`` URL. Other ASE
    formats (``.json``, ...) cannot hold concurrent writers and are refused."""
    if not url.strip():
        return "no database given (empty): give a SQLite file (data.db) or a postgresql:// URL"
    if is_url(url):
        if not url.startswith(("postgresql://", "postgres://")):
            return f"{url.split('://')[0]}://…: only postgresql:// URLs are supported"
        return None
    if Path(url).suffix.lower() not in SQLITE_SUFFIXES:
        return (
            f"{url!r} is neither a SQLite file ({', '.join(SQLITE_SUFFIXES)}) nor "
            "a postgresql:// URL"
        )
    return None


def _check_sqlite_file(path: Path, create: bool) -> None:
    """Raise :class:`InputError` unless ``path`` is a SQLite file, or (with ``create``) a
    new one that can be made (its folder is created)."""
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a database file")
    if not path.exists():
        if not create:
            raise InputError(f"no such database: {path}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"{path}: cannot create its folder ({err.strerror})") from None
        return
    try:
        with path.open("rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    if head != _SQLITE_MAGIC and (head or not create):  # an empty file: a new store
        raise InputError(f"{path}: not a SQLite database")


#: Seconds a store waits for a PostgreSQL server that went away mid-run to come back.
RECONNECT_ENV, RECONNECT_SECONDS = "SAPIS_DB_RECONNECT", 300.0
_LOST = (psycopg2.OperationalError, psycopg2.InterfaceError)


def reconnect_seconds() -> float:
    """How long to wait for a lost PostgreSQL server (``$SAPIS_DB_RECONNECT``, seconds)."""
    value = os.environ.get(RECONNECT_ENV)
    try:
        seconds = RECONNECT_SECONDS if value is None else float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise InputError(f"${RECONNECT_ENV} must be a number of seconds >= 0, got {value!r}")
    return seconds


def _reconnecting(method):
    """``method`` retried on a new connection while a lost PostgreSQL server comes back
    (up to :func:`reconnect_seconds`), then a :class:`StoreUnavailable`."""

    @functools.wraps(method)
    def retried(self: "DatasetStore", *args, **kwargs):
        if not isinstance(self.db, _PostgreSQLDatabase):
            return method(self, *args, **kwargs)
        deadline, patience, pause = None, 0.0, 0.5
        while True:
            try:
                return method(self, *args, **kwargs)
            except _LOST as err:
                self._drop_connection()
                reason = " ".join(str(err).split()) or type(err).__name__
                if deadline is None:
                    patience = reconnect_seconds()
                    deadline = time.monotonic() + patience
                    log.warning("lost database %s (%s): reconnecting", self.safe_url, reason)
                if time.monotonic() >= deadline:
                    raise StoreUnavailable(
                        f"database {self.safe_url} did not come back within "
                        f"{patience:.0f} s (${RECONNECT_ENV}): {reason}. Nothing "
                        "stored is lost: run the same command again once it is up"
                    ) from None
                time.sleep(min(pause, max(deadline - time.monotonic(), 0.0)))
                pause = min(2 * pause, 10.0)

    return retried


class DatasetStore:
    """Rows of structures and labels in an ASE database at ``url``.

    ``url`` is a SQLite file path (see :data:`SQLITE_SUFFIXES`) or a ``postgresql://``
    URL. With ``create`` (writers), a missing SQLite file is created, and its folder;
    without (readers), a missing file is an :class:`InputError`, so a mistyped path never
    yields an empty store. An existing file must be a SQLite database.
    """

    def __init__(self, url: str | Path, create: bool = True) -> None:
        self.url = str(url)
        problem = database_problem(self.url)
        if problem:
            raise InputError(problem)
        if not is_url(self.url):
            _check_sqlite_file(Path(self.url), create)
        try:
            # serial: every MPI rank talks to the database itself; no lock file, which a
            # killed process would leave behind (SQLite and PostgreSQL lock on their own)
            if self.url.startswith(("postgresql://", "postgres://")):
                self.db = _PostgreSQLDatabase(self.url, serial=True, use_lock_file=False)
            else:
                path = os.path.abspath(self.url)
                self.db = _SQLiteDatabase(path, serial=True, use_lock_file=False)
            self.db.count()
        except psycopg2.Error as err:  # libpq's message, on one line
            reason = " ".join(str(err).split()) or type(err).__name__
            raise InputError(f"cannot reach database {self.safe_url}: {reason}") from None
        except (sqlite3.DatabaseError, OSError) as err:
            raise InputError(f"{self.safe_url}: not a usable ASE database ({err})") from None

    @property
    def safe_url(self) -> str:
        """The store's address as shown to users and logs: without its password."""
        return redact(self.url)

    def _drop_connection(self) -> None:
        """Forget a connection a lost server broke (ASE would reuse it)."""
        con, self.db.connection = self.db.connection, None
        if con is not None:
            with contextlib.suppress(Exception):
                con.close()

    # --- writing -------------------------------------------------------------------------

    def keys(self) -> set[tuple[str, str | None]]:
        """(structure hash, level) of every stored row; level None for a row stored
        without one."""
        sql = (
            "SELECT s.unique_id, t.value FROM systems AS s LEFT JOIN text_key_values AS t "
            "ON t.id = s.id AND t.key = 'level'"
        )
        with self.db.managed_connection() as con:
            cur = con.cursor()
            cur.execute(sql)
            return {(hash_of(uid), value) for uid, value in cur.fetchall()}

    def hashes(self, level: str | None = None) -> set[str]:
        """Structure hashes of the stored rows: at ``level`` (rows without a level count
        as stored at every level), or at any level when None."""
        return {h for h, at in self.keys() if level is None or at in (level, None)}

    def _has_key(self, unique_id: str) -> bool:
        with self.db.managed_connection() as con:
            cur = con.cursor()
            cur.execute("SELECT 1 FROM systems WHERE unique_id = ?", [unique_id])
            return cur.fetchone() is not None

    def add(
        self,
        images: list[Atoms],
        split: str | None = None,
        fractions: SplitConfig | None = None,
        level: str | None = None,
    ) -> AddReport:
        """Store structures that are not stored yet at their level.

        Structures carrying energy and forces are stored ``labelled`` at ``level`` (or
        their own ``atoms.info["level"]``; a label without a level is refused); the rest
        ``pending``, waiting for a label at ``level``. ``split`` forces one split for
        all; otherwise it is drawn from each hash with ``fractions`` (so a structure
        has the same split at every level).
        """
        check_split(split)
        for i, atoms in enumerate(images):  # before anything is written
            problem = label_problem(atoms) if carries_labels(atoms) else None
            if problem:
                raise InputError(f"structure {i}: {problem}; nothing was stored")
        fractions = fractions or SplitConfig()
        report = AddReport()
        stored = self.keys()
        anywhere = {h for h, at in stored if at is None}  # stored without a level
        hashed = {h for h, _ in stored}
        rows = []
        for atoms in images:
            h = structure_hash(atoms)
            at = (level or atoms.info.get("level")) if carries_labels(atoms) else level
            if h in anywhere or (h, at) in stored or (at is None and h in hashed):
                report.duplicates += 1
                continue
            stored.add((h, at))
            hashed.add(h)
            if at is None:
                anywhere.add(h)
            rows.append(self._new_row(atoms, h, split or split_for(h, fractions), at))
        try:
            with self.db:
                report.added = [self.db.write(*row) for row in rows]
        except _DUPLICATE:  # another writer stored some of them meanwhile: go one by one
            report.added = []
            for row in rows:
                row_id = self._write_new(*row)
                if row_id is None:
                    report.duplicates += 1
                else:
                    report.added.append(row_id)
        return report

    def _write_new(self, row: AtomsRow, kvp: dict, data: dict, tries: int = 5) -> int | None:
        """Write one new row; None if its structure is stored already. An integrity error
        counts as a duplicate only when the hash really is there now."""
        for _ in range(tries):
            try:
                return self.db.write(row, kvp, data)
            except _DUPLICATE:
                if self._has_key(row.unique_id):
                    return None
        raise RuntimeError(f"could not store structure {row.unique_id} after {tries} tries")

    def _new_row(self, atoms: Atoms, h: str, split: str, level: str | None) -> tuple:
        kvp = {"status": "pending", "split": split, **_provenance(atoms)}
        if level:
            kvp["level"] = level
        plain = Atoms(
            numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc
        )
        if carries_labels(atoms):
            if not level:
                raise InputError("labelled structures need a level of theory")
            results = atoms.calc.results
            plain.calc = SinglePointCalculator(
                plain,
                energy=float(results["energy"]),
                forces=np.asarray(results["forces"], dtype=float),
            )
            kvp.update(status="labelled", level=level)
            if isinstance(atoms.info.get("label_seconds"), int | float):  # what it cost
                kvp["label_seconds"] = round(float(atoms.info["label_seconds"]), 4)
        row = AtomsRow(atoms2dict(plain))
        row.unique_id, row.ctime, row.user = row_key(h, level), ase.db.core.now(), os.getenv("USER")
        info = {k: v for k, v in atoms.info.items() if isinstance(v, str | int | float)}
        return row, kvp, {"info": info}

    def record(self, row_id: int, result: LabelResult, run: str) -> bool:
        """Write a label outcome of label run ``run`` onto row ``row_id``: labels if
        converged, else ``failed`` with the reason; every attempt of the fallback ladder
        goes into the row's data, and the row's claim ends. Only the claim's owner may
        write (or anyone while the row is unclaimed ``pending``): a result of a run whose
        claim was taken over, or for a row labelled meanwhile, is logged and dropped
        (returns False). A row waiting for one level refuses a label at another."""
        with self._locked([row_id]) as rows:
            old = rows.get(row_id)
            owner = old.get("owner") if old is not None else None
            status = old.get("status") if old is not None else "gone"
            if not (status == "pending" or (status == "running" and run_of(owner) == run)):
                held = f" by {owner}" if status == "running" else ""
                log.warning("row %s is %s%s: result of %s not stored", row_id, status, held, run)
                return False
            self._write_result(old, result, run)
        return True

    def _write_result(self, old: AtomsRow, result: LabelResult, run: str) -> None:
        atoms = old.toatoms()
        kvp = {k: v for k, v in old.key_value_pairs.items() if k not in CLAIM_KEYS}
        level = result.provenance.get("level", "unknown")
        if kvp.get("level") not in (None, level):
            raise ValueError(f"row {old.id} waits for a label at {kvp['level']}, not {level}")
        kvp.update(
            status="labelled" if result.converged else "failed",
            level=level,
            program=result.program,
            label_seconds=round(result.seconds, 3),
            run=run,
        )
        if result.converged:
            atoms.calc = SinglePointCalculator(atoms, energy=result.energy, forces=result.forces)
            kvp["rung"] = result.rung
            kvp.pop("reason", None)
        else:
            atoms.calc = None
            kvp["reason"] = result.reason
        row = AtomsRow(atoms2dict(atoms))
        row.unique_id, row.ctime, row.user = old.unique_id, old.ctime, old.user
        data = dict(old.data)
        data.update(attempts=result.attempts_as_dicts(), dft=result.provenance)
        self.db.write(row, key_value_pairs=kvp, data=data, id=old.id)

    def reset_failed(self, level: str | None = None) -> int:
        """Set every ``failed`` row (at ``level``, or at any) back to ``pending`` (e.g.
        after raising the time limit or changing the ladder); the failure is kept in the
        row's data as ``previous_failure``. Returns how many rows were reset."""
        ids = [
            r.id
            for r in self.db.select(status="failed", include_data=False)
            if level is None or r.get("level") == level
        ]
        reset = 0
        with self._locked(ids) as rows:
            for row in rows.values():
                if row.get("status") != "failed":  # another driver reset it meanwhile
                    continue
                previous = {"reason": row.get("reason"), "attempts": row.data.get("attempts")}
                self.db.update(
                    row.id,
                    delete_keys=["reason"],
                    status="pending",
                    data={"previous_failure": previous},
                )
                reset += 1
        return reset

    # --- claims on rows being labelled ------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, row_ids: Iterable[int]) -> Iterator[dict[int, AtomsRow]]:
        """One transaction in which rows ``row_ids`` are locked against other writers
        (SQLite: the whole file, PostgreSQL: those rows, in id order so that two lockers
        never deadlock), with their contents read after the lock (a missing id is left
        out). Writes through ``self.db`` inside go into this transaction."""
        ids = sorted(set(row_ids))
        self._drop_connection()  # one a Ctrl-C or SIGTERM broke off inside ASE's enter or exit
        with self.db:
            con = self.db.connection
            if isinstance(self.db, _PostgreSQLDatabase):
                cur = con.cursor()
                cur.execute(
                    "SELECT id FROM systems WHERE id = ANY(?) ORDER BY id FOR UPDATE", [ids]
                )
            else:
                con.execute("BEGIN IMMEDIATE")
            rows = {}
            for row_id in ids:
                with contextlib.suppress(KeyError):
                    rows[row_id] = self.db.get(id=row_id)
            yield rows

    def claim(
        self,
        row_ids: Iterable[int],
        owner: Owner,
        lease: float = LEASE_SECONDS,
        level: str | None = None,
        now: float | None = None,
    ) -> ClaimOutcome:
        """Claim the rows ``row_ids`` waiting for a label (at ``level``, when given) for
        ``owner``, for ``lease`` seconds from ``now`` (Unix seconds; default: the clock):
        atomically, so of two drivers claiming one row one gets it. A row is claimed when
        it is ``pending`` or its claim has lapsed (taken over); rows held by a live claim
        of another owner are ``busy``; rows labelled, failed or gone meanwhile are
        ``done``."""
        now = time.time() if now is None else now
        out = ClaimOutcome()
        with self._locked(row_ids) as rows:
            for row_id in sorted(set(row_ids)):
                row = rows.get(row_id)
                status = row.get("status") if row is not None else None
                held = Claim.of(row) if row is not None else None
                at = level is None or row.get("level") in (None, level)
                if status not in ("pending", "running") or not at:
                    out.done.append(row_id)
                    continue
                if held is not None and held.owner != str(owner) and not held.lapsed(now):
                    out.busy.append(row_id)
                    continue
                if held is not None and held.owner != str(owner):
                    out.taken_over.append(row_id)
                    log.warning("row %s: taking over the lapsed claim of %s", row_id, held.owner)
                self.db.update(
                    row_id,
                    status="running",
                    owner=str(owner),
                    owner_machine=owner.machine,
                    heartbeat=now,
                    lease_until=now + lease,
                )
                out.claimed.append(row_id)
        return out

    def renew(
        self, owner: Owner, lease: float = LEASE_SECONDS, now: float | None = None
    ) -> list[int]:
        """Extend every claim ``owner`` still holds to ``lease`` seconds from ``now``;
        returns their row ids (a claim taken over is no longer among them)."""
        now = time.time() if now is None else now
        with self._held_by(owner) as rows:
            for row in rows:
                self.db.update(row.id, heartbeat=now, lease_until=now + lease)
        return [row.id for row in rows]

    def release(self, owner: Owner, row_ids: Iterable[int] | None = None) -> list[int]:
        """Give the claims of ``owner`` (on ``row_ids``, or all it holds) back: those rows
        are ``pending`` again. Returns their ids."""
        with self._held_by(owner, row_ids) as rows:
            for row in rows:
                self.db.update(row.id, delete_keys=list(CLAIM_KEYS), status="pending")
        return [row.id for row in rows]

    @contextlib.contextmanager
    def _held_by(
        self, owner: Owner, row_ids: Iterable[int] | None = None
    ) -> Iterator[list[AtomsRow]]:
        """Locked (see :meth:`_locked`), the rows among ``row_ids`` (default: all that
        name ``owner``) that ``owner`` still claims; none, and no transaction, if none
        are asked for."""
        if row_ids is None:
            row_ids = [r.id for r in self.db.select(owner=str(owner), include_data=False)]
        row_ids = list(row_ids)
        if not row_ids:
            yield []
            return
        with self._locked(row_ids) as rows:
            yield [
                row
                for row in rows.values()
                if row.get("status") == "running" and row.get("owner") == str(owner)
            ]

    # --- reading -------------------------------------------------------------------------

    def waiting(self, level: str | None = None) -> list[tuple[int, Atoms, Claim | None]]:
        """(row id, structure, claim) of every row still waiting for a label: ``pending``
        ones (claim None) and ``running`` ones with their claim; at ``level`` (and those
        waiting for none in particular), or at any level when None."""
        out = []
        for status in ("pending", "running"):
            for r in self.db.select(status=status):
                if level is None or r.get("level") in (None, level):
                    out.append((r.id, r.toatoms(), Claim.of(r)))
        return sorted(out, key=lambda w: w[0])

    def pending(
        self, level: str | None = None, now: float | None = None
    ) -> list[tuple[int, Atoms]]:
        """(row id, structure) of every row waiting for a label that no live driver holds:
        ``pending`` rows and lapsed claims (see :meth:`waiting` for ``level``)."""
        now = time.time() if now is None else now
        return [
            (row_id, atoms)
            for row_id, atoms, held in self.waiting(level)
            if held is None or held.lapsed(now)
        ]

    def claims(self, level: str | None = None) -> list[Claim]:
        """The claims on rows being labelled (at ``level``, see :meth:`waiting`)."""
        return [held for _, _, held in self.waiting(level) if held is not None]

    def structures(self, include_failed: bool = False) -> list[Atoms]:
        """Every stored structure, labelled or not (failed labels only if asked)."""
        return [
            r.toatoms() for r in self.db.select() if include_failed or r.get("status") != "failed"
        ]

    def count(self, **selection) -> int:
        return self.db.count(**selection)

    def levels(self) -> set[str]:
        """Levels of theory of the labelled rows."""
        return {r.get("level", "unknown") for r in self.db.select(status="labelled")}

    def labelled(self, split: str | None = None, level: str | None = None) -> list[Atoms]:
        """Labelled structures (energy in eV, forces in eV/Å on a SinglePointCalculator),
        of one ``split`` and one ``level`` of theory when given, with their key-value
        pairs and ``hash`` in ``atoms.info``."""
        selection = {"status": "labelled"} | ({"split": split} if split else {})
        selection |= {"level": level} if level else {}
        images = []
        for r in self.db.select(**selection):
            atoms = r.toatoms()
            atoms.info.update(r.key_value_pairs, hash=hash_of(r.unique_id))
            images.append(atoms)
        return images

    def label_seconds(
        self, round_: int | None = None, up_to_round: int | None = None, level: str | None = None
    ) -> dict:
        """Wall time of the labels: ``{"labelled": n, "failed": n, "seconds": [...]}``
        with one entry per row that recorded a time (labelled or failed), of round
        ``round_`` only or of rounds up to ``up_to_round``, else of every row; at one
        ``level`` when given."""
        out: dict = {"labelled": 0, "failed": 0, "seconds": []}
        for r in self.db.select(include_data=False, **({"level": level} if level else {})):
            k = r.get("round", 0) or 0
            if (round_ is not None and k != round_) or (
                up_to_round is not None and k > up_to_round
            ):
                continue
            status = r.get("status")
            if status in ("labelled", "failed"):
                out[status] += 1
            if r.get("label_seconds") is not None:
                out["seconds"].append(float(r.get("label_seconds")))
        return out

    def export(self, path: str | Path, split: str | None = None, level: str | None = None) -> int:
        """Write the labelled rows at one level to an extended XYZ file (each frame keeps
        its ``level``); returns how many. ``level`` may be left out only when the store
        holds one level."""
        level = self.pick_level(level)
        images = self.labelled(split, level=level)
        ase.io.write(path, images, format="extxyz")
        return len(images)

    def pick_level(self, level: str | None) -> str | None:
        """``level`` checked against the labelled levels, or the only one when None; an
        :class:`InputError` when the store has several and none was picked."""
        levels = self.levels()
        if level is None:
            if len(levels) > 1:
                raise InputError(
                    f"{self.safe_url} holds labels at several levels "
                    f"({', '.join(sorted(levels))}): pick one with --level"
                )
            return next(iter(levels), None)
        if level not in levels:
            known = ", ".join(sorted(levels)) or "none"
            raise InputError(f"{self.safe_url} has no labels at level {level!r} (it has {known})")
        return level

    def summary_rows(self) -> list[dict]:
        """One small dict per row for statistics and plots: status, split, round, level,
        source, reason, energy per atom (eV), largest atomic force (eV/Å), rung and DFT
        seconds (None where not labelled)."""
        out = []
        for r in self.db.select(include_data=False):
            labelled = r.get("status") == "labelled"
            out.append(
                {
                    **{
                        k: r.get(k)
                        for k in (
                            "status",
                            "split",
                            "round",
                            "level",
                            "source",
                            "reason",
                            "rung",
                            "label_seconds",
                        )
                    },
                    "energy_per_atom": r.energy / r.natoms if labelled else None,
                    "max_force": float(np.linalg.norm(r.forces, axis=1).max())
                    if labelled
                    else None,
                }
            )
        return out

    def stats(self, rows: list[dict] | None = None) -> dict:
        """Counts by status, split, round, level and source; failure reasons; label ranges.
        ``rows`` from :meth:`summary_rows` if the caller has them already."""
        rows = self.summary_rows() if rows is None else rows
        out: dict = {
            "rows": len(rows),
            **{
                key: Counter(str(r[key] if r[key] is not None else "-") for r in rows)
                for key in ("status", "split", "round", "level", "source")
            },
            "reasons": Counter(r["reason"] for r in rows if r["status"] == "failed"),
        }
        labelled = [r for r in rows if r["status"] == "labelled"]
        if labelled:
            e = [r["energy_per_atom"] for r in labelled]
            fmax = [r["max_force"] for r in labelled]
            secs = [r["label_seconds"] for r in labelled if r["label_seconds"] is not None]
            out.update(
                energy_per_atom=(min(e), max(e)),
                max_force=(min(fmax), max(fmax)),
                label_seconds=float(np.mean(secs)) if secs else None,
            )
        return out


for _name, _method in list(vars(DatasetStore).items()):  # every public operation
    if callable(_method) and not _name.startswith("_"):
        setattr(DatasetStore, _name, _reconnecting(_method))
