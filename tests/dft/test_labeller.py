import numpy as np
import pytest
from ase.build import molecule

from sapis.dft import check_for_dft, label
from sapis.dft.settings import Rung
from sapis.errors import InputError


def test_forces_are_minus_the_energy_gradient_in_ev_per_angstrom(cheap):
    water = molecule("H2O")
    water.positions[1] += [0.0, 0.05, 0.03]  # off equilibrium: forces of ~1 eV/Å
    result = label(water, cheap)
    assert result.converged and result.rung == "default"
    h = 1e-3
    plus, minus = water.copy(), water.copy()
    plus.positions[1, 1] += h
    minus.positions[1, 1] -= h
    numeric = -(label(plus, cheap).energy - label(minus, cheap).energy) / (2 * h)
    assert result.forces[1, 1] == pytest.approx(numeric, abs=2e-3)
    assert abs(result.forces[1, 1]) > 0.1
    assert result.energy == pytest.approx(-2047.0, abs=1.0)  # PBE/STO-3G water, eV
    assert result.provenance["method"] == "RKS" and result.provenance["program"] == "pyscf"


def test_a_triplet_runs_unrestricted(cheap):
    result = label(molecule("O2"), cheap, multiplicity=3)
    singlet = label(molecule("O2"), cheap, multiplicity=1)
    assert result.converged and result.provenance["method"] == "UKS"
    assert result.energy < singlet.energy  # O2 is a ground-state triplet


def test_ladder_recovers_when_the_first_rung_fails(cheap):
    # three DIIS cycles are not enough at conv_tol 1e-9; the damped rung has 150
    settings = cheap.model_copy(update={"max_cycle": 3})
    result = label(molecule("H2O"), settings)
    reference = label(molecule("H2O"), cheap)
    assert result.converged and result.rung == "damped"
    assert [a.converged for a in result.attempts] == [False, True]
    assert result.attempts[0].cycles == 3
    assert result.energy == pytest.approx(reference.energy, abs=1e-6)
    np.testing.assert_allclose(result.forces, reference.forces, atol=1e-4)


def test_a_structure_that_fails_every_rung_has_no_numbers_and_a_reason(cheap):
    ladder = [
        Rung(name="short", max_cycle=2),
        Rung(name="short_newton", max_cycle=1, second_order=True),
    ]
    result = label(molecule("H2O"), cheap.model_copy(update={"ladder": ladder}))
    assert not result.converged
    assert result.energy is None and result.forces is None
    assert [a.rung for a in result.attempts] == ["short", "short_newton"]
    assert "did not converge on any rung: short" in result.reason


def test_the_time_limit_stops_a_label(cheap):
    result = label(molecule("CH3CH2OH"), cheap.model_copy(update={"time_limit": 0.05}))
    assert not result.converged and "time limit of 0.05 s" in result.reason


@pytest.mark.parametrize(
    ("charge", "multiplicity", "message"),
    [(0, 2, "cannot fit 10 electrons"), (1, 1, "cannot fit 9 electrons"), (10, 1, "leaves 0")],
)
def test_impossible_charge_and_multiplicity_are_refused(charge, multiplicity, message):
    with pytest.raises(InputError, match=message):
        check_for_dft(molecule("H2O"), charge, multiplicity, "def2-svp")


def test_a_basis_without_the_element_is_refused():
    atoms = molecule("H2O")
    atoms.numbers[0] = 86  # radon: not in STO-3G
    atoms.positions[0] += 0.5
    with pytest.raises(InputError, match="no functions for Rn"):
        check_for_dft(atoms, 0, 1, "sto-3g")
