"""Training, ensembles (sequential, MPI ranks, Parsl apps), fine-tuning, calibration."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from sapis.dft.executors import ExecutorConfig
from sapis.errors import InputError
from sapis.store import DatasetStore
from sapis.surrogate.calibration import fit_calibration, miscalibration_area
from sapis.surrogate.ensemble import Ensemble
from sapis.surrogate.ensemble_training import bootstrap, train_ensemble
from sapis.surrogate.settings import TrainingConfig
from sapis.surrogate.training import TrainRecord, train_member

VENV_BIN = Path(sys.executable).parent


def test_fifty_epochs_of_training_cut_the_held_out_force_error_threefold(
    trained_ensemble, malonaldehyde
):
    folder, manifest = trained_ensemble
    test = malonaldehyde[1][:200]
    pred = Ensemble.load(folder).predict(test)
    for k in range(3):
        record = TrainRecord.load(folder / f"member-{k}")
        assert record.n_train == 100 and record.steps == 50 * 20 and len(record.history) == 50
        assert record.stopped_by == "epoch budget" and not record.converged
        errors = [np.abs(pred.forces[i][k] - a.get_forces()).mean() for i, a in enumerate(test)]
        held_out = float(np.mean(errors))
        assert record.initial_val_force_mae / held_out >= 3.0, (
            record.initial_val_force_mae,
            held_out,
        )
    assert manifest.members[0].flops > 0


def test_members_differ_in_seed_and_bootstrap(trained_ensemble):
    folder, manifest = trained_ensemble
    seeds = [m.seed for m in manifest.members]
    assert len(set(seeds)) == 3
    texts = [(folder / f"member-{k}" / "train.xyz").read_text() for k in range(3)]
    assert len(set(texts)) == 3


def test_spread_ranks_held_out_errors(trained_ensemble, malonaldehyde):
    folder, manifest = trained_ensemble
    test = malonaldehyde[1][:300]
    pred = Ensemble.load(folder).predict(test)
    errors = [
        np.linalg.norm(pred.force_mean(i) - a.get_forces(), axis=1).max()
        for i, a in enumerate(test)
    ]
    rho = stats.spearmanr(pred.max_force_dev, errors).statistic
    assert rho > 0.3, rho
    cal = manifest.calibration
    assert cal["n_structures"] == 30
    assert cal["miscalibration_area"] < cal["miscalibration_area_raw"]
    assert (folder / "calibration.png").stat().st_size > 10_000


def test_fine_tuning_starts_at_the_parent_error(trained_ensemble, malonaldehyde, tmp_path):
    folder, manifest = trained_ensemble
    train = malonaldehyde[0]
    grown = train[:100] + train[200:230]
    training = TrainingConfig(size="xs", members=1, max_epochs=2)
    child = train_ensemble(
        grown, train[500:530], tmp_path / "child", training, parent=folder, progress=False
    )
    record = TrainRecord.load(tmp_path / "child" / "member-0")
    assert record.parent == str(folder / "member-0" / "best.ckpt")
    assert record.size == "xs" and child.size == "xs"
    parent_val = manifest.members[0].val_force_mae  # same val split
    assert record.initial_val_force_mae == pytest.approx(parent_val, rel=1e-5)
    assert record.n_train == 130


def test_refitted_shifts_take_a_model_to_another_level_without_an_energy_offset(
    trained_ensemble, malonaldehyde
):
    from ase.calculators.singlepoint import SinglePointCalculator

    from sapis.surrogate.training import refit_energy_shifts

    folder, _ = trained_ensemble
    frames = malonaldehyde[1][:40]
    other_level = []  # the same structures at a "level" 50 eV per atom away
    for atoms in frames:
        copy = atoms.copy()
        energy = atoms.get_potential_energy() - 50.0 * len(atoms)
        copy.calc = SinglePointCalculator(copy, energy=energy, forces=atoms.get_forces())
        other_level.append(copy)
    reference = np.array([a.get_potential_energy() for a in other_level])
    ensemble = Ensemble.load(folder)
    before = ensemble.predict(other_level).energies[0] - reference
    shifts = refit_energy_shifts(ensemble.models[0], other_level, r_max=ensemble.r_max)
    after = ensemble.predict(other_level).energies[0] - reference
    assert abs(before.mean()) > 400.0  # 9 atoms × 50 eV
    assert abs(after.mean()) < 1e-3 and after.std() == pytest.approx(before.std(), rel=1e-4)
    assert set(shifts) == {"C", "H", "O"}


def test_a_different_size_trains_from_scratch(trained_ensemble, malonaldehyde, tmp_path):
    folder, _ = trained_ensemble
    train = malonaldehyde[0]
    training = TrainingConfig(members=1, max_epochs=1)
    child = train_ensemble(
        train[:20],
        train[500:505],
        tmp_path / "bigger",
        training,
        parent=folder,
        size="s",
        progress=False,
    )
    record = TrainRecord.load(tmp_path / "bigger" / "member-0")
    assert child.size == "s" and record.parent is None
    assert record.parameters > TrainRecord.load(folder / "member-0").parameters


def test_bad_training_data_is_refused_before_training(malonaldehyde, tmp_path):
    train = malonaldehyde[0]
    unlabelled = train[1].copy()
    unlabelled.calc = None
    with pytest.raises(InputError, match="train structure 1 has no energy"):
        train_member([train[0], unlabelled], train[2:3], tmp_path, TrainingConfig())
    with pytest.raises(InputError, match="at least 1 labelled validation"):
        train_member(train[:5], [], tmp_path, TrainingConfig())
    with pytest.raises(InputError, match="not an ensemble folder"):
        train_ensemble(train[:5], train[5:6], tmp_path / "x", TrainingConfig(), parent=tmp_path)
    assert not any(tmp_path.iterdir())


def test_bootstrap_is_a_seeded_resample(malonaldehyde):
    images = malonaldehyde[0][:50]
    a, b, c = bootstrap(images, 1), bootstrap(images, 1), bootstrap(images, 2)
    assert [id(x) for x in a] == [id(x) for x in b] != [id(x) for x in c]
    assert len({id(x) for x in a}) < 50  # with replacement


@pytest.fixture
def small_store(tmp_path, malonaldehyde):
    train = malonaldehyde[0]
    db = str(tmp_path / "data.db")
    store = DatasetStore(db)
    for atoms in train[:12]:
        atoms.info["level"] = "PBE/def2-svp"
    store.add(train[:10], split="train", level="PBE/def2-svp")
    store.add(train[500:503], split="val", level="PBE/def2-svp")
    return db


def test_mpiexec_trains_members_in_parallel(small_store, tmp_path):
    out = tmp_path / "mpi"
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}")
    proc = subprocess.run(
        [
            str(VENV_BIN / "mpiexec"),
            "-n",
            "2",
            str(VENV_BIN / "sapis"),
            "train",
            "--db",
            small_store,
            "--out",
            str(out),
            "--size",
            "xs",
            "--members",
            "2",
            "--max-epochs",
            "10",
            "--no-package",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("calibration on 3 val structures") == 1  # rank 0 reports
    records = [TrainRecord.load(out / f"member-{k}") for k in range(2)]
    starts = [r.started_at for r in records]
    ends = [r.started_at + r.wall_seconds for r in records]
    assert max(starts) < min(ends), "the two members did not train at the same time"
    assert len(json.loads((out / "ensemble.json").read_text())["members"]) == 2


def test_parsl_apps_train_members(malonaldehyde, tmp_path):
    from sapis.dft.executors import parsl_config

    train = malonaldehyde[0]
    config = parsl_config(ExecutorConfig(profile="local", workers=2), 1, tmp_path / "runinfo")
    training = TrainingConfig(size="xs", members=2, max_epochs=2)
    manifest = train_ensemble(
        train[:10], train[500:503], tmp_path / "ens", training, parsl_config=config, progress=False
    )
    assert [m.steps for m in manifest.members] == [4, 4]
    assert Ensemble.load(tmp_path / "ens").member_count == 2


def test_calibration_recovers_a_known_scale_and_power():
    rng = np.random.default_rng(0)
    spread = [rng.uniform(0.05, 1.0, 9) for _ in range(300)]
    scaled = [rng.normal(size=(9, 3)) * (2.0 * u / np.sqrt(3))[:, None] for u in spread]
    cal = fit_calibration(spread, scaled, np.ones(300), rng.normal(size=300) * 3.0)
    assert cal.force_power == 1.0 and cal.force_scale == pytest.approx(2.0, rel=0.05)
    assert cal.energy_scale == pytest.approx(3.0, rel=0.1)
    assert cal.miscalibration_area < 0.02 < cal.miscalibration_area_raw
    powered = [rng.normal(size=(9, 3)) * (0.5 * np.sqrt(u) / np.sqrt(3))[:, None] for u in spread]
    cal = fit_calibration(spread, powered, np.ones(300), np.ones(300))
    assert cal.force_power == pytest.approx(0.5, abs=0.05)
    assert cal.force_scale == pytest.approx(0.5, rel=0.1)
    assert cal.spearman_atoms > 0.2


def test_miscalibration_area_bounds():
    rng = np.random.default_rng(1)
    errors = rng.normal(size=20000)
    assert miscalibration_area(errors, np.ones_like(errors)) < 0.01
    assert miscalibration_area(errors, np.full_like(errors, 100.0)) > 0.4
