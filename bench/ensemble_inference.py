"""Ensemble inference throughput: K members on S structures, batched (one graph build per
structure, every member on whole batches) against K sequential passes of nequip's own
``NequIPCalculator`` (one ASE call per structure per member), side by side in one run,
with the predictions checked to agree. Goal: batched ≥ 3× faster.

    .venv/bin/python bench/ensemble_inference.py [--members 4] [--structures 256] [--sizes xs s]

Appends to bench/results/ensemble_inference.jsonl and rewrites ensemble_inference.md.
"""

import argparse
import platform
import tempfile
import time
import warnings
from pathlib import Path

import common
import numpy as np

from sapis.io import read_rmd17
from sapis.surrogate.ensemble import Ensemble
from sapis.surrogate.ensemble_training import train_ensemble
from sapis.surrogate.settings import TrainingConfig

COLUMNS = [
    "date",
    "device",
    "size",
    "K",
    "structures",
    "batched (s)",
    "sequential (s)",
    "speed-up",
    "max |ΔF| (eV/Å)",
]


def nequip_calculators(ensemble: Ensemble) -> list:
    """One ``NequIPCalculator`` per member, built the way nequip's integration does."""
    from nequip.integrations.ase import NequIPCalculator
    from nequip.integrations.utils import basic_transforms
    from nequip.model.saved_models.load_utils import load_saved_model

    calcs = []
    for checkpoint in ensemble.manifest.checkpoints(ensemble.folder):
        model = load_saved_model(str(checkpoint)).eval()
        transforms = basic_transforms(
            model.metadata, ensemble.r_max, ensemble.type_names, {t: t for t in ensemble.type_names}
        )
        calcs.append(NequIPCalculator(model, ensemble.device, transforms=transforms))
    return calcs


def run(size: str, members: int, structures: list, folder: Path) -> dict:
    train = read_rmd17(common.TRAIN)
    training = TrainingConfig(size=size, members=members, max_epochs=1)
    train_ensemble(train[:20], train[500:505], folder, training, progress=False)
    ensemble = Ensemble.load(folder)
    ensemble.predict(structures[:8])  # warm-up
    t0 = time.perf_counter()
    pred = ensemble.predict(structures, batch_size=64)
    batched = time.perf_counter() - t0

    calcs = nequip_calculators(ensemble)
    atoms = structures[0].copy()
    atoms.calc = calcs[0]
    atoms.get_forces()  # warm-up
    forces = np.zeros((members, len(structures), len(structures[0]), 3))
    t0 = time.perf_counter()
    for k, calc in enumerate(calcs):
        for i, s in enumerate(structures):
            atoms = s.copy()
            atoms.calc = calc
            atoms.get_potential_energy()
            forces[k, i] = atoms.get_forces()
    sequential = time.perf_counter() - t0
    diff = max(np.abs(forces[:, i] - pred.forces[i]).max() for i in range(len(structures)))
    return {
        "date": common.timestamp(),
        "device": ensemble.device,
        "size": size,
        "K": members,
        "structures": len(structures),
        "batched (s)": round(batched, 3),
        "sequential (s)": round(sequential, 3),
        "speed-up": round(sequential / batched, 2),
        "max |ΔF| (eV/Å)": float(f"{diff:.2e}"),
        "host": platform.node(),
    }


def write_table() -> None:
    intro = [
        "# Ensemble inference: batched vs K sequential NequIPCalculator passes",
        "",
        "rMD17 malonaldehyde test frames (9 atoms), float32 members, 2 CPU cores unless the "
        "device says otherwise. Batched: `Ensemble.predict` (graphs built once, 64 "
        "structures per model call). Sequential: one nequip `NequIPCalculator` per member, "
        "one ASE call per structure. Goal: speed-up ≥ 3.",
        "",
    ]
    common.write_table("ensemble_inference", intro, COLUMNS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--structures", type=int, default=256)
    parser.add_argument("--sizes", nargs="+", default=["xs", "s"])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    structures = read_rmd17(common.TEST)[: args.structures]
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            row = run(size, args.members, structures, Path(tmp) / size)
            print(row)
            common.record("ensemble_inference", row)
    write_table()


if __name__ == "__main__":
    main()
