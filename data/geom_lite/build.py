"""GEOM-lite: a small conformer benchmark built from data RDKit ships, with GFN2-xTB.

Small set: 16 molecules drawn by the seed from RDKit's ``Data/NCI/first_5K.smi`` (at most
9 heavy atoms of H C N O F, neutral, one fragment, at least one rotatable bond, no
unspecified stereo), split by molecule into ``val`` (4) and ``test`` (12). Drug-like set:
the 2 smallest neutral ligands of RDKit's Contrib SDFs with at most 25 heavy atoms and at
least 3 rotatable bonds (``test``).

Per molecule: training frames (GFN2-xTB Langevin MD at high temperature from several
ETKDG starts, with energies and forces) and a CREST-like reference ensemble (ETKDG starts
and MD snapshots optimised with GFN2-xTB, kept within an energy window of the lowest and
de-duplicated by symmetry-aware heavy-atom RMSD). One ``<set>/<name>.npz`` per molecule
and ``index.json``; see README.md.

    OMP_NUM_THREADS=1 .venv/bin/python data/geom_lite/build.py --seed 0
"""

import argparse
import json
import os
import platform
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.optimize import BFGS
from rdkit import Chem, RDConfig, RDLogger
from rdkit.Chem import rdMolDescriptors as Descriptors
from rdkit.Chem.EnumerateStereoisomers import EnumerateStereoisomers, StereoEnumerationOptions
from tblite.ase import TBLite  # noqa: F401  (loaded before threadpool_limits, so its OpenMP obeys)
from threadpoolctl import threadpool_limits

from sapis.dft.settings import DFTSettings
from sapis.dft.xtb import tblite_calculator, xtb_md
from sapis.generator.conformers import (
    ConformerValidity,
    etkdg_conformers,
    heavy_symmetries,
    rmsd_matrix,
    with_positions,
)
from sapis.units import KCAL_PER_MOL_TO_EV as KCAL_PER_MOL

HERE = Path(__file__).parent
SMILES_FILE = Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"
SDF_FILES = [
    Path(RDConfig.RDContribDir) / "Fastcluster" / "testdata" / "cdk2.sdf",
    Path(RDConfig.RDContribDir) / "FreeWilson" / "data" / "cmet_ligands.sdf",
    Path(RDConfig.RDContribDir) / "PBF" / "testData" / "egfr.sdf",
]
SMALL_ELEMENTS = {"H", "C", "N", "O", "F"}
N_SMALL, N_VAL, N_DRUG = 16, 4, 2
XTB = DFTSettings(program="xtb", method="GFN2-xTB")

#: Per set: MD (runs from different ETKDG starts, steps after ``equilibrate`` unsaved
#: steps, a frame every ``every`` steps) and the reference search (ETKDG starts, MD
#: snapshots, BFGS to ``fmax`` eV/Å in at most ``opt_steps``, the window in kcal/mol
#: above the lowest, the RMSD below which two minima are one, Å).
SETTINGS = {
    "small": {
        "temperature_K": 1000.0,
        "timestep_fs": 0.5,
        "friction_per_fs": 0.01,
        "md_runs": 4,
        "equilibrate": 60,
        "steps": 1000,
        "every": 20,
        "etkdg_starts": 28,
        "md_snapshots": 12,
        "fmax": 0.01,
        "opt_steps": 500,
        "window_kcal": 6.0,
        "dedup_rmsd": 0.125,
    },
    "drug": {
        "temperature_K": 1000.0,
        "timestep_fs": 0.5,
        "friction_per_fs": 0.01,
        "md_runs": 4,
        "equilibrate": 60,
        "steps": 1000,
        "every": 20,
        "etkdg_starts": 28,
        "md_snapshots": 4,
        "fmax": 0.01,
        "opt_steps": 500,
        "window_kcal": 6.0,
        "dedup_rmsd": 0.125,
    },
}


# --- molecules ----------------------------------------------------------------------------


def fully_specified(mol: Chem.Mol) -> bool:
    """No stereocentre or stereo double bond left unspecified, explicit H included (so an
    imine's =N-H, E or Z in 3D, counts as unspecified)."""
    opts = StereoEnumerationOptions(onlyUnassigned=True, unique=True)
    return len(list(EnumerateStereoisomers(Chem.AddHs(mol), options=opts))) == 1


def small_candidates() -> list[tuple[str, str]]:
    """(name, canonical SMILES) of every first_5K.smi molecule that fits the small set,
    first occurrence of each SMILES, in file order."""
    RDLogger.DisableLog("rdApp.*")  # the file has a few molecules RDKit refuses
    out, seen = [], set()
    for line in SMILES_FILE.read_text().splitlines():
        smiles, nsc = line.split()
        mol = Chem.MolFromSmiles(smiles)
        if mol is None or mol.GetNumHeavyAtoms() > 9:
            continue
        if any(a.GetSymbol() not in SMALL_ELEMENTS or a.GetFormalCharge() for a in mol.GetAtoms()):
            continue
        if len(Chem.GetMolFrags(mol)) > 1 or Descriptors.CalcNumRotatableBonds(mol) < 1:
            continue
        if not fully_specified(mol):
            continue
        canonical = Chem.MolToSmiles(mol)
        if canonical not in seen:
            seen.add(canonical)
            out.append((f"nci{nsc}", canonical))
    return out


def pick_small(seed: int) -> list[tuple[str, str, str]]:
    """(name, SMILES, split) of the 16 small molecules the seed draws, val first."""
    candidates = small_candidates()
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(candidates), N_SMALL, replace=False)
    return [(*candidates[k], "val" if i < N_VAL else "test") for i, k in enumerate(chosen.tolist())]


def drug_candidates() -> list[tuple[int, int, str, Chem.Mol]]:
    """(heavy atoms, -rotatable bonds, name, mol with H) of neutral, fully specified SDF
    ligands with at most 25 heavy atoms and at least 3 rotatable bonds, smallest first."""
    out, seen = [], set()
    for path in SDF_FILES:
        for mol in Chem.SDMolSupplier(str(path), removeHs=False):
            if mol is None or not any(a.GetAtomicNum() == 1 for a in mol.GetAtoms()):
                continue
            heavy, rot = mol.GetNumHeavyAtoms(), Descriptors.CalcNumRotatableBonds(mol)
            if heavy > 25 or rot < 3 or any(a.GetFormalCharge() for a in mol.GetAtoms()):
                continue
            if len(Chem.GetMolFrags(mol)) > 1 or not fully_specified(mol):
                continue
            smiles = Chem.MolToSmiles(Chem.RemoveHs(mol))
            if smiles not in seen:
                seen.add(smiles)
                out.append((heavy, -rot, mol.GetProp("_Name"), mol))
    return sorted(out, key=lambda row: row[:3])


# --- xTB ----------------------------------------------------------------------------------


def training_frames(mol: Chem.Mol, starts: np.ndarray, s: dict, seed: int) -> dict:
    """High-temperature Langevin MD from each start: positions, energies, forces, run."""
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    validity = ConformerValidity(mol)
    pos, energy, forces, run, stopped, invalid = [], [], [], [], [], 0
    for r, start in enumerate(starts):
        traj = xtb_md(
            Atoms(numbers, start),
            XTB,
            s["temperature_K"],
            s["equilibrate"] + s["steps"],
            s["every"],
            timestep=s["timestep_fs"],
            friction=s["friction_per_fs"],
            seed=seed * 1000 + r,
        )
        stopped.append(traj.stopped_by)
        for frame in traj.frames:
            if frame.info["step"] <= s["equilibrate"]:
                continue
            if validity.check(frame.positions) is not None:
                invalid += 1
                continue
            pos.append(frame.positions)
            energy.append(frame.get_potential_energy())
            forces.append(frame.get_forces())
            run.append(r)
    return {
        "positions": np.array(pos),
        "energies": np.array(energy),
        "forces": np.array(forces),
        "run": np.array(run),
        "stopped_by": stopped,
        "invalid": invalid,
    }


def optimise(numbers: np.ndarray, start: np.ndarray, s: dict) -> tuple[np.ndarray, float, bool]:
    """GFN2-xTB minimum from ``start``: positions, energy (eV), converged."""
    atoms = Atoms(numbers, start)
    atoms.calc = tblite_calculator(XTB)
    opt = BFGS(atoms, logfile=None)
    try:
        converged = bool(opt.run(fmax=s["fmax"], steps=s["opt_steps"]))
    except Exception:  # an SCF that does not converge: that start is lost
        return start, float("nan"), False
    return atoms.get_positions(), float(atoms.get_potential_energy()), converged


def reference_ensemble(mol: Chem.Mol, starts: np.ndarray, sources: list[str], s: dict) -> dict:
    """Minima from ``starts`` within the window, de-duplicated (lowest energy first)."""
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    validity = ConformerValidity(mol)
    minima, counts = [], {"starts": len(starts), "unconverged": 0, "invalid": 0}
    for start, source in zip(starts, sources):
        pos, energy, converged = optimise(numbers, start, s)
        if not converged:
            counts["unconverged"] += 1
        elif validity.check(pos) is not None:
            counts["invalid"] += 1
        else:
            minima.append((energy, pos, source))
    if not minima:
        raise RuntimeError(f"no valid minimum from {len(starts)} starts: {counts}")
    minima.sort(key=lambda m: m[0])
    e_min = minima[0][0]
    in_window = [m for m in minima if m[0] - e_min <= s["window_kcal"] * KCAL_PER_MOL]
    counts["in_window"] = len(in_window)
    positions = np.array([m[1] for m in in_window])
    rmsd = rmsd_matrix(mol, positions, positions, heavy_symmetries(mol))
    kept: list[int] = []
    for k in range(len(in_window)):
        if all(rmsd[k, j] > s["dedup_rmsd"] for j in kept):
            kept.append(k)
    counts["kept"] = len(kept)
    return {
        "positions": positions[kept],
        "energies": np.array([in_window[k][0] for k in kept]),
        "sources": [in_window[k][2] for k in kept],
        "counts": counts,
    }


def build_molecule(name: str, mol: Chem.Mol, kind: str, seed: int) -> tuple[dict, dict]:
    """Arrays for the molecule's file and its index entry."""
    s = SETTINGS[kind]
    wall = time.perf_counter()
    md_starts = etkdg_conformers(mol, s["md_runs"], seed)
    train = training_frames(mol, md_starts, s, seed)
    starts = [etkdg_conformers(mol, s["etkdg_starts"], seed + 1)]
    sources = ["etkdg"] * s["etkdg_starts"]
    if s["md_snapshots"] and len(train["positions"]):
        pick = np.linspace(0, len(train["positions"]) - 1, s["md_snapshots"]).round().astype(int)
        starts.append(train["positions"][pick])
        sources += ["md"] * len(pick)
    ref = reference_ensemble(mol, np.concatenate(starts), sources, s)
    lowest = with_positions(mol, ref["positions"][0])
    Chem.AssignStereochemistryFrom3D(lowest)
    lowest.SetProp("_Name", name)
    smiles = Chem.MolToSmiles(Chem.RemoveHs(lowest))
    arrays = {
        "name": np.array(name),
        "smiles": np.array(smiles),
        "molblock": np.array(Chem.MolToMolBlock(lowest)),
        "numbers": np.array([a.GetAtomicNum() for a in mol.GetAtoms()], np.int8),
        "train_positions": train["positions"].astype(np.float32),
        "train_energies": train["energies"],
        "train_forces": train["forces"].astype(np.float32),
        "train_run": train["run"].astype(np.int8),
        "reference_positions": ref["positions"].astype(np.float32),
        "reference_energies": ref["energies"],
        "reference_source": np.array(ref["sources"]),
    }
    entry = {
        "smiles": smiles,
        "atoms": mol.GetNumAtoms(),
        "heavy_atoms": mol.GetNumHeavyAtoms(),
        "rotatable_bonds": Descriptors.CalcNumRotatableBonds(mol),
        "train_frames": len(train["positions"]),
        "train_invalid_dropped": train["invalid"],
        "md_stopped_by": train["stopped_by"],
        "reference_conformers": len(ref["positions"]),
        "reference_search": ref["counts"],
        "reference_from_md": ref["sources"].count("md"),
        "reference_energy_span_kcal": float(
            (ref["energies"].max() - ref["energies"].min()) / KCAL_PER_MOL
        ),
        "seconds": round(time.perf_counter() - wall, 1),
    }
    return arrays, entry


# --- main ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--only", nargs="*", help="build only these molecule names (timing)")
    args = parser.parse_args()
    wall = time.perf_counter()
    jobs = [
        ("small", name, split, Chem.AddHs(Chem.MolFromSmiles(smiles)))
        for name, smiles, split in pick_small(args.seed)
    ]
    jobs += [("drug", name, "test", mol) for _, _, name, mol in drug_candidates()[:N_DRUG]]
    if args.only:
        jobs = [job for job in jobs if job[1] in args.only]
    entries = []
    with threadpool_limits(limits=1):
        for k, (kind, name, split, mol) in enumerate(jobs):
            arrays, entry = build_molecule(name, mol, kind, args.seed)
            folder = args.out / kind
            folder.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(folder / f"{name}.npz", **arrays)
            entries.append(
                {"set": kind, "split": split, "name": name, "file": f"{kind}/{name}.npz", **entry}
            )
            print(
                f"[{k + 1}/{len(jobs)}] {kind}/{name} {entry['smiles']}: "
                f"{entry['train_frames']} frames, {entry['reference_conformers']} references "
                f"({entry['reference_search']}), {entry['seconds']} s, "
                f"total {time.perf_counter() - wall:.0f} s",
                flush=True,
            )
    index = {
        "seed": args.seed,
        "command": f"OMP_NUM_THREADS=1 .venv/bin/python data/geom_lite/build.py --seed {args.seed}",
        "method": XTB.method,
        "program": f"tblite {version('tblite')}",
        "rdkit": version("rdkit"),
        "ase": version("ase"),
        "settings": SETTINGS,
        "units": {"positions": "Å", "energies": "eV (GFN2-xTB total)", "forces": "eV/Å"},
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": platform.machine(),
        "wall_seconds": round(time.perf_counter() - wall, 1),
        "molecules": entries,
    }
    (args.out / "index.json").write_text(json.dumps(index, indent=1, ensure_ascii=False) + "\n")
    print(f"done in {index['wall_seconds']} s")


if __name__ == "__main__":
    main()
