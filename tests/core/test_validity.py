"""Validity filter: distances, bond graph, and mirror images / inverted stereo centres."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from conftest import DATA as RMD17

from sapis.validity import (
    ValidityFilter,
    bond_graph,
    is_chiral,
    stereo_centres,
    stereo_signs,
)

#: Unit vectors to the corners of a regular tetrahedron.
TETRA = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)
LENGTH = {"H": 1.09, "C": 1.53, "N": 1.47, "F": 1.35, "Cl": 1.77, "Br": 1.94}


def chbrclf(swap: tuple[str, str] | None = None) -> Atoms:
    """Bromochlorofluoromethane, tetrahedral; ``swap`` exchanges two substituents'
    directions (bond lengths kept), inverting the centre."""
    subs = ["H", "F", "Cl", "Br"]
    direction = dict(zip(subs, TETRA))
    if swap:
        a, b = swap
        direction[a], direction[b] = direction[b], direction[a]
    positions = [np.zeros(3)] + [LENGTH[s] * direction[s] for s in subs]
    return Atoms(["C", *subs], positions)


def dihalo_ethane(invert_second: bool = False, halogen: str = "Br") -> Atoms:
    """CHFCl-CHF``halogen`` (two stereo centres), staggered; optionally C2 inverted by
    exchanging the directions of its F and H. With Cl and not inverted: the meso form
    (a centre of inversion)."""
    c2 = LENGTH["C"] * TETRA[0]
    first = [("F", TETRA[1]), ("Cl", TETRA[2]), ("H", TETRA[3])]
    second = [("F", -TETRA[1]), (halogen, -TETRA[2]), ("H", -TETRA[3])]
    if invert_second:
        second = [("F", -TETRA[3]), (halogen, -TETRA[2]), ("H", -TETRA[1])]
    symbols = ["C", "C"] + [s for s, _ in first + second]
    positions = [np.zeros(3), c2]
    positions += [LENGTH[s] * d for s, d in first]
    positions += [c2 + LENGTH[s] * d for s, d in second]
    return Atoms(symbols, positions)


def l_alanine() -> Atoms:
    """L-alanine (neutral, (S) at Cα = atom 0), from tetrahedral and trigonal directions."""
    ca = np.zeros(3)
    n, cb, c = 1.47 * TETRA[0], 1.53 * TETRA[1], 1.52 * TETRA[2]
    ha = 1.09 * TETRA[3]
    methyl = [cb - 1.09 * TETRA[k] for k in (0, 2, 3)]  # staggered, away from Cα
    amine = [n - 1.01 * TETRA[k] for k in (1, 2)]
    # carboxyl: trigonal in the plane of Cα-C' and Cα-N
    back = -TETRA[2]
    side = np.cross(np.cross(back, TETRA[0]), back)
    side /= np.linalg.norm(side)
    o1_dir = -0.5 * back + np.sqrt(3) / 2 * side
    o2_dir = -0.5 * back - np.sqrt(3) / 2 * side
    o1, o2 = c + 1.21 * o1_dir, c + 1.34 * o2_dir
    perp = o1_dir - (o1_dir @ o2_dir) * o2_dir
    ho = o2 + 0.97 * (0.5 * o2_dir + np.sqrt(3) / 2 * perp / np.linalg.norm(perp))  # syn
    d_alanine = Atoms("CNCCOOH" + "H" * 6, [ca, n, cb, c, o1, o2, ho, ha, *methyl, *amine])
    return mirror(d_alanine)


def mirror(atoms: Atoms) -> Atoms:
    out = atoms.copy()
    out.positions[:, 0] *= -1
    return out


def moved(atoms: Atoms, seed: int = 0) -> Atoms:
    """A proper rotation and a translation of ``atoms``."""
    out = atoms.copy()
    out.rotate(73, (0.3, -1.0, 0.5), center="COM")
    out.rotate(-41, "z")
    out.translate(np.random.default_rng(seed).normal(size=3) * 5)
    return out


def test_chbrclf_is_chiral_and_its_mirror_image_is_rejected():
    mol = chbrclf()
    bonds = bond_graph(mol)
    assert bonds == {(0, 1), (0, 2), (0, 3), (0, 4)}
    assert stereo_centres(mol, bonds) == [0]
    assert stereo_signs(mol, bonds, [0]).tolist() in ([1], [-1])
    assert is_chiral(mol, bonds)
    check = ValidityFilter.from_reference(mol)
    assert check.chiral and check.centres == (0,)
    assert check.reason(mol) is None
    assert check.is_valid(moved(mol))
    assert "mirror image" in check.reason(mirror(mol))
    assert "mirror image" in check.reason(moved(mirror(mol), seed=1))
    # one centre: inverting it is the mirror image
    assert "mirror image" in check.reason(chbrclf(swap=("F", "Br")))
    assert check.is_valid(chbrclf(swap=("F", "Br")).copy()) is False


def test_one_of_two_stereo_centres_inverted_is_named():
    mol = dihalo_ethane()
    check = ValidityFilter.from_reference(mol)
    assert check.chiral and check.centres == (0, 1)
    assert check.is_valid(moved(mol))
    assert "mirror image" in check.reason(mirror(mol))
    reason = check.reason(dihalo_ethane(invert_second=True))
    assert "inverted stereo centre at atom [1]" in reason


def test_meso_form_is_achiral_and_its_diastereomer_chiral():
    meso = dihalo_ethane(halogen="Cl")
    bonds = bond_graph(meso)
    assert stereo_centres(meso, bonds) == [0, 1]
    assert not is_chiral(meso, bonds)  # needs the automorphism exchanging the two halves
    assert ValidityFilter.from_reference(meso).is_valid(mirror(meso))
    rr = dihalo_ethane(invert_second=True, halogen="Cl")
    assert is_chiral(rr, bonds)
    check = ValidityFilter.from_reference(rr)
    assert "mirror image" in check.reason(moved(mirror(rr)))
    assert "inverted stereo centre at atom" in check.reason(meso)
    assert check.split([meso, rr, mirror(rr)])[1] == {"stereo": 1, "mirror": 1}


def test_ethanol_is_achiral_and_its_mirror_accepted():
    ethanol = molecule("CH3CH2OH")
    bonds = bond_graph(ethanol)
    assert len(stereo_centres(ethanol, bonds)) == 2  # CH3 and CH2
    assert not is_chiral(ethanol, bonds)
    check = ValidityFilter.from_reference(ethanol)
    assert not check.chiral
    assert check.reason(mirror(ethanol)) is None
    assert check.reason(moved(mirror(ethanol))) is None


def test_malonaldehyde_from_rmd17_is_achiral():
    data = np.load(RMD17 / "rmd17_malonaldehyde_train_01.npz")
    frame = Atoms(data["nuclear_charges"], data["coords"][0])
    bonds = bond_graph(frame)
    assert stereo_centres(frame, bonds) == [1]  # the CH2 carbon; sp2 carbons left out
    assert not is_chiral(frame, bonds)
    check = ValidityFilter.from_reference(frame)
    assert not check.chiral and check.centres == ()  # CH2: exchanging its H undoes a flip
    frames = [Atoms(data["nuclear_charges"], x) for x in data["coords"][:50]]
    valid, rejected = check.split(frames + [mirror(f) for f in frames[:10]])
    assert len(valid) == 60 and rejected == {}


def test_uracil_planar_centres_are_no_stereo_centres():
    data = np.load(RMD17 / "rmd17_uracil_train_01.npz")
    for x in data["coords"][:20]:  # ring N-H pyramidalise in 500 K frames
        frame = Atoms(data["nuclear_charges"], x)
        assert stereo_centres(frame, bond_graph(frame)) == []
        assert not is_chiral(frame, bond_graph(frame))


def test_alanine_is_chiral_and_equivalent_hydrogens_may_swap():
    ala = l_alanine()
    bonds = bond_graph(ala)
    assert len(bonds) == 12 and (0, 1) in bonds and (5, 6) in bonds and (4, 6) not in bonds
    p = ala.positions  # (S): N -> C' -> Cβ anticlockwise with H away
    assert np.cross(p[1] - p[0], p[3] - p[0]) @ (p[2] - p[0]) > 0
    assert stereo_centres(ala, bonds) == [0, 2]  # Cα and the methyl C; N, C' are planar/left out
    assert is_chiral(ala, bonds)
    check = ValidityFilter.from_reference(ala)
    assert check.centres == (0,)  # the methyl C can't carry chirality
    assert check.reason(moved(ala)) is None
    assert "mirror image" in check.reason(mirror(ala))
    swapped = ala.copy()  # two methyl H exchanged: the same molecule, relabelled
    swapped.positions[[8, 9]] = swapped.positions[[9, 8]]
    assert not np.array_equal(stereo_signs(swapped, bonds, [2]), stereo_signs(ala, bonds, [2]))
    assert check.reason(swapped) is None
    # the mirror image with its methyl H relabelled is still the mirror image
    swapped_mirror = mirror(ala)
    swapped_mirror.positions[[8, 9]] = swapped_mirror.positions[[9, 8]]
    assert "mirror image" in check.reason(swapped_mirror)


def test_a_methyl_for_bromine_is_still_chiral():
    mol = chbrclf()
    c_methyl = mol.positions[4] * LENGTH["C"] / LENGTH["Br"]
    hydrogens = [c_methyl - 1.09 * TETRA[k] for k in (0, 1, 2)]
    mol = Atoms("CHFClC" + "HHH", [*mol.positions[:4], c_methyl, *hydrogens])
    assert bond_graph(mol) == {(0, 1), (0, 2), (0, 3), (0, 4), (4, 5), (4, 6), (4, 7)}
    assert is_chiral(mol, bond_graph(mol))
    check = ValidityFilter.from_reference(mol)
    assert "mirror image" in check.reason(mirror(mol))
    assert check.is_valid(moved(mol))


def test_overlap_bonds_and_counts_by_kind():
    mol = chbrclf()
    check = ValidityFilter.from_reference(mol)
    overlap = mol.copy()
    overlap.positions[1] = overlap.positions[2] + [0.3, 0.0, 0.0]
    assert "0.30 Å apart" in check.reason(overlap)
    broken = mol.copy()
    broken.positions[4] *= 2.0
    assert "broken [(0, 4)]" in check.reason(broken)
    nan = mol.copy()
    nan.positions[0, 0] = np.nan
    assert check.reason(nan) == "non-finite coordinates"
    assert check.check(broken)[0] == "bonds"
    images = [mol, moved(mol), overlap, broken, broken, mirror(mol), nan]
    valid, rejected = check.split(images)
    assert len(valid) == 2 and valid[0] is mol
    assert rejected == {"overlap": 1, "bonds": 2, "mirror": 1, "non-finite": 1}
    two = ValidityFilter.from_reference(dihalo_ethane())
    assert two.split([dihalo_ethane(invert_second=True)])[1] == {"stereo": 1}


@pytest.mark.parametrize("name", ["H2O", "C6H6", "CH3COOH", "NH3"])
def test_small_achiral_molecules_pass_with_their_mirror(name):
    mol = molecule(name)
    check = ValidityFilter.from_reference(mol)
    assert not check.chiral
    assert check.is_valid(mirror(mol)) and check.is_valid(moved(mol))


def test_a_dimer_drifting_apart_is_invalid_before_it_reaches_labelling():
    """The bond graph of a water dimer has no bond between the molecules, so only the
    labelling check's one-piece rule would catch them drifting apart: the filter (and
    exploration's invalid_reason) apply it first, so no such frame is ever selected."""
    from sapis.validity import invalid_reason

    a, b = molecule("H2O"), molecule("H2O")
    b.translate([0, 0, 3.0])
    close = a + b
    check = ValidityFilter.from_reference(close)
    assert check.is_valid(close) and invalid_reason(close) is None
    far = close.copy()
    far.positions[3:] += [0, 0, 4.0]
    assert check.check(far)[0] == "apart"
    assert "falls apart: atoms [3, 4, 5] (H2O) are 6.4 Å" in invalid_reason(far)
