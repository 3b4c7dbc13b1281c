"""A full disk mid-round: a clear error, and after space is freed the same command
resumes, with no label lost and no half-written file taken for a finished stage."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_campaign_flows import write_config

from sapis.campaign.folder import CampaignFolder
from sapis.errors import no_space
from sapis.store import DatasetStore
from sapis.surrogate.ensemble import Ensemble
from sapis.surrogate.manifest import EnsembleManifest

VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def small_disk(tmp_path):
    """A 32 MB filesystem of its own (tmpfs, mounted as root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Write to ``disk`` until it is full; the file that filled it."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                continue
    return filler


def _stage(folder: Path, r: int) -> str | None:
    try:
        return json.loads((folder / f"round-{r:03d}" / "clock.json").read_text())["stage"]
    except (OSError, ValueError, KeyError):
        return None


def test_a_full_disk_mid_training_stops_clearly_and_a_rerun_resumes(small_disk, tmp_path):
    config = write_config(small_disk, stop={"max_rounds": 1})
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    folder = small_disk / "campaign"
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [VENV_BIN / "sapis", "campaign", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 900
    filler = None
    while time.monotonic() < deadline and proc.poll() is None:
        if _stage(folder, 1) == "train":
            before = {
                r.unique_id: (r.energy, r.get("run"))
                for r in DatasetStore(folder / "data.db").db.select(status="labelled")
            }
            filler = fill(small_disk)
            break
        time.sleep(0.05)
    assert filler is not None, "the run never reached round 1's training"
    assert proc.wait(600) == 1
    lines = [line for line in stderr.read_text().splitlines() if line.strip()]
    assert lines[-1].startswith("error: no space left on the disk"), lines[-5:]
    assert "run the same command again" in lines[-1]

    filler.unlink()
    again = subprocess.run(
        [VENV_BIN / "sapis", "campaign", str(config)], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr[-3000:]
    records = CampaignFolder(folder).records()
    assert [r.round for r in records] == [0, 1] and records[1].attempts == 2
    store = DatasetStore(folder / "data.db")
    after = {r.unique_id: (r.energy, r.get("run")) for r in store.db.select(status="labelled")}
    assert all(after[k] == v for k, v in before.items())  # nothing lost or labelled again
    for r in records:  # every finished stage's files are whole
        ensemble = folder / f"round-{r.round:03d}" / "ensemble"
        assert EnsembleManifest.read(ensemble).calibrated
        assert Ensemble.load(ensemble).member_count == 2


def test_a_full_disk_is_told_apart_from_other_errors(tmp_path):
    full = OSError(28, "No space left on device", str(tmp_path / "x.ckpt"))
    message = no_space(RuntimeError("saving failed"), [tmp_path]) or ""
    assert message == ""  # plenty of space here, and no errno: another error
    wrapped = RuntimeError("checkpoint failed")
    wrapped.__cause__ = full
    message = no_space(wrapped, [tmp_path])
    assert message.startswith(f"no space left on the disk writing {tmp_path / 'x.ckpt'}")
    assert no_space(ValueError("bad value"), [tmp_path]) is None
