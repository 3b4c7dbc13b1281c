"""Model sizes, energy shifts, symmetry, batching, the calculator and packaging."""

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from scipy.spatial.transform import Rotation

from sapis.errors import InputError
from sapis.surrogate.calculator import EnsembleCalculator
from sapis.surrogate.ensemble import Ensemble
from sapis.surrogate.model import (
    average_neighbors,
    build_model,
    energy_shifts,
    model_config,
    parameter_count,
)
from sapis.surrogate.settings import TrainingConfig
from sapis.surrogate.sizes import SIZES


def test_size_ladder_grows(malonaldehyde):
    train, _ = malonaldehyde
    counts = [
        parameter_count(build_model(model_config(TrainingConfig(size=s), train[:5], seed=0)))
        for s in SIZES
    ]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    assert counts[0] < 5_000


def test_energy_shifts_fit_per_element_energies():
    true = {"H": -13.6, "C": -1030.0, "O": -2040.0}
    images = []
    for name in ("H2O", "CH4", "CO2", "C2H6", "H2O2", "CH3OH"):
        atoms = molecule(name)
        e = sum(true[s] for s in atoms.get_chemical_symbols())
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=np.zeros((len(atoms), 3)))
        images.append(atoms)
    shifts = energy_shifts(images, ["H", "C", "O"])
    assert shifts == pytest.approx(true, abs=1e-3)
    with pytest.raises(InputError, match="lacks O"):
        energy_shifts(images, ["H", "C", "O"], isolated={"H": -13.6, "C": -1030.0})


def test_average_neighbours_counts_pairs_within_cutoff():
    water = molecule("H2O")
    assert average_neighbors([water], 1.2) == pytest.approx(4 / 3)  # two O–H bonds
    assert average_neighbors([water], 5.0) == pytest.approx(2.0)


def _permute_rotate(atoms, rng):
    perm = rng.permutation(len(atoms))
    rot = Rotation.random(random_state=1).as_matrix()
    moved = atoms[perm]
    moved.positions = moved.positions @ rot.T + np.array([3.0, -1.5, 7.0])
    return moved, perm, rot


def test_predictions_are_equivariant_in_float64(tiny_ensemble, malonaldehyde):
    ensemble = Ensemble.load(tiny_ensemble)
    rng = np.random.default_rng(0)
    images = malonaldehyde[1][:4]
    moved, perms, rots = [], [], []
    for atoms in images:
        m, p, r = _permute_rotate(atoms, rng)
        moved.append(m)
        perms.append(p)
        rots.append(r)
    a, b = ensemble.predict(images), ensemble.predict(moved)
    assert np.abs(a.energy_std).max() > 1e-4  # the members differ, so this is a real test
    np.testing.assert_allclose(b.energy_mean, a.energy_mean, atol=1e-5, rtol=0)
    np.testing.assert_allclose(b.energy_std, a.energy_std, atol=1e-5, rtol=0)
    np.testing.assert_allclose(b.max_force_dev, a.max_force_dev, atol=1e-5, rtol=0)
    for i in range(len(images)):
        expected = a.force_mean(i)[perms[i]] @ rots[i].T
        np.testing.assert_allclose(b.force_mean(i), expected, atol=1e-5, rtol=0)
        np.testing.assert_allclose(b.force_std(i), a.force_std(i)[perms[i]], atol=1e-5, rtol=0)


def test_batched_prediction_equals_one_by_one(tiny_ensemble, malonaldehyde):
    ensemble = Ensemble.load(tiny_ensemble)
    images = [*malonaldehyde[1][:7], molecule("H2O")[[0, 1]] + molecule("CH4")[[0]]]
    images[-1].positions[2] += [3.0, 0, 0]
    batched = ensemble.predict(images, batch_size=4)
    for i, atoms in enumerate(images):
        single = ensemble.predict([atoms], batch_size=1)
        np.testing.assert_allclose(batched.energies[:, i], single.energies[:, 0], atol=1e-10)
        np.testing.assert_allclose(batched.forces[i], single.forces[0], atol=1e-10)


def test_unknown_element_is_refused(tiny_ensemble):
    ensemble = Ensemble.load(tiny_ensemble)
    with pytest.raises(InputError, match=r"\['N'\].*knows H, C, O"):
        ensemble.predict([molecule("NH3")])


def test_calculator_gives_mean_and_uncertainty(tiny_ensemble, malonaldehyde):
    ensemble = Ensemble.load(tiny_ensemble)
    atoms = malonaldehyde[1][0].copy()
    pred = ensemble.predict([atoms])
    atoms.calc = EnsembleCalculator(ensemble)
    assert atoms.get_potential_energy() == pytest.approx(pred.energy_mean[0], abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), pred.force_mean(0), atol=1e-10)
    results = atoms.calc.results
    assert results["max_force_dev"] == pytest.approx(pred.max_force_dev[0])
    assert results["forces_std"].shape == (9,)
    assert results["max_force_dev_calibrated"] > 0


def test_annotate_writes_info_and_arrays(tiny_ensemble, malonaldehyde):
    ensemble = Ensemble.load(tiny_ensemble)
    images = [a.copy() for a in malonaldehyde[1][:3]]
    pred = ensemble.predict(images)
    pred.annotate(images)
    for i, atoms in enumerate(images):
        assert atoms.get_potential_energy() == pytest.approx(pred.energy_mean[i])
        assert atoms.info["max_force_dev"] == pytest.approx(atoms.arrays["force_std"].max())
        assert atoms.arrays["force_std_calibrated"].shape == (9,)


def test_packaged_members_predict_what_checkpoints_predict(tiny_ensemble, malonaldehyde):
    from nequip.data import AtomicDataDict
    from nequip.model.saved_models.load_utils import load_saved_model

    from sapis.surrogate.export import package_members

    packages = package_members(tiny_ensemble)
    ensemble = Ensemble.load(tiny_ensemble)
    assert [p.name for p in packages] == ["model.nequip.zip"] * 2
    images = malonaldehyde[1][:3]
    batch = AtomicDataDict.batched_from_list(ensemble.graphs(images))
    pred = ensemble.predict(images)
    for k, path in enumerate(packages):
        model = load_saved_model(str(path)).eval()
        out = model(dict(batch))
        np.testing.assert_allclose(
            out[AtomicDataDict.TOTAL_ENERGY_KEY].detach().numpy().ravel(),
            pred.energies[k],
            atol=1e-8,
        )
        forces = out[AtomicDataDict.FORCE_KEY].detach().numpy()
        np.testing.assert_allclose(forces[:9], pred.forces[0][k], atol=1e-8)


def test_the_uncertainty_bias_lowers_the_energy_by_the_variance_and_its_forces_match(
    tiny_ensemble, malonaldehyde
):
    ensemble = Ensemble.load(tiny_ensemble)
    atoms = malonaldehyde[1][0].copy()
    pred = ensemble.predict([atoms])
    atoms.calc = EnsembleCalculator(ensemble, bias=50.0)
    expected = pred.energy_mean[0] - 50.0 * pred.energy_std[0] ** 2
    assert atoms.get_potential_energy() == pytest.approx(expected, abs=1e-10)
    forces, h = atoms.get_forces(), 1e-4
    for i, axis in [(0, 0), (4, 2)]:
        energies = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[i, axis] += sign * h
            moved.calc = EnsembleCalculator(ensemble, bias=50.0)
            energies.append(moved.get_potential_energy())
        assert forces[i, axis] == pytest.approx(-(energies[0] - energies[1]) / (2 * h), abs=1e-5)
    with pytest.raises(InputError, match="bias"):
        EnsembleCalculator(ensemble, bias=-1.0)
