"""MD exploration with the ensemble and the validity checks it shares with the generator."""

import numpy as np
import pytest
from ase.build import molecule

from sapis.errors import InputError
from sapis.structures import structure_hash
from sapis.surrogate.ensemble import Ensemble
from sapis.surrogate.md import explore
from sapis.surrogate.settings import ExploreConfig
from sapis.validity import bond_graph, invalid_reason, min_distance


def test_validity_accepts_a_molecule_and_names_what_is_wrong():
    water = molecule("H2O")
    bonds = bond_graph(water)
    assert bonds == {(0, 1), (0, 2)}
    assert invalid_reason(water, bonds) is None
    squeezed = water.copy()
    squeezed.positions[1] = squeezed.positions[2] + [0.3, 0, 0]
    assert "0.30 Å apart" in invalid_reason(squeezed, bonds)
    stretched = water.copy()
    stretched.positions[1] *= 2.5
    assert "broken [(0, 1)]" in invalid_reason(stretched, bonds)
    formed = molecule("H2O")
    formed.positions[1] = formed.positions[2] + [0.0, 0.0, 0.75]
    assert "formed [(1, 2)]" in invalid_reason(formed, bonds)
    nan = water.copy()
    nan.positions[0, 0] = np.nan
    assert invalid_reason(nan) == "non-finite coordinates"
    assert min_distance(water) == pytest.approx(0.9686, abs=1e-3)


def test_md_samples_candidates_with_provenance(trained_ensemble, malonaldehyde):
    ensemble = Ensemble.load(trained_ensemble[0])
    seed = malonaldehyde[0][3]
    settings = ExploreConfig(
        temperatures=[200.0, 400.0], steps=12, sample_every=4, stop_force_dev=1e6
    )
    result = explore(ensemble, [seed], settings, round_=2, progress=False)
    assert [t.temperature for t in result.trajectories] == [200.0, 400.0]
    assert [(t.stopped_by, t.steps) for t in result.trajectories] == [("completed", 12)] * 2
    assert len(result.candidates) == 6
    first = result.candidates[0]
    assert first.info["source"] == "md" and first.info["step"] == 4
    assert first.info["temperature"] == 200.0 and first.info["round"] == 2
    assert first.info["parent"] == structure_hash(seed)
    assert first.info["max_force_dev"] == pytest.approx(first.arrays["force_std"].max())
    assert not np.allclose(first.positions, seed.positions)


def test_md_stops_when_the_ensemble_is_too_uncertain(tiny_ensemble, malonaldehyde):
    ensemble = Ensemble.load(tiny_ensemble)
    settings = ExploreConfig(temperatures=[300.0], steps=50, sample_every=10, stop_force_dev=1e-6)
    result = explore(ensemble, [malonaldehyde[0][0]], settings, progress=False)
    (trajectory,) = result.trajectories
    assert trajectory.stopped_by == "uncertainty" and trajectory.steps == 1
    assert len(result.candidates) == 1  # the frame that crossed the bound is kept


def test_md_stops_when_a_bond_breaks(tiny_ensemble, malonaldehyde):
    ensemble = Ensemble.load(tiny_ensemble)
    settings = ExploreConfig(
        temperatures=[20000.0], steps=400, sample_every=1000, stop_force_dev=1e6, timestep=2.0
    )
    result = explore(ensemble, [malonaldehyde[0][0]], settings, progress=False)
    (trajectory,) = result.trajectories
    assert trajectory.stopped_by.startswith("unphysical"), trajectory
    assert trajectory.steps < 400


def test_unphysical_or_foreign_seeds_are_refused(tiny_ensemble):
    ensemble = Ensemble.load(tiny_ensemble)
    bad = molecule("CH3CHO")
    bad.positions[1] = bad.positions[0] + [0.2, 0, 0]
    with pytest.raises(InputError, match="seed structure 0 is unphysical"):
        explore(ensemble, [bad], ExploreConfig(), progress=False)
    with pytest.raises(InputError, match="not trained"):
        explore(ensemble, [molecule("NH3")], ExploreConfig(), progress=False)


def test_md_frames_keep_their_momenta_in_files_but_not_in_the_store(
    tiny_ensemble, malonaldehyde, tmp_path
):
    from ase import units

    from sapis.io import read_frames, write_frames
    from sapis.store import DatasetStore

    ensemble = Ensemble.load(tiny_ensemble)
    settings = ExploreConfig(temperatures=[300.0], steps=6, sample_every=3, stop_force_dev=1e6)
    frames = explore(ensemble, [malonaldehyde[0][0]], settings, progress=False).candidates
    assert len(frames) == 2
    for frame in frames:
        # Langevin at 300 K from momenta without drift: thermal, no centre-of-mass motion
        kinetic = frame.get_kinetic_energy() / (1.5 * len(frame) * units.kB)
        assert 30 < kinetic < 1500
        assert np.abs(frame.get_momenta().sum(0)).max() < 1e-8
    back = read_frames(write_frames(tmp_path / "frames.extxyz", frames))
    for frame, read in zip(frames, back):
        np.testing.assert_allclose(read.get_momenta(), frame.get_momenta(), atol=1e-7)
    store = DatasetStore(tmp_path / "data.db")
    (row_id,) = store.add(back[:1], split="train").added
    assert "momenta" not in store.db.get(id=row_id)  # a structure is stored without them
