import numpy as np
import pytest

from sapis import units


def test_constants_match_codata():
    assert pytest.approx(27.211386, rel=1e-7) == units.HARTREE_TO_EV
    assert pytest.approx(0.52917721, rel=1e-7) == units.BOHR_TO_ANGSTROM
    assert pytest.approx(0.0433641, rel=1e-5) == units.KCAL_PER_MOL_TO_EV


def test_gradient_becomes_force_with_opposite_sign_in_ev_per_angstrom():
    grad = np.array([[0.0, 0.0, 1.0], [0.5, 0.0, 0.0]])  # Hartree/Bohr
    forces = units.gradient_to_forces(grad)
    assert forces[0, 2] == pytest.approx(-27.211386 / 0.52917721, rel=1e-6)
    assert forces[1, 0] == pytest.approx(-0.5 * 51.42208619, rel=1e-6)


def test_energy_conversions():
    assert units.hartree_to_ev(-1.0) == pytest.approx(-27.211386, rel=1e-7)
    assert units.kcal_per_mol_to_ev(23.0605) == pytest.approx(1.0, rel=1e-4)
