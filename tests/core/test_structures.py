import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule

from sapis.errors import InputError
from sapis.structures import check_structure, structure_hash


def moved(atoms: Atoms, seed: int = 0) -> Atoms:
    """Same structure: atoms permuted, rotated about an arbitrary axis, translated."""
    rng = np.random.default_rng(seed)
    other = atoms[rng.permutation(len(atoms))]
    other.rotate(rng.uniform(0, 360), rng.normal(size=3), center="COM")
    other.translate(rng.normal(size=3) * 10)
    return other


@pytest.mark.parametrize("name", ["H2O", "CH3CH2OH", "C6H6", "CH4"])
def test_hash_is_invariant_to_order_rotation_and_translation(name):
    atoms = molecule(name)
    assert all(structure_hash(moved(atoms, s)) == structure_hash(atoms) for s in range(5))


def test_hash_tells_different_structures_apart():
    ethanol, ether = molecule("CH3CH2OH"), molecule("CH3OCH3")  # same formula, isomers
    assert structure_hash(ethanol) != structure_hash(ether)
    nudged = ethanol.copy()
    nudged.positions[3, 0] += 1e-3  # 1 mÅ on one atom
    assert structure_hash(nudged) != structure_hash(ethanol)
    swapped = ethanol.copy()
    swapped.numbers[0] = 7  # different element at the same place
    assert structure_hash(swapped) != structure_hash(ethanol)


def test_hash_of_periodic_structures_uses_the_cell():
    a = bulk("Si", "diamond", a=5.43)
    b = bulk("Si", "diamond", a=5.44)
    assert structure_hash(a) != structure_hash(b)
    c = a.copy()
    c.translate([0.3, 0.1, 0.2])
    c.wrap()
    assert structure_hash(c) == structure_hash(a)


def test_check_accepts_a_normal_molecule():
    check_structure(molecule("CH3CH2OH"))


@pytest.mark.parametrize(
    ("atoms", "message"),
    [
        (Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.3]]), "closer than 0.5"),
        (Atoms("H2", positions=[[0, 0, 0], [0, 0, np.nan]]), "NaN"),
        (Atoms(numbers=[0, 1], positions=[[0, 0, 0], [0, 0, 1]]), "unknown element"),
        (Atoms(), "no atoms"),
    ],
)
def test_check_names_the_problem(atoms, message):
    with pytest.raises(InputError, match=message):
        check_structure(atoms, "frame 7")
