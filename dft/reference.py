"""A reference oracle: labels looked up in an existing labelled file instead of DFT.

With a labelled pool (e.g. an rMD17 ``.npz`` split) selection strategies can be compared
on real data at no DFT cost: the campaign explores by predicting on the pool's
structures, and "labelling" a structure returns the file's energy and forces for it.
Lookup is by the canonical structure hash, so atom order, rotation and translation do
not matter; a structure the file does not hold is an error, never a made-up label.
"""

import time
from pathlib import Path

import numpy as np
from ase import Atoms

from sapis.dft.labeller import LabelResult
from sapis.errors import InputError
from sapis.io import read_structures
from sapis.structures import structure_hash


class ReferenceOracle:
    """Labels (energy in eV, forces in eV/Å) from the labelled structures of ``path``.

    ``level`` names their level of theory in the store (default ``reference:<file>``).
    """

    def __init__(self, path: str | Path, level: str | None = None) -> None:
        self.path = Path(path).resolve()
        self.pool = read_structures(self.path)
        unlabelled = [
            i
            for i, a in enumerate(self.pool)
            if a.calc is None or not {"energy", "forces"} <= set(a.calc.results)
        ]
        if unlabelled:
            raise InputError(
                f"{self.path}: reference structure {unlabelled[0]} carries no energy and forces"
            )
        self.level = level or self.level_for(self.path)
        self.hashes = [structure_hash(atoms) for atoms in self.pool]
        self.index: dict[str, int] = {}
        for i, h in enumerate(self.hashes):
            self.index.setdefault(h, i)

    @staticmethod
    def level_for(path: str | Path) -> str:
        """The level name of labels taken from ``path``."""
        return f"reference:{Path(path).name}"

    def __len__(self) -> int:
        return len(self.pool)

    def candidates(self) -> list[Atoms]:
        """The pool's structures without their labels, as exploration candidates
        (``source=reference`` with the pool index in ``info["pool_index"]``)."""
        out = []
        for i, atoms in enumerate(self.pool):
            plain = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
            plain.info.update(source="reference", pool_index=i)
            out.append(plain)
        return out

    def label(self, atoms: Atoms) -> LabelResult:
        """The file's label of ``atoms``, forces put in ``atoms``' own atom order."""
        start = time.monotonic()
        h = structure_hash(atoms)
        if h not in self.index:
            raise InputError(f"{self.path}: holds no structure matching {h[:12]}…")
        ref = self.pool[self.index[h]]
        order = _match_atoms(atoms, ref)
        forces = ref.get_forces()[order]
        rotation = _rotation(ref.positions[order], atoms.positions)
        return LabelResult(
            converged=True,
            energy=float(ref.get_potential_energy()),
            forces=forces @ rotation.T,
            rung="reference",
            attempts=[],
            seconds=time.monotonic() - start,
            reason=None,
            provenance={"program": "reference", "version": self.path.name, "level": self.level},
        )


def _match_atoms(atoms: Atoms, ref: Atoms) -> np.ndarray:
    """``order`` with ``ref[order]`` the same atoms as ``atoms`` (the identity when the
    two are ordered alike, the usual case; otherwise matched by element and sorted
    distances to all other atoms)."""
    if np.array_equal(atoms.numbers, ref.numbers):
        d_a, d_r = atoms.get_all_distances(), ref.get_all_distances()
        if np.allclose(d_a, d_r, atol=1e-3):
            return np.arange(len(atoms))
    rows_a = np.sort(atoms.get_all_distances(), axis=1)
    rows_r = np.sort(ref.get_all_distances(), axis=1)
    free = list(range(len(ref)))
    order = []
    for i, z in enumerate(atoms.numbers):
        j = next(
            j for j in free if ref.numbers[j] == z and np.allclose(rows_a[i], rows_r[j], atol=1e-3)
        )
        free.remove(j)
        order.append(j)
    return np.array(order)


def _rotation(ref: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Orthogonal R (Kabsch) taking centred ``ref`` onto centred ``target``. A reflection
    is allowed: a mirror image hashes like its original and its forces are mirrored."""
    a, b = ref - ref.mean(axis=0), target - target.mean(axis=0)
    u, _, vt = np.linalg.svd(a.T @ b)
    return vt.T @ u.T
