"""Conformer metrics and GEOM-lite: symmetry-aware RMSD, COV/MAT, validity, ETKDG, data files."""

import numpy as np
import pytest
from conftest import REPO
from rdkit import Chem
from rdkit.Chem import rdMolAlign
from scipy.spatial.transform import Rotation

from sapis.errors import InputError
from sapis.generator.conformers import (
    ConformerValidity,
    conformer_validity,
    coverage,
    etkdg_conformers,
    heavy_symmetries,
    load_molecule,
    read_index,
    rmsd_matrix,
    with_positions,
)
from sapis.units import KCAL_PER_MOL_TO_EV

GEOM_LITE = REPO / "data" / "geom_lite"
#: A chiral molecule with a carboxylic acid and two methyls on one carbon.
CHIRAL = "CC(C)[C@H](N)C(=O)O"  # L-valine


def _mol(smiles: str) -> Chem.Mol:
    return Chem.AddHs(Chem.MolFromSmiles(smiles))


@pytest.fixture(scope="module")
def valine() -> tuple[Chem.Mol, np.ndarray]:
    mol = _mol(CHIRAL)
    return mol, etkdg_conformers(mol, 12, seed=0)  # RDKit's seed 0 gives 12 copies


def _index(mol: Chem.Mol, symbol: str) -> list[int]:
    return [a.GetIdx() for a in mol.GetAtoms() if a.GetSymbol() == symbol]


def test_identical_sets_cover_everything(valine):
    mol, x = valine
    rmsd = rmsd_matrix(mol, x, x)
    assert np.allclose(np.diag(rmsd), 0.0, atol=1e-6)
    assert (rmsd[~np.eye(len(x), dtype=bool)] > 0.01).all()  # ETKDG gave distinct ones
    score = coverage(rmsd, delta=0.5)
    assert (score.cov_r, score.cov_p) == (1.0, 1.0)
    assert score.mat_r == pytest.approx(0.0, abs=1e-6)
    assert score.mat_p == pytest.approx(0.0, abs=1e-6)


def test_rotated_and_shifted_copy_has_zero_rmsd(valine):
    mol, x = valine
    rotation = Rotation.random(len(x), random_state=1).as_matrix()
    moved = np.einsum("kij,kaj->kai", rotation, x) + np.array([3.0, -2.0, 7.5])
    assert np.allclose(np.diag(rmsd_matrix(mol, x, moved)), 0.0, atol=1e-6)


def test_swapped_methyls_and_acid_oxygens_are_the_same_conformer(valine):
    mol, x = valine
    methyls = [
        a.GetIdx()
        for a in mol.GetAtoms()
        if a.GetSymbol() == "C" and a.GetTotalNumHs(includeNeighbors=True) == 3
    ]
    oxygens = _index(mol, "O")
    assert len(methyls) == len(oxygens) == 2
    for pair in (methyls, oxygens):
        swapped = x.copy()
        swapped[:, pair] = x[:, pair[::-1]]
        assert np.allclose(np.diag(rmsd_matrix(mol, x, swapped)), 0.0, atol=1e-6)
    # without the terminal-group symmetry, the acid's C=O and C-OH are different atoms
    swapped = x.copy()
    swapped[:, oxygens] = x[:, oxygens[::-1]]
    plain = heavy_symmetries(mol, symmetrize_terminal=False)
    assert len(plain) == 2 and len(heavy_symmetries(mol)) == 4
    assert (np.diag(rmsd_matrix(mol, x, swapped, plain)) > 0.1).all()


def test_rmsd_agrees_with_rdkit_get_best_rms(valine):
    mol, x = valine
    y = etkdg_conformers(mol, 5, seed=9)
    ours = rmsd_matrix(mol, x[:5], y)
    for i in range(5):
        for j in range(5):
            ref = Chem.RemoveHs(with_positions(mol, x[i]))
            prb = Chem.RemoveHs(with_positions(mol, y[j]))
            assert ours[i, j] == pytest.approx(rdMolAlign.GetBestRMS(prb, ref), abs=1e-6)


def test_mirror_image_is_not_aligned_away(valine):
    mol, x = valine
    mirrored = x * np.array([-1.0, 1.0, 1.0])
    assert (np.diag(rmsd_matrix(mol, x, mirrored)) > 0.05).all()


def test_coverage_and_matching_of_a_known_matrix():
    rmsd = np.array([[0.1, 2.0], [2.0, 2.5], [0.3, 0.5]])  # 3 references x 2 generated
    score = coverage(rmsd, delta=0.5)
    assert score.cov_r == pytest.approx(2 / 3)  # the 0.5 of row 3 counts (<= delta)
    assert score.mat_r == pytest.approx((0.1 + 2.0 + 0.3) / 3)
    assert score.cov_p == pytest.approx(1.0)
    assert score.mat_p == pytest.approx((0.1 + 0.5) / 2)
    assert coverage(rmsd, delta=0.2).as_dict()["COV-P"] == pytest.approx(0.5)
    with pytest.raises(InputError, match="delta"):
        coverage(rmsd, delta=0.0)


def test_validity_rejects_a_mirror_image_and_a_clash(valine):
    mol, x = valine
    mask, reasons = conformer_validity(mol, x)
    assert mask.all() and reasons == {}
    mirrored = x[:3] * np.array([-1.0, 1.0, 1.0])
    clash = x[3:5].copy()
    c, h = _index(mol, "C")[0], _index(mol, "H")[-1]
    far = next(
        a.GetIdx()
        for a in mol.GetAtoms()
        if a.GetIdx() not in (c, h)
        and a.GetAtomicNum() > 1
        and mol.GetBondBetweenAtoms(c, a.GetIdx()) is None
    )
    clash[:, h] = clash[:, far] + np.array([0.4, 0.0, 0.0])
    mask, reasons = conformer_validity(mol, np.concatenate([x[:2], mirrored, clash]))
    assert mask.tolist() == [True, True, False, False, False, False, False]
    assert reasons == {"stereo": 3, "overlap": 2}
    # an achiral molecule's mirror image is the same molecule
    achiral = _mol("CCCC(=O)O")
    y = etkdg_conformers(achiral, 3, seed=0)
    assert conformer_validity(achiral, y * np.array([-1.0, 1.0, 1.0]))[0].all()


def test_validity_rejects_a_broken_bond_and_bad_shapes(valine):
    mol, x = valine
    broken = x[0].copy()
    n = _index(mol, "N")[0]
    broken[n] += (
        3.0 * (broken[n] - broken.mean(axis=0)) / np.linalg.norm(broken[n] - broken.mean(axis=0))
    )
    assert ConformerValidity(mol).check(broken)[0] in ("bonds", "apart")
    with pytest.raises(InputError, match="shape"):
        conformer_validity(mol, x[:, :-1])


def test_etkdg_gives_n_conformers_in_the_template_order(valine):
    mol, x = valine
    assert x.shape == (12, mol.GetNumAtoms(), 3)
    for bond in mol.GetBonds():  # bonded atoms are bonded in every conformer
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        assert (np.linalg.norm(x[:, i] - x[:, j], axis=-1) < 1.7).all()
    assert np.array_equal(etkdg_conformers(mol, 12, seed=0), x)  # the seed decides
    with pytest.raises(InputError, match="hydrogens"):
        etkdg_conformers(Chem.MolFromSmiles(CHIRAL), 2, seed=0)


def test_geom_lite_files_load_with_consistent_shapes():
    entries = read_index(GEOM_LITE)
    sets = {(e["set"], e["split"]) for e in entries}
    assert sets == {("small", "val"), ("small", "test"), ("drug", "test")}
    assert sum(e["set"] == "small" for e in entries) == 16
    assert sum(e["split"] == "val" for e in entries) == 4
    assert sum(e["set"] == "drug" for e in entries) == 2
    for entry in entries:
        m = load_molecule(GEOM_LITE / entry["file"])
        n = len(m.numbers)
        assert m.name == entry["name"] and m.smiles == entry["smiles"]
        assert n == entry["atoms"] == m.mol.GetNumAtoms()
        assert m.train_positions.shape == m.train_forces.shape == (entry["train_frames"], n, 3)
        assert m.train_energies.shape == (entry["train_frames"],)
        assert len(m.reference_positions) == len(m.reference_energies) >= 1
        assert np.isfinite(m.train_energies).all() and np.isfinite(m.reference_energies).all()
        window = m.reference_energies - m.reference_energies[0]
        assert (np.diff(m.reference_energies) >= 0).all()  # lowest first
        assert window.max() <= 6.0 * KCAL_PER_MOL_TO_EV + 1e-9
        assert np.allclose(m.mol.GetConformer().GetPositions(), m.reference_positions[0], atol=1e-3)
        assert conformer_validity(m.mol, m.reference_positions)[0].all()
        rmsd = rmsd_matrix(m.mol, m.reference_positions, m.reference_positions)
        assert (rmsd[~np.eye(len(rmsd), dtype=bool)] > 0.125 - 1e-4).all()  # de-duplicated


def test_loading_rejects_a_missing_file(tmp_path):
    with pytest.raises(InputError, match="no GEOM-lite molecule file"):
        load_molecule(tmp_path / "nothing.npz")
    with pytest.raises(InputError, match="no GEOM-lite index"):
        read_index(tmp_path)


def test_a_conformer_with_a_non_finite_coordinate_is_infinitely_far():
    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    x = etkdg_conformers(mol, 3, seed=1)
    broken = x.copy()
    broken[1, 0, 0] = np.nan
    d = rmsd_matrix(mol, x, broken)
    assert np.isinf(d[:, 1]).all() and np.isfinite(d[:, [0, 2]]).all()
    assert d[0, 0] < 1e-6 and coverage(d, 0.5).cov_r == 1.0
