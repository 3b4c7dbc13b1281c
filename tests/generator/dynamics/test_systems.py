"""The five-spring and three-body systems: physics, simulators, datasets and registry."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from sapis.errors import InputError
from sapis.generator.dynamics.data import Trajectories
from sapis.generator.dynamics.systems import (
    SYSTEMS,
    FiveSpring,
    ThreeBody,
    kinetic,
    pairs,
    particle_system,
)

DATA = Path(__file__).resolve().parents[3] / "data" / "dynamics"


def _make_particles():
    spec = importlib.util.spec_from_file_location("make_particles", DATA / "make_particles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _drift(traj: Trajectories) -> tuple[float, float]:
    """Largest relative energy change and largest momentum change from frame 0."""
    e, p = traj.energy(), traj.momentum()
    return (
        float((np.abs(e - e[:, :1]) / np.abs(e[:, :1])).max()),
        float(np.abs(p - p[:, :1]).max()),
    )


def test_pairs_and_kinetic():
    i, j = pairs(4)
    assert list(zip(i.tolist(), j.tolist())) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    v = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[0.0, 0.0], [1.0, 1.0]]], dtype=torch.float64)
    assert kinetic(v, [1.0, 3.0]).tolist() == [0.5 + 6.0, 3.0]


def test_five_spring_conserves_momentum_exactly_and_energy_to_leapfrog_order():
    traj = FiveSpring().simulate(6, 50, seed=0)
    assert traj.shape == (6, 50, 5, 3) and traj.dt == pytest.approx(0.1)
    energy_drift, momentum_drift = _drift(traj)
    assert momentum_drift <= 1e-10
    assert energy_drift <= 1e-6  # measured 3.5e-8 here, 5.5e-8 over 400 trajectories
    # the springs do work: kinetic energy swings by far more than the drift
    assert np.ptp(traj.kinetic(), axis=1).min() > 1e-2
    # and the drift is the leapfrog's O(h²): ten times the step, a hundred times the drift
    coarse, _ = _drift(FiveSpring(step=0.01, steps_per_frame=10).simulate(6, 50, seed=0))
    assert 50 < coarse / energy_drift < 200


def test_five_spring_initial_state_follows_springsim():
    traj = FiveSpring().simulate(40, 1, seed=1)
    assert np.allclose(np.linalg.norm(traj.velocities[:, 0], axis=-1), 0.5)
    c = traj.couplings
    assert np.array_equal(c, c.transpose(0, 2, 1)) and set(np.unique(c)) == {0.0, 1.0}
    assert np.all(np.diagonal(c, axis1=1, axis2=2) == 0)
    assert 0.35 < c[:, *pairs(5)].mean() < 0.65  # springs with probability ½
    assert 0.4 < traj.positions.std() < 0.6  # N(0, 0.5²)


def test_three_body_conserves_to_the_integrator_tolerance():
    system = ThreeBody()
    traj = system.simulate(4, 50, seed=0)
    assert traj.shape == (4, 50, 3, 2)
    energy_drift, momentum_drift = _drift(traj)
    assert momentum_drift <= 1e-10
    assert energy_drift <= 1e-9  # measured 4.3e-11 over 400 trajectories
    info = traj.info
    assert info["drawn"] == 4 + info["dropped_energy"] + info["dropped_approach"]
    assert info["closest_approach"] >= system.min_distance
    assert np.array_equal(traj.potential, np.asarray(system.potential(
        torch.from_numpy(traj.positions), None, traj.masses)))  # fmt: skip


def test_three_body_drops_and_counts_bad_orbits():
    far = ThreeBody(min_distance=0.5).simulate(4, 50, seed=0)
    assert far.info["dropped_approach"] >= 1 and far.info["closest_approach"] >= 0.5
    loose = ThreeBody(tolerance=1e-7).simulate(4, 50, seed=0)
    assert loose.info["dropped_energy"] >= 1
    assert loose.info["worst_energy_drift"] <= 1e-6 and _drift(loose)[0] <= 1e-6
    with pytest.raises(InputError, match="broke the energy bound"):
        ThreeBody(tolerance=1e-3).simulate(1, 50, seed=0)


@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_forces_are_minus_the_gradient_and_terms_sum_to_the_potential(name):
    system = SYSTEMS[name]
    n = 5 if name == "five-spring" else 3
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, n, system.dim, generator=gen, dtype=torch.float64, requires_grad=True)
    c = (torch.rand(2, 1, n, n, generator=gen) < 0.5).double()
    c = torch.triu(c, 1) + torch.triu(c, 1).transpose(-1, -2)
    masses = torch.tensor([1.0, 2.0, 0.5, 1.5, 3.0][:n], dtype=torch.float64)
    terms = system.potential_terms(x, c, masses)
    assert terms.shape == (2, 3, n * (n - 1) // 2) and terms.dtype == torch.float64
    u = system.potential(x, c, masses)
    assert torch.allclose(terms.sum(-1), u, rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad(u.sum(), x)
    forces = system.forces(x, c, masses)
    assert forces.shape == x.shape
    assert torch.allclose(forces, -grad, rtol=0, atol=1e-10)
    # one pair term by its formula
    r = (x[1, 2, 0] - x[1, 2, 1]).norm()
    expected = 0.5 * 0.1 * c[1, 0, 0, 1] * r**2 if name == "five-spring" else -2.0 / r
    assert torch.allclose(terms[1, 2, 0], expected, rtol=1e-12, atol=0)


def test_unknown_system_refused():
    assert particle_system("three-body") is SYSTEMS["three-body"]
    with pytest.raises(InputError, match=r"four-spring.*five-spring, three-body"):
        particle_system("four-spring")
    with pytest.raises(InputError, match="at least one trajectory"):
        FiveSpring().simulate(0, 10, seed=0)


@pytest.mark.parametrize(
    ("name", "particles", "dim"), [("five-spring", 5, 3), ("three-body", 3, 2)]
)
def test_datasets_load_with_the_documented_shapes(name, particles, dim):
    splits = _make_particles().SPLITS[name]
    for split, (size, seed) in splits.items():
        traj = Trajectories.load(DATA / f"{name}-{split}.npz")
        assert traj.system == name and traj.shape == (size, 50, particles, dim)
        assert traj.dt == pytest.approx(0.1)
        assert traj.info["seed"] == seed and traj.info["split"] == split
        assert np.array_equal(traj.masses, np.ones(particles))
        energy_drift, momentum_drift = _drift(traj)
        assert energy_drift <= 1e-6 and momentum_drift <= 1e-10
    seeds = [seed for _, seed in splits.values()]
    assert len(set(seeds)) == len(seeds)


@pytest.mark.parametrize("name", ["five-spring", "three-body"])
def test_make_particles_reproduces_a_split_bit_for_bit(name):
    module = _make_particles()
    stored = Trajectories.load(DATA / f"{name}-val.npz")
    again = module.build(name, "val", 2)
    for key in ("positions", "velocities", "couplings", "potential"):
        assert np.array_equal(getattr(again, key), getattr(stored, key)[:2]), key
    assert again.dt == stored.dt and np.array_equal(again.masses, stored.masses)
