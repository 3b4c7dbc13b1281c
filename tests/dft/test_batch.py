"""Batch labelling through Parsl: results written as they finish, retries, kill -9."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import ase.io
import yaml
from conftest import jiggled
from parsl import python_app
from parsl.dataflow.dflow import DataFlowKernel

from sapis.dft.batch import label_pending
from sapis.dft.executors import ExecutorConfig, parsl_config
from sapis.dft.labeller import PySCFLabeller
from sapis.store import DatasetStore


def write_config(tmp_path, database, executor, dft=None):
    config = {
        "system": {"charge": 0, "multiplicity": 1},
        "dft": dft or {"xc": "PBE", "basis": "sto-3g", "density_fit": False},
        "executor": executor,
        "database": str(database),
    }
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_threads_profile_writes_each_result_as_it_finishes(tmp_path, cheap):
    store = DatasetStore(tmp_path / "data.db")
    store.add(jiggled("H2O", 4))
    seen = []

    def on_result(row_id, result):  # by now the row must already be in the database
        seen.append(DatasetStore(store.url).db.get(id=row_id).status)

    summary = label_pending(
        store,
        PySCFLabeller(cheap),
        ExecutorConfig(profile="threads", workers=2, run_dir=tmp_path / "runinfo"),
        on_result=on_result,
    )
    assert summary.labelled == 4 and summary.failed == 0 and not summary.errors
    assert seen == ["labelled"] * 4
    assert label_pending(store, PySCFLabeller(cheap)).submitted == 0


def test_failures_are_stored_as_failed_and_not_retried_by_a_rerun(tmp_path, cheap):
    store = DatasetStore(tmp_path / "data.db")
    store.add(jiggled("H2O", 2))
    hopeless = cheap.model_copy(update={"max_cycle": 1, "ladder": cheap.ladder[:1]})
    executor = ExecutorConfig(profile="threads", run_dir=tmp_path / "runinfo")
    summary = label_pending(store, PySCFLabeller(hopeless), executor)
    assert summary.failed == 2
    assert store.count(status="failed") == 2 and store.count(status="labelled") == 0
    assert label_pending(store, PySCFLabeller(cheap), executor).submitted == 0


def _die_once(marker: str) -> int:
    import os

    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)  # the worker process dies mid-task
    return os.getpid()


def test_local_profile_retries_a_task_whose_worker_died(tmp_path):
    # worker_init makes this test module importable on the worker
    here = os.path.dirname(__file__)  # and conftest.py's folder above it
    executor = ExecutorConfig(
        profile="local",
        workers=1,
        retries=1,
        worker_init=f"export PYTHONPATH={here}:{os.path.dirname(here)}",
    )
    config = parsl_config(executor, 1, tmp_path)
    dfk = DataFlowKernel(config)
    try:
        app = python_app(_die_once, data_flow_kernel=dfk)
        assert app(str(tmp_path / "marker")).result(timeout=120) > 0
    finally:
        dfk.cleanup()


def test_local_profile_labels_through_the_cli(tmp_path):
    ase.io.write(tmp_path / "in.xyz", jiggled("H2O", 3) + jiggled("NH3", 1))
    config = write_config(tmp_path, tmp_path / "data.db", {"profile": "local", "workers": 2})
    out = subprocess.run(
        [sys.executable, "-m", "sapis", "label", str(tmp_path / "in.xyz"), "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "labelled" in out.stdout and "4 new" in out.stdout, out.stdout + out.stderr
    assert DatasetStore(tmp_path / "data.db").count(status="labelled") == 4
    assert (tmp_path / "runinfo").is_dir()  # Parsl's logs beside the database


def _labelled_so_far(database) -> int:
    """Labelled rows of a database another process may still be creating (ASE's SQLite
    schema is written in steps: a reader can catch it half made)."""
    if not database.exists():
        return 0
    try:
        return DatasetStore(database).count(status="labelled")
    except (TypeError, sqlite3.OperationalError):
        return 0


def test_kill_9_during_a_batch_then_rerun_loses_nothing_and_repeats_nothing(tmp_path):
    n = 10
    ase.io.write(tmp_path / "in.xyz", jiggled("H2O", n, seed=5))
    database = tmp_path / "data.db"
    config = write_config(
        tmp_path,
        database,
        {"profile": "threads", "workers": 1},
        dft={"basis": "def2-svp", "density_fit": True},
    )
    cmd = [sys.executable, "-m", "sapis", "label", str(tmp_path / "in.xyz"), "-c", str(config)]
    first = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 240
    done = 0
    while done < 3:
        assert time.monotonic() < deadline and first.poll() is None, "first run ended too soon"
        time.sleep(0.2)
        done = _labelled_so_far(database)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    store = DatasetStore(database)
    before = {row.id: (row.run, row.energy) for row in store.db.select(status="labelled")}
    assert 3 <= len(before) < n
    assert store.count() == n  # every structure was stored before labelling began

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    rows = list(DatasetStore(database).db.select())
    assert len(rows) == n and all(r.status == "labelled" for r in rows)
    for row in rows:
        if row.id in before:  # finished before the kill: kept as it was, not recomputed
            assert (row.run, row.energy) == before[row.id]
    runs = {r.run for r in rows}
    assert len(runs) == 2
    relabelled = sum(1 for r in rows if r.id not in before)
    assert relabelled == n - len(before)
    assert f"{n} already stored" in second.stdout
    # the killed run's claims (its process is gone) were taken over at once, not after
    # their lease
    assert "taken over from a stopped run" in second.stdout
    assert all(r.get("owner") is None for r in rows)
