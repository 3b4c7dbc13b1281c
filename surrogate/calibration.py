"""Calibration of ensemble spread against observed errors.

The raw spread of an atom is ``u = |std_K(F)|`` (norm over x, y, z of the per-component
standard deviation across members; DP-GEN's max force deviation is its maximum over
atoms). Each force error component is modelled as Gaussian with
``sigma = a * u**b / sqrt(3)``, fitted by maximum likelihood on the validation split:
``b = 1`` is a plain scale, a free ``b`` a power law, kept only when it lowers the
negative log-likelihood by more than one unit (Akaike's rule for one extra parameter).
The calibrated spread ``a * u**b`` is again an RMS error norm per atom, so trust windows
on it keep their meaning (eV/Å). Energies get a scale only.
"""

from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, stats

_FLOOR = 1e-9


@dataclass
class Calibration:
    """Spread-to-error map and how well it holds on the validation split."""

    force_scale: float = 1.0
    force_power: float = 1.0
    energy_scale: float = 1.0
    n_structures: int = 0
    n_atoms: int = 0
    miscalibration_area_raw: float = float("nan")
    miscalibration_area: float = float("nan")
    spearman_structures: float = float("nan")  # max force deviation vs max force error
    spearman_atoms: float = float("nan")  # per-atom spread vs per-atom error norm
    nll_scale: float = float("nan")
    nll_power: float = float("nan")

    def forces(self, spread: np.ndarray) -> np.ndarray:
        """Calibrated per-atom spread (expected RMS error norm, eV/Å)."""
        return self.force_scale * np.maximum(spread, _FLOOR) ** self.force_power

    def energy(self, std: np.ndarray) -> np.ndarray:
        """Calibrated energy uncertainty (eV)."""
        return self.energy_scale * np.asarray(std)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Calibration":
        return cls(**data)


def _nll(errors_sq: np.ndarray, sigma: np.ndarray) -> float:
    """Gaussian negative log-likelihood of 3-component errors, per atom, summed."""
    return float(np.sum(3 * np.log(sigma) + errors_sq / (2 * sigma**2)))


def miscalibration_area(errors: np.ndarray, sigma: np.ndarray) -> float:
    """Area between the observed and ideal coverage curves of centred Gaussian intervals.

    ``errors`` are error components, ``sigma`` their predicted standard deviations; 0 is
    perfect, 0.5 the worst possible.
    """
    z = np.abs(np.ravel(errors)) / np.maximum(np.ravel(sigma), _FLOOR)
    expected = np.linspace(0.0, 1.0, 101)
    observed = np.array([np.mean(z <= stats.norm.ppf(0.5 + p / 2)) for p in expected])
    return float(np.trapezoid(np.abs(observed - expected), expected))


def fit_calibration(
    spread: list[np.ndarray],
    force_errors: list[np.ndarray],
    energy_std: np.ndarray,
    energy_errors: np.ndarray,
) -> Calibration:
    """Fit the map on validation structures.

    ``spread[i]`` is structure i's per-atom raw spread (N,), ``force_errors[i]`` its
    ensemble-mean force error (N, 3); ``energy_std``/``energy_errors`` one value per
    structure.
    """
    u = np.maximum(np.concatenate(spread), _FLOOR)
    err = np.concatenate([e.reshape(-1, 3) for e in force_errors])
    err_sq = np.sum(err**2, axis=1)
    scale = float(np.sqrt(np.mean(err_sq / u**2)))
    nll_scale = _nll(err_sq, scale * u / np.sqrt(3))

    def objective(p: np.ndarray) -> float:
        return _nll(err_sq, np.exp(p[0]) * u ** p[1] / np.sqrt(3))

    fit = optimize.minimize(objective, x0=[np.log(scale), 1.0], method="Nelder-Mead")
    cal = Calibration(force_scale=scale, force_power=1.0, nll_scale=nll_scale)
    if fit.success and nll_scale - fit.fun > 1.0 and 0.05 < fit.x[1] < 5.0:
        cal.force_scale, cal.force_power = float(np.exp(fit.x[0])), float(fit.x[1])
    cal.nll_power = float(fit.fun)

    e_std = np.maximum(np.asarray(energy_std, dtype=float), _FLOOR)
    cal.energy_scale = float(np.sqrt(np.mean(np.asarray(energy_errors) ** 2 / e_std**2)))
    cal.n_structures, cal.n_atoms = len(spread), len(u)
    cal.miscalibration_area_raw = miscalibration_area(err, np.repeat(u / np.sqrt(3), 3))
    cal.miscalibration_area = miscalibration_area(err, np.repeat(cal.forces(u) / np.sqrt(3), 3))
    max_dev = np.array([s.max() for s in spread])
    max_err = np.array([np.linalg.norm(e.reshape(-1, 3), axis=1).max() for e in force_errors])
    if len(spread) > 2:
        cal.spearman_structures = float(stats.spearmanr(max_dev, max_err).statistic)
    cal.spearman_atoms = float(stats.spearmanr(u, np.sqrt(err_sq)).statistic)
    return cal


def plot_calibration(
    cal: Calibration, spread: list[np.ndarray], force_errors: list[np.ndarray], path
) -> None:
    """Two panels: max force deviation against max force error (log-log, with the fitted
    map), and observed against expected coverage before and after calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    u = np.maximum(np.concatenate(spread), _FLOOR)
    err = np.concatenate([e.reshape(-1, 3) for e in force_errors])
    max_dev = np.array([s.max() for s in spread])
    max_err = np.array([np.linalg.norm(e.reshape(-1, 3), axis=1).max() for e in force_errors])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    ax1.loglog(max_dev, max_err, ".", alpha=0.6, label="validation structures")
    grid = np.geomspace(max(max_dev.min(), _FLOOR), max_dev.max(), 50)
    ax1.loglog(
        grid, cal.forces(grid), "-", label=f"map {cal.force_scale:.3g}·u^{cal.force_power:.2f}"
    )
    ax1.set_xlabel("max force deviation (raw), eV/Å")
    ax1.set_ylabel("max atomic force error, eV/Å")
    ax1.set_title(f"Spearman ρ = {cal.spearman_structures:.2f}")
    ax1.legend(fontsize=8)
    expected = np.linspace(0, 1, 101)
    for label, sigma in (
        (f"raw (area {cal.miscalibration_area_raw:.3f})", u / np.sqrt(3)),
        (f"calibrated (area {cal.miscalibration_area:.3f})", cal.forces(u) / np.sqrt(3)),
    ):
        z = np.abs(err) / np.repeat(np.maximum(sigma, _FLOOR), 3).reshape(err.shape)
        observed = [np.mean(z <= stats.norm.ppf(0.5 + p / 2)) for p in expected]
        ax2.plot(expected, observed, label=label)
    ax2.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax2.set_xlabel("expected fraction inside interval")
    ax2.set_ylabel("observed fraction")
    ax2.set_title("force error calibration")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
