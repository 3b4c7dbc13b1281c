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


# --- connectivity: a structure that falls apart is refused before it is labelled ---------


def scaled(atoms: Atoms, factor: float) -> Atoms:
    other = atoms.copy()
    other.positions *= factor
    return other


def test_water_in_wrong_units_is_refused_with_a_hint():
    with pytest.raises(InputError) as err:
        check_structure(scaled(molecule("H2O"), 1000.0), "in.xyz structure 0")
    text = str(err.value)
    assert text.startswith("in.xyz structure 0: falls apart")
    assert "coordinates in Å?" in text and "is 968.6 Å away" in text


def test_a_molecule_far_from_another_is_refused_naming_the_fragment():
    h2 = Atoms("H2", positions=[[0, 0, 0], [0, 0, 1000.0]])
    with pytest.raises(InputError, match=r"atom 1 \(H\) is 1000.0 Å from the rest"):
        check_structure(h2)
    water = molecule("H2O")
    pair = water + scaled(water, 1.0)
    pair.positions[3:] += [0, 0, 12.0]
    with pytest.raises(InputError, match=r"atoms \[3, 4, 5\] \(H2O\) are 1\d.\d Å from"):
        check_structure(pair)


@pytest.mark.parametrize(
    "atoms",
    [
        Atoms("He"),  # a single atom is whole
        Atoms("He2", positions=[[0, 0, 0], [0, 0, 3.0]]),  # a van der Waals dimer
        Atoms("Ar2", positions=[[0, 0, 0], [0, 0, 4.9]]),
        Atoms("H2", positions=[[0, 0, 0], [0, 0, 4.9]]),  # stretched, within the gap
        molecule("C6H6"),
    ],
)
def test_whole_structures_and_weakly_bound_pairs_pass(atoms):
    check_structure(atoms)


def test_a_hydrogen_bonded_water_dimer_passes():
    a, b = molecule("H2O"), molecule("H2O")
    b.rotate(180, "z")
    b.translate(a.positions[1] + [0, 1.9, 0] - b.positions[0])  # O…H ~1.9 Å
    check_structure(a + b)


def test_periodic_structures_use_minimum_image_distances():
    si = bulk("Si", "diamond", a=5.43).repeat(2)
    check_structure(si)
    gas = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], cell=[30, 30, 30], pbc=True)
    check_structure(gas)


def test_huge_and_absurd_coordinates_are_checked_without_a_distance_matrix():
    grid = np.stack(np.meshgrid(*[np.arange(17.0)] * 3), axis=-1).reshape(-1, 3)
    lattice = Atoms(f"C{len(grid)}", positions=1.5 * grid)  # 4913 atoms 1.5 Å apart
    check_structure(lattice)
    lattice.positions[-1] = lattice.positions[-2] + [0, 0, 0.3]
    with pytest.raises(InputError, match=r"atoms 4911 \(C\) and 4912 \(C\) are 0.300 Å apart"):
        check_structure(lattice)
    with pytest.raises(InputError, match="falls apart"):
        check_structure(scaled(molecule("CH3CH2OH"), 1e30))


def test_a_periodic_structure_needs_a_cell():
    with pytest.raises(InputError, match="periodic but its cell"):
        check_structure(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], pbc=True))
