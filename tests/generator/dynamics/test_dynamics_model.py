"""The dynamics model: its symmetries, its exact linear prior, training lowering each
prior's residual, saving, and refusing what it cannot continue."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from sapis.errors import InputError
from sapis.generator.dynamics.data import Trajectories
from sapis.generator.dynamics.model import DynamicsModel
from sapis.generator.dynamics.settings import DynamicsConfig
from sapis.generator.dynamics.systems import SYSTEMS
from sapis.generator.dynamics.training import evaluate, train_dynamics, window_batch

TINY = dict(frames=4, hidden=16, layers=2, steps=8)


def molecule_like(seed: int = 0, n: int = 6, s: int = 6, t: int = 8) -> Trajectories:
    """Random 'molecule' trajectories: unequal masses, three elements, a fixed graph."""
    rng = np.random.default_rng(seed)
    couplings = np.zeros((n, n))
    for i in range(n - 1):
        couplings[i, i + 1] = couplings[i + 1, i] = 1.0
    return Trajectories(
        "molecule",
        rng.normal(size=(s, t, n, 3)),
        rng.normal(size=(s, t, n, 3)),
        rng.uniform(1.0, 16.0, n),
        np.broadcast_to(couplings, (s, n, n)).copy(),
        np.array([1, 6, 8, 1, 6, 1][:n]),
        rng.normal(size=(s, t)),
        0.5,
    )


def randomised(model: DynamicsModel, scale: float = 0.3) -> DynamicsModel:
    """The model in float64 with every weight random (zero-initialised ones included)."""
    model.diffusion.double()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.diffusion.net.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def sampleable(model: DynamicsModel) -> DynamicsModel:
    """Small random weights around the readout's start ("the noise is the noisy
    residual"), so that 8 denoising steps stay finite, used as the averaged weights."""
    randomised(model, scale=0.05)
    with torch.no_grad():
        model.diffusion.net.readout[0, 0] += 1.0
        model.diffusion.net.readout[1, 1] += 1.0
    model.ema = {k: v.clone() for k, v in model.diffusion.net.state_dict().items()}
    return model


def outputs(model, x0, v0, zx, zv, couplings):
    t = torch.full((len(x0),), 0.4, dtype=torch.float64)
    ex, ev, terms = model.diffusion.eps(zx, zv, t, x0, v0, couplings)
    return ex, ev, terms


@pytest.fixture(scope="module")
def window():
    rng = np.random.default_rng(1)
    n = 6
    x0, v0 = (torch.as_tensor(rng.normal(size=(2, n, 3))) for _ in range(2))
    zx, zv = (torch.as_tensor(rng.normal(size=(2, TINY["frames"], n, 3))) for _ in range(2))
    couplings = torch.as_tensor(molecule_like().couplings[:2])
    return x0, v0, zx, zv, couplings


@pytest.mark.parametrize("reflect", [False, True])
def test_the_noise_rotates_and_reflects_with_the_window_and_the_pair_terms_do_not(window, reflect):
    model = randomised(DynamicsModel.new(molecule_like(), DynamicsConfig(**TINY)))
    x0, v0, zx, zv, c = window
    q = torch.as_tensor(Rotation.random(random_state=7).as_matrix())
    if reflect:
        q = q @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    ex, ev, terms = outputs(model, x0, v0, zx, zv, c)
    rx, rv, rterms = outputs(model, x0 @ q.T, v0 @ q.T, zx @ q.T, zv @ q.T, c)
    assert ex.abs().max() > 1e-2  # not trivially zero
    assert torch.allclose(rx, ex @ q.T, atol=1e-6)
    assert torch.allclose(rv, ev @ q.T, atol=1e-6)
    assert torch.allclose(rterms, terms, atol=1e-6)


def test_the_noise_ignores_translations_and_a_uniform_boost(window):
    model = randomised(DynamicsModel.new(molecule_like(), DynamicsConfig(**TINY)))
    x0, v0, zx, zv, c = window
    ex, ev, terms = outputs(model, x0, v0, zx, zv, c)
    shift = torch.tensor([3.0, -2.0, 5.0], dtype=torch.float64)
    tx, tv, tterms = outputs(model, x0 + shift, v0 + 0.7 * shift, zx, zv, c)
    assert torch.allclose(tx, ex, atol=1e-6) and torch.allclose(tv, ev, atol=1e-6)
    assert torch.allclose(tterms, terms, atol=1e-6)


def test_the_noise_permutes_with_the_particles():
    data = molecule_like()
    model = randomised(DynamicsModel.new(data, DynamicsConfig(**TINY)))
    rng = np.random.default_rng(2)
    x0, v0 = (torch.as_tensor(rng.normal(size=(2, 6, 3))) for _ in range(2))
    zx, zv = (torch.as_tensor(rng.normal(size=(2, 4, 6, 3))) for _ in range(2))
    c = torch.as_tensor(data.couplings[:2])
    ex, ev, terms = outputs(model, x0, v0, zx, zv, c)
    perm = torch.as_tensor(rng.permutation(6))
    # the permuted model: its particles (masses, elements) in the permuted order
    meta = dict(model.meta)
    meta["masses"] = [model.meta["masses"][k] for k in perm]
    meta["numbers"] = [model.meta["numbers"][k] for k in perm]
    meta["couplings"] = np.array(model.meta["couplings"])[perm][:, perm].tolist()
    permuted = DynamicsModel(meta)
    permuted.diffusion.double()
    permuted.diffusion.net.load_state_dict(model.diffusion.net.state_dict())
    px, pv, pterms = outputs(
        permuted, x0[:, perm], v0[:, perm], zx[:, :, perm], zv[:, :, perm], c[:, perm][:, :, perm]
    )
    assert torch.allclose(px, ex[:, :, perm], atol=1e-6)
    assert torch.allclose(pv, ev[:, :, perm], atol=1e-6)
    assert torch.allclose(pterms, terms[:, :, perm][:, :, :, perm], atol=1e-6)


def test_projected_samples_keep_momentum_and_a_straight_centre_of_mass_to_1e_6():
    data = molecule_like()
    model = DynamicsModel.new(data, DynamicsConfig(**TINY, momentum="project"))
    sampleable(model)
    x0, v0 = data.positions[:, 0], data.velocities[:, 0] + 0.3  # a moving centre of mass
    w = model.sample(x0, v0, seed=0)
    p = w.momentum()
    assert np.abs(p - p[:, :1]).max() < 1e-6 * max(1.0, np.abs(p).max())
    m = data.masses[:, None]
    com = (m * w.positions).sum(-2) / m.sum()
    steps = np.arange(w.shape[1])[None, :, None] * w.dt
    assert np.abs(com - (com[:, :1] + steps * p[:, :1] / m.sum())).max() < 1e-6
    free = DynamicsModel.new(data, DynamicsConfig(**TINY))  # no prior: not held
    sampleable(free)
    q = free.sample(x0, v0, seed=0).momentum()
    assert np.abs(q - q[:, :1]).max() > 1e-3


@pytest.fixture(scope="module")
def springs():
    return SYSTEMS["five-spring"].simulate(24, 12, seed=5)


@pytest.mark.parametrize(
    "prior, settings",
    [
        ("momentum", dict(momentum="penalty")),
        ("kinematic", dict(kinematic_weight=1.0)),
        ("energy", dict(energy="naive")),
        ("energy", dict(energy="reduced")),
    ],
)
def test_a_short_training_lowers_the_prior_residual(springs, tmp_path, prior, settings):
    """Below the untrained model's, and below the same training without the prior."""
    config = DynamicsConfig(**TINY, batch_size=32, learning_rate=3e-3, **settings)
    windows = springs.windows(config.frames + 1, stride=2)
    before = evaluate(DynamicsModel.new(springs, config), windows, n=128)
    trained, record = train_dynamics(springs, tmp_path / "with", config, max_steps=150)
    after = evaluate(trained, windows, n=128)
    free = {"momentum": "none", "kinematic_weight": 0.0, "energy": "none"}
    baseline, _ = train_dynamics(
        springs, tmp_path / "without", config.model_copy(update=free), max_steps=150
    )
    # the prior's residual of the model trained without it, on the same draws
    without = evaluate(baseline, windows, n=128, measure=config)
    assert after[prior] < before[prior], (before, after)
    assert after[prior] < without[prior], (after, without)
    assert after["denoise"] < before["denoise"]
    assert record.steps == 150 and (tmp_path / "with" / "dynamics.json").is_file()


def test_a_saved_model_samples_the_same_after_loading(springs, tmp_path):
    config = DynamicsConfig(**TINY, batch_size=16)
    model, _ = train_dynamics(springs, tmp_path, config, max_steps=5)
    a = model.sample(springs.positions[:3, 0], springs.velocities[:3, 0], springs.couplings[:3])
    b = DynamicsModel.load(tmp_path).sample(
        springs.positions[:3, 0], springs.velocities[:3, 0], springs.couplings[:3]
    )
    assert np.array_equal(a.positions, b.positions) and a.shape == (3, 5, 5, 3)
    again, record = train_dynamics(springs, tmp_path, config, max_steps=5)
    assert record.warm_start and len(again.meta["trainings"]) == 2


def test_bad_starts_and_settings_are_refused(springs):
    model = DynamicsModel.new(springs, DynamicsConfig(**TINY))
    x0, v0, c = springs.positions[:2, 0], springs.velocities[:2, 0], springs.couplings[:2]
    with pytest.raises(InputError, match="5 particles in 3 dimensions"):
        model.sample(x0[:, :3], v0[:, :3], c[:, :3, :3])
    three = SYSTEMS["three-body"].simulate(2, 6, seed=0)
    with pytest.raises(InputError, match="particles in 3 dimensions"):
        model.sample(three.positions[:, 0], three.velocities[:, 0], three.couplings)
    bad = x0.copy()
    bad[0, 1, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        model.sample(bad, v0, c)
    mol = DynamicsModel.new(molecule_like(), DynamicsConfig(**TINY))
    data = molecule_like()
    other = data.couplings[:2].copy()
    other[:, 0, 5] = other[:, 5, 0] = 1.0
    with pytest.raises(InputError, match="bond graph differs"):
        mol.sample(data.positions[:2, 0], data.velocities[:2, 0], other)
    with pytest.raises(InputError, match="closed form"):
        DynamicsModel.new(molecule_like(), DynamicsConfig(**TINY, energy="naive"))
    with pytest.raises(InputError, match="at least 13 frames"):
        DynamicsModel.new(springs, DynamicsConfig(**{**TINY, "frames": 12}))
    with pytest.raises(InputError, match="NaN"):
        Trajectories(
            "five-spring",
            np.full((1, 3, 5, 3), np.nan),
            np.zeros((1, 3, 5, 3)),
            np.ones(5),
            np.zeros((1, 5, 5)),
            np.zeros(5),
            np.zeros((1, 3)),
            0.1,
        )


def test_window_batches_are_the_windows(springs):
    w = springs.windows(5, stride=3)
    x, v, c, u = window_batch(w, [0, 1])
    assert x.shape == v.shape == (2, 5, 5, 3) and c.shape == (2, 5, 5) and u.shape == (2, 5)
    assert torch.equal(x[0], torch.as_tensor(springs.positions[0, :5]))


@pytest.mark.parametrize("momentum", ["none", "project"])
def test_a_runaway_estimate_is_held_to_twice_the_longest_residual_seen(springs, momentum):
    """Large random weights make x̂0 run away over the sampling steps (NaN without the
    limit); samples stay finite and within the limit (the projection after it may
    lengthen a vector by the mean it removes), and the projection still holds."""
    model = randomised(DynamicsModel.new(springs, DynamicsConfig(**TINY, momentum=momentum)))
    model.ema = {k: v.clone() for k, v in model.diffusion.net.state_dict().items()}
    limit = model.meta["scales"]["clip"] * (1 + 1e-6) * (2 if momentum == "project" else 1)
    w = model.sample(springs.positions[:4, 0], springs.velocities[:4, 0], springs.couplings[:4])
    zx, zv = model.diffusion.residuals(torch.as_tensor(w.positions), torch.as_tensor(w.velocities))
    assert torch.linalg.norm(zx, dim=-1).max() <= limit
    assert torch.linalg.norm(zv, dim=-1).max() <= limit
    if momentum == "project":
        p = w.momentum()
        assert np.abs(p - p[:, :1]).max() < 1e-6
