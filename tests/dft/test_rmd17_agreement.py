"""PBE/def2-SVP labels reproduce rMD17's (ORCA, PBE/def2-SVP): forces within 1 meV/Å
(mean absolute error per component; the largest single component differs by ~2 meV/Å,
even on converged grids) and energies within 1 meV after one constant offset."""

import numpy as np
from conftest import DATA

from sapis.dft import label
from sapis.dft.settings import DFTSettings
from sapis.io import read_structures


def test_rmd17_malonaldehyde_labels_are_reproduced():
    frames = read_structures(DATA / "rmd17_malonaldehyde_test_01.npz")
    picked = [frames[k] for k in (0, 500, 999)]
    settings = DFTSettings(xc="PBE", basis="def2-svp", density_fit=True, threads=2)
    results = [label(atoms, settings) for atoms in picked]
    assert all(r.converged for r in results)
    errors = np.array([np.abs(r.forces - a.get_forces()) for r, a in zip(results, picked)])
    assert all(np.abs(r.forces.sum(axis=0)).max() < 1e-6 for r in results)  # no net force
    energy_diff = np.array([r.energy - a.get_potential_energy() for r, a in zip(results, picked)])
    offset = energy_diff.mean()
    print(
        f"force MAE {errors.mean() * 1e3:.3f} meV/Å, max {errors.max() * 1e3:.3f} meV/Å; "
        f"energy offset {offset * 1e3:.2f} meV, residuals {(energy_diff - offset) * 1e3} meV"
    )
    assert errors.mean() < 1e-3  # eV/Å
    assert errors.max() < 3e-3
    assert np.abs(energy_diff - offset).max() < 1e-3  # eV
