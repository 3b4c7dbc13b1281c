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

MAX_GAP = 5.0
"""Widest allowed gap in Å between the parts of a structure. Atoms closer than this are
linked (a covalent bond, a hydrogen bond, a van der Waals contact: all shorter); the
links must join every atom into one piece. A part farther away than this from the rest
interacts with it only weakly, beyond a potential's cutoff: usually coordinates in the
wrong unit (pm or Bohr×1000 read as Å) or fragments that flew apart."""

HASH_DECIMALS = 4
"""Distances enter the hash rounded to 10**-HASH_DECIMALS Å (0.1 mÅ)."""


def check_structure(atoms: Atoms, where: str = "structure") -> None:
    """Raise :class:`InputError` naming the problem if ``atoms`` cannot be labelled.

    Checks: at least one atom, known elements (Z between 1 and 118), finite positions
    (and a finite, non-degenerate cell where periodic), no pair of atoms closer than
    :data:`MIN_DISTANCE` Å, and one piece: no part of the structure farther than
    :data:`MAX_GAP` Å from the rest (a single atom is whole). Non-periodic structures are
    checked with a k-d tree, so thousands of atoms take no distance matrix.
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
    periodic = bool(atoms.pbc.any())
    if periodic and not np.all(np.isfinite(atoms.cell.array)):
        raise InputError(f"{where}: NaN or infinite cell")
    if periodic and atoms.cell.rank < int(atoms.pbc.sum()):
        raise InputError(
            f"{where}: periodic but its cell is degenerate (cell lengths "
            f"{np.round(atoms.cell.lengths(), 3).tolist()} Å)"
        )
    if len(atoms) == 1:
        return
    nearest, pairs = _neighbours(atoms, periodic)
    i = int(np.argmin(nearest[:, 0]))
    j = int(nearest[i, 1])
    if nearest[i, 0] < MIN_DISTANCE:
        i, j = sorted((i, j))
        raise InputError(
            f"{where}: atoms {i} ({atoms[i].symbol}) and {j} ({atoms[j].symbol}) are "
            f"{nearest[i, 0]:.3f} Å apart, closer than {MIN_DISTANCE} Å"
        )
    problem = _pieces_apart(atoms, nearest, pairs)
    if problem:
        raise InputError(f"{where}: {problem}")


def apart(atoms: Atoms) -> str | None:
    """Why ``atoms`` is not one piece (a part farther than :data:`MAX_GAP` Å from the
    rest; see :func:`check_structure`), or None. Positions must be finite."""
    if len(atoms) < 2:
        return None
    return _pieces_apart(atoms, *_neighbours(atoms, bool(atoms.pbc.any())))


def _neighbours(atoms: Atoms, periodic: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per atom (distance to its nearest neighbour, that neighbour's index), shape (N, 2),
    and the index pairs (i < j) closer than :data:`MAX_GAP`, shape (P, 2)."""
    n = len(atoms)
    if periodic:
        d = atoms.get_all_distances(mic=True)
        np.fill_diagonal(d, np.inf)
        j = np.argmin(d, axis=1)
        pairs = np.argwhere(np.triu(d <= MAX_GAP, 1))
        return np.stack([d[np.arange(n), j], j], axis=1), pairs
    from scipy.spatial import cKDTree

    tree = cKDTree(atoms.positions)
    dist, idx = tree.query(atoms.positions, k=2)
    pairs = tree.query_pairs(MAX_GAP, output_type="ndarray")
    return np.stack([dist[:, 1], idx[:, 1]], axis=1), pairs


def _pieces_apart(atoms: Atoms, nearest: np.ndarray, pairs: np.ndarray) -> str | None:
    """What is wrong when the links closer than :data:`MAX_GAP` leave more than one
    piece (the smallest piece without atom 0, and its gap), or None."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(atoms)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    count, labels = connected_components(graph, directed=False)
    if count == 1:
        return None
    sizes = np.bincount(labels)
    piece = min((k for k in range(count) if k != labels[0]), key=lambda k: (sizes[k], k))
    inside = np.flatnonzero(labels == piece)
    rest = np.flatnonzero(labels != piece)
    gap = _gap(atoms, inside, rest)
    part = atoms[inside]
    what = (
        f"atom {inside[0]} ({part.get_chemical_formula()}) is"
        if len(inside) == 1
        else f"atoms {inside.tolist()} ({part.get_chemical_formula()}) are"
    )
    message = (
        f"falls apart: {what} {gap:.1f} Å from the rest of the structure, farther than {MAX_GAP} Å"
    )
    k = int(inside[np.argmax(nearest[inside, 0])])
    if nearest[k, 0] > MAX_GAP:  # an atom alone: most likely the wrong length unit
        message += (
            f"; coordinates in Å? the nearest neighbour of atom {k} is {nearest[k, 0]:.1f} Å away"
        )
    return message


def _gap(atoms: Atoms, inside: np.ndarray, rest: np.ndarray) -> float:
    """Shortest distance in Å between the atoms ``inside`` and the atoms of ``rest``."""
    if atoms.pbc.any():
        d = atoms.get_all_distances(mic=True)
        return float(d[np.ix_(inside, rest)].min())
    from scipy.spatial import cKDTree

    return float(cKDTree(atoms.positions[rest]).query(atoms.positions[inside])[0].min())


def structure_hash(atoms: Atoms) -> str:
    """Canonical hash of a structure (32 hex characters).

    Equal for the same structure in any atom order, translation or rotation (and, since
    it is built from distances, for its mirror image, which has the same energy);
    different when any interatomic distance differs by more than ~10**-HASH_DECIMALS Å
    or the composition differs. Each atom contributes its element and the sorted list of
    (element, distance) to every other atom; the sorted per-atom fingerprints are hashed.
    Periodic structures use minimum-image distances and add the cell lengths and angles.
    Positions are first rounded to 10⁻⁸ Å, the precision extended XYZ files keep, so a
    structure hashes alike before it is written and after it is read back (else a
    distance within 10⁻⁸ Å of a rounding boundary flips the hash).
    """
    atoms = Atoms(atoms.numbers, np.round(atoms.positions, 8), cell=atoms.cell, pbc=atoms.pbc)
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
