"""Trust window, diversity selection, the random arm, and the reference oracle."""

import numpy as np
import pytest
from ase.build import molecule
from conftest import jiggled

from sapis.campaign.selection import (
    classify,
    density_weights,
    descriptor,
    farthest_point,
    select,
)
from sapis.errors import InputError
from sapis.structures import structure_hash


def _frames(uncertainties, seed=0, source="md"):
    frames = jiggled("H2O", len(uncertainties), amplitude=0.1, seed=seed)
    for atoms, u in zip(frames, uncertainties):
        atoms.info.update(source=source, max_force_dev_calibrated=u)
    return frames


def test_trust_window_sorts_accurate_candidate_failed():
    out = classify(np.array([0.01, 0.05, 0.2, 0.5, 0.51, np.nan]), lo=0.05, hi=0.5)
    assert list(out) == ["accurate", "candidate", "candidate", "candidate", "failed", "failed"]
    with pytest.raises(InputError, match="lo < hi"):
        classify(np.array([0.1]), lo=0.5, hi=0.1)


def test_selection_takes_only_in_window_frames_and_counts_every_class():
    frames = _frames([0.01, 0.02, 0.1, 0.2, 0.3, 0.9, 2.0])
    sel = select(frames, budget=10, lo=0.05, hi=0.5)
    assert (sel.accurate, sel.candidate, sel.failed) == (2, 3, 2)
    assert sorted(a.info["uncertainty"] for a in sel.chosen) == [0.1, 0.2, 0.3]
    assert sel.ratios()["accurate"] == pytest.approx(2 / 7)
    assert sel.by_source["md"] == {"accurate": 2, "candidate": 3, "failed": 2, "selected": 3}


def test_budget_keeps_the_most_uncertain_then_the_most_different():
    # three tight clusters of in-window frames: a budget of 3 must take one from each,
    # starting from the most uncertain frame
    frames = []
    for centre, u in ((0.0, 0.3), (0.15, 0.2), (0.3, 0.1)):
        cluster = jiggled("H2O", 4, amplitude=0.002, seed=int(centre * 100))
        for atoms in cluster:
            atoms.positions[1] *= 1 + centre  # stretch one O-H bond per cluster
            atoms.info["max_force_dev_calibrated"] = u
        frames += cluster
    frames[5].info["max_force_dev_calibrated"] = 0.45
    sel = select(frames, budget=3, lo=0.05, hi=0.5)
    assert sel.chosen[0] is frames[5]
    stretch = sorted(round(np.linalg.norm(a.positions[1] - a.positions[0]), 1) for a in sel.chosen)
    assert len(set(stretch)) == 3


def test_stored_and_repeated_structures_are_never_chosen():
    frames = _frames([0.1, 0.2, 0.3])
    frames.append(frames[2].copy())
    frames[-1].info.update(max_force_dev_calibrated=0.3, source="md")
    stored = {structure_hash(frames[0])}
    sel = select(frames, budget=10, lo=0.05, hi=0.5, stored=stored)
    assert sel.duplicates == 2
    assert len(sel.chosen) == 2 and frames[0] not in sel.chosen


def test_random_arm_draws_from_every_explored_frame_reproducibly():
    frames = _frames([0.01] * 10 + [0.2] * 2 + [5.0] * 10)
    a = select(frames, budget=8, lo=0.05, hi=0.5, policy="random", seed=3)
    b = select(frames, budget=8, lo=0.05, hi=0.5, policy="random", seed=3)
    assert [id(x) for x in a.chosen] == [id(x) for x in b.chosen]
    assert len(a.chosen) == 8
    u = [x.info["uncertainty"] for x in a.chosen]
    assert any(v < 0.05 for v in u) or any(v > 0.5 for v in u)


def test_selection_refuses_frames_without_uncertainty_and_bad_policies():
    frames = jiggled("H2O", 2)
    with pytest.raises(InputError, match="predict it first"):
        select(frames, budget=1, lo=0.05, hi=0.5)
    with pytest.raises(InputError, match="policy"):
        select(_frames([0.1]), budget=1, lo=0.05, hi=0.5, policy="greedy")


def test_descriptor_is_invariant_and_farthest_point_spreads_out():
    atoms = molecule("CH3CH2OH")
    moved = atoms.copy()
    moved.rotate(40, "z")
    moved.translate([1, 2, 3])
    moved = moved[np.random.default_rng(0).permutation(len(moved))]
    assert np.allclose(descriptor(atoms), descriptor(moved))
    points = np.array([[0.0], [0.1], [1.0], [1.1], [5.0]])
    assert farthest_point(points, 3, first=0) == [0, 4, 3]
    assert farthest_point(np.zeros((4, 2)), 3) == [0]


# --- the policies on constructed cases ----------------------------------------------------


def _featured(points, uncertainties):
    """Frames (distinct water geometries) whose features are ``points``."""
    frames = _frames(uncertainties)
    return frames, np.asarray(points, dtype=float)


def _cluster_case():
    """Ten near-copies of one point and three distinct points (each along its own axis of
    a 6-d feature space), all equally uncertain, with labelled data about the origin."""
    rng = np.random.default_rng(0)
    axes = 4.0 * np.eye(6)
    cluster = axes[0] + 0.01 * rng.standard_normal((10, 6))
    points = np.vstack([cluster, axes[1:4]])
    known = 0.3 * rng.standard_normal((20, 6))
    frames, feats = _featured(points, [0.2] * 13)
    return frames, feats, known


@pytest.mark.parametrize("policy", ["uncertainty", "lcmd", "maxdet"])
def test_a_cluster_of_near_copies_gets_one_pick(policy):
    frames, feats, known = _cluster_case()
    if policy == "uncertainty":  # farthest-point works on the structures' own descriptor
        for atoms, p in zip(frames[:10], feats[:10]):
            atoms.positions = frames[0].positions + 1e-4 * p[0]
    sel = select(frames, 4, 0.05, 0.5, policy, features=feats, known=known)
    picked = [frames.index(a) for a in sel.chosen]
    assert len(picked) == 4 and sum(i < 10 for i in picked) == 1, picked


@pytest.mark.parametrize("policy", ["uncertainty", "top-k"])
def test_a_far_certain_frame_is_not_picked_over_a_near_uncertain_one(policy):
    frames = _frames([0.01, 0.3])
    frames[0].positions *= 1.3  # far from the other in the descriptor, but certain
    sel = select(frames, 1, 0.05, 0.5, policy)
    assert sel.chosen == [frames[1]]


@pytest.mark.parametrize("policy", ["lcmd", "maxdet"])
def test_feature_policies_pick_what_the_data_do_not_cover_and_never_past_hi(policy):
    # a frame the labelled data cover (low uncertainty, on top of them), one they do not
    # (far in feature space, moderately uncertain), and an unphysical one past hi
    known = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [-0.1, -0.1]])
    frames, feats = _featured([[0.05, 0.05], [3.0, 2.0], [9.0, 9.0]], [0.01, 0.3, 5.0])
    sel = select(frames, 1, 0.05, 0.5, policy, features=feats, known=known)
    assert sel.chosen == [frames[1]]
    sel = select(frames, 3, 0.05, 0.5, policy, features=feats, known=known)
    assert frames[2] not in sel.chosen


def test_top_k_takes_the_most_uncertain_in_the_window():
    frames = _frames([0.01, 0.3, 0.1, 0.45, 0.2, 2.0])
    sel = select(frames, 2, 0.05, 0.5, "top-k")
    assert [a.info["uncertainty"] for a in sel.chosen] == [0.45, 0.3]


def test_lcmd_fills_the_largest_unlabelled_mass_first():
    # a dense far group of 30 and a lone far point: the first pick is in the dense group
    rng = np.random.default_rng(1)
    group = np.array([6.0, 0.0]) + 0.5 * rng.standard_normal((30, 2))
    points = np.vstack([group, [[0.0, 7.0]]])
    frames, feats = _featured(points, [0.2] * 31)
    sel = select(frames, 1, 0.05, 0.5, "lcmd", features=feats, known=np.zeros((3, 2)))
    assert frames.index(sel.chosen[0]) < 30


def test_maxdet_skips_a_direction_the_data_cover():
    # the data span x and z; a candidate far along x is known already, one along y is not
    known = np.array([[-2.0, 0, 0], [2.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0], [0, 0, -1.0]])
    frames, feats = _featured([[3.0, 0, 0], [0, 1.0, 0]], [0.2] * 2)
    sel = select(frames, 1, 0.05, 0.5, "maxdet", features=feats, known=known)
    assert sel.chosen == [frames[1]]


def test_feature_policies_refuse_missing_or_mismatched_features():
    frames = _frames([0.1, 0.2])
    with pytest.raises(InputError, match="needs the features"):
        select(frames, 1, 0.05, 0.5, "lcmd")
    with pytest.raises(InputError, match="feature rows"):
        select(frames, 1, 0.05, 0.5, "maxdet", features=np.zeros((3, 2)), known=np.zeros((2, 2)))


def test_density_weights_are_per_degree_of_freedom_ratios_to_the_most_likely_frame():
    w = density_weights(np.array([-3.0, 3.0, 0.0, -np.inf, np.nan]), 6, beta=2.0)
    np.testing.assert_allclose(w, [np.exp(-2.0), 1.0, np.exp(-1.0), 0.0, 0.0])
    np.testing.assert_allclose(density_weights(np.array([-3.0, 3.0]), 6, beta=0.0), [1, 1])
    assert list(density_weights(np.array([np.nan]), 6, beta=1.0)) == [0.0]


def test_a_density_weight_puts_a_likely_frame_before_a_more_uncertain_unlikely_one():
    # H2O: dof 6. Frame 0 is the most uncertain but 2 nats per dof less likely
    frames = _frames([0.4, 0.3, 0.2, 0.01])
    for atoms, ell in zip(frames, [-12.0, 0.0, 0.0, 0.0]):
        atoms.info["log_density"] = ell
    plain = select(frames, 2, 0.05, 0.5, "top-k")
    assert plain.chosen == [frames[0], frames[1]] and plain.density_weight == 0
    weighed = select(frames, 2, 0.05, 0.5, "top-k", density_weight=1.0)
    assert weighed.chosen == [frames[1], frames[2]]  # 0.4·e⁻² = 0.054 < 0.3, 0.2
    assert [a.info["density_factor"] for a in weighed.chosen] == [1.0, 1.0]
    assert weighed.density_weight == 1.0
    # a weaker weight keeps the uncertain one first: 0.4·e^(−0.2) = 0.33 > 0.3
    assert select(frames, 1, 0.05, 0.5, "top-k", density_weight=0.1).chosen == [frames[0]]


def test_a_density_weight_steers_the_farthest_point_sweep_away_from_an_unlikely_outlier():
    # two clusters the flow finds likely and one far, most uncertain, unlikely outlier
    frames = []
    for stretch, u, ell in ((0.0, 0.2, 0.0), (0.1, 0.15, 0.0)):
        cluster = jiggled("H2O", 4, amplitude=0.002, seed=int(stretch * 100))
        for atoms in cluster:
            atoms.positions[1] *= 1 + stretch
            atoms.info.update(max_force_dev_calibrated=u, log_density=ell)
        frames += cluster
    outlier = jiggled("H2O", 1, amplitude=0.002, seed=7)[0]
    outlier.positions[1] *= 1.4
    outlier.info.update(max_force_dev_calibrated=0.3, log_density=-60.0)  # −10 per dof
    frames.append(outlier)
    plain = select(frames, 2, 0.05, 0.5, "uncertainty")
    assert plain.chosen[0] is outlier  # plain sweep: most uncertain first, then farthest
    weighed = select(frames, 2, 0.05, 0.5, "uncertainty", density_weight=1.0)
    assert outlier not in weighed.chosen
    assert weighed.chosen[0] in frames[:4] and weighed.chosen[1] in frames[4:8]


def test_a_density_weight_refuses_other_policies_and_frames_without_a_density():
    frames = _frames([0.1, 0.2])
    with pytest.raises(InputError, match="no 'log_density' in info"):
        select(frames, 1, 0.05, 0.5, "top-k", density_weight=1.0)
    for atoms in frames:
        atoms.info["log_density"] = 0.0
    with pytest.raises(InputError, match="policy 'random' does not rank by uncertainty"):
        select(frames, 1, 0.05, 0.5, "random", density_weight=1.0)
    with pytest.raises(InputError, match="density weight must be >= 0"):
        select(frames, 1, 0.05, 0.5, "top-k", density_weight=-1.0)
