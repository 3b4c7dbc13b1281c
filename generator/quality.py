"""How good a generator's samples are: validity, speed, and bond-length distributions
against the data (Wasserstein-1 per bond), with a plot to look at."""

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from scipy.stats import wasserstein_distance

from sapis.generator.model import Generator
from sapis.generator.priors import pair_lengths
from sapis.validity import ValidityFilter


@dataclass
class SampleQuality:
    """``n`` samples: valid fraction, rejections by kind, ms per sample, and the
    Wasserstein-1 distance (Å) of each bond's length distribution to the data's."""

    n: int
    valid_fraction: float
    rejected: dict[str, int]
    ms_per_sample: float
    bond_w1: list[float] = field(default_factory=list)

    @property
    def bond_w1_mean(self) -> float:
        return float(np.mean(self.bond_w1)) if self.bond_w1 else float("nan")

    @property
    def bond_w1_max(self) -> float:
        return float(np.max(self.bond_w1)) if self.bond_w1 else float("nan")


def bond_w1(generated: np.ndarray, data: np.ndarray, bonds: list[tuple[int, int]]) -> list[float]:
    """W1 (Å) between generated and data lengths of each bond (positions ``[n, atoms, 3]``)."""
    pairs = np.array(bonds, dtype=int).reshape(-1, 2)
    g, d = pair_lengths(generated, pairs), pair_lengths(data, pairs)
    return [float(wasserstein_distance(g[:, k], d[:, k])) for k in range(len(pairs))]


def assess(
    generator: Generator, data: np.ndarray, n: int = 500, seed: int = 0, min_dist: float = 0.7
) -> tuple[SampleQuality, np.ndarray]:
    """Sample ``n`` structures and compare them with ``data`` ``[frames, atoms, 3]`` (Å);
    returns the figures and the samples' positions."""
    start = time.perf_counter()
    positions = generator.sample_positions(n, seed=seed)
    ms = 1000 * (time.perf_counter() - start) / max(n, 1)
    check = ValidityFilter.from_reference(generator.reference(), min_dist=min_dist)
    valid, rejected = check.split([Atoms(generator.numbers, p) for p in positions])
    quality = SampleQuality(
        n=n,
        valid_fraction=len(valid) / max(n, 1),
        rejected=rejected,
        ms_per_sample=ms,
        bond_w1=bond_w1(positions, data, generator.bonds),
    )
    return quality, positions


def plot_bond_lengths(
    generated: np.ndarray,
    data: np.ndarray,
    numbers: np.ndarray,
    bonds: list[tuple[int, int]],
    path: str | Path,
    labels: tuple[str, str] = ("data", "generated"),
) -> Path:
    """Histograms of every bond's length, data against samples, one panel per bond."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ase.data import chemical_symbols

    pairs = np.array(bonds, dtype=int).reshape(-1, 2)
    g, d = pair_lengths(generated, pairs), pair_lengths(data, pairs)
    cols = min(4, len(pairs))
    rows = -(-len(pairs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), squeeze=False)
    for k, (i, j) in enumerate(pairs):
        ax = axes.flat[k]
        lo, hi = min(d[:, k].min(), g[:, k].min()), max(d[:, k].max(), g[:, k].max())
        bins = np.linspace(lo, hi, 40)
        ax.hist(d[:, k], bins, density=True, alpha=0.5, label=labels[0])
        ax.hist(g[:, k], bins, density=True, histtype="step", lw=1.5, label=labels[1])
        name = f"{chemical_symbols[numbers[i]]}{i}–{chemical_symbols[numbers[j]]}{j}"
        ax.set_title(f"{name}  W1 {wasserstein_distance(g[:, k], d[:, k]):.3f} Å", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(pairs) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("bond length (Å)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
