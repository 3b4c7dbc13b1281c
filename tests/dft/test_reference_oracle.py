"""The reference oracle: labels looked up in a labelled pool, in the query's own frame."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from conftest import DATA

from sapis.dft.reference import ReferenceOracle
from sapis.errors import InputError
from sapis.structures import structure_hash


def test_reference_oracle_returns_the_file_labels_in_any_frame():
    oracle = ReferenceOracle(DATA / "rmd17_malonaldehyde_test_01.npz")
    pool = oracle.pool()
    assert len(pool) == len(oracle) and pool[0].calc is None
    assert pool[7].info["hash"] == structure_hash(pool[7])
    ref = oracle.structures[7]
    moved = pool[7].copy()
    moved.rotate(70, "x", center="COM")
    moved.translate([3.0, -1.0, 0.5])
    order = np.random.default_rng(1).permutation(len(moved))
    moved = moved[order]
    (result,) = oracle.label([moved])
    assert result.converged and result.energy == ref.get_potential_energy()
    expected = Atoms(f"H{len(ref)}", positions=ref.get_forces())
    expected.rotate(70, "x", center=(0, 0, 0))  # forces turn with the frame
    expected = expected.positions
    assert np.allclose(result.forces, expected[order], atol=1e-8)
    assert result.provenance["level"].startswith("reference:")
    with pytest.raises(InputError, match="not in the reference pool"):
        oracle.check(molecule("H2O"), "water")
