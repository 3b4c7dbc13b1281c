"""A light force field for one molecule, differentiable in torch: the physics penalty.

Harmonic bonds and angles about the mean lengths and angles of the molecule's data, and
Lennard-Jones (UFF's well depths and distances, Rappé et al. 1992) between atoms more than
two bonds apart, halved for 1-4 pairs. It knows nothing of torsions beyond their 1-4
contacts, so it pulls bond lengths, angles and clashes into shape without preferring one
rotamer. Energies in eV, positions in Å; the zero is arbitrary (only differences and
gradients mean anything).
"""

from dataclasses import dataclass

import numpy as np
import torch

from sapis.units import KCAL_PER_MOL_TO_EV

#: UFF non-bonded distance x_i (Å) and well depth D_i (kcal/mol) by atomic number.
UFF = {
    1: (2.886, 0.044),
    5: (4.083, 0.180),
    6: (3.851, 0.105),
    7: (3.660, 0.069),
    8: (3.500, 0.060),
    9: (3.364, 0.050),
    14: (4.295, 0.402),
    15: (4.147, 0.305),
    16: (4.035, 0.274),
    17: (3.947, 0.227),
    35: (4.189, 0.251),
}
#: Force constants: bonds (eV/Å²) and angles (eV/rad²), ½k(q − q0)².
BOND_K, ANGLE_K = 30.0, 4.0


@dataclass
class LightForceField:
    """Bonded terms about reference values and LJ pairs of one molecule."""

    bonds: np.ndarray  # [B, 2]
    lengths: np.ndarray  # [B] Å
    angles: np.ndarray  # [A, 3] (i, centre, k)
    thetas: np.ndarray  # [A] rad
    pairs: np.ndarray  # [P, 2]
    sigma: np.ndarray  # [P] Å (UFF x_ij, the minimum of the well)
    depth: np.ndarray  # [P] eV (halved for 1-4 pairs)

    @classmethod
    def from_data(
        cls, numbers: np.ndarray, bonds: list[tuple[int, int]], positions: np.ndarray
    ) -> "LightForceField":
        """Reference lengths and angles: means over ``positions`` ``[frames, atoms, 3]``."""
        numbers = np.asarray(numbers)
        missing = sorted({int(z) for z in numbers} - set(UFF))
        if missing:
            raise ValueError(f"no Lennard-Jones parameters for atomic numbers {missing}")
        n = len(numbers)
        bonds_ = np.array(sorted(tuple(sorted(b)) for b in bonds), dtype=int).reshape(-1, 2)
        neighbours: list[set[int]] = [set() for _ in range(n)]
        for i, j in bonds_:
            neighbours[i].add(int(j))
            neighbours[j].add(int(i))
        angles = np.array(
            [(i, c, k) for c in range(n) for i in neighbours[c] for k in neighbours[c] if i < k],
            dtype=int,
        ).reshape(-1, 3)
        hops = _hops(neighbours, n)
        pairs = np.array(
            [(i, j) for i in range(n) for j in range(i + 1, n) if hops[i, j] > 2], dtype=int
        ).reshape(-1, 2)
        x = np.array([UFF[int(z)][0] for z in numbers])
        d = np.array([UFF[int(z)][1] for z in numbers]) * KCAL_PER_MOL_TO_EV
        scale = np.where(hops[pairs[:, 0], pairs[:, 1]] == 3, 0.5, 1.0) if len(pairs) else []
        pos = torch.as_tensor(np.asarray(positions), dtype=torch.float64)
        return cls(
            bonds=bonds_,
            lengths=_lengths(pos, bonds_).mean(0).numpy(),
            angles=angles,
            thetas=_angles(pos, angles).mean(0).numpy(),
            pairs=pairs,
            sigma=np.sqrt(x[pairs[:, 0]] * x[pairs[:, 1]]) if len(pairs) else np.zeros(0),
            depth=np.sqrt(d[pairs[:, 0]] * d[pairs[:, 1]]) * scale if len(pairs) else np.zeros(0),
        )

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """Energy ``[batch]`` in eV of positions ``[batch, atoms, 3]`` in Å."""
        e = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        if len(self.bonds):
            r = _lengths(x, self.bonds) - _like(self.lengths, x)
            e = e + 0.5 * BOND_K * (r**2).sum(-1)
        if len(self.angles):
            r = _angles(x, self.angles) - _like(self.thetas, x)
            e = e + 0.5 * ANGLE_K * (r**2).sum(-1)
        if len(self.pairs):
            q = (_like(self.sigma, x) / _lengths(x, self.pairs).clamp_min(0.3)) ** 6
            e = e + (_like(self.depth, x) * (q**2 - 2 * q)).sum(-1)
        return e

    def to_dict(self) -> dict:
        return {k: getattr(self, k).tolist() for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict) -> "LightForceField":
        shapes = {"bonds": (-1, 2), "angles": (-1, 3), "pairs": (-1, 2)}
        return cls(
            **{
                k: np.array(v, dtype=int).reshape(shapes[k])
                if k in shapes
                else np.array(v, dtype=float)
                for k, v in data.items()
            }
        )


def _hops(neighbours: list[set[int]], n: int) -> np.ndarray:
    """Bond-graph distances (n + 1 where disconnected), by breadth-first search."""
    hops = np.full((n, n), n + 1)
    for s in range(n):
        hops[s, s], frontier, depth = 0, {s}, 0
        while frontier:
            depth += 1
            frontier = {j for i in frontier for j in neighbours[i] if hops[s, j] > depth}
            for j in frontier:
                hops[s, j] = depth
    return hops


def _lengths(x: torch.Tensor, pairs: np.ndarray) -> torch.Tensor:
    i, j = torch.as_tensor(pairs[:, 0]), torch.as_tensor(pairs[:, 1])
    return torch.sqrt(((x[:, i] - x[:, j]) ** 2).sum(-1) + 1e-12)


def _angles(x: torch.Tensor, triples: np.ndarray) -> torch.Tensor:
    i, c, k = (torch.as_tensor(triples[:, m]) for m in range(3))
    u, v = x[:, i] - x[:, c], x[:, k] - x[:, c]
    cos = (u * v).sum(-1) / torch.sqrt((u**2).sum(-1) * (v**2).sum(-1) + 1e-12)
    return torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))


def _like(values: np.ndarray, ref: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=ref.dtype, device=ref.device)
