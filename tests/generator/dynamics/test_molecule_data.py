"""The malonaldehyde GFN2-xTB reference dynamics (data/dynamics/make_molecule.py): the files
hold what the README says, conserve what NVE conserves, keep the molecule whole, and the
script rebuilds them bit for bit from the seed."""

import sys

import numpy as np
import pytest
from ase import units
from ase.data import atomic_masses
from conftest import REPO

from sapis.generator.dynamics.data import Trajectories

sys.path.insert(0, str(REPO / "data" / "dynamics"))

import make_molecule

SPLITS = {"train": 24, "val": 8, "test": 8}
FRAMES = 160
#: Measured over all 40 trajectories (tblite accuracy 0.01, 0.5 fs): largest |E(t) - E(0)|
#: 9.8 meV, largest fitted drift 0.58 meV/ps; the bounds leave a factor of ~2.
MAX_DE_EV = 0.02
MAX_DRIFT_EV_PER_PS = 1.2e-3


@pytest.fixture(scope="module")
def sets() -> dict[str, Trajectories]:
    return {
        name: Trajectories.load(make_molecule.HERE / f"malonaldehyde-xtb-{name}.npz")
        for name in SPLITS
    }


def test_files_hold_malonaldehyde_trajectories_of_the_documented_shape(sets):
    seen = []
    for name, traj in sets.items():
        assert traj.system == "molecule"
        assert traj.shape == (SPLITS[name], FRAMES, 9, 3)
        assert traj.dt == pytest.approx(5 * units.fs, rel=1e-12)
        assert sorted(traj.numbers.tolist()) == [1, 1, 1, 1, 6, 6, 6, 8, 8]
        np.testing.assert_array_equal(traj.masses, atomic_masses[traj.numbers])
        assert traj.info["split"] == name and traj.info["method"] == "GFN2-xTB"
        assert traj.info["dropped_bond_change"] == []
        seen += traj.info["source_frames"]
    assert len(set(seen)) == sum(SPLITS.values())  # every trajectory from its own frame


def test_energy_is_conserved_and_the_molecule_stays_thermal(sets):
    for traj in sets.values():
        stats = make_molecule.conservation(traj)
        assert stats["max_abs_dE_eV"] < MAX_DE_EV, stats
        assert stats["drift_eV_per_ps_max_abs"] < MAX_DRIFT_EV_PER_PS, stats
        assert 150 < stats["mean_temperature_K"] < 600, stats


def test_momentum_is_zero_and_stays_zero(sets):
    for traj in sets.values():
        p = traj.momentum()
        assert np.abs(p).max() < 1e-9
        assert np.abs(p - p[:, :1]).max() < 1e-9


def test_every_frame_keeps_the_reference_bond_graph(sets):
    reference = sets["train"].couplings[0]
    assert reference.sum() == 2 * 8  # 8 bonds: C3H4O2, a tree
    for traj in sets.values():
        for s in range(traj.shape[0]):
            np.testing.assert_array_equal(traj.couplings[s], reference)
            for t in range(FRAMES):
                frame = make_molecule.bonds_matrix(traj.numbers, traj.positions[s, t])
                np.testing.assert_array_equal(frame, reference)


def test_the_script_rebuilds_the_first_frames_bit_for_bit_from_the_seed(sets):
    saved = sets["val"]
    k = saved.info["trajectory"][0]
    rebuilt = make_molecule.build(1, 3, seed=saved.info["seed"], first=k)
    assert rebuilt.info["source_frames"] == saved.info["source_frames"][:1]
    np.testing.assert_array_equal(rebuilt.positions[0], saved.positions[0, :3])
    np.testing.assert_array_equal(rebuilt.velocities[0], saved.velocities[0, :3])
    np.testing.assert_array_equal(rebuilt.potential[0], saved.potential[0, :3])
