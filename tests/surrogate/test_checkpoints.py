"""Checkpoints are vetted before nequip unpickles them: a crafted ``best.ckpt`` (a pickle
that builds an object, or a saved config naming another ``_target_``) is refused with a
clear error before any code of it runs, in every command that loads one."""

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import DATA
from typer.testing import CliRunner

from sapis.cli import app
from sapis.errors import InputError
from sapis.io import read_rmd17
from sapis.store import DatasetStore
from sapis.surrogate.checkpoints import ALLOWED_TARGETS, TRUST_ENV, saved_targets, vet_checkpoint
from sapis.surrogate.ensemble import Ensemble

runner = CliRunner()


class _Evil:
    """Unpickling this runs a shell command (what a crafted pickle does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _craft(source: Path, dest: Path, marker: Path, where: str = "model") -> Path:
    """A copy of the real checkpoint ``source`` at ``dest`` whose saved config runs
    ``touch marker`` through ``os.system`` when nequip builds it."""
    checkpoint = _load(source)
    hp = checkpoint["hyper_parameters"]
    evil = {"_target_": "os.system", "command": f"touch {marker}"}
    if where == "model":
        hp["model"] = evil
    elif where == "transforms":
        hp["info_dict"]["data"]["transforms"].append(evil)
    elif where == "param_groups":
        hp["optimizer"]["param_groups"] = {"_target_": "os.system", "_args_": ["true"]}
    elif where == "training_module":
        hp["info_dict"]["training_module"]["_target_"] = "os.system"
    torch.save(checkpoint, dest)
    return dest


@pytest.fixture
def crafted(tiny_ensemble, tmp_path):
    """A copy of the tiny ensemble whose member 0 runs ``touch marker`` on loading."""
    folder = tmp_path / "crafted"
    shutil.copytree(tiny_ensemble, folder)
    marker = tmp_path / "marker"
    _craft(tiny_ensemble / "member-0" / "best.ckpt", folder / "member-0" / "best.ckpt", marker)
    return folder, marker


def test_real_checkpoints_pass_and_carry_only_targets_our_training_writes(tiny_ensemble):
    from sapis.surrogate.model import model_config
    from sapis.surrogate.settings import TrainingConfig
    from sapis.surrogate.training import _datamodule_config, _module_config

    for k in range(2):
        path = tiny_ensemble / f"member-{k}" / "best.ckpt"
        vet_checkpoint(path)
        assert {t for _, t in saved_targets(_load(path))} <= ALLOWED_TARGETS
    # every _target_ our training writes is allowed, and nothing else is
    training = TrainingConfig(size="xs")
    images = read_rmd17(DATA / "rmd17_malonaldehyde_train_01.npz")[:3]
    parent = {"_target_": "nequip.model.ModelFromCheckpoint", "checkpoint_path": "x"}
    written = {
        "info": {"data": _datamodule_config(Path("."), training, ["H", "C", "O"])},
        "fresh": _module_config(model_config(training, images, seed=0), training),
        "fine-tune": _module_config(parent, training),
    }
    assert {t for _, t in saved_targets(written)} == ALLOWED_TARGETS


@pytest.mark.parametrize("where", ["model", "transforms", "param_groups", "training_module"])
def test_a_config_target_outside_the_allowlist_is_refused(tiny_ensemble, tmp_path, where):
    marker = tmp_path / "marker"
    path = _craft(tiny_ensemble / "member-0" / "best.ckpt", tmp_path / "best.ckpt", marker, where)
    with pytest.raises(InputError, match=r"os\.system") as err:
        vet_checkpoint(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_a_pickle_that_builds_an_object_is_refused_naming_the_global(tmp_path):
    marker = tmp_path / "marker"
    zipped, legacy, new = (tmp_path / f"{name}.ckpt" for name in ("zip", "legacy", "new"))
    torch.save({"state_dict": {}, "x": _Evil(marker)}, zipped)
    legacy.write_bytes(pickle.dumps({"x": _Evil(marker)}, protocol=2))
    new.write_bytes(pickle.dumps({"x": _Evil(marker)}, protocol=5))
    for path in (zipped, legacy, new):
        with pytest.raises(InputError, match="refused") as err:
            vet_checkpoint(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
        if path != new:  # protocol 5 is refused at its first opcode, before the global
            assert "would build posix.system" in str(err.value)
    assert not marker.exists()
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(InputError, match="not a checkpoint of tensors and plain data"):
        vet_checkpoint(garbage)


def test_parent_checkpoints_are_vetted_through_the_chain(tiny_ensemble, tmp_path):
    marker = tmp_path / "marker"
    real = tiny_ensemble / "member-0" / "best.ckpt"
    evil_parent = _craft(real, tmp_path / "parent.ckpt", marker)

    def child(name: str, parent: Path) -> Path:
        checkpoint = _load(real)
        checkpoint["hyper_parameters"]["model"] = {
            "_target_": "nequip.model.ModelFromCheckpoint",
            "checkpoint_path": str(parent),
        }
        torch.save(checkpoint, tmp_path / name)
        return tmp_path / name

    grandchild = child("grandchild.ckpt", child("child.ckpt", evil_parent))
    with pytest.raises(InputError, match=r"os\.system") as err:
        vet_checkpoint(grandchild)
    assert str(evil_parent) in str(err.value) and "child.ckpt" in str(err.value)
    vet_checkpoint(child("good.ckpt", real))  # a chain to a real checkpoint passes
    loop = child("loop.ckpt", tmp_path / "loop.ckpt")
    with pytest.raises(InputError, match="refers back to itself"):
        vet_checkpoint(loop)
    with pytest.raises(InputError, match="missing"):
        vet_checkpoint(child("orphan.ckpt", tmp_path / "nothing.ckpt"))
    assert not marker.exists()


def test_ensemble_load_refuses_crafted_members_and_paths_outside_the_folder(crafted, tmp_path):
    folder, marker = crafted
    with pytest.raises(InputError, match=r"os\.system"):
        Ensemble.load(folder)
    assert not marker.exists()
    manifest = json.loads((folder / "ensemble.json").read_text())
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(folder / "member-1" / "best.ckpt", outside / "best.ckpt")
    for bad in ("../outside/best.ckpt", str(outside / "best.ckpt"), "member-1/model.nequip.zip"):
        manifest["members"][0]["checkpoint"] = bad
        (folder / "ensemble.json").write_text(json.dumps(manifest))
        with pytest.raises(InputError, match="inside the ensemble folder"):
            Ensemble.load(folder)


def test_trusting_checkpoints_skips_the_vetting_with_a_warning(crafted, monkeypatch, capsys):
    folder, marker = crafted
    monkeypatch.setenv(TRUST_ENV, "1")
    vet_checkpoint(folder / "member-0" / "best.ckpt")  # vetting only: nothing is built
    err = capsys.readouterr().err
    assert "not vetted" in err and TRUST_ENV in err and "best.ckpt" in err
    assert not marker.exists()


# --- every command that loads a checkpoint refuses a crafted one (exit 2) ---------------


def test_predict_refuses_a_crafted_checkpoint(crafted, tmp_path, malonaldehyde):
    import ase.io

    folder, marker = crafted
    ase.io.write(tmp_path / "in.xyz", malonaldehyde[1][:2])
    result = runner.invoke(
        app, ["predict", str(folder), str(tmp_path / "in.xyz"), str(tmp_path / "out.xyz")]
    )
    assert result.exit_code == 2, result.output
    assert "os.system" in result.output and "best.ckpt" in result.output
    assert not marker.exists() and not (tmp_path / "out.xyz").exists()


def test_train_from_refuses_a_crafted_parent(crafted, tmp_path, malonaldehyde):
    folder, marker = crafted
    train, _ = malonaldehyde
    db = str(tmp_path / "md.db")
    DatasetStore(db).add(train[:4], split="train", level="PBE/def2-svp")
    DatasetStore(db).add(train[500:502], split="val", level="PBE/def2-svp")
    out = tmp_path / "child"
    args = ["train", "--db", db, "--out", str(out), "--from", str(folder), "--max-epochs", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "os.system" in result.output and "best.ckpt" in result.output
    assert not marker.exists() and not out.exists()


def test_generate_refuses_a_crafted_guide(crafted, tmp_path, malonaldehyde):
    from sapis.generator.settings import GeneratorConfig
    from sapis.generator.training import train_generator

    folder, marker = crafted
    gen = tmp_path / "gen"
    train_generator(malonaldehyde[0][:20], gen, GeneratorConfig(hidden=8, layers=1), max_steps=1)
    out = tmp_path / "s.extxyz"
    result = runner.invoke(
        app, ["generate", str(gen), str(out), "--n", "2", "--guide", str(folder)]
    )
    assert result.exit_code == 2, result.output
    assert "os.system" in result.output
    assert not marker.exists() and not out.exists()
