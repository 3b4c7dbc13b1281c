"""Choosing which explored configurations to label.

DP-GEN's trust window sorts candidates by their (calibrated) max force deviation ``u``
in eV/Å: ``u < lo`` the ensemble is already accurate there, ``u > hi`` the frame is
most likely unphysical or far outside what the ensemble can learn from one label, and
``lo <= u <= hi`` is worth DFT. From the in-window frames a diverse set within the
round's label budget is taken by farthest-point sampling on an invariant descriptor,
starting from the most uncertain frame; structures the store holds already are dropped
first. ``policy="random"`` draws the same number from all explored frames instead: the
control arm of a comparison.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

from sapis.errors import InputError
from sapis.structures import structure_hash

UNCERTAINTY = "max_force_dev_calibrated"

ACCURATE, CANDIDATE, FAILED = "accurate", "candidate", "failed"


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


def farthest_point(features: np.ndarray, k: int, first: int = 0) -> list[int]:
    """Indices of ``k`` rows of ``features`` chosen greedily, each the farthest
    (Euclidean) from those already chosen, starting at row ``first``."""
    n = len(features)
    if k <= 0 or n == 0:
        return []
    chosen = [first]
    dist = np.linalg.norm(features - features[first], axis=1)
    while len(chosen) < min(k, n):
        nxt = int(np.argmax(dist))
        if dist[nxt] <= 0:  # only exact copies of chosen rows remain
            break
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(features - features[nxt], axis=1))
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
) -> Selection:
    """Pick at most ``budget`` frames to label.

    Each frame carries its uncertainty in ``atoms.info[key]`` (eV/Å). ``stored`` holds the
    structure hashes already in the dataset; those frames, and repeats within ``frames``,
    are never chosen. The chosen frames get ``info["uncertainty"]`` and ``info["hash"]``.
    """
    if policy not in ("uncertainty", "random"):
        raise InputError(f"unknown selection policy {policy!r}; choose uncertainty or random")
    if budget < 0:
        raise InputError(f"label budget must be >= 0, got {budget}")
    frames = list(frames)
    missing = [i for i, a in enumerate(frames) if key not in a.info]
    if missing:
        raise InputError(f"frame {missing[0]} has no {key!r} in info: predict it first")
    u = np.array([float(a.info[key]) for a in frames])
    classes = classify(u, lo, hi)
    sel = Selection(chosen=[])
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
        pool = [i for i in fresh if classes[i] == CANDIDATE]
        if not pool:
            picked = []
        else:
            feats = np.array([descriptor(frames[i]) for i in pool])
            feats = (feats - feats.mean(axis=0)) / (feats.std(axis=0) + 1e-12)
            first = int(np.argmax(u[pool]))
            picked = [pool[j] for j in farthest_point(feats, budget, first)]
    for i in picked:
        frames[i].info["uncertainty"] = float(u[i])
        counts = sel.by_source[str(frames[i].info.get("source", "?"))]
        counts["selected"] = counts.get("selected", 0) + 1
    sel.chosen = [frames[i] for i in picked]
    return sel
