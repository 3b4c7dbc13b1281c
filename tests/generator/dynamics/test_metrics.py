"""Dynamics metrics: zero where they should be, hand-made values, the truth floor."""

import dataclasses

import numpy as np
import pytest

from sapis.errors import InputError
from sapis.generator.dynamics.data import Trajectories
from sapis.generator.dynamics.metrics import conservation_curves, dynamics_errors
from sapis.generator.dynamics.systems import SYSTEMS, FiveSpring


@pytest.fixture(scope="module")
def springs() -> Trajectories:
    return FiveSpring().simulate(6, 11, seed=5)


def _replace(traj: Trajectories, **arrays) -> Trajectories:
    return dataclasses.replace(traj, **arrays)


@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_identical_windows_score_zero_and_the_truth_floor(name):
    system = SYSTEMS[name]
    truth = system.simulate(4, 11, seed=2)
    errors = dynamics_errors(truth, truth, system)
    assert errors.trajectory == 0 and errors.velocity == 0
    for key in ("energy", "momentum", "dynamic"):
        assert getattr(errors, key) == errors.truth_floor[key]
    assert errors.truth_floor["momentum"] < 1e-12
    assert errors.truth_floor["energy"] < 1e-6
    assert 0 < errors.truth_floor["dynamic"] < 0.05  # five-spring 6e-5, three-body 1e-2
    assert errors.per_sample["trajectory"].shape == (4,)
    assert set(errors.as_dict()) == {
        "trajectory", "velocity", "energy", "momentum", "dynamic", "truth_floor"
    }  # fmt: skip


def test_shifts_give_their_size(springs):
    shift = np.array([0.3, -0.4, 0.0])  # |shift| = 0.5
    kick = np.array([0.0, 0.0, 0.02])
    pos, vel = springs.positions.copy(), springs.velocities.copy()
    pos[:, 1:] += shift
    vel[:, 1:] += kick
    errors = dynamics_errors(_replace(springs, positions=pos, velocities=vel), springs)
    assert errors.trajectory == pytest.approx(0.5, abs=1e-12)
    assert errors.velocity == pytest.approx(0.02, abs=1e-12)
    # five unit masses each 0.02 faster: the momentum moves by 0.1 on every generated frame
    assert errors.momentum == pytest.approx(0.1, abs=1e-10)
    assert np.isnan(errors.dynamic)  # no system, no forces


def test_hand_made_energy_and_momentum():
    # one sample, 3 frames, 2 particles of masses 1 and 2 at rest, then moving
    vel = np.zeros((1, 3, 2, 3))
    vel[0, 1, 0] = [1.0, 0.0, 0.0]  # P = (1, 0, 0), K = 0.5
    vel[0, 2, 1] = [0.0, 1.0, 0.0]  # P = (0, 2, 0), K = 1
    truth = Trajectories(
        "molecule", np.zeros((1, 3, 2, 3)), np.zeros((1, 3, 2, 3)), np.array([1.0, 2.0]),
        np.zeros((1, 2, 2)), np.array([1, 8]), np.zeros((1, 3)), 0.5,
    )  # fmt: skip
    generated = _replace(truth, velocities=vel)
    errors = dynamics_errors(generated, truth, generated_potential=np.array([[0.0, 1.0, 3.0]]))
    assert errors.energy == pytest.approx((1.5 + 4.0) / 2)  # E = 0, 1.5, 4
    assert errors.momentum == pytest.approx((1.0 + 2.0) / 2)
    assert errors.truth_floor["energy"] == 0 and errors.truth_floor["momentum"] == 0
    assert np.isnan(dynamics_errors(generated, truth).energy)  # no potential given
    curves = conservation_curves(generated, potential=np.array([[0.0, 1.0, 3.0]]))
    assert curves["time"].tolist() == [0.0, 0.5, 1.0]
    assert curves["energy"].tolist() == [0.0, 1.5, 4.0]
    assert curves["momentum"].tolist() == [0.0, 1.0, 2.0]


def test_dynamic_error_sits_at_its_floor_on_true_dynamics_only(springs):
    system = SYSTEMS["five-spring"]
    true = dynamics_errors(springs, springs, system)
    assert true.dynamic < 1e-4  # measured 6e-5: the trapezoid over dt = 0.1
    rng = np.random.default_rng(0)
    vel = springs.velocities.copy()
    vel[:, 1:] += rng.normal(0, 0.01, vel[:, 1:].shape)
    perturbed = dynamics_errors(_replace(springs, velocities=vel), springs, system)
    assert perturbed.dynamic > 50 * true.dynamic
    assert perturbed.truth_floor["dynamic"] == true.dynamic
    assert perturbed.energy > 100 * true.energy and perturbed.momentum > 1e-3


def test_conservation_curves_of_true_dynamics(springs):
    curves = conservation_curves(springs, SYSTEMS["five-spring"])
    assert curves["time"] == pytest.approx(0.1 * np.arange(11))
    assert curves["energy"][0] == 0 and curves["energy"].max() < 1e-6
    assert curves["momentum"].max() < 1e-12
    assert np.isnan(conservation_curves(springs)["energy"]).all()


def test_mismatched_windows_refused(springs):
    system = SYSTEMS["five-spring"]
    pos = springs.positions.copy()
    pos[:, 0] += 0.1
    with pytest.raises(InputError, match="different positions"):
        dynamics_errors(_replace(springs, positions=pos), springs)
    with pytest.raises(InputError, match="differ"):
        dynamics_errors(springs.subset(slice(0, 3)), springs)
    with pytest.raises(InputError, match="are not three-body"):
        dynamics_errors(springs, springs, SYSTEMS["three-body"])
    with pytest.raises(InputError, match="expected"):
        dynamics_errors(springs, springs, generated_potential=np.zeros((6, 10)))
    with pytest.raises(InputError, match="NaN"):
        dynamics_errors(springs, springs, generated_potential=np.full((6, 11), np.nan))
    assert dynamics_errors(springs, springs, system).trajectory == 0
