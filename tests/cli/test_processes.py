"""Nothing left running: SIGTERM or SIGKILL of `sapis label` ends Parsl's interchange and
worker pool (a campaign's Prefect server: tests/flows/test_prefect_server.py); the
watchdog spares processes under a batch system's step and leaves by itself after a
normal end."""

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import ase.io
import pytest
import yaml
from conftest import jiggled
from process_tree import MARK, Tree, run_and_kill

from sapis.store import DatasetStore

VENV_BIN = Path(sys.executable).parent


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_label_leaves_no_parsl_interchange_or_worker_pool(tmp_path, sig):
    ase.io.write(tmp_path / "in.xyz", jiggled("H2O", 8, seed=3))
    config = {
        "system": {"charge": 0, "multiplicity": 1},
        "dft": {"xc": "PBE", "basis": "def2-svp", "density_fit": True},  # ~1 s labels
        "executor": {"profile": "local", "workers": 2},
        "database": str(tmp_path / "data.db"),
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    cmd = [VENV_BIN / "sapis", "label", str(tmp_path / "in.xyz"), "-c", str(tmp_path / "c.yaml")]

    def ready(tree):  # the interchange and the pool's workers are up
        return tree.has("interchange") and tree.has("multiprocessing.spawn")

    log = tmp_path / "stderr.txt"
    code, tree, left = run_and_kill(cmd, os.environ, ready, sig, log)
    assert tree.has("process_worker_pool") and tree.has("sapis.processes")
    assert not left, f"still running after {sig.name}: {left}"
    if sig == signal.SIGTERM:  # unwound like Ctrl-C, with its own status and message
        err = log.read_text()
        assert code == 143 and "stopped by SIGTERM" in err and "Traceback" not in err, err
    assert DatasetStore(tmp_path / "data.db").count() == 8  # nothing stored was lost


PARENT = """
import subprocess, sys
from sapis.processes import guard_children
guard_children(grace=5)
subprocess.Popen(["sleep", "600"])
subprocess.Popen(["sleep", "600"], start_new_session=True)
if len(sys.argv) > 1:  # a batch system's step: its processes belong to the batch system
    subprocess.Popen([sys.argv[1], "-c", "sleep 600; true"])
print("ready", flush=True)
sys.stdin.readline()  # then end normally
"""


def _start_parent(*args: str) -> tuple[subprocess.Popen, Tree]:
    mark = uuid.uuid4().hex
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT, *args],
        env={**os.environ, MARK: mark},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "ready\n"
    tree = Tree(proc.pid, mark)
    processes, sleeps = len(args) * 2 + 3, len(args) + 2
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # a shell may not have forked and exec'd its sleep yet
        tree.scan()
        alive = tree.alive().values()
        if len(alive) == processes and sum(c == "sleep 600 " for c in alive) == sleeps:
            break
        time.sleep(0.1)
    return proc, tree


def test_the_watchdog_ends_what_a_killed_process_started_but_not_a_batch_step(tmp_path):
    step = tmp_path / "slurmstepd"  # a shell whose command name is slurmstepd
    shutil.copy("/bin/bash", step)
    proc, tree = _start_parent(str(step))
    try:
        assert tree.has("sapis.processes") and len(tree.alive()) == 5, tree.commands()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        left = tree.wait_until_at_most(2)
        # the batch step and its sleep are left; the sleeps and the watchdog are gone
        assert sorted(left.values()) == [f"{step} -c sleep 600; true ", "sleep 600 "], left
    finally:
        tree.kill_left()


def test_the_watchdog_leaves_by_itself_after_a_normal_end():
    proc, tree = _start_parent()
    try:
        assert tree.has("sapis.processes") and len(tree.alive()) == 3, tree.commands()
        proc.communicate("\n", timeout=60)  # ends normally, leaving its sleeps behind
        assert proc.returncode == 0
        assert not tree.wait_until_at_most(0)  # the watchdog ended them, then itself
    finally:
        tree.kill_left()


POOL = """
import sys, time
from pathlib import Path
from parsl import python_app
from parsl.dataflow.dflow import DataFlowKernel
from sapis.dft.executors import ExecutorConfig, parsl_config

run_dir = Path(sys.argv[1])
executor = ExecutorConfig(profile="local", workers=1, run_dir=run_dir)
dfk = DataFlowKernel(parsl_config(executor, 1, run_dir))
assert python_app(lambda: 1, data_flow_kernel=dfk)().result() == 1
print("ready", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_worker_pool_that_lost_its_interchange_stops_by_itself(tmp_path):
    """As on a batch node, where the watchdog leaves the pool to the batch system: once
    the interchange is gone, the pool exits after Parsl's heartbeat_threshold (60 s)."""
    mark = uuid.uuid4().hex
    proc = subprocess.Popen(
        [sys.executable, "-c", POOL, str(tmp_path)],
        env={**os.environ, MARK: mark},
        stdout=subprocess.PIPE,
        text=True,
    )
    tree = Tree(proc.pid, mark)
    try:
        assert proc.stdout.readline() == "ready\n"
        tree.scan()
        pools = [p for p, cmd in tree.alive().items() if "process_worker_pool" in cmd]
        interchange = [p for p, cmd in tree.alive().items() if "interchange" in cmd]
        assert len(pools) == 1 and len(interchange) == 1, tree.commands()
        os.kill(interchange[0], signal.SIGKILL)
        deadline = time.monotonic() + 110  # Parsl's default threshold is 120 s
        while pools[0] in tree.alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert pools[0] not in tree.alive(), "the pool outlived its interchange"
    finally:
        proc.kill()
        proc.wait()
        tree.kill_left()


def test_claims_are_given_back_after_an_interrupt_broke_off_a_transaction(tmp_path):
    """Ctrl-C or SIGTERM can land inside ASE's own transaction enter or exit (after its
    commit, before it lets the connection go): giving the claims back must still work."""
    from sapis.claims import Owner

    store = DatasetStore(tmp_path / "data.db")
    store.add(jiggled("H2O", 2))
    owner = Owner("run-interrupted")
    assert store.claim([1, 2], owner).claimed == [1, 2]
    store.db.__enter__()  # a transaction whose exit never ran
    assert sorted(store.release(owner)) == [1, 2]
    assert store.count(status="pending") == 2
