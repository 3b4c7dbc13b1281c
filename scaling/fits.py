"""Power-law fits of error against data, model size and compute, with bootstrap intervals.

Forms (``L`` an error, e.g. the validation force MAE in eV/Å)::

    data     L(N)    = ε + A·N^-α
    model    L(P)    = ε + B·P^-β
    joint    L(N, P) = ε + A·N^-α + B·P^-β      (Ngo & Ravanbakhsh 2025)
    compute  L(C)    = ε + F·C^-γ

fitted by least squares on log L (errors spread over decades weigh alike) with scipy,
ε ≥ 0 the irreducible floor. Intervals are percentiles of refits on bootstrap resamples of
the points. A form is refused, with a clear message, when the points cannot determine it.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize

from sapis.errors import InputError

#: Parameter names of each form, in the order the model function takes them.
FORMS: dict[str, tuple[str, ...]] = {
    "data": ("eps", "A", "alpha"),
    "model": ("eps", "B", "beta"),
    "joint": ("eps", "A", "alpha", "B", "beta"),
    "compute": ("eps", "F", "gamma"),
}
_EXPONENT_BOUNDS = (1e-3, 4.0)
#: Distinct values each variable needs: three along a curve (its floor, scale and
#: exponent), two model sizes in the joint law (whose N-direction fixes ε).
_DISTINCT = {("data", 0): 3, ("model", 0): 3, ("compute", 0): 3, ("joint", 0): 3, ("joint", 1): 2}


class InsufficientData(InputError):
    """Too few (or too alike) points to fit a form."""


def _power(x: np.ndarray, coeff: float, exponent: float) -> np.ndarray:
    return coeff * np.power(x, -exponent)


def evaluate(form: str, params: dict[str, float], x: np.ndarray, p: np.ndarray | None = None):
    """The fitted law at ``x`` (N, P or C; for ``joint`` N, with ``p`` the parameters)."""
    x = np.asarray(x, dtype=float)
    if form == "joint":
        return (
            params["eps"]
            + _power(x, params["A"], params["alpha"])
            + _power(np.asarray(p, dtype=float), params["B"], params["beta"])
        )
    names = FORMS[form]
    return params["eps"] + _power(x, params[names[1]], params[names[2]])


@dataclass
class PowerLawFit:
    """A fitted form: best parameters, 95 % bootstrap intervals, and fit quality."""

    form: str
    params: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    n_points: int
    rmse_log: float  # root mean square residual of log L
    bootstrap: int = 0
    samples: dict[str, list[float]] = field(default_factory=dict, repr=False)

    def __call__(self, x, p=None):
        return evaluate(self.form, self.params, x, p)

    @property
    def floor(self) -> float:
        """The irreducible error ε (same unit as L)."""
        return self.params["eps"]

    def describe(self) -> str:
        """One line: each parameter with its interval."""
        parts = []
        for name in FORMS[self.form]:
            lo, hi = self.intervals[name]
            parts.append(f"{name} = {self.params[name]:.4g} [{lo:.4g}, {hi:.4g}]")
        return f"{self.form}: " + ", ".join(parts)


def _check(form: str, columns: list[np.ndarray], loss: np.ndarray) -> None:
    k = len(FORMS[form])
    n = len(loss)
    if n < k + 1:
        raise InsufficientData(
            f"the {form} law has {k} parameters and needs at least {k + 1} points; got {n}"
        )
    if not np.all(np.isfinite(loss)) or np.any(loss <= 0):
        raise InsufficientData(f"the {form} fit needs finite, positive errors")
    for i, col in enumerate(columns):
        if np.any(col <= 0) or not np.all(np.isfinite(col)):
            raise InsufficientData(f"the {form} fit needs positive, finite N, P or C")
        distinct = np.unique(col)
        needed = _DISTINCT[(form, i)]
        if len(distinct) < needed:
            what = "model sizes" if (form, i) in (("joint", 1), ("model", 0)) else "values"
            raise InsufficientData(
                f"the {form} fit needs at least {needed} distinct {what}; got "
                f"{len(distinct)} ({', '.join(f'{v:g}' for v in distinct)})"
            )


def _start(x: np.ndarray, loss: np.ndarray) -> tuple[float, float]:
    """Log-log slope and intercept as a first guess of (coefficient, exponent)."""
    slope, intercept = np.polyfit(np.log(x), np.log(loss), 1)
    exponent = float(np.clip(-slope, 0.05, 2.0))
    return float(np.exp(intercept)), exponent


def _fit_once(form: str, columns: list[np.ndarray], loss: np.ndarray) -> np.ndarray:
    """Best parameters (in FORMS order) for one set of points."""
    log_loss = np.log(loss)
    x = columns[0]
    coeff, exponent = _start(x, loss)
    if form == "joint":
        p = columns[1]
        coeff_p, exponent_p = _start(p, loss)
        # unknowns: log ε, log A, α, log B, β
        x0 = [np.log(0.3 * loss.min()), np.log(coeff), exponent, np.log(coeff_p), exponent_p]

        def model(z):
            return np.exp(z[0]) + _power(x, np.exp(z[1]), z[2]) + _power(p, np.exp(z[3]), z[4])

        lower = [-50, -50, _EXPONENT_BOUNDS[0], -50, _EXPONENT_BOUNDS[0]]
        upper = [np.log(loss.max()), 50, _EXPONENT_BOUNDS[1], 50, _EXPONENT_BOUNDS[1]]
    else:
        x0 = [np.log(0.3 * loss.min()), np.log(coeff), exponent]

        def model(z):
            return np.exp(z[0]) + _power(x, np.exp(z[1]), z[2])

        lower = [-50, -50, _EXPONENT_BOUNDS[0]]
        upper = [np.log(loss.max()), 50, _EXPONENT_BOUNDS[1]]
    x0 = np.clip(x0, np.array(lower) + 1e-9, np.array(upper) - 1e-9)
    result = optimize.least_squares(
        lambda z: np.log(model(z)) - log_loss, x0, bounds=(lower, upper), method="trf"
    )
    z = result.x
    if form == "joint":
        return np.array([np.exp(z[0]), np.exp(z[1]), z[2], np.exp(z[3]), z[4]])
    return np.array([np.exp(z[0]), np.exp(z[1]), z[2]])


def fit(
    form: str,
    loss: Sequence[float],
    x: Sequence[float],
    p: Sequence[float] | None = None,
    bootstrap: int = 200,
    seed: int = 0,
) -> PowerLawFit:
    """Fit ``form`` to errors ``loss`` at ``x`` (N, P or C; ``joint``: N with ``p``).

    Raises :class:`InsufficientData` when the points cannot determine the form: fewer
    points than parameters + 1, fewer than 3 distinct values of a variable (2 model sizes
    in the joint law), or non-positive values.
    """
    if form not in FORMS:
        raise InputError(f"unknown scaling form {form!r}; choose one of {', '.join(FORMS)}")
    loss_arr = np.asarray(loss, dtype=float)
    columns = [np.asarray(x, dtype=float)]
    if form == "joint":
        if p is None:
            raise InputError("the joint law needs the parameter counts p as well as N")
        columns.append(np.asarray(p, dtype=float))
    if any(len(c) != len(loss_arr) for c in columns):
        raise InputError("loss, x (and p) must have the same length")
    _check(form, columns, loss_arr)
    best = _fit_once(form, columns, loss_arr)
    names = FORMS[form]
    params = dict(zip(names, map(float, best)))
    residual = np.log(evaluate(form, params, columns[0], columns[-1])) - np.log(loss_arr)

    rng = np.random.default_rng(seed)
    samples: list[np.ndarray] = []
    n = len(loss_arr)
    for _ in range(bootstrap):
        idx = rng.integers(0, n, n)
        cols = [c[idx] for c in columns]
        if any(len(np.unique(c)) < _DISTINCT[(form, i)] for i, c in enumerate(cols)):
            continue  # a resample that cannot determine the form
        samples.append(_fit_once(form, cols, loss_arr[idx]))
    if samples:
        stack = np.array(samples)
        intervals = {
            name: (float(np.percentile(stack[:, i], 2.5)), float(np.percentile(stack[:, i], 97.5)))
            for i, name in enumerate(names)
        }
        sample_lists = {name: stack[:, i].tolist() for i, name in enumerate(names)}
    else:
        intervals = {name: (float("nan"), float("nan")) for name in names}
        sample_lists = {}
    return PowerLawFit(
        form=form,
        params=params,
        intervals=intervals,
        n_points=n,
        rmse_log=float(np.sqrt(np.mean(residual**2))),
        bootstrap=len(samples),
        samples=sample_lists,
    )
