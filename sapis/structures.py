"""Structure checks and the canonical structure hash.

A configuration is an ``ase.Atoms``. Before a structure is stored or sent to DFT it must
pass :func:`check_structure`; its identity in the dataset is :func:`structure_hash`.
"""

import hashlib

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from sapis.errors import InputError

MIN_DISTANCE = 0.5
"""Closest allowed interatomic distance in Å; anything closer is a broken structure."""

HASH_DECIMALS = 4
"""Distances enter the hash rounded to 10**-HASH_DECIMALS Å (0.1 mÅ)."""


def check_structure(atoms: Atoms, where: str = "structure") -> None:
    """Raise :class:`InputError` naming the problem if ``atoms`` cannot be labelled.

    Checks: at least one atom, known elements (Z between 1 and 118), finite positions
    (and cell), and no pair of atoms closer than :data:`MIN_DISTANCE` Å.
    """
    if len(atoms) == 0:
        raise InputError(f"{where}: no atoms")
    numbers = atoms.numbers
    bad = [int(z) for z in numbers if z < 1 or z >= len(chemical_symbols)]
    if bad:
        raise InputError(f"{where}: unknown element (atomic number {bad[0]})")
    if not np.all(np.isfinite(atoms.positions)):
        rows = np.where(~np.isfinite(atoms.positions).all(axis=1))[0]
        raise InputError(f"{where}: NaN or infinite coordinates on atom {int(rows[0])}")
    if atoms.pbc.any() and not np.all(np.isfinite(atoms.cell.array)):
        raise InputError(f"{where}: NaN or infinite cell")
    if len(atoms) > 1:
        d = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
        np.fill_diagonal(d, np.inf)
        i, j = np.unravel_index(np.argmin(d), d.shape)
        if d[i, j] < MIN_DISTANCE:
            raise InputError(
                f"{where}: atoms {i} ({atoms[i].symbol}) and {j} ({atoms[j].symbol}) are "
                f"{d[i, j]:.3f} Å apart, closer than {MIN_DISTANCE} Å"
            )


def structure_hash(atoms: Atoms) -> str:
    """Canonical hash of a structure (32 hex characters).

    Equal for the same structure in any atom order, translation or rotation (and, since
    it is built from distances, for its mirror image, which has the same energy);
    different when any interatomic distance differs by more than ~10**-HASH_DECIMALS Å
    or the composition differs. Each atom contributes its element and the sorted list of
    (element, distance) to every other atom; the sorted per-atom fingerprints are hashed.
    Periodic structures use minimum-image distances and add the cell lengths and angles.
    """
    numbers = atoms.numbers.astype(np.int64)
    periodic = bool(atoms.pbc.any())
    scale = 10**HASH_DECIMALS
    fingerprints = []
    if len(atoms) > 1:
        d = np.rint(atoms.get_all_distances(mic=periodic) * scale).astype(np.int64)
        for i in range(len(atoms)):
            others = np.delete(np.arange(len(atoms)), i)
            pairs = np.stack([numbers[others], d[i, others]], axis=1)
            pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
            fingerprints.append((int(numbers[i]), pairs.tobytes()))
    else:
        fingerprints.append((int(numbers[0]), b""))
    fingerprints.sort()
    h = hashlib.sha256()
    h.update(f"natoms={len(atoms)};pbc={atoms.pbc.astype(int).tolist()};".encode())
    if periodic:
        h.update(np.rint(atoms.cell.cellpar() * scale).astype(np.int64).tobytes())
    for z, pairs in fingerprints:
        h.update(z.to_bytes(2, "little"))
        h.update(pairs)
    return h.hexdigest()[:32]
