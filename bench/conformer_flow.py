"""Conformer generation on GEOM-lite: the flow (λ = 0 and λ > 0) against RDKit ETKDG and
our diffusion generator, side by side in one run.

For each molecule of a split (``data/geom_lite``: small QM9-like molecules and drug-like
ligands), the per-molecule generators train on the molecule's high-temperature GFN2-xTB
MD frames (never on the reference ensemble) for the same step budget and wall-time cap;
ETKDG needs no training. Each arm then proposes twice as many conformers as the
reference ensemble holds. Per arm and molecule:

- COV-R / MAT-R and COV-P / MAT-P on heavy atoms (symmetry-aware best-alignment RMSD), at
  δ = 0.5 Å for the small set and 0.75 and 1.25 Å for the drug-like set, over all the
  proposals (invalid ones included, as in GeoDiff);
- valid % (bond graph, stereo and no clash kept: ``sapis.generator.conformers``);
- the mean GFN2-xTB energy of the valid proposals above the reference ensemble's mean
  (kcal/mol, single points, no relaxation);
- milliseconds per conformer (wall time of sampling, one thread) and training seconds.

Molecules are spread over ``--workers`` processes of one thread each.

    .venv/bin/python bench/conformer_flow.py [--split test] [--steps 1500] [--minutes 3]

Appends to bench/results/conformer_flow.jsonl; rewrites conformer_flow.md and .png.
"""

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import common
import numpy as np

GEOM = common.HERE.parent / "data" / "geom_lite"
ARMS = ("etkdg", "diffusion", "flow λ=0", "flow λ>0")
DELTAS = {"small": (0.5,), "drug": (0.75, 1.25)}
EV_TO_KCAL = 23.060548


def _one_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def xtb_energies(numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """GFN2-xTB single-point energies (eV) of ``positions`` ``[n, atoms, 3]``."""
    from ase import Atoms

    from sapis.dft.settings import DFTSettings
    from sapis.dft.xtb import tblite_calculator

    calc = tblite_calculator(DFTSettings(program="xtb", method="GFN2-xTB"))
    out = []
    for x in positions:
        atoms = Atoms(numbers, x)
        atoms.calc = calc
        try:
            out.append(atoms.get_potential_energy())
        except Exception:  # an SCF that does not converge on a strange geometry
            out.append(np.nan)
    return np.array(out)


def run_molecule(entry: dict, args: dict) -> list[dict]:
    """Every arm on one molecule; one result row per arm."""
    _one_thread()
    from sapis.generator.conformers import load_molecule
    from sapis.generator.settings import GeneratorConfig

    mol = load_molecule(GEOM / entry["file"])
    n = 2 * len(mol.reference_positions)
    frames = [mol.atoms(x) for x in mol.train_positions]
    reference = mol.atoms(mol.reference_positions[0])
    base = {"train_steps": args["steps"], "max_minutes": args["minutes"], "batch_size": 64}
    configs = {
        "diffusion": GeneratorConfig(kind="diffusion", **base),
        "flow λ=0": GeneratorConfig(kind="flow", flow={"energy_weight": 0.0}, **base),
        "flow λ>0": GeneratorConfig(kind="flow", flow={"energy_weight": args["lam"]}, **base),
    }
    rows = []
    for arm in ARMS:
        try:
            rows.append(_run_arm(arm, mol, entry, args, configs, n, reference, frames))
        except Exception as err:  # one arm's failure must not lose the others' rows
            rows.append({"molecule": mol.name, "set": entry["set"], "arm": arm, "error": repr(err)})
        print(f"{mol.name} {arm}: {rows[-1]}", flush=True)
    return rows


def _run_arm(arm, mol, entry, args, configs, n, reference, frames) -> dict:
    """One arm on one molecule: its result row."""
    from sapis.generator.conformers import (
        ConformerValidity,
        coverage,
        etkdg_conformers,
        heavy_symmetries,
        rmsd_matrix,
    )
    from sapis.generator.training import train_generator

    symmetries = heavy_symmetries(mol.mol)
    validity = ConformerValidity(mol.mol)
    ref_energy = float(np.mean(mol.reference_energies))
    start = time.perf_counter()
    training, trained_steps = float("nan"), 0
    if arm == "etkdg":
        positions = etkdg_conformers(mol.mol, n, seed=args["seed"])
        ms = 1000 * (time.perf_counter() - start) / n
    else:
        config = configs[arm].model_copy(update={"seed": args["seed"]})
        with tempfile.TemporaryDirectory() as tmp:
            gen, record = train_generator(frames, tmp, config, reference=reference)
            training, trained_steps = record.seconds, record.steps
            start = time.perf_counter()
            positions = gen.sample_positions(n, seed=args["seed"])
            ms = 1000 * (time.perf_counter() - start) / n
    valid, rejected = validity.split(positions)
    rmsd = rmsd_matrix(mol.mol, mol.reference_positions, positions, symmetries)
    energies = xtb_energies(mol.numbers, positions[valid]) if valid.any() else np.zeros(0)
    row = {
        "time": common.timestamp(),
        "molecule": mol.name,
        "set": entry["set"],
        "smiles": mol.smiles,
        "arm": arm,
        "heavy atoms": len(mol.heavy),
        "references": len(mol.reference_positions),
        "generated": n,
        "valid %": round(100 * float(valid.mean()), 1),
        "rejected": rejected,
        "ΔE kcal/mol": round(EV_TO_KCAL * (float(np.nanmean(energies)) - ref_energy), 2)
        if len(energies)
        else None,
        "ms per conformer": round(ms, 2),
        "training s": round(training, 1),
        "steps": args["steps"],
        "trained steps": trained_steps,
        "λ": args["lam"] if arm == "flow λ>0" else 0.0,
        "seed": args["seed"],
    }
    for delta in DELTAS[entry["set"]]:
        for key, value in coverage(rmsd, delta).as_dict().items():
            row[f"{key}@{delta}"] = round(float(value), 3)
    return row


def summary(rows: list[dict]) -> list[str]:
    """Per set and arm: means over molecules (and how many molecules each arm beat ETKDG)."""
    lines = [
        "| set | arm | molecules | valid % | COV-R | MAT-R (Å) | COV-P | MAT-P (Å) | "
        "ΔE kcal/mol | ms/conformer |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for set_, deltas in DELTAS.items():
        for delta in deltas:
            for arm in ARMS:
                sel = [r for r in rows if r["set"] == set_ and r["arm"] == arm]
                if not sel:
                    continue

                def mean(key: str, sel: list[dict] = sel) -> str:
                    vals = [r[key] for r in sel if r.get(key) is not None]
                    vals = [v for v in vals if np.isfinite(v)]
                    return f"{np.mean(vals):.3g}" if vals else "-"

                lines.append(
                    f"| {set_} δ={delta} | {arm} | {len(sel)} | {mean('valid %')} | "
                    f"{mean(f'COV-R@{delta}')} | {mean(f'MAT-R@{delta}')} | "
                    f"{mean(f'COV-P@{delta}')} | {mean(f'MAT-P@{delta}')} | "
                    f"{mean('ΔE kcal/mol')} | {mean('ms per conformer')} |"
                )
    return lines


def plot(rows: list[dict], name: str) -> None:
    fig, axes = common.subplots(ncols=3, figsize=(13, 4))
    small = [r for r in rows if r["set"] == "small"]
    names = sorted({r["molecule"] for r in small})
    for k, (key, label) in enumerate(
        [("COV-R@0.5", "COV-R at 0.5 Å"), ("MAT-R@0.5", "MAT-R (Å)"), ("valid %", "valid %")]
    ):
        ax = axes[k]
        for j, arm in enumerate(ARMS):
            vals = [
                next((r[key] for r in small if r["molecule"] == m and r["arm"] == arm), np.nan)
                for m in names
            ]
            ax.bar(np.arange(len(names)) + 0.2 * j - 0.3, vals, width=0.2, label=arm)
        ax.set_xticks(range(len(names)), names, rotation=60, fontsize=7)
        ax.set_title(label)
    axes[0].legend(fontsize=7)
    common.save_figure(fig, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="test", help="val | test")
    parser.add_argument("--steps", type=int, default=1500, help="optimiser steps per generator")
    parser.add_argument("--minutes", type=float, default=3.0, help="wall-time cap per training")
    parser.add_argument("--lam", type=float, default=10.0, help="λ (1/eV) of the λ>0 flow")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="molecule names to run (default: all)")
    parser.add_argument("--name", default="conformer_flow", help="results file name")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the page of the last run only"
    )
    args = parser.parse_args()
    from sapis.generator.conformers import read_index

    entries = [e for e in read_index(GEOM) if e["split"] == args.split]
    if args.only:
        entries = [e for e in entries if e["name"] in args.only]
    settings = {"steps": args.steps, "minutes": args.minutes, "lam": args.lam, "seed": args.seed}
    if args.report_only:
        started = common.read_records(args.name)[-1]["run"]
    else:
        started = common.timestamp()
        with ProcessPoolExecutor(args.workers) as pool:
            futures = [pool.submit(run_molecule, e, settings) for e in entries]
            for future in as_completed(futures):
                for row in future.result():
                    common.record(args.name, {**row, "run": started, "split": args.split})
    rows = [r for r in common.read_records(args.name) if r["run"] == started]
    entries = sorted({r["molecule"] for r in rows})
    intro = [
        "# Conformers on GEOM-lite: flow vs ETKDG vs diffusion",
        "",
        f"Run {started}, split {args.split}, {len(entries)} molecules, {args.workers} "
        f"workers of one thread; generators trained {args.steps} steps (cap {args.minutes} "
        f"min) on each molecule's 1000 K xTB MD frames; flow λ>0: λ = {args.lam}/eV. "
        "COV/MAT over all proposals (2× the reference count); ΔE: mean GFN2-xTB single "
        "point of the valid proposals above the reference ensemble's mean.",
        "",
        *summary(rows),
        "",
        f"![coverage]({args.name}.png)",
        "",
        "Per molecule:",
        "",
    ]
    from sapis.campaign.report import markdown_table

    columns = [
        "molecule",
        "set",
        "arm",
        "valid %",
        "COV-R@0.5",
        "MAT-R@0.5",
        "COV-P@0.5",
        "MAT-P@0.5",
        "COV-R@0.75",
        "COV-R@1.25",
        "ΔE kcal/mol",
        "ms per conformer",
        "training s",
        "trained steps",
    ]
    table_rows = [{c: r.get(c, "") for c in columns} for r in rows]
    common.write_markdown(args.name, [*intro, *markdown_table(table_rows, columns)])
    plot(rows, args.name)


if __name__ == "__main__":
    main()
