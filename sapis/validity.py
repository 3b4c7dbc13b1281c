"""Physical validity of a configuration against a reference molecule.

Shared by MD exploration and generator proposals: atoms must not come closer than a
floor, the structure must stay in one piece (as
:func:`sapis.structures.check_structure` demands of anything labelled), and the covalent
bond graph (ASE's covalent radii, scaled) must equal the reference's, so no bond broke
or formed. :class:`ValidityFilter` adds, for chiral molecules, a stereo check: an
E(3)-equivariant generator can propose the mirror image, or invert one stereo centre,
without changing distances or bonds.

Stereo centres are non-planar atoms with four or more bonded neighbours, plus
three-coordinate atoms beyond the second period (P, S, ...). Three-coordinate C, N, O
and B are left out: they are planar (sp2) or, as amine N, invert readily, and in 500 K
MD frames even planar ones pyramidalise either way (uracil's N-H in most frames).
Configurations are compared up to automorphisms of the element-labelled bond graph
(exchanging equivalent atoms). Only point chirality is seen, not axial or planar.
"""

import itertools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
from ase import Atoms
from ase.geometry import find_mic
from ase.neighborlist import natural_cutoffs, neighbor_list
from networkx.algorithms.isomorphism import GraphMatcher, categorical_node_match

from sapis.structures import apart

#: Two atoms are bonded when closer than this factor times the sum of covalent radii.
BOND_FACTOR = 1.3
#: A centre is non-planar when |(a x b) . c| / (|a||b||c|) exceeds this (0 planar,
#: 0.77 tetrahedral).
STEREO_MIN_VOLUME = 0.3
#: Automorphisms of the labelled bond graph enumerated at most.
MAX_AUTOMORPHISMS = 20_000

Bonds = Iterable[tuple[int, int]]


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


def _physical_check(
    atoms: Atoms,
    reference_bonds: frozenset[tuple[int, int]] | None,
    min_dist: float,
    factor: float,
) -> tuple[str, str] | None:
    """(kind, reason) of the first failed distance or bond check, or None."""
    if not np.isfinite(atoms.positions).all():
        return "non-finite", "non-finite coordinates"
    d = min_distance(atoms)
    if d < min_dist:
        return "overlap", f"atoms {d:.2f} Å apart (floor {min_dist} Å)"
    if reference_bonds is not None:
        bonds = bond_graph(atoms, factor)
        if bonds != reference_bonds:
            broken, formed = reference_bonds - bonds, bonds - reference_bonds
            parts = [
                f"{what} {sorted(pairs)[:3]}"
                for what, pairs in (("broken", broken), ("formed", formed))
                if pairs
            ]
            return "bonds", "bond graph changed: " + "; ".join(parts)
    if (reason := apart(atoms)) is not None:  # labelling would refuse it (check_structure)
        return "apart", reason
    return None


def invalid_reason(
    atoms: Atoms,
    reference_bonds: frozenset[tuple[int, int]] | None = None,
    min_dist: float = 0.7,
    factor: float = BOND_FACTOR,
) -> str | None:
    """Why ``atoms`` is unphysical, or None when it is fine."""
    failed = _physical_check(atoms, reference_bonds, min_dist, factor)
    return None if failed is None else failed[1]


# --- stereo -----------------------------------------------------------------------------


def _neighbours(n: int, bonds: Bonds) -> list[list[int]]:
    """Bonded neighbours of each of ``n`` atoms, in index order."""
    out: list[list[int]] = [[] for _ in range(n)]
    for i, j in bonds:
        out[i].append(j)
        out[j].append(i)
    return [sorted(nb) for nb in out]


def _triple_products(atoms: Atoms, quads: np.ndarray, normalised: bool = False) -> np.ndarray:
    """(a x b) . c for index quadruples (centre, n1, n2, n3) in the last axis of
    ``quads``, with a, b, c the vectors (minimum image where periodic) from the centre."""
    pos = atoms.positions
    v = pos[quads[..., 1:]] - pos[quads[..., :1]]
    if atoms.pbc.any():
        v = find_mic(v.reshape(-1, 3), atoms.cell, atoms.pbc)[0].reshape(v.shape)
    t = np.einsum("...i,...i->...", np.cross(v[..., 0, :], v[..., 1, :]), v[..., 2, :])
    if normalised:
        t = t / np.prod(np.linalg.norm(v, axis=-1), axis=-1)
    return t


def _quads(neighbours: list[list[int]], centres: Iterable[int]) -> np.ndarray:
    """(centre, first three neighbours) per centre, shape (C, 4)."""
    return np.array([[c, *neighbours[c][:3]] for c in centres], dtype=int).reshape(-1, 4)


def stereo_signs(atoms: Atoms, bonds: Bonds, centres: Iterable[int]) -> np.ndarray:
    """Sign (+1/-1; 0 if exactly planar) of the triple product of the vectors from each
    centre to its first three bonded neighbours in index order."""
    quads = _quads(_neighbours(len(atoms), bonds), centres)
    return np.sign(_triple_products(atoms, quads)).astype(int)


def stereo_centres(
    reference: Atoms, bonds: Bonds, min_volume: float = STEREO_MIN_VOLUME
) -> list[int]:
    """Atoms whose chirality sign is meaningful: four or more bonded neighbours (or three
    for elements beyond the second period) with the normalised triple product
    |(a x b) . c| / (|a||b||c|) of the first three above ``min_volume`` in ``reference``."""
    neighbours = _neighbours(len(reference), bonds)
    candidates = [
        i
        for i, nb in enumerate(neighbours)
        if len(nb) >= 4 or (len(nb) == 3 and reference.numbers[i] > 10)
    ]
    volume = np.abs(_triple_products(reference, _quads(neighbours, candidates), True))
    return [c for c, v in zip(candidates, volume) if v > min_volume]


def _automorphisms(graph: nx.Graph, cap: int) -> list[dict[int, int]]:
    """Up to ``cap`` automorphisms of ``graph`` keeping node labels; identity first."""
    matcher = GraphMatcher(graph, graph, node_match=categorical_node_match("label", None))
    return [{i: i for i in graph}, *itertools.islice(matcher.isomorphisms_iter(), cap)]


def _stereo_table(
    numbers: np.ndarray, bonds: Bonds, centres: Iterable[int], cap: int
) -> np.ndarray:
    """Quadruples (centre, n1, n2, n3) of the stereogenic ``centres`` mapped by each
    automorphism p of the element-labelled bond graph: shape (A, C, 4), identity first,
    duplicates dropped. Signs computed on row p are those of the configuration with
    its atoms relabelled by p.

    Centres with two terminal neighbours of one element (CH2, CH3, CF3) are left out:
    exchanging those two is an automorphism that flips that sign alone. Automorphisms are
    enumerated (at most ``cap``) on the graph without terminal atoms, each atom labelled
    by its element and its terminal neighbours' elements, and extended to the terminal
    atoms, which is unique where it matters.
    """
    bonds = list(bonds)
    neighbours = _neighbours(len(numbers), bonds)
    terminal = [len(nb) == 1 and len(neighbours[nb[0]]) > 1 for nb in neighbours]
    ends = [sorted((int(numbers[j]), j) for j in nb if terminal[j]) for nb in neighbours]

    def stereogenic(c: int) -> bool:
        elements = [z for z, _ in ends[c]]
        return len(set(elements)) == len(elements)

    quads = _quads(neighbours, [c for c in centres if stereogenic(c)])
    if len(quads) == 0:
        return quads[None]
    core = nx.Graph()
    core.add_nodes_from(
        (i, {"label": (int(numbers[i]), tuple(z for z, _ in ends[i]))})
        for i in range(len(numbers))
        if not terminal[i]
    )
    core.add_edges_from((i, j) for i, j in bonds if not (terminal[i] or terminal[j]))
    rows = {}
    for p in _automorphisms(core, cap):
        full = np.arange(len(numbers))
        for i, image in p.items():
            full[i] = image
            for (_, a), (_, b) in zip(ends[i], ends[image]):
                full[a] = b
        mapped = full[quads]
        rows.setdefault(mapped.tobytes(), mapped)
    return np.stack(list(rows.values()))


def _is_chiral(reference: Atoms, table: np.ndarray) -> bool:
    """No relabelling (row of ``table``) of the mirrored reference has the reference's
    stereo signs."""
    if table.shape[1] == 0:
        return False
    signs = np.sign(_triple_products(reference, table[0]))
    mirrored = reference.copy()
    mirrored.positions *= -1.0
    return not (np.sign(_triple_products(mirrored, table)) == signs).all(axis=1).any()


def is_chiral(
    reference: Atoms,
    bonds: Bonds,
    min_volume: float = STEREO_MIN_VOLUME,
    max_automorphisms: int = MAX_AUTOMORPHISMS,
) -> bool:
    """Whether the mirror image of ``reference`` is a different molecule: no automorphism
    of the element-labelled bond graph gives the mirrored reference the reference's signs
    at all stereo centres. No stereo centres (or only CH2-like ones): achiral.

    At most ``max_automorphisms`` automorphisms of the graph without terminal atoms are
    tried (hydrogens and other terminal atoms are handled without enumeration); an
    achiral molecule with more may then be called chiral.
    """
    bonds = list(bonds)
    centres = stereo_centres(reference, bonds, min_volume)
    return _is_chiral(
        reference, _stereo_table(reference.numbers, bonds, centres, max_automorphisms)
    )


# --- the filter ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidityFilter:
    """Distance, bond-graph and (for chiral molecules) stereo checks against a reference.

    Build it with :meth:`from_reference`. ``centres`` are the stereo centres that can
    carry chirality (no two terminal neighbours of one element), ``signs`` their signs in
    the reference (see :func:`stereo_signs`). The stereo check accepts a configuration
    when some automorphism of the labelled bond graph (e.g. exchanging a methyl group's
    H atoms, or two equivalent halves) gives it the reference's signs at every centre.
    """

    bonds: frozenset[tuple[int, int]]
    centres: tuple[int, ...]
    signs: tuple[int, ...]
    chiral: bool
    min_dist: float = 0.7
    factor: float = BOND_FACTOR
    #: (centre, n1, n2, n3) of every stereo centre under each automorphism, (A, C, 4).
    table: np.ndarray = field(
        default_factory=lambda: np.zeros((1, 0, 4), int), repr=False, compare=False
    )

    @classmethod
    def from_reference(
        cls,
        reference: Atoms,
        min_dist: float = 0.7,
        factor: float = BOND_FACTOR,
        min_volume: float = STEREO_MIN_VOLUME,
        max_automorphisms: int = MAX_AUTOMORPHISMS,
    ) -> "ValidityFilter":
        """The filter for configurations of ``reference``'s molecule (same atom order)."""
        bonds = bond_graph(reference, factor)
        centres = stereo_centres(reference, bonds, min_volume)
        table = _stereo_table(reference.numbers, bonds, centres, max_automorphisms)
        signs = np.sign(_triple_products(reference, table[0]))
        return cls(
            bonds=bonds,
            centres=tuple(int(c) for c in table[0, :, 0]),
            signs=tuple(int(s) for s in signs),
            chiral=_is_chiral(reference, table),
            min_dist=min_dist,
            factor=factor,
            table=table,
        )

    def check(self, atoms: Atoms) -> tuple[str, str] | None:
        """(kind, reason) of the first failed check, or None. Kinds: "non-finite",
        "overlap", "apart" (parts farther apart than labelling accepts), "bonds",
        "mirror", "stereo"."""
        failed = _physical_check(atoms, self.bonds, self.min_dist, self.factor)
        if failed is not None or not self.chiral:
            return failed
        wanted = np.array(self.signs)
        signs = np.sign(_triple_products(atoms, self.table))
        if (signs == wanted).all(axis=1).any():
            return None
        if (signs == -wanted).all(axis=1).any():
            return "mirror", "mirror image of the reference (every stereo centre inverted)"
        best = int((signs != wanted).sum(axis=1).argmin())
        flipped = sorted(int(self.table[best, k, 0]) for k in np.flatnonzero(signs[best] != wanted))
        s = "s" if len(flipped) > 1 else ""
        return "stereo", f"inverted stereo centre{s} at atom{s} {flipped}"

    def reason(self, atoms: Atoms) -> str | None:
        """Why ``atoms`` is unphysical or the wrong stereoisomer, or None when it is fine."""
        failed = self.check(atoms)
        return None if failed is None else failed[1]

    def is_valid(self, atoms: Atoms) -> bool:
        """Whether ``atoms`` passes every check."""
        return self.check(atoms) is None

    def split(self, images: Iterable[Atoms]) -> tuple[list[Atoms], dict[str, int]]:
        """The valid images, and the rejected ones counted by kind (see :meth:`check`)."""
        valid: list[Atoms] = []
        rejected: Counter[str] = Counter()
        for atoms in images:
            failed = self.check(atoms)
            if failed is None:
                valid.append(atoms)
            else:
                rejected[failed[0]] += 1
        return valid, dict(rejected)
