"""The dataset store: an ASE database (SQLite file or PostgreSQL URL).

Each row holds a structure, its labels (energy in eV, forces in eV/Å, through ASE's own
columns), and key-value pairs: ``status`` (pending | labelled | failed), ``reason`` for
failures, ``level`` of theory, ``round``, ``split`` (train | val | test), provenance
(``source``, ``temperature``, ``parent``), ``uncertainty`` at selection time, and label
details (``rung``, ``label_seconds``, ``program``, ``run``).

A structure may carry labels at several levels of theory (a cheap GFN2-xTB label beside
a DFT one): a row is one (structure, level). Its ``unique_id`` is ``hash:level`` (see
:func:`row_key`), so the database itself refuses a second copy of a structure at one
level, and labelling is idempotent even with several writers at once. A pending row
names the level it waits for; rows stored without a level (older stores, or pending
rows added with none) keep the bare hash and count as stored at every level until
labelled. Readers pick a level; nothing mixes levels silently.
"""

import os
import sqlite3
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import psycopg2
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.db.row import AtomsRow, atoms2dict
from ase_db_backends.postgresql import Connection as PostgresConnection
from ase_db_backends.postgresql import PostgreSQLDatabase
from pydantic import Field, model_validator

from sapis.config import Strict, is_url, redact
from sapis.errors import InputError
from sapis.io import carries_labels, label_problem
from sapis.labels import LabelResult
from sapis.structures import structure_hash

STATUSES = ("pending", "labelled", "failed")
SPLITS = ("train", "val", "test")
PROVENANCE_KEYS = ("source", "round", "temperature", "parent", "uncertainty")
_DUPLICATE = (sqlite3.IntegrityError, psycopg2.IntegrityError)


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
    key); ``currval`` is this session's own. And failed transactions can roll back."""

    def _connect(self):
        return _Connection(psycopg2.connect(self.filename, **connect_options(self.filename)))

    def get_last_id(self, cur) -> int:
        cur.execute("SELECT currval('systems_id_seq')")
        return int(cur.fetchone()[0])


class DatasetStore:
    """Rows of structures and labels in an ASE database at ``url``.

    ``url`` is a SQLite file path (its folder is created) or a ``postgresql://`` URL.
    """

    def __init__(self, url: str | Path) -> None:
        self.url = str(url)
        if not is_url(self.url):
            Path(self.url).parent.mkdir(parents=True, exist_ok=True)
        try:
            # serial: every MPI rank talks to the database itself; no lock file, which a
            # killed process would leave behind (SQLite and PostgreSQL lock on their own)
            if self.url.startswith(("postgresql://", "postgres://")):
                self.db = _PostgreSQLDatabase(self.url, serial=True, use_lock_file=False)
            else:
                self.db = ase.db.connect(self.url, serial=True, use_lock_file=False)
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

    def record(self, row_id: int, result: LabelResult, run: str) -> None:
        """Write a label outcome onto row ``row_id``: labels if converged, else ``failed``
        with the reason. Every attempt of the fallback ladder goes into the row's data.
        A row waiting for one level refuses a label at another."""
        old = self.db.get(id=row_id)
        atoms = old.toatoms()
        kvp = old.key_value_pairs
        level = result.provenance.get("level", "unknown")
        if kvp.get("level") not in (None, level):
            raise ValueError(f"row {row_id} waits for a label at {kvp['level']}, not {level}")
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
        self.db.write(row, key_value_pairs=kvp, data=data, id=row_id)

    def reset_failed(self, level: str | None = None) -> int:
        """Set every ``failed`` row (at ``level``, or at any) back to ``pending`` (e.g.
        after raising the time limit or changing the ladder); the failure is kept in the
        row's data as ``previous_failure``. Returns how many rows were reset."""
        failed = list(self.db.select(status="failed", **({"level": level} if level else {})))
        with self.db:
            for row in failed:
                previous = {"reason": row.get("reason"), "attempts": row.data.get("attempts")}
                self.db.update(
                    row.id,
                    delete_keys=["reason"],
                    status="pending",
                    data={"previous_failure": previous},
                )
        return len(failed)

    # --- reading -------------------------------------------------------------------------

    def pending(self, level: str | None = None) -> list[tuple[int, Atoms]]:
        """(row id, structure) of every row still waiting for a label: at ``level`` (and
        those waiting for none in particular), or at any level when None."""
        return [
            (r.id, r.toatoms())
            for r in self.db.select(status="pending")
            if level is None or r.get("level") in (None, level)
        ]

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
