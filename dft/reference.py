"""A reference oracle: labels looked up in an existing labelled file instead of DFT.

With a labelled pool (e.g. an rMD17 ``.npz`` split) selection strategies can be compared
on real data at no DFT cost: the campaign explores by predicting on the pool's
structures, and "labelling" a structure returns the file's energy and forces for it.
Lookup is by the canonical structure hash, so atom order, rotation and translation do
not matter; a structure the file does not hold gets a failed label, never a made-up one.
The file is read and hashed once, when the oracle is made.
"""

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms

from sapis.errors import InputError
from sapis.io import carries_labels, read_structures
from sapis.labels import Attempt, LabelResult, base_provenance
from sapis.structures import structure_hash


class ReferenceOracle:
    """Labels (energy in eV, forces in eV/Å) from the labelled structures of ``path``: a
    :class:`~sapis.dft.protocol.Labeller` that labels only its own pool.

    ``level`` names their level of theory in the store (default ``reference:<file>``).
    """

    cores = 1
    remote = False
    seconds_per_label = 0.0

    def __init__(self, path: str | Path, level: str | None = None) -> None:
        self.path = Path(path).resolve()
        self.structures = read_structures(self.path)
        unlabelled = [i for i, a in enumerate(self.structures) if not carries_labels(a)]
        if unlabelled:
            raise InputError(
                f"{self.path}: reference structure {unlabelled[0]} carries no energy and forces"
            )
        self.level = level or f"reference:{self.path.name}"
        self.hashes = [structure_hash(atoms) for atoms in self.structures]
        self.index: dict[str, int] = {}
        for i, h in enumerate(self.hashes):
            self.index.setdefault(h, i)

    def __len__(self) -> int:
        return len(self.structures)

    def pool(self) -> list[Atoms]:
        """The pool's structures without their labels (``source=reference``, the pool
        index in ``info["pool_index"]`` and the structure hash in ``info["hash"]``)."""
        out = []
        for i, (atoms, h) in enumerate(zip(self.structures, self.hashes)):
            plain = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
            plain.info.update(source="reference", pool_index=i, hash=h)
            out.append(plain)
        return out

    def check(self, atoms: Atoms, where: str = "structure") -> None:
        if structure_hash(atoms) not in self.index:
            raise InputError(f"{where}: not in the reference pool {self.path.name}")

    def label(self, images: Sequence[Atoms]) -> list[LabelResult]:
        return [self._label_one(atoms) for atoms in images]

    def _label_one(self, atoms: Atoms) -> LabelResult:
        """The file's label of ``atoms``, forces put in ``atoms``' own atom order and frame."""
        start = time.monotonic()
        provenance = base_provenance("reference", self.path.name, self.level)
        h = structure_hash(atoms)
        if h not in self.index:
            reason = f"{self.path.name} holds no structure matching {h[:12]}…"
            attempt = Attempt("lookup", False, None, None, time.monotonic() - start, reason)
            seconds = time.monotonic() - start
            return LabelResult(False, None, None, None, [attempt], seconds, reason, provenance)
        ref = self.structures[self.index[h]]
        order = _match_atoms(atoms, ref)
        rotation = _rotation(ref.positions[order], atoms.positions)
        energy = float(ref.get_potential_energy())
        attempt = Attempt("lookup", True, None, energy, time.monotonic() - start)
        return LabelResult(
            converged=True,
            energy=energy,
            forces=ref.get_forces()[order] @ rotation.T,
            rung="lookup",
            attempts=[attempt],
            seconds=time.monotonic() - start,
            reason=None,
            provenance=provenance,
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
