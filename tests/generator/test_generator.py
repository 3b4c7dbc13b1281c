"""The diffusion generator: equivariance, the centre-of-mass subspace, the feasibility
prior, guided sampling, training and sampling on rMD17 malonaldehyde, and the CLI."""

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from conftest import DATA
from scipy.spatial.transform import Rotation

from sapis.generator.diffusion import Diffusion, alpha_bar
from sapis.generator.model import Generator, molecule_frames
from sapis.generator.priors import PairRanges, pair_lengths
from sapis.generator.settings import GeneratorConfig
from sapis.io import read_rmd17
from sapis.surrogate.guidance import energy_variance_gradient


@pytest.fixture(scope="module")
def malonaldehyde() -> list[Atoms]:
    return read_rmd17(DATA / "rmd17_malonaldehyde_train_01.npz")


def _random_weights(diffusion: Diffusion) -> Diffusion:
    """Float64, with every weight random (the position step starts at zero otherwise,
    which would make any equivariance test pass trivially)."""
    torch.manual_seed(0)
    diffusion.double()
    with torch.no_grad():
        for p in diffusion.net.parameters():
            p.normal_(0.0, 0.3)
    return diffusion


@pytest.fixture(scope="module")
def untrained(malonaldehyde) -> Generator:
    reference, positions, _ = molecule_frames(malonaldehyde[:50])
    return Generator.new(reference, positions, GeneratorConfig(hidden=16, layers=3))


def test_score_network_is_e3_and_permutation_equivariant_in_float64(malonaldehyde):
    reference, positions, _ = molecule_frames(malonaldehyde[:50])
    gen = Generator.new(reference, positions, GeneratorConfig(hidden=16, layers=3))
    diffusion = _random_weights(gen.diffusion)
    rng = np.random.default_rng(1)
    x = diffusion.project(torch.as_tensor(rng.normal(size=(3, 9, 3))))
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    eps = diffusion.eps(x, t)
    assert eps.abs().max() > 1e-2  # not trivially zero

    for det in (1, -1):  # rotation, and rotation with reflection
        q = torch.as_tensor(Rotation.random(random_state=2 + det).as_matrix()) * det
        torch.testing.assert_close(diffusion.eps(x @ q.T, t), eps @ q.T, atol=1e-6, rtol=0)
    # translation: the network sees differences only, its output ignores a shift
    shifted = diffusion.net(
        x + torch.tensor([1.5, -2.0, 0.7]), t, diffusion.species, diffusion.bonded
    )
    torch.testing.assert_close(
        shifted, diffusion.net(x, t, diffusion.species, diffusion.bonded), atol=1e-6, rtol=0
    )
    # permutation: relabel the atoms, their types, masses and bond graph together
    perm = torch.as_tensor(rng.permutation(9))
    permuted = Diffusion(
        diffusion.net,
        diffusion.species[perm],
        diffusion.bonded[perm][:, perm],
        diffusion.masses[perm],
        diffusion.scale,
        diffusion.ranges,
    ).double()
    torch.testing.assert_close(permuted.eps(x[:, perm], t), eps[:, perm], atol=1e-6, rtol=0)


def test_noise_and_samples_stay_in_the_zero_centre_of_mass_subspace(untrained):
    diffusion = untrained.diffusion
    masses = diffusion.masses.double()
    x = diffusion.project(torch.randn(4, 9, 3, dtype=torch.float64))
    assert (masses[None, :, None] * x).sum(1).abs().max() < 1e-10
    samples = untrained.sample(8, seed=3)
    for atoms in samples:
        assert np.abs(atoms.get_center_of_mass()).max() < 1e-6
        assert atoms.info["source"] == "generator"


def test_schedule_is_variance_preserving_and_monotone():
    t = torch.linspace(0, 1, 101)
    ab = alpha_bar(t)
    assert ab[0] > 0.999 and ab[-1] < 1e-4
    assert torch.all(ab[1:] <= ab[:-1])


def test_prior_is_zero_on_the_data_and_names_violations(malonaldehyde):
    reference, positions, _ = molecule_frames(malonaldehyde[:200])
    gen = Generator.new(reference, positions, GeneratorConfig())
    ranges = PairRanges.from_dict(gen.meta["ranges"])
    assert ranges.satisfied(positions).all()
    x = torch.as_tensor(positions[:5])
    assert torch.all(ranges.penalty(x) == 0)
    i, j = ranges.bonded[0]
    stretched = positions[:1].copy()
    stretched[0, j] += (stretched[0, j] - stretched[0, i]) * 0.5  # bond 50 % longer
    assert not ranges.satisfied(stretched)[0]
    assert ranges.penalty(torch.as_tensor(stretched)).item() > 0.01
    # the stretch hinge is convex (no Jensen gap): R at a mean is at most the mean of R
    a, b = torch.as_tensor(stretched), torch.as_tensor(positions[1:2])
    upper = slice(0, len(ranges.bonded))
    mid = ranges.residual((a + b) / 2)[:, upper]
    assert torch.all(
        mid <= (ranges.residual(a)[:, upper] + ranges.residual(b)[:, upper]) / 2 + 1e-12
    )


def test_energy_variance_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    c = rng.uniform(0.5, 2.0, size=3)  # three members: E_k = c_k Σ x², F_k = -2 c_k x
    x = rng.normal(size=(2, 4, 3))

    def members(x):
        e = c[:, None] * (x**2).sum((1, 2))[None]
        f = -2 * c[:, None, None, None] * x[None]
        return e, f

    grad = energy_variance_gradient(*members(x))
    h = 1e-6
    for idx in [(0, 1, 2), (1, 3, 0)]:
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        fd = (members(xp)[0].var(axis=0) - members(xm)[0].var(axis=0))[idx[0]] / (2 * h)
        assert grad[idx] == pytest.approx(fd, rel=1e-5)


# --- trained on rMD17 malonaldehyde ---------------------------------------------------------

#: Optimiser steps of the trained fixtures (about 1.5 min each on 2 CPU cores).
STEPS = 3000


def _train(frames, out: Path) -> Generator:
    from sapis.generator.training import train_generator

    config = GeneratorConfig(train_steps=STEPS)
    gen, record = train_generator(frames, out, config)
    assert record.steps == STEPS and record.frames == len(frames) and not record.warm_start
    return gen


@pytest.fixture(scope="module")
def trained_dir(malonaldehyde, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("prior")
    _train(malonaldehyde[:500], folder)
    return folder


@pytest.fixture(scope="module")
def trained(trained_dir) -> Generator:
    return Generator.load(trained_dir)


def test_trained_generator_samples_valid_molecules_with_the_datas_bond_lengths(
    trained, malonaldehyde
):
    """≥ 90 % valid, and bond lengths distributed like the data's: the Wasserstein-1
    distance per bond, averaged over bonds, below the bonds' mean thermal spread (std,
    0.03–0.06 Å at 500 K). For equal-width distributions W1 is the shift between them, so
    this asks for samples from 500 K malonaldehyde, not just any bonded C3H4O2: a
    half-trained model (86 % valid) sits at 1.5× the spread."""
    from sapis.generator.quality import assess

    _, data, _ = molecule_frames(malonaldehyde[:500])
    quality, samples = assess(trained, data, n=500, seed=11)
    assert quality.valid_fraction >= 0.9, quality
    spread = pair_lengths(data, np.array(trained.bonds)).std(axis=0)
    assert quality.bond_w1_mean < spread.mean(), (quality.bond_w1, spread)
    assert np.isfinite(samples).all() and np.abs(samples).max() < 10  # no runaway atoms


def test_the_prior_at_sampling_time_raises_validity(trained, malonaldehyde):
    """The same trained model sampled with and without the feasibility pulls on x̂0 over
    the last 30 % of the sampling: the pulls must remove a measurable share of the
    invalid samples (500 samples each, same noise)."""
    from sapis.generator.quality import assess

    _, data, _ = molecule_frames(malonaldehyde[:500])
    config = dict(trained.meta["config"])
    try:
        trained.meta["config"].update(feasibility_steps=0)
        without, _ = assess(trained, data, n=500, seed=13)
    finally:
        trained.meta["config"] = config
    with_pulls, _ = assess(trained, data, n=500, seed=13)
    invalid = 1 - without.valid_fraction, 1 - with_pulls.valid_fraction
    assert invalid[1] <= 0.6 * invalid[0] and invalid[0] - invalid[1] >= 0.01, (without, with_pulls)


def test_the_feasibility_prior_pulls_the_tweedie_estimate_into_the_observed_ranges(
    malonaldehyde, tmp_path
):
    """What the prior optimises: ‖R(x̂0)‖², lower when trained with it than without, on
    the same steps and data. (Its effect on the validity of samples is measured in
    bench/generator_sources.py: at short budgets a strong prior lowers it.)"""
    from sapis.generator.training import train_generator

    penalties = {}
    for weight in (0.0, 10.0):
        config = GeneratorConfig(prior_weight=weight, train_steps=400)
        _, record = train_generator(malonaldehyde[:200], tmp_path / str(weight), config)
        penalties[weight] = record.penalty
    assert penalties[10.0] < 0.7 * penalties[0.0], penalties


def test_guided_samples_climb_the_guide_and_stay_valid(trained):
    """A guide rewarding a long O–O distance moves the samples' distance up; the
    feasibility pulls keep them valid."""
    from sapis.validity import ValidityFilter

    numbers = trained.numbers
    i, j = np.flatnonzero(numbers == 8)[:2]

    def guide(x: np.ndarray) -> np.ndarray:
        g = np.zeros_like(x)
        d = x[:, i] - x[:, j]
        g[:, i], g[:, j] = d, -d
        return g

    base = trained.sample(200, seed=5)
    trained.meta["config"].update(guidance=0.05, guide_from=0.3, feasibility_steps=3)
    try:
        steered = trained.sample(200, seed=5, guide=guide)
    finally:
        trained.meta["config"].update(guidance=0.0)
    check = ValidityFilter.from_reference(trained.reference())
    length = lambda images: np.mean([a.get_distance(i, j) for a in images])  # noqa: E731
    assert length(steered) > length(base) + 0.05
    assert len(check.split(steered)[0]) >= 0.8 * 200


def test_training_warm_starts_from_the_folder_and_widens_the_prior(
    trained_dir, malonaldehyde, tmp_path
):
    import shutil

    from sapis.generator.training import train_generator

    folder = tmp_path / "gen"
    shutil.copytree(trained_dir, folder)
    before = PairRanges.from_dict(Generator.load(folder).meta["ranges"])
    config = Generator.load(folder).config
    gen, record = train_generator(malonaldehyde[500:700], folder, config, max_steps=5)
    assert record.warm_start and len(gen.meta["trainings"]) == 2
    after = PairRanges.from_dict(gen.meta["ranges"])
    assert np.all(after.hi >= before.hi) and np.all(after.floor <= before.floor)
    # another network size starts afresh
    bigger = config.model_copy(update={"hidden": 24})
    _, fresh = train_generator(malonaldehyde[:50], folder, bigger, max_steps=2)
    assert not fresh.warm_start


def test_molecule_frames_refuses_structures_of_another_molecule(malonaldehyde):
    from ase.build import molecule

    from sapis.errors import InputError

    _reference, positions, skipped = molecule_frames(
        [*malonaldehyde[:5], molecule("H2O")], reference=malonaldehyde[0]
    )
    assert len(positions) == 5 and skipped == {"other molecule": 1}
    with pytest.raises(InputError, match="none of the 1 structures is the molecule C3H4O2"):
        molecule_frames([molecule("H2O")], reference=malonaldehyde[0])
