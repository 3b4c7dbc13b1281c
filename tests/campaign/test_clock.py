"""A round's stage clock counts the time of every attempt, a killed one's included."""

import json
import os
import signal
import subprocess
import sys
import time

from sapis.campaign.clock import StageClock

CHILD = """
import sys, time
from sapis.campaign.clock import StageClock
clock = StageClock(sys.argv[1], flush_seconds=0.05).new_attempt()
with clock.stage("explore"):
    pass
with clock.stage("train"):
    while True:
        time.sleep(0.01)
"""


def _saved(path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def test_a_killed_attempts_time_is_kept_and_summed_with_the_next(tmp_path):
    path = tmp_path / "clock.json"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        saved = _saved(path)
        if saved.get("stage") == "train" and saved["seconds"].get("train", 0.0) >= 0.3:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    killed = _saved(path)
    assert killed["stage"] == "train" and killed["attempts"] == 1
    assert killed["seconds"]["train"] >= 0.3

    clock = StageClock(path).new_attempt()
    assert clock.attempts == 2 and _saved(path)["attempts"] == 2
    started = time.perf_counter()
    with clock.stage("train"):
        time.sleep(0.05)
    spent = time.perf_counter() - started
    assert clock.seconds["train"] >= killed["seconds"]["train"] + 0.05
    assert clock.seconds["train"] <= killed["seconds"]["train"] + spent + 0.01
    assert clock.seconds["explore"] == killed["seconds"]["explore"]
    saved = _saved(path)
    assert saved["stage"] is None and saved["seconds"] == clock.seconds


def test_the_stage_running_is_on_disk_while_it_runs(tmp_path):
    clock = StageClock(tmp_path / "clock.json").new_attempt()
    with clock.stage("select"):
        assert _saved(tmp_path / "clock.json")["stage"] == "select"
    assert _saved(tmp_path / "clock.json")["stage"] is None
