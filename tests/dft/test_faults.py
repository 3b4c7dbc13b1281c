"""Label faults survived: a Parsl worker killed mid-label (retried, or given back when
Parsl gives up), and a driver stopped by Ctrl-C (its claims given back)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import pytest
from ase.build import molecule
from conftest import jiggled
from test_batch import write_config

from sapis.dft.batch import AUDIT_ENV, label_pending
from sapis.dft.executors import ExecutorConfig
from sapis.dft.labeller import PySCFLabeller
from sapis.store import DatasetStore

#: PBE/STO-3G ethanol: ~2 s a label, long enough to be caught running
SLOW = {"xc": "PBE", "basis": "sto-3g", "density_fit": False}


def started(audit: Path) -> list[tuple[int, int]]:
    """(row id, pid) of every label started so far, from the audit file."""
    if not audit.exists():
        return []
    return [tuple(map(int, line.split()[:2])) for line in audit.read_text().splitlines()]


def wait_for(condition, proc: subprocess.Popen, what: str, limit: float = 300):
    """Poll ``condition`` until it gives something true while ``proc`` runs."""
    deadline = time.monotonic() + limit
    while not (value := condition()):
        assert proc.poll() is None, f"the driver ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {what} after {limit} s"
        time.sleep(0.02)
    return value


def parent_command(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    ppid = next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:"))
    return Path(f"/proc/{ppid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def kill_worker_mid_label(tmp_path, retries: int):
    """Start `sapis label` on the local profile with one worker, SIGKILL that worker while
    it labels the only row; returns (driver process, its output, audit file, database)."""
    ase.io.write(tmp_path / "in.xyz", [molecule("CH3CH2OH")])
    database = tmp_path / "data.db"
    executor = {"profile": "local", "workers": 1, "retries": retries}
    config = write_config(tmp_path, database, executor, dft=SLOW)
    audit = tmp_path / "audit.log"
    driver = subprocess.Popen(
        [sys.executable, "-m", "sapis", "label", str(tmp_path / "in.xyz"), "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, AUDIT_ENV: str(audit)},
    )
    try:
        ((row_id, pid),) = wait_for(lambda: started(audit), driver, "label")
        row = DatasetStore(database).db.get(id=row_id)
        assert row.status == "running" and row.owner.endswith(f":{driver.pid}")
        assert "process_worker_pool" in parent_command(pid)  # a Parsl worker
        os.kill(pid, signal.SIGKILL)
        out = driver.communicate(timeout=300)[0]
    finally:
        if driver.poll() is None:
            driver.kill()
    return driver, out, audit, database


def test_a_worker_killed_mid_label_is_retried_and_the_row_labelled_once(tmp_path):
    driver, out, audit, database = kill_worker_mid_label(tmp_path, retries=1)
    assert driver.returncode == 0, out
    (first, _), (again, _) = runs = started(audit)  # the killed label and its retry
    assert first == again and runs[0][1] != runs[1][1]  # on a new worker process
    (row,) = DatasetStore(database).db.select()
    assert row.status == "labelled" and row.get("owner") is None
    assert "row 1 left pending" not in out


def test_a_label_whose_worker_died_past_its_retries_is_given_back_and_rerun(tmp_path):
    driver, out, audit, database = kill_worker_mid_label(tmp_path, retries=0)
    assert driver.returncode == 1, out
    assert "row 1 left pending: WorkerLost" in out.replace("\n", " "), out
    (row,) = DatasetStore(database).db.select()
    assert row.status == "pending" and row.get("owner") is None  # the claim was given back
    config = write_config(tmp_path, database, {"profile": "threads"}, dft=SLOW)
    rerun = subprocess.run(
        [sys.executable, "-m", "sapis", "label", str(tmp_path / "in.xyz"), "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, AUDIT_ENV: str(audit)},
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "1 to label" in rerun.stdout
    (row,) = DatasetStore(database).db.select()
    assert row.status == "labelled" and len(started(audit)) == 2


def test_ctrl_c_gives_the_unfinished_claims_back(tmp_path, cheap):
    store = DatasetStore(tmp_path / "data.db")
    store.add(jiggled("H2O", 6, seed=8))
    executor = ExecutorConfig(profile="threads", workers=2, run_dir=tmp_path / "runinfo")

    def interrupt(row_id, result):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        label_pending(store, PySCFLabeller(cheap), executor, on_result=interrupt)
    assert store.count(status="labelled") == 1  # stored before the interrupt
    assert store.count(status="running") == 0  # every other claim was given back
    assert store.count(status="pending") == 5
    assert all(r.get("owner") is None for r in store.db.select())
    summary = label_pending(store, PySCFLabeller(cheap), executor)
    assert summary.labelled == 5 and summary.taken_over == 0
