"""MD exploration speed: Langevin steps per second on a 9-atom molecule (rMD17
malonaldehyde) with the K=4 ensemble-mean calculator, beside a single model (K=1) through
nequip's own ``NequIPCalculator`` in the same run, on the CPU and on a GPU when present.

    .venv/bin/python bench/md_speed.py [--steps 400] [--sizes xs s]

Appends to bench/results/md_speed.jsonl and rewrites md_speed.md.
"""

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import common
import torch
from ase import units
from ase.md.langevin import Langevin
from ensemble_inference import nequip_calculators

from sapis.io import read_rmd17
from sapis.surrogate.ensemble import Ensemble
from sapis.surrogate.ensemble_training import train_ensemble
from sapis.surrogate.md import explore
from sapis.surrogate.settings import ExploreConfig, TrainingConfig

COLUMNS = [
    "date",
    "device",
    "size",
    "threads",
    "K=4 ensemble (steps/s)",
    "K=1 NequIPCalculator (steps/s)",
    "ratio",
]


def single_model_rate(ensemble: Ensemble, seed, steps: int) -> float:
    atoms = seed.copy()
    atoms.calc = nequip_calculators(ensemble)[0]
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs, fixcm=False)
    dyn.run(5)
    t0 = time.perf_counter()
    dyn.run(steps)
    return steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--sizes", nargs="+", default=["xs", "s"])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    train = read_rmd17(common.TRAIN)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    settings = ExploreConfig(
        temperatures=[300.0],
        steps=args.steps,
        sample_every=50,
        stop_force_dev=1e9,
        check_bonds=False,
        min_distance=0.1,
    )
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            folder = Path(tmp) / size
            training = TrainingConfig(size=size, members=4, max_epochs=1)
            train_ensemble(train[:20], train[500:505], folder, training, progress=False)
            for device in devices:
                ensemble = Ensemble.load(folder, device=device)
                explore(
                    ensemble, [train[0]], settings.model_copy(update={"steps": 5}), progress=False
                )
                t0 = time.perf_counter()
                explore(ensemble, [train[0]], settings, progress=False)
                rate = args.steps / (time.perf_counter() - t0)
                single = single_model_rate(ensemble, train[0], args.steps)
                row = {
                    "date": common.timestamp(),
                    "device": device if device == "cpu" else torch.cuda.get_device_name(),
                    "size": size,
                    "threads": torch.get_num_threads(),
                    "K=4 ensemble (steps/s)": round(rate, 1),
                    "K=1 NequIPCalculator (steps/s)": round(single, 1),
                    "ratio": round(single / rate, 2),
                }
                print(row)
                common.record("md_speed", row)
    intro = [
        "# MD exploration speed (9-atom malonaldehyde, Langevin, 0.5 fs)",
        "",
        "K=4: `sapis.surrogate.md.explore` with the ensemble-mean calculator (all "
        "four members per step, uncertainty and validity checks included). K=1: one "
        "member through nequip's `NequIPCalculator`, plain ASE Langevin. ratio = K=1 "
        "rate / K=4 rate (4 would mean no saving from sharing the graph).",
        "",
    ]
    common.write_table("md_speed", intro, COLUMNS)


if __name__ == "__main__":
    main()
