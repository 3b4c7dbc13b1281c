"""Claims on pending rows: two drivers on one store never label a row twice."""

import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter

import ase.io
from conftest import jiggled
from test_batch import write_config
from typer.testing import CliRunner

from sapis.claims import Owner
from sapis.cli import app
from sapis.dft.batch import AUDIT_ENV, label_pending
from sapis.dft.executors import ExecutorConfig
from sapis.dft.labeller import PySCFLabeller
from sapis.store import DatasetStore


def audited(path) -> Counter:
    """How many labels each row id started, from the audit file."""
    if not path.exists():
        return Counter()
    return Counter(int(line.split()[0]) for line in path.read_text().splitlines())


def test_two_label_runs_at_once_label_each_row_once(tmp_path, db_url):
    n = 12  # ~0.2 s a label: each run alone would still be labelling when the other starts
    ase.io.write(tmp_path / "in.xyz", jiggled("H2O", n, seed=11))
    config = write_config(tmp_path, db_url, {"profile": "threads", "workers": 1})
    audit = tmp_path / "audit.log"
    cmd = [sys.executable, "-m", "sapis", "label", str(tmp_path / "in.xyz"), "-c", str(config)]
    env = {**os.environ, AUDIT_ENV: str(audit)}
    runs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in runs]
    assert [p.returncode for p in runs] == [0, 0], outs
    rows = list(DatasetStore(db_url).db.select())
    assert len(rows) == n and all(r.status == "labelled" for r in rows), outs
    started = audited(audit)
    assert sum(started.values()) == n, (started, outs)  # paid once per row
    assert set(started) == {r.id for r in rows} and set(started.values()) == {1}
    assert all(r.get("owner") is None for r in rows)  # no claim left behind


def test_label_skips_the_rows_another_run_holds_and_says_so(tmp_path, cheap):
    ase.io.write(tmp_path / "in.xyz", jiggled("H2O", 3, seed=12))
    database = tmp_path / "data.db"
    store = DatasetStore(database)
    store.add(ase.io.read(tmp_path / "in.xyz", ":"), level=PySCFLabeller(cheap).level)
    other = Owner("run-other", machine="another machine")
    store.claim([2, 3], other)
    config = write_config(tmp_path, database, {"profile": "threads"})
    result = CliRunner().invoke(app, ["label", str(tmp_path / "in.xyz"), "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert f"2 rows are being labelled by another run ({other}): skipped" in result.output
    assert re.search(r"skipped \(another run labels them\)\s*│\s*2", result.output)
    assert [r.status for r in store.db.select()] == ["labelled", "running", "running"]


def test_a_batch_waits_for_the_rows_another_driver_holds(tmp_path, cheap):
    store = DatasetStore(tmp_path / "data.db")
    store.add(jiggled("H2O", 3, seed=9))
    labeller = PySCFLabeller(cheap)
    other = Owner("run-other", machine="another machine")
    store.claim([2], other)  # held for ten minutes: the other driver labels it below
    store.claim([3], other, lease=1.0)  # a driver that stopped: its claim lapses
    executor = ExecutorConfig(profile="threads", run_dir=tmp_path / "runinfo")

    def other_driver() -> None:  # labels row 2 once this batch is waiting for it
        mine = DatasetStore(store.url)
        while mine.count(status="labelled") < 2:
            time.sleep(0.05)
        mine.record(2, labeller.label([mine.db.get(id=2).toatoms()])[0], "run-other")

    thread = threading.Thread(target=other_driver)
    thread.start()
    summary = label_pending(store, labeller, executor, lease=3.0)
    thread.join()
    assert (summary.labelled, summary.taken_over, summary.elsewhere, summary.busy) == (2, 1, 1, 0)
    runs = [r.run for r in store.db.select()]
    assert runs == [summary.run, "run-other", summary.run]


def test_the_claims_of_a_running_batch_are_renewed(tmp_path, cheap):
    store = DatasetStore(tmp_path / "data.db")
    store.add(jiggled("H2O", 3, seed=13))
    executor = ExecutorConfig(profile="threads", workers=1, run_dir=tmp_path / "runinfo")
    seen = []

    def on_result(row_id, result) -> None:  # row 2 is claimed (queued) while row 1 ends
        if seen:
            return
        watcher = DatasetStore(store.url)
        first = watcher.db.get(id=2).heartbeat
        deadline = time.monotonic() + 120
        while (row := watcher.db.get(id=2)).heartbeat == first:  # the next beat comes
            assert time.monotonic() < deadline, "no heartbeat renewed the claim"
            time.sleep(0.05)
        seen.append(row.lease_until - row.heartbeat)
        # a second driver, when the first lease would have run out, finds it held
        assert watcher.claim([2], Owner("run-other"), now=first + 1.5).busy == [2]

    summary = label_pending(store, PySCFLabeller(cheap), executor, on_result, lease=1.5)
    assert seen == [1.5] and summary.labelled == 3
