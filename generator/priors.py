"""Feasibility constraints on a molecule's geometry, as penalties on the Tweedie estimate.

After "Generating Physical Dynamics under Priors" (Zhou, Wang, Yu, ICLR 2025): the
residual R(x) is zero on physical configurations, and training adds
``λ · w(t) · ‖R(x̂0)‖²`` with x̂0 = E[x0 | xt]. When R is convex in x0 (and zero on the
data), Jensen's inequality gives R(x̂0) ≤ E[R(x0) | xt] = 0, so the penalty asks
nothing the true posterior mean does not satisfy: no Jensen gap.

- Bonded pairs longer than the longest observed bond: ``max(0, d - hi)`` is convex in
  the coordinates (a norm minus a constant, through a convex non-decreasing hinge).
- Bonded pairs shorter than the shortest observed bond and non-bonded pairs closer
  than their observed floor: ``max(0, lo - d)`` is *not* convex, and x̂0 shrinks
  towards the mean at high noise. These are the terms ``w(t)`` must damp at high noise.

Ranges are per atom pair of the (fixed-composition) molecule, observed in the data.
"""

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class PairRanges:
    """Observed distance ranges (Å) for one molecule's atom pairs.

    ``bonded``/``lo``/``hi``: bonded pairs and their shortest and longest observed
    length; ``other``/``floor``: non-bonded pairs and their shortest observed distance.
    """

    bonded: np.ndarray  # [B, 2] int
    lo: np.ndarray  # [B]
    hi: np.ndarray  # [B]
    other: np.ndarray  # [M, 2] int
    floor: np.ndarray  # [M]

    @classmethod
    def observe(
        cls, positions: np.ndarray, bonds: list[tuple[int, int]], margin: float = 0.02
    ) -> "PairRanges":
        """Ranges seen in ``positions`` ``[frames, atoms, 3]``, widened by ``margin`` Å."""
        n = positions.shape[1]
        bond_set = {tuple(sorted(b)) for b in bonds}
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        bonded = np.array([p for p in pairs if p in bond_set], dtype=int).reshape(-1, 2)
        other = np.array([p for p in pairs if p not in bond_set], dtype=int).reshape(-1, 2)
        db = pair_lengths(positions, bonded)
        do = pair_lengths(positions, other)
        return cls(
            bonded=bonded,
            lo=db.min(axis=0) - margin if len(bonded) else np.zeros(0),
            hi=db.max(axis=0) + margin if len(bonded) else np.zeros(0),
            other=other,
            floor=do.min(axis=0) - margin if len(other) else np.zeros(0),
        )

    def widen(self, other: "PairRanges") -> "PairRanges":
        """The union of two observations of the same molecule."""
        if not (
            np.array_equal(self.bonded, other.bonded) and np.array_equal(self.other, other.other)
        ):
            raise ValueError("pair ranges of different bond graphs cannot be merged")
        return PairRanges(
            self.bonded,
            np.minimum(self.lo, other.lo),
            np.maximum(self.hi, other.hi),
            self.other,
            np.minimum(self.floor, other.floor),
        )

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """R(x) ``[batch, terms]`` in Å for coordinates ``x`` ``[batch, atoms, 3]`` in Å."""
        parts = []
        if len(self.bonded):
            d = _pair_lengths(x, self.bonded)
            parts += [
                torch.relu(d - _like(self.hi, d)),  # convex: no Jensen gap
                torch.relu(_like(self.lo, d) - d),
            ]
        if len(self.other):
            d = _pair_lengths(x, self.other)
            parts.append(torch.relu(_like(self.floor, d) - d))
        return torch.cat(parts, dim=-1)

    def penalty(self, x: torch.Tensor) -> torch.Tensor:
        """‖R(x)‖² per structure, ``[batch]`` in Å²."""
        return (self.residual(x) ** 2).sum(-1)

    def satisfied(self, positions: np.ndarray, tol: float = 0.0) -> np.ndarray:
        """Which structures ``[frames, atoms, 3]`` meet every range (within ``tol`` Å)."""
        with torch.no_grad():
            r = self.residual(torch.as_tensor(positions, dtype=torch.float64))
        return (r <= tol).all(dim=-1).numpy()

    def to_dict(self) -> dict:
        return {k: getattr(self, k).tolist() for k in ("bonded", "lo", "hi", "other", "floor")}

    @classmethod
    def from_dict(cls, data: dict) -> "PairRanges":
        return cls(
            bonded=np.array(data["bonded"], dtype=int).reshape(-1, 2),
            lo=np.array(data["lo"], dtype=float),
            hi=np.array(data["hi"], dtype=float),
            other=np.array(data["other"], dtype=int).reshape(-1, 2),
            floor=np.array(data["floor"], dtype=float),
        )


def pair_lengths(positions: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Distances ``[frames, pairs]`` in Å for ``positions`` ``[frames, atoms, 3]``."""
    if not len(pairs):
        return np.zeros((len(positions), 0))
    return np.linalg.norm(positions[:, pairs[:, 0]] - positions[:, pairs[:, 1]], axis=-1)


def _pair_lengths(x: torch.Tensor, pairs: np.ndarray) -> torch.Tensor:
    i, j = torch.as_tensor(pairs[:, 0]), torch.as_tensor(pairs[:, 1])
    return torch.sqrt(((x[:, i] - x[:, j]) ** 2).sum(-1) + 1e-12)


def _like(values: np.ndarray, ref: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=ref.dtype, device=ref.device)
