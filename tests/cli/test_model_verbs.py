"""``sapis train``, ``predict``, ``train-generator`` and ``generate`` from the command
line: real trainings of tiny models, and bad input refused before any training."""

import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from conftest import DATA
from typer.testing import CliRunner

from sapis.cli import app
from sapis.store import DatasetStore

runner = CliRunner()


def config_file(tmp_path, training: str) -> Path:
    path = tmp_path / "campaign.yaml"
    path.write_text(f"database: data.db\ntraining: {training}\n")
    return path


@pytest.fixture
def rmd17_store(tmp_path):
    from sapis.io import read_rmd17

    frames = read_rmd17(DATA / "rmd17_malonaldehyde_train_01.npz")
    db = str(tmp_path / "md.db")
    store = DatasetStore(db)
    store.add(frames[:8], split="train", level="PBE/def2-svp")
    store.add(frames[500:503], split="val", level="PBE/def2-svp")
    return db


def test_train_and_predict_from_the_command_line(rmd17_store, tmp_path):
    config = config_file(tmp_path, "{size: xs, members: 2, max_epochs: 2}")
    out = tmp_path / "ens"
    result = runner.invoke(
        app, ["train", "--db", rmd17_store, "--out", str(out), "-c", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert "2 × xs" in result.output and "calibration on 3 val structures" in result.output
    assert (out / "member-1" / "model.nequip.zip").is_file()
    ase.io.write(tmp_path / "in.xyz", DatasetStore(rmd17_store).labelled("val"))
    result = runner.invoke(
        app, ["predict", str(out), str(tmp_path / "in.xyz"), str(tmp_path / "out.extxyz")]
    )
    assert result.exit_code == 0, result.output
    back = ase.io.read(tmp_path / "out.extxyz", ":")
    assert len(back) == 3
    assert back[0].info["max_force_dev"] > 0 and "max_force_dev_calibrated" in back[0].info
    assert back[0].arrays["force_std"].shape == (9,)
    assert back[0].get_forces().shape == (9, 3)

    again = runner.invoke(app, ["train", "--db", rmd17_store, "--out", str(out)])
    assert again.exit_code == 2 and "already holds an ensemble" in again.output


def test_train_refuses_bad_input_before_training(rmd17_store, tmp_path):
    empty = str(tmp_path / "empty.db")
    DatasetStore(empty)
    out = tmp_path / "ens"
    result = runner.invoke(app, ["train", "--db", empty, "--out", str(out)])
    assert result.exit_code == 2 and "at least 2 labelled training" in result.output
    result = runner.invoke(app, ["train", "--db", rmd17_store, "--out", str(out), "--size", "xxl"])
    assert result.exit_code == 2 and "unknown model size 'xxl'" in result.output
    extra = molecule("CH3CHO")
    extra.calc = SinglePointCalculator(extra, energy=-1.0, forces=np.zeros((7, 3)))
    DatasetStore(rmd17_store).add([extra], split="train", level="PBE/sto-3g")
    result = runner.invoke(app, ["train", "--db", rmd17_store, "--out", str(out)])
    assert result.exit_code == 2 and "mixes levels of theory" in result.output
    assert not out.exists()


def test_predict_refuses_a_folder_without_an_ensemble(tmp_path):
    ase.io.write(tmp_path / "in.xyz", molecule("H2O"))
    result = runner.invoke(
        app, ["predict", str(tmp_path), str(tmp_path / "in.xyz"), str(tmp_path / "out.xyz")]
    )
    assert result.exit_code == 2 and "not an ensemble folder" in result.output


def test_cli_trains_on_a_store_and_generates(malonaldehyde, tmp_path):
    sapis = Path(sys.executable).parent / "sapis"
    db = tmp_path / "data.db"
    DatasetStore(db).add([Atoms(a.numbers, a.positions) for a in malonaldehyde[0][:60]])
    out = subprocess.run(
        [sapis, "train-generator", "--db", str(db), "--out", str(tmp_path / "gen"),
         "--train-steps", "60", "--check", "20"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "on 60 structures" in out.stdout and "20 samples:" in out.stdout
    assert (tmp_path / "gen" / "bond_lengths.png").stat().st_size > 10_000
    out = subprocess.run(
        [sapis, "generate", str(tmp_path / "gen"), str(tmp_path / "s.extxyz"), "--n", "12",
         "--keep-invalid"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    samples = ase.io.read(tmp_path / "s.extxyz", ":")
    assert len(samples) == 12 and all(a.info["source"] == "generator" for a in samples)
    assert "12 samples in" in out.stdout
    out = subprocess.run(
        [sapis, "generate", str(tmp_path / "nothing"), str(tmp_path / "t.extxyz")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 2 and "no generator here" in out.stderr
