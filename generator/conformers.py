"""Conformer ensembles of one molecule: GEOM-lite files, symmetry-aware RMSD, COV/MAT,
conformer validity and an ETKDG baseline.

A GEOM-lite molecule file (``data/geom_lite/<set>/<name>.npz``, built by
``data/geom_lite/build.py``) holds the training frames a per-molecule generator may learn
from (high-temperature GFN2-xTB MD) and a reference ensemble (GFN2-xTB minima in an energy
window, de-duplicated), in the atom order of the RDKit mol block stored beside them.

RMSDs are over heavy atoms after the best rotation and the best relabelling by a symmetry
of the heavy-atom graph (what RDKit's ``rdMolAlign.GetBestRMS`` computes, no reflection),
vectorised in numpy. COV/MAT follow GeoMol / GeoDiff: with ``D[r, g]`` the RMSD of
reference ``r`` to generated ``g``, COV-R is the fraction of references with some
``D[r, g] <= delta`` and MAT-R the mean over references of ``min_g D[r, g]``; COV-P and
MAT-P swap the roles.
"""

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from rdkit import Chem
from rdkit.Chem import AllChem
from rdkit.Geometry import Point3D

from sapis.errors import InputError
from sapis.validity import ValidityFilter

#: Heavy-atom symmetry permutations enumerated at most (RDKit's default match cap).
MAX_SYMMETRIES = 1000
#: Atoms closer than this (Å) are a clash.
MIN_DISTANCE = 0.7


@dataclass(frozen=True)
class ConformerMolecule:
    """One GEOM-lite molecule: its atoms, training frames and reference ensemble.

    Positions are ``[frames, atoms, 3]`` in Å, energies in eV (GFN2-xTB totals), all in
    the atom order of ``mol`` (an RDKit Mol with explicit H and stereo, one conformer:
    the lowest reference)."""

    name: str
    smiles: str
    numbers: np.ndarray
    train_positions: np.ndarray
    train_energies: np.ndarray
    train_forces: np.ndarray
    reference_positions: np.ndarray
    reference_energies: np.ndarray
    mol: Chem.Mol

    @property
    def heavy(self) -> np.ndarray:
        """Indices of the heavy atoms."""
        return np.flatnonzero(self.numbers > 1)

    def atoms(self, positions: np.ndarray) -> Atoms:
        """One configuration as ASE ``Atoms``."""
        return Atoms(self.numbers, positions)


def mol_from_block(block: str) -> Chem.Mol:
    """An RDKit Mol with explicit H from a mol block, atom order kept, stereo from 3D."""
    mol = Chem.MolFromMolBlock(block, removeHs=False, sanitize=True)
    if mol is None:
        raise InputError("mol block does not parse")
    Chem.AssignStereochemistryFrom3D(mol)
    return mol


def load_molecule(path: str | Path) -> ConformerMolecule:
    """Read a GEOM-lite molecule file; checks that its arrays agree with its mol block."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no GEOM-lite molecule file at {path}")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    mol = mol_from_block(str(arrays["molblock"]))
    numbers = arrays["numbers"].astype(int)
    if [a.GetAtomicNum() for a in mol.GetAtoms()] != numbers.tolist():
        raise InputError(f"{path}: the mol block's atoms differ from 'numbers'")
    n = len(numbers)
    for key in ("train_positions", "reference_positions"):
        if arrays[key].ndim != 3 or arrays[key].shape[1:] != (n, 3):
            raise InputError(f"{path}: {key} has shape {arrays[key].shape}, not [frames, {n}, 3]")
    return ConformerMolecule(
        name=str(arrays["name"]),
        smiles=str(arrays["smiles"]),
        numbers=numbers,
        train_positions=arrays["train_positions"].astype(float),
        train_energies=arrays["train_energies"].astype(float),
        train_forces=arrays["train_forces"].astype(float),
        reference_positions=arrays["reference_positions"].astype(float),
        reference_energies=arrays["reference_energies"].astype(float),
        mol=mol,
    )


def read_index(folder: str | Path) -> list[dict]:
    """The molecules listed in ``folder/index.json`` (one dict each: set, split, name,
    file relative to ``folder``, ...)."""
    path = Path(folder) / "index.json"
    if not path.is_file():
        raise InputError(f"no GEOM-lite index at {path}")
    return json.loads(path.read_text())["molecules"]


# --- RMSD -------------------------------------------------------------------------------


#: Terminal O/N of a conjugated group (carboxyl(ate), nitro, amidine), as RDKit's
#: ``MolAlign::details::symmetrizeTerminalAtoms`` finds them.
_TERMINAL = Chem.MolFromSmarts("[O,N;D1;$([O,N;D1]-[*]=[O,N;D1]),$([O,N;D1]=[*]-[O,N;D1])]~[*]")


def heavy_symmetries(
    mol: Chem.Mol, symmetrize_terminal: bool = True, max_matches: int = MAX_SYMMETRIES
) -> np.ndarray:
    """Permutations ``[P, H]`` of the heavy atoms (indices into ``mol``'s atoms) that map
    the heavy-atom graph onto itself (elements and bond orders kept), identity first.

    With ``symmetrize_terminal`` (RDKit's ``GetBestRMS`` default), the terminal O/N of a
    conjugated group match either bond order, so the two O of a carboxylic acid or a
    carboxylate exchange (their H are not compared)."""
    heavy = np.array([a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1])
    core = Chem.RemoveAllHs(mol, sanitize=False)  # keeps the heavy atoms' order
    query = Chem.RWMol(core)
    if symmetrize_terminal:
        for atom, neighbour in core.GetSubstructMatches(_TERMINAL):
            query.GetAtomWithIdx(atom).SetFormalCharge(0)
            bond = query.GetBondBetweenAtoms(atom, neighbour)
            query.ReplaceBond(bond.GetIdx(), Chem.BondFromSmarts("-,="))
    matches = core.GetSubstructMatches(query, uniquify=False, maxMatches=max_matches)
    if not matches:
        raise InputError("the molecule does not match itself (empty or unsanitised mol?)")
    perms = np.asarray(matches, dtype=int)
    identity = np.flatnonzero((perms == np.arange(len(heavy))).all(axis=1))
    order = np.r_[identity, np.setdiff1d(np.arange(len(perms)), identity)]
    return heavy[perms[order]]


def rmsd_matrix(
    mol: Chem.Mol, a: np.ndarray, b: np.ndarray, symmetries: np.ndarray | None = None
) -> np.ndarray:
    """Heavy-atom RMSD ``[len(a), len(b)]`` (Å) between conformers ``a`` ``[n, atoms, 3]``
    and ``b`` ``[m, atoms, 3]`` of ``mol``: best rotation (Kabsch, no reflection) and best
    symmetry relabelling (:func:`heavy_symmetries`, or ``symmetries`` if given) per pair.
    A conformer with a non-finite coordinate is infinitely far from every other."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.ndim == 2:
        a = a[None]
    if b.ndim == 2:
        b = b[None]
    n_atoms = mol.GetNumAtoms()
    for name, x in (("a", a), ("b", b)):
        if x.ndim != 3 or x.shape[1:] != (n_atoms, 3):
            raise InputError(f"{name} has shape {x.shape}, not [conformers, {n_atoms}, 3]")
    finite_a, finite_b = np.isfinite(a).all(axis=(1, 2)), np.isfinite(b).all(axis=(1, 2))
    if not (finite_a.all() and finite_b.all()):
        out = np.full((len(a), len(b)), np.inf)
        if finite_a.any() and finite_b.any():
            inner = rmsd_matrix(mol, a[finite_a], b[finite_b], symmetries)
            out[np.ix_(finite_a, finite_b)] = inner
        return out
    perms = heavy_symmetries(mol) if symmetries is None else np.asarray(symmetries)
    ref = a[:, perms[0]]
    ref = ref - ref.mean(axis=1, keepdims=True)  # [n, H, 3]
    moved = b[:, perms]  # [m, P, H, 3]
    moved = moved - moved.mean(axis=2, keepdims=True)
    g_ref = (ref**2).sum(axis=(1, 2))  # [n]
    g_mov = (moved[:, 0] ** 2).sum(axis=(1, 2))  # [m], the same for every relabelling
    out = np.empty((len(a), len(b)))
    chunk = max(1, 200_000 // max(1, len(b) * len(perms)))
    for start in range(0, len(a), chunk):
        part = ref[start : start + chunk]
        cov = np.einsum("nhi,mphj->nmpij", part, moved)  # [n, m, P, 3, 3]
        s = np.linalg.svd(cov, compute_uv=False)
        s[..., -1] *= np.sign(np.linalg.det(cov))  # a proper rotation, no reflection
        best = s.sum(axis=-1).max(axis=-1)  # [n, m]
        sq = g_ref[start : start + chunk, None] + g_mov[None] - 2.0 * best
        out[start : start + chunk] = np.sqrt(np.clip(sq, 0.0, None) / perms.shape[1])
    return out


# --- COV / MAT --------------------------------------------------------------------------


@dataclass(frozen=True)
class Coverage:
    """COV-R/MAT-R (over references) and COV-P/MAT-P (over generated) at ``delta`` Å."""

    delta: float
    cov_r: float
    mat_r: float
    cov_p: float
    mat_p: float

    def as_dict(self) -> dict[str, float]:
        return {
            "delta": self.delta,
            "COV-R": self.cov_r,
            "MAT-R": self.mat_r,
            "COV-P": self.cov_p,
            "MAT-P": self.mat_p,
        }


def coverage(rmsd: np.ndarray, delta: float) -> Coverage:
    """COV/MAT from ``rmsd[reference, generated]`` at threshold ``delta`` (Å, inclusive).
    An empty generated set has COV 0 and MAT infinity."""
    rmsd = np.asarray(rmsd, float)
    if rmsd.ndim != 2 or rmsd.shape[0] == 0:
        raise InputError(f"rmsd must be [references >= 1, generated], got {rmsd.shape}")
    if delta <= 0:
        raise InputError(f"delta must be > 0 Å, got {delta}")
    if rmsd.shape[1] == 0:
        return Coverage(delta, 0.0, float("inf"), 0.0, float("inf"))
    to_ref, to_gen = rmsd.min(axis=1), rmsd.min(axis=0)
    return Coverage(
        delta=float(delta),
        cov_r=float((to_ref <= delta).mean()),
        mat_r=float(to_ref.mean()),
        cov_p=float((to_gen <= delta).mean()),
        mat_p=float(to_gen.mean()),
    )


# --- validity ---------------------------------------------------------------------------


def with_positions(mol: Chem.Mol, positions: np.ndarray) -> Chem.Mol:
    """A copy of ``mol`` with one conformer at ``positions`` ``[atoms, 3]`` (Å)."""
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    conf = Chem.Conformer(out.GetNumAtoms())
    for i, (x, y, z) in enumerate(np.asarray(positions, float)):
        conf.SetAtomPosition(i, Point3D(x, y, z))
    conf.Set3D(True)
    out.AddConformer(conf, assignId=True)
    return out


def stereo_smiles(mol: Chem.Mol, positions: np.ndarray) -> str:
    """Canonical isomeric SMILES (no H) with stereo assigned from ``positions``."""
    work = with_positions(mol, positions)
    Chem.AssignStereochemistryFrom3D(work, replaceExistingTags=True)
    return Chem.MolToSmiles(Chem.RemoveHs(work))


class ConformerValidity:
    """Conformers of ``mol`` must keep its bond graph (covalent radii from
    :mod:`sapis.validity`), have no atoms closer than ``min_dist`` Å, and keep its
    stereo (RDKit's stereo from 3D, compared as canonical isomeric SMILES)."""

    def __init__(self, mol: Chem.Mol, min_dist: float = MIN_DISTANCE) -> None:
        self.mol = mol
        self.min_dist = min_dist
        bonds = frozenset(
            tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))) for b in mol.GetBonds()
        )
        self._graph = ValidityFilter(
            bonds=bonds, centres=(), signs=(), chiral=False, min_dist=min_dist
        )
        self._numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
        self.smiles = Chem.MolToSmiles(Chem.RemoveHs(mol))

    def check(self, positions: np.ndarray) -> tuple[str, str] | None:
        """(kind, reason) of the first failed check, or None. Kinds: those of
        :meth:`sapis.validity.ValidityFilter.check` ("non-finite", "overlap" (a clash),
        "bonds", "apart") and "stereo"."""
        failed = self._graph.check(Atoms(self._numbers, positions))
        if failed is not None:
            return failed
        got = stereo_smiles(self.mol, positions)
        if got != self.smiles:
            return "stereo", f"stereo from 3D gives {got}, not {self.smiles}"
        return None

    def split(self, positions: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
        """Valid mask ``[conformers]`` and rejected conformers counted by kind."""
        positions = np.asarray(positions, float)
        if positions.ndim != 3 or positions.shape[1:] != (self.mol.GetNumAtoms(), 3):
            raise InputError(
                f"positions have shape {positions.shape}, "
                f"not [conformers, {self.mol.GetNumAtoms()}, 3]"
            )
        mask = np.ones(len(positions), bool)
        reasons: Counter[str] = Counter()
        for k, x in enumerate(positions):
            failed = self.check(x)
            if failed is not None:
                mask[k] = False
                reasons[failed[0]] += 1
        return mask, dict(reasons)


def conformer_validity(
    mol: Chem.Mol, positions: np.ndarray, min_dist: float = MIN_DISTANCE
) -> tuple[np.ndarray, dict[str, int]]:
    """Valid mask and rejection counts by kind of conformers ``positions`` of ``mol``
    (see :class:`ConformerValidity`)."""
    return ConformerValidity(mol, min_dist).split(positions)


# --- ETKDG baseline ---------------------------------------------------------------------


def etkdg_conformers(mol: Chem.Mol, n: int, seed: int, mmff: bool = False) -> np.ndarray:
    """``n`` ETKDGv3 conformers ``[n, atoms, 3]`` (Å) of ``mol`` (explicit H) in its atom
    order, drawn from ``seed`` (>= 0); relaxed with MMFF94 when ``mmff``. Raises when RDKit
    embeds fewer than ``n``."""
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    if not any(a.GetAtomicNum() == 1 for a in mol.GetAtoms()):
        raise InputError("the template needs explicit hydrogens (Chem.AddHs)")
    work = Chem.Mol(mol)
    work.RemoveAllConformers()
    if seed < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    params = AllChem.ETKDGv3()
    # RDKit seeds conformer k from randomSeed * (k + 1)-like sums: randomSeed 0 gives n
    # identical conformers, so the seed picks a positive RDKit seed instead
    params.randomSeed = int(np.random.default_rng(seed).integers(1, 2**31 - 1))
    ids = list(AllChem.EmbedMultipleConfs(work, numConfs=n, params=params))
    if len(ids) < n:
        params.useRandomCoords = True
        work.RemoveAllConformers()
        ids = list(AllChem.EmbedMultipleConfs(work, numConfs=n, params=params))
    if len(ids) < n:
        raise InputError(f"ETKDG embedded {len(ids)} of {n} conformers")
    if mmff:
        AllChem.MMFFOptimizeMoleculeConfs(work, numThreads=1)
    return np.array([work.GetConformer(i).GetPositions() for i in ids])
