"""Physical validity of a configuration against a reference molecule.

Shared by MD exploration and generator proposals: atoms must not come closer than a
floor, and the covalent bond graph (ASE's covalent radii, scaled) must equal the
reference's, so no bond broke or formed.
"""

import numpy as np
from ase import Atoms
from ase.neighborlist import natural_cutoffs, neighbor_list

#: Two atoms are bonded when closer than this factor times the sum of covalent radii.
BOND_FACTOR = 1.3


def min_distance(atoms: Atoms) -> float:
    """Smallest interatomic distance in Å (minimum image where periodic)."""
    if len(atoms) < 2:
        return float("inf")
    d = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
    return float(d[np.triu_indices(len(atoms), 1)].min())


def bond_graph(atoms: Atoms, factor: float = BOND_FACTOR) -> frozenset[tuple[int, int]]:
    """Covalent bonds as index pairs (i < j)."""
    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=factor))
    return frozenset((int(a), int(b)) for a, b in zip(i, j) if a < b)


def invalid_reason(
    atoms: Atoms,
    reference_bonds: frozenset[tuple[int, int]] | None = None,
    min_dist: float = 0.7,
    factor: float = BOND_FACTOR,
) -> str | None:
    """Why ``atoms`` is unphysical, or None when it is fine."""
    if not np.isfinite(atoms.positions).all():
        return "non-finite coordinates"
    d = min_distance(atoms)
    if d < min_dist:
        return f"atoms {d:.2f} Å apart (floor {min_dist} Å)"
    if reference_bonds is not None:
        bonds = bond_graph(atoms, factor)
        if bonds != reference_bonds:
            broken, formed = reference_bonds - bonds, bonds - reference_bonds
            parts = [
                f"{what} {sorted(pairs)[:3]}"
                for what, pairs in (("broken", broken), ("formed", formed))
                if pairs
            ]
            return "bond graph changed: " + "; ".join(parts)
    return None
