"""The normalizing flow: exact inverse, exact log-determinant against a brute-force
Jacobian, E(3) and permutation invariance of the density, the centre of mass, the force
field, and a flow trained on rMD17 malonaldehyde that refuses another molecule."""

import numpy as np
import pytest
import torch
from ase import Atoms
from conftest import DATA
from scipy.spatial.transform import Rotation

from sapis.errors import InputError
from sapis.generator.flow import AugmentedFlow, gram_schmidt
from sapis.generator.flow_model import FlowGenerator
from sapis.generator.forcefield import LightForceField
from sapis.generator.kinds import load_generator
from sapis.generator.model import molecule_frames
from sapis.generator.settings import GeneratorConfig
from sapis.generator.training import train_generator
from sapis.io import read_rmd17
from sapis.validity import ValidityFilter, bond_graph

SPECIES = torch.tensor([0, 1, 0, 2, 1])
MASSES = torch.tensor([12.011, 1.008, 12.011, 15.999, 1.008], dtype=torch.float64)


def _bonded(species: torch.Tensor) -> torch.Tensor:
    n = len(species)
    bonded = torch.zeros((n, n))
    for i, j in [(0, 1), (0, 2), (2, 3), (2, 4)]:
        bonded[i, j] = bonded[j, i] = 1.0
    return bonded


def _flow(perm: list[int] | None = None) -> AugmentedFlow:
    """A tiny float64 flow on 5 atoms with every weight perturbed (an untrained flow is
    the identity, which would make some checks pass trivially)."""
    perm = perm or list(range(5))
    bonded = _bonded(SPECIES)[perm][:, perm]
    torch.manual_seed(0)
    flow = AugmentedFlow(
        SPECIES[perm],
        bonded,
        MASSES[perm],
        1.3,
        3,
        hidden=12,
        layers=2,
        blocks=2,
        bins=5,
        stiffness=2.0,
    ).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return flow


def _subspace_basis(masses: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis ``[3N, 3N−3]`` of {x : Σ m_i x_i = 0}."""
    n = len(masses)
    m = torch.zeros((3 * n, 3), dtype=torch.float64)
    for c in range(3):
        m[c::3, c] = masses
    q, _ = torch.linalg.qr(torch.cat([m, torch.eye(3 * n, dtype=torch.float64)], dim=1))
    return q[:, 3 : 3 * n]


def test_gram_schmidt_gives_orthonormal_frames_that_turn_with_reflections():
    v = torch.randn((4, 3, 3), dtype=torch.float64)
    frames = gram_schmidt(v)
    eye = torch.eye(3, dtype=torch.float64).expand(4, 3, 3)
    torch.testing.assert_close(frames @ frames.transpose(1, 2), eye, atol=1e-12, rtol=0)
    q = torch.as_tensor(Rotation.random(random_state=3).as_matrix()) * -1.0  # with reflection
    torch.testing.assert_close(gram_schmidt(v @ q.T), frames @ q.T, atol=1e-12, rtol=0)


def test_sampling_inverts_exactly_and_keeps_the_centre_of_mass_at_zero():
    flow = _flow()
    x, a, logq = flow.sample(6, torch.Generator().manual_seed(1))
    assert flow.centre(x).abs().max() < 1e-12
    zx, za, logdet = flow.to_base(x, a)
    x2, a2, logdet2 = flow.from_base(zx, za)
    assert (x2 - x).abs().max() < 1e-5 and (a2 - a).abs().max() < 1e-5
    torch.testing.assert_close(logdet2, logdet, atol=1e-6, rtol=0)
    # the density the sample came with is the density evaluated at it
    torch.testing.assert_close(flow.joint_log_prob(x, a), logq, atol=1e-6, rtol=0)
    assert logdet.abs().min() > 1e-2  # random weights: not the identity


def test_log_determinant_equals_a_brute_force_jacobian_on_the_subspace():
    flow = _flow()
    x, a, _ = flow.sample(2, torch.Generator().manual_seed(2))
    basis = _subspace_basis(MASSES)
    n = flow.n_atoms

    def to_base(v: torch.Tensor) -> torch.Tensor:
        xs = (basis @ v[: 3 * n - 3]).reshape(1, n, 3)
        zx, za, _ = flow.to_base(xs, v[3 * n - 3 :].reshape(1, n, 3))
        return torch.cat([basis.T @ zx.reshape(-1), za.reshape(-1)])

    for k in range(2):
        point = torch.cat([basis.T @ x[k].reshape(-1), a[k].reshape(-1)])
        jacobian = torch.autograd.functional.jacobian(to_base, point)
        assert jacobian.shape == (6 * n - 3, 6 * n - 3)
        brute = torch.linalg.slogdet(jacobian)[1]
        exact = flow.to_base(x[k : k + 1], a[k : k + 1])[2][0]
        assert abs(float(brute - exact.detach())) < 1e-6


def test_log_density_is_invariant_under_rotation_reflection_translation_permutation():
    flow = _flow()
    x, a, _ = flow.sample(4, torch.Generator().manual_seed(3))
    joint = flow.joint_log_prob(x, a)
    noise = torch.randn((8, *x.shape), generator=torch.Generator().manual_seed(4))
    noise = noise.double()
    marginal = flow.log_prob(x, noise)
    shift = torch.tensor([1.7, -0.4, 2.2], dtype=torch.float64)
    for det in (1.0, -1.0):
        q = torch.as_tensor(Rotation.random(random_state=5).as_matrix()) * det
        moved = flow.joint_log_prob(x @ q.T + shift, a @ q.T + shift)
        torch.testing.assert_close(moved, joint, atol=1e-6, rtol=0)
        torch.testing.assert_close(
            flow.log_prob(x @ q.T + shift, noise @ q.T), marginal, atol=1e-6, rtol=0
        )
    perm = [2, 4, 0, 3, 1]  # the same molecule with its atoms listed in another order
    permuted = _flow(perm)
    own = permuted.state_dict()  # its molecule's buffers, the other flow's weights
    molecule = {
        k: v for k, v in own.items() if k.startswith(("species", "bonded", "masses", "prior."))
    }
    permuted.load_state_dict(flow.state_dict() | molecule)
    torch.testing.assert_close(
        permuted.joint_log_prob(x[:, perm], a[:, perm]), joint, atol=1e-6, rtol=0
    )


def test_marginal_density_estimate_integrates_the_augmented_coordinates_out():
    # an untrained flow is the identity: q(x, a) is the base, so the importance weights
    # are all equal and the estimate is exactly the harmonic prior's density
    flow = AugmentedFlow(SPECIES, _bonded(SPECIES), MASSES, 1.0, 3, blocks=1, stiffness=2.0)
    flow = flow.double()
    x = flow.prior.sample(3, torch.Generator().manual_seed(0), torch.float64)
    noise = torch.randn((4, 3, 5, 3), dtype=torch.float64)
    torch.testing.assert_close(flow.log_prob(x, noise), flow.prior.log_prob(x), atol=1e-10, rtol=0)


def test_harmonic_prior_is_a_normalised_gaussian_on_the_subspace():
    flow = AugmentedFlow(SPECIES, _bonded(SPECIES), MASSES, 1.0, 3, stiffness=2.0).double()
    prior = flow.prior
    x = prior.sample(20000, torch.Generator().manual_seed(0), torch.float64)
    assert flow.centre(x).abs().max() < 1e-12  # in the subspace
    # a tree bond's mean square length is 3/k (less the weak confinement's share);
    # atoms two bonds apart are twice as far in square
    d2 = ((x[:, 0] - x[:, 1]) ** 2).sum(-1).mean()
    assert 1.3 < float(d2) < 1.5
    assert ((x[:, 1] - x[:, 3]) ** 2).sum(-1).mean() > 1.8 * d2
    # the normaliser: the density of the subspace Gaussian from its covariance
    basis = _subspace_basis(MASSES)
    cov = torch.einsum("bi,bj->ij", x.reshape(len(x), -1) @ basis, x.reshape(len(x), -1) @ basis)
    cov = cov / len(x)
    u = x[:5].reshape(5, -1) @ basis
    gauss = torch.distributions.MultivariateNormal(torch.zeros(12, dtype=torch.float64), cov)
    assert (gauss.log_prob(u) - prior.log_prob(x[:5])).abs().max() < 0.3


def test_force_field_is_lowest_near_the_reference_geometry(malonaldehyde):
    reference, positions, _ = molecule_frames(malonaldehyde[:100])
    ff = LightForceField.from_data(reference.numbers, sorted(bond_graph(reference)), positions)
    n = len(reference)
    assert len(ff.bonds) == 8 and len(ff.angles) > 0
    assert not any((i, j) in {tuple(b) for b in ff.bonds} for i, j in ff.pairs)
    x = torch.as_tensor(positions[:20])
    rng = np.random.default_rng(0)
    noisy = x + torch.as_tensor(rng.normal(scale=0.15, size=(20, n, 3)))
    assert ff.energy(noisy).mean() > ff.energy(x).mean() + 0.5
    squashed = x * 0.6  # clashes
    assert ff.energy(squashed).mean() > ff.energy(x).mean() + 5.0
    again = LightForceField.from_dict(ff.to_dict())
    torch.testing.assert_close(again.energy(x), ff.energy(x))
    with pytest.raises(ValueError, match="atomic numbers \\[92\\]"):
        LightForceField.from_data(np.array([92, 1]), [(0, 1)], positions[:1, :2])


@pytest.fixture(scope="module")
def malonaldehyde() -> list[Atoms]:
    return read_rmd17(DATA / "rmd17_malonaldehyde_train_01.npz")


@pytest.fixture(scope="module")
def trained(malonaldehyde, tmp_path_factory) -> FlowGenerator:
    out = tmp_path_factory.mktemp("flow")
    config = GeneratorConfig(kind="flow", batch_size=64, learning_rate=2e-3)
    _, record = train_generator(malonaldehyde, out, config, max_steps=TRAIN_STEPS)
    assert record.kind == "flow" and record.steps == TRAIN_STEPS
    return load_generator(out)


#: Optimiser steps of the short training (a number of steps, not of seconds).
TRAIN_STEPS = 4000


@pytest.mark.slow
def test_short_training_gives_valid_conformers_and_a_density(trained, malonaldehyde):
    reference, positions, _ = molecule_frames(malonaldehyde)
    samples = trained.sample(200, seed=1, density=True)
    check = ValidityFilter.from_reference(reference, min_dist=0.7)
    valid, rejected = check.split(samples)
    assert len(valid) / len(samples) >= 0.9, rejected
    data = trained.log_density(positions[:100])
    noise = trained.log_density(
        positions[:100] + np.random.default_rng(0).normal(scale=0.3, size=(100, 9, 3))
    )
    assert np.mean(data) > np.mean(noise) + 10  # the data is far likelier than its blur
    logp = np.array([a.info["log_density"] for a in samples])
    assert np.isfinite(logp).all()


def test_a_flow_refuses_a_molecule_it_was_not_trained_on(malonaldehyde, tmp_path):
    config = GeneratorConfig(
        kind="flow", batch_size=8, flow={"blocks": 1, "hidden": 8, "layers": 1, "bins": 4}
    )
    gen, _ = train_generator(malonaldehyde[:20], tmp_path, config, max_steps=3)
    uracil = read_rmd17(DATA / "rmd17_uracil_train_01.npz")[:3]
    with pytest.raises(InputError, match="this flow models C3H4O2"):
        gen.density_of(uracil)
    broken = malonaldehyde[0].copy()
    broken.positions[0] += 3.0  # a bond broken: not the molecule it knows
    with pytest.raises(InputError, match="bond graph"):
        gen.density_of([broken])
    with pytest.raises(InputError, match="9 atoms"):
        gen.log_density(np.zeros((2, 12, 3)))
    assert np.isfinite(gen.density_of(malonaldehyde[:2])).all()
