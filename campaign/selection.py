"""Choosing which explored configurations to label.

DP-GEN's trust window sorts candidates by their (calibrated) max force deviation ``u``
in eV/Å: ``u < lo`` the ensemble is already accurate there, ``u > hi`` the frame is
most likely unphysical or far outside what the ensemble can learn from one label, and
``lo <= u <= hi`` is worth DFT. Structures the store holds already are dropped first.
The round's label budget is taken by one of the policies, from the in-window frames
(``uncertainty``, ``top-k``) or from every frame not above ``hi`` (``lcmd``, ``maxdet``:
their features already say what the labelled data cover, and cutting at ``lo`` would
leave them only the tail):

- ``uncertainty``: farthest-point sampling on Coulomb-matrix eigenvalues, starting from
  the most uncertain frame (DP-GEN-like; it favours outliers);
- ``top-k``: the most uncertain frames;
- ``lcmd``: largest-cluster-maximum-distance batch selection on the ensemble's
  last-layer features (Holzmüller et al., JMLR 2023): the labelled data are the first
  cluster centres; each pick is the farthest frame of the cluster with the largest
  summed squared distance, so picks are spread where unlabelled mass is;
- ``maxdet``: greedy maximum determinant on the same features: each pick has the largest
  posterior variance of a Bayesian linear model on the features, conditioned on the
  labelled data and the picks so far;
- ``random``: uniformly from all explored frames, the control arm of a comparison.

A density weight (``density_weight`` β > 0, with ``top-k`` and ``uncertainty``) turns
the ranking score from the uncertainty u into u·w, where w = exp(β·(ℓ − max ℓ)/dof) is
a per-degree-of-freedom density ratio in (0, 1]: ℓ is log q(x) per Å^(3N−3) under the
round's normalizing flow (``atoms.info["log_density"]``), the maximum is over the
frames given, dof = 3N − 3. Frames the flow finds unlikely (rare MD excursions, odd
samples) then yield to equally uncertain frames that represent where the molecule is.
``top-k`` takes the largest u·w; ``uncertainty`` starts its farthest-point sweep at the
largest u·w and takes, each step, the largest distance × w (a representativeness-
weighted farthest point: β = 0 is the plain sweep). The trust window still reads u.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

from sapis.errors import InputError
from sapis.structures import structure_hash

UNCERTAINTY = "max_force_dev_calibrated"

ACCURATE, CANDIDATE, FAILED = "accurate", "candidate", "failed"

POLICIES = ("uncertainty", "top-k", "lcmd", "maxdet", "random")
#: Policies that need the ensemble's features of the frames and of the labelled data.
FEATURE_POLICIES = ("lcmd", "maxdet")
#: Policies whose ranking a density weight multiplies.
DENSITY_POLICIES = ("uncertainty", "top-k")
#: Where a frame carries log q(x) per Å^(3N−3) under the round's flow.
LOG_DENSITY = "log_density"


def classify(max_force_dev: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``accurate`` / ``candidate`` / ``failed`` for each value (eV/Å) of the window."""
    if not 0 <= lo < hi:
        raise InputError(f"trust window needs 0 <= lo < hi, got lo={lo}, hi={hi}")
    u = np.asarray(max_force_dev, dtype=float)
    out = np.full(u.shape, CANDIDATE, dtype=object)
    out[u < lo] = ACCURATE
    out[(u > hi) | ~np.isfinite(u)] = FAILED
    return out


def descriptor(atoms: Atoms) -> np.ndarray:
    """Sorted eigenvalues of the Coulomb matrix (Z_i Z_j / r_ij, 0.5 Z_i^2.4 on the
    diagonal): invariant to rotation, translation and atom order, smooth in positions."""
    z = atoms.numbers.astype(float)
    d = atoms.get_all_distances()
    np.fill_diagonal(d, 1.0)
    m = np.outer(z, z) / d
    np.fill_diagonal(m, 0.5 * z**2.4)
    return np.sort(np.linalg.eigvalsh(m))[::-1]


def density_weights(log_density: np.ndarray, dof: np.ndarray | int, beta: float) -> np.ndarray:
    """w = exp(β·(ℓ − max ℓ)/dof) of each log-density ℓ (per Å^dof): 1 for the most
    likely frame, smaller for less likely ones; 0 where ℓ is not finite (or none is)."""
    ell = np.asarray(log_density, dtype=float)
    finite = np.isfinite(ell)
    w = np.zeros(ell.shape)
    if finite.any():
        top = ell[finite].max()
        w[finite] = np.exp(beta * (ell[finite] - top) / np.broadcast_to(dof, ell.shape)[finite])
    return w


def farthest_point(
    features: np.ndarray, k: int, first: int = 0, weights: np.ndarray | None = None
) -> list[int]:
    """Indices of ``k`` rows of ``features`` chosen greedily, each the farthest
    (Euclidean) from those already chosen, starting at row ``first``; with ``weights``,
    each the largest distance × weight."""
    n = len(features)
    if k <= 0 or n == 0:
        return []
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    chosen = [first]
    dist = np.linalg.norm(features - features[first], axis=1)
    while len(chosen) < min(k, n):
        nxt = int(np.argmax(dist * w))
        if dist[nxt] * w[nxt] <= 0:  # only copies of chosen rows (or weight 0) remain
            break
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(features - features[nxt], axis=1))
    return chosen


def standardise(pool: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both feature sets z-scored with the labelled data's column means and spreads
    (columns constant there are scaled by the pool's), then scaled so that a labelled
    row has unit mean squared norm."""
    ref = known if len(known) > 1 else np.vstack([known, pool])
    mean, std = ref.mean(axis=0), ref.std(axis=0)
    std = np.where(std > 1e-12, std, pool.std(axis=0) + 1e-12)
    pool, known = (pool - mean) / std, (known - mean) / std
    scale = np.sqrt(np.mean(np.sum(known**2, axis=1))) if len(known) else 1.0
    return pool / max(scale, 1e-12), known / max(scale, 1e-12)


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = np.sum(a**2, axis=1)[:, None] + np.sum(b**2, axis=1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def lcmd(pool: np.ndarray, known: np.ndarray, k: int) -> list[int]:
    """Indices of ``k`` rows of ``pool`` by LCMD with the rows of ``known`` (labelled data)
    as the first centres (with none, the first pick is the row farthest from the mean)."""
    n = len(pool)
    if k <= 0 or n == 0:
        return []
    if len(known):
        d2_all = _squared_distances(pool, known)
        owner = np.argmin(d2_all, axis=1)
        d2 = d2_all[np.arange(n), owner]
        centres = len(known)
    else:
        d2 = np.sum((pool - pool.mean(axis=0)) ** 2, axis=1)
        owner = np.zeros(n, dtype=int)
        centres = 1
    chosen: list[int] = []
    while len(chosen) < min(k, n):
        mass = np.bincount(owner, weights=d2, minlength=centres)
        cluster = int(np.argmax(mass))
        pick = int(np.argmax(np.where(owner == cluster, d2, -1.0)))
        if d2[pick] <= 1e-12:  # only copies of centres remain
            break
        chosen.append(pick)
        new = np.sum((pool - pool[pick]) ** 2, axis=1)
        closer = new < d2
        d2, owner = np.where(closer, new, d2), np.where(closer, centres, owner)
        centres += 1
    return chosen


def max_det(pool: np.ndarray, known: np.ndarray, k: int, noise: float = 1e-3) -> list[int]:
    """Indices of ``k`` rows of ``pool`` by greedy maximum determinant: each pick has the
    largest posterior variance of y = w·x (prior w ~ N(0, I), label noise ``noise``)
    given the rows of ``known`` and the picks before it."""
    n, dims = pool.shape
    if k <= 0 or n == 0:
        return []
    precision = np.eye(dims) + known.T @ known / noise
    cov = np.linalg.inv(precision)
    var = np.einsum("ij,jk,ik->i", pool, cov, pool)
    chosen: list[int] = []
    while len(chosen) < min(k, n):
        pick = int(np.argmax(var))
        if var[pick] <= 1e-12:
            break
        chosen.append(pick)
        v = cov @ pool[pick]
        denominator = noise + pool[pick] @ v
        var = var - (pool @ v) ** 2 / denominator
        var[chosen] = -np.inf
        cov = cov - np.outer(v, v) / denominator
    return chosen


@dataclass
class Selection:
    """Frames chosen for DFT and the counts a DP-GEN user reads first, with the median
    and 95th percentile of the explored frames' uncertainty (eV/Å)."""

    chosen: list[Atoms]
    accurate: int = 0
    candidate: int = 0
    failed: int = 0
    duplicates: int = 0
    by_source: dict[str, dict[str, int]] = field(default_factory=dict)
    uncertainty_median: float = float("nan")
    uncertainty_p95: float = float("nan")
    lo: float = float("nan")  # the trust window used (eV/Å)
    hi: float = float("nan")
    density_weight: float = 0.0  # β of the density weight (0: none)

    @property
    def explored(self) -> int:
        return self.accurate + self.candidate + self.failed

    def ratios(self) -> dict[str, float]:
        """Fractions of explored frames that are accurate / candidate / failed."""
        n = max(self.explored, 1)
        return {
            ACCURATE: self.accurate / n,
            CANDIDATE: self.candidate / n,
            FAILED: self.failed / n,
        }


def select(
    frames: Sequence[Atoms],
    budget: int,
    lo: float,
    hi: float,
    policy: str = "uncertainty",
    stored: set[str] | None = None,
    seed: int = 0,
    key: str = UNCERTAINTY,
    features: np.ndarray | None = None,
    known: np.ndarray | None = None,
    density_weight: float = 0.0,
) -> Selection:
    """Pick at most ``budget`` frames to label.

    Each frame carries its uncertainty in ``atoms.info[key]`` (eV/Å). ``stored`` holds the
    structure hashes already in the dataset; those frames, and repeats within ``frames``,
    are never chosen. ``lcmd`` and ``maxdet`` need ``features`` (one row per frame) and
    ``known`` (the labelled data's rows), e.g. :meth:`Ensemble.predict` with
    ``features=True``. ``density_weight`` β > 0 (``top-k`` and ``uncertainty`` only)
    weighs the ranking by each frame's density ratio w (see the module's notes), read
    from ``info["log_density"]``. The chosen frames get ``info["uncertainty"]`` and
    ``info["hash"]`` (and ``info["density_factor"]``, w, with a density weight).
    """
    if policy not in POLICIES:
        raise InputError(f"unknown selection policy {policy!r}; choose one of {POLICIES}")
    if budget < 0:
        raise InputError(f"label budget must be >= 0, got {budget}")
    frames = list(frames)
    if density_weight < 0:
        raise InputError(f"density weight must be >= 0, got {density_weight}")
    weights = None
    if density_weight > 0:
        if policy not in DENSITY_POLICIES:
            raise InputError(
                f"a density weight ranks by uncertainty × density; policy {policy!r} "
                f"does not rank by uncertainty (use one of {DENSITY_POLICIES})"
            )
        lacking = [i for i, a in enumerate(frames) if LOG_DENSITY not in a.info]
        if lacking:
            raise InputError(
                f"frame {lacking[0]} has no {LOG_DENSITY!r} in info: a density weight "
                "needs every frame's log-density under the round's flow"
            )
        ell = np.array([float(a.info[LOG_DENSITY]) for a in frames])
        dof = np.array([3 * len(a) - 3 for a in frames])
        weights = density_weights(ell, dof, density_weight)
    if policy in FEATURE_POLICIES:
        if features is None or known is None:
            raise InputError(f"policy {policy!r} needs the features of the frames and the data")
        if len(features) != len(frames) or features.shape[1:] != known.shape[1:]:
            raise InputError(
                f"policy {policy!r}: {len(features)} feature rows of width "
                f"{features.shape[1:]} for {len(frames)} frames and data of width "
                f"{known.shape[1:]}"
            )
    missing = [i for i, a in enumerate(frames) if key not in a.info]
    if missing:
        raise InputError(f"frame {missing[0]} has no {key!r} in info: predict it first")
    u = np.array([float(a.info[key]) for a in frames])
    classes = classify(u, lo, hi)
    sel = Selection(chosen=[], lo=lo, hi=hi, density_weight=float(density_weight))
    if len(u):
        sel.uncertainty_median, sel.uncertainty_p95 = map(float, np.percentile(u, [50, 95]))
    for c, a in zip(classes, frames):
        setattr(sel, c, getattr(sel, c) + 1)
        counts = sel.by_source.setdefault(str(a.info.get("source", "?")), {})
        counts[c] = counts.get(c, 0) + 1

    stored = set(stored or ())
    fresh: list[int] = []
    for i, atoms in enumerate(frames):
        h = atoms.info.get("hash") or structure_hash(atoms)
        atoms.info["hash"] = h
        if h in stored:
            sel.duplicates += 1
            continue
        stored.add(h)
        fresh.append(i)

    if policy == "random":
        rng = np.random.default_rng(seed)
        picked = sorted(rng.permutation(fresh)[:budget].tolist()) if fresh else []
    else:
        # the feature policies weigh what the labelled data cover themselves, so they
        # choose from every frame the window does not reject; the others from the window
        keep = (CANDIDATE, ACCURATE) if policy in FEATURE_POLICIES else (CANDIDATE,)
        pool = [i for i in fresh if classes[i] in keep]
        w = None if weights is None else weights[pool]
        picked = [pool[j] for j in _pick(policy, pool, frames, u, budget, features, known, w)]
    for i in picked:
        frames[i].info["uncertainty"] = float(u[i])
        if weights is not None:
            frames[i].info["density_factor"] = float(weights[i])
        counts = sel.by_source[str(frames[i].info.get("source", "?"))]
        counts["selected"] = counts.get("selected", 0) + 1
    sel.chosen = [frames[i] for i in picked]
    return sel


def _pick(policy, pool, frames, u, budget, features, known, weights=None) -> list[int]:
    """Positions in ``pool`` (indices of in-window frames) that ``policy`` picks;
    ``weights`` (one per pool frame) multiply the ranking of ``top-k`` and ``uncertainty``."""
    if not pool or budget == 0:
        return []
    score = u[pool] if weights is None else u[pool] * weights
    if policy == "top-k":
        return list(np.argsort(-score, kind="stable")[:budget])
    if policy == "uncertainty":
        feats = np.array([descriptor(frames[i]) for i in pool])
        feats = (feats - feats.mean(axis=0)) / (feats.std(axis=0) + 1e-12)
        return farthest_point(feats, budget, int(np.argmax(score)), weights)
    candidates, data = standardise(np.asarray(features)[pool], np.asarray(known))
    return (lcmd if policy == "lcmd" else max_det)(candidates, data, budget)
