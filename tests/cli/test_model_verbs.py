"""``sapis train``, ``predict``, ``train-generator`` and ``generate`` from the command
line: real trainings of tiny models, and bad input refused before any training."""

import json
import math
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
from sapis.generator.kinds import load_generator
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


TINY_FLOW = "{blocks: 1, hidden: 8, layers: 1, bins: 4, density_draws: 4}"


def test_cli_trains_a_flow_and_samples_it_with_its_log_density(malonaldehyde, tmp_path):
    db = str(tmp_path / "data.db")
    DatasetStore(db).add([Atoms(a.numbers, a.positions) for a in malonaldehyde[0][:30]])
    config = tmp_path / "campaign.yaml"
    config.write_text(
        f"database: data.db\ngenerator: {{kind: flow, batch_size: 8, flow: {TINY_FLOW}}}\n"
    )
    gen = tmp_path / "flow"
    train = ["train-generator", "--db", db, "--out", str(gen), "-c", str(config)]
    result = runner.invoke(app, [*train, "--train-steps", "5", "--energy-weight", "0.1",
                                 "--check", "10"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "training the flow generator of C3H4O2 on 30 structures for 5 steps" in result.output
    assert "NLL per dof" in result.output and "E(samples) eV" in result.output
    assert "10 samples:" in result.output and (gen / "bond_lengths.png").is_file()
    meta = json.loads((gen / "generator.json").read_text())
    assert meta["kind"] == "flow" and meta["config"]["flow"]["energy_weight"] == 0.1
    assert math.isfinite(meta["trainings"][0]["energy"])  # the penalty was on

    out = tmp_path / "s.extxyz"
    result = runner.invoke(
        app, ["generate", str(gen), str(out), "--n", "6", "--keep-invalid", "--log-density"]
    )
    assert result.exit_code == 0, result.output
    samples = ase.io.read(out, ":")
    assert len(samples) == 6 and all(a.info["source"] == "generator" for a in samples)
    logq = [a.info["log_density"] for a in samples]
    assert np.isfinite(logq).all()
    # the very numbers the flow gives its own samples
    expected = [a.info["log_density"] for a in load_generator(gen).sample(6, density=True)]
    np.testing.assert_allclose(logq, expected, rtol=0, atol=1e-6)
    ensemble = tmp_path / "ensemble"
    result = runner.invoke(app, ["generate", str(gen), str(out), "--guide", str(ensemble)])
    assert result.exit_code == 2 and "cannot be steered" in result.output

    # --kind overrides the config's; a diffusion model has no density to write
    diffusion = tmp_path / "diffusion"
    result = runner.invoke(
        app, ["train-generator", "--db", db, "--out", str(diffusion), "-c", str(config),
              "--kind", "diffusion", "--train-steps", "3", "--check", "0"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "diffusion generator" in result.output and "w·‖R(x̂0)‖² Å²" in result.output
    assert json.loads((diffusion / "generator.json").read_text())["kind"] == "diffusion"
    result = runner.invoke(app, ["generate", str(diffusion), str(out), "--log-density"])
    assert result.exit_code == 2 and "has no tractable density" in result.output


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--energy-weight", "0.1"], "--energy-weight is the flow's force-field penalty"),
        (["--kind", "flow", "--prior-weight", "0.1"], "--prior-weight is the diffusion"),
        (["--kind", "gan"], "kind: Input should be 'diffusion' or 'flow'"),
        (["--kind", "flow", "--energy-weight", "-1"], "energy_weight"),
    ],
)
def test_train_generator_refuses_options_of_the_other_kind(tmp_path, options, message):
    db = str(tmp_path / "data.db")
    DatasetStore(db).add([molecule("H2O") for _ in range(3)])
    out = tmp_path / "gen"
    result = runner.invoke(app, ["train-generator", "--db", db, "--out", str(out), *options])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()
