"""A killed training keeps what finished: members with a record are not trained again."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import DATA

from sapis.surrogate.ensemble_training import train_ensemble
from sapis.surrogate.manifest import EnsembleManifest
from sapis.surrogate.settings import TrainingConfig
from sapis.surrogate.training import TrainRecord

VENV_BIN = Path(sys.executable).parent


def _fingerprints(folder: Path, k: int) -> tuple:
    member = folder / f"member-{k}"
    return tuple((p.name, p.stat().st_mtime_ns) for p in sorted(member.glob("*.ckpt")))


def test_sapis_train_killed_between_members_resumes_without_training_the_first_again(tmp_path):
    db = tmp_path / "data.db"
    subprocess.run(
        [VENV_BIN / "sapis", "db", "import", DATA / "rmd17_malonaldehyde_test_01.npz", "--db", db],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "ensemble"
    command = [
        VENV_BIN / "sapis", "train", "--db", db, "--out", out,
        "--size", "xs", "--members", "3", "--max-epochs", "3", "--no-package",
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "member-0" / "record.json").is_file():
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert (out / "member-0" / "record.json").is_file(), "member 0 never finished"
    assert not EnsembleManifest.finished(out)
    first = TrainRecord.load(out / "member-0")
    kept = _fingerprints(out, 0)

    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = EnsembleManifest.read(out)
    assert manifest.calibrated and len(manifest.members) == 3
    assert _fingerprints(out, 0) == kept  # not trained again: the same files, untouched
    assert TrainRecord.load(out / "member-0") == first
    assert manifest.members[0].wall_seconds == first.wall_seconds
    for k in (1, 2):
        assert TrainRecord.load(out / f"member-{k}").steps == manifest.members[k].steps > 0


def test_a_member_of_another_job_in_the_folder_is_trained_again(tmp_path, malonaldehyde):
    train, _ = malonaldehyde
    folder = tmp_path / "ensemble"
    training = TrainingConfig(size="xs", members=2, max_epochs=1)
    train_ensemble(train[:8], train[500:503], folder, training, progress=False)
    before = [_fingerprints(folder, k) for k in range(2)]
    (folder / "ensemble.json").unlink()  # as if killed before the manifest was written

    same = train_ensemble(train[:8], train[500:503], folder, training, progress=False)
    assert [_fingerprints(folder, k) for k in range(2)] == before  # both reused
    assert same.calibrated

    (folder / "ensemble.json").unlink()
    other = train_ensemble(train[:9], train[500:503], folder, training, progress=False)
    assert other.n_train == 9
    for k in range(2):  # other data: every member trained again
        assert _fingerprints(folder, k) != before[k]
        assert TrainRecord.load(folder / f"member-{k}").n_train == 9
