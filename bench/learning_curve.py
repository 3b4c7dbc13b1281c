"""Learning curve on rMD17 malonaldehyde: force and energy MAE on the shared test split
against 50, 100, 200, 400 training frames, for two model sizes, each fit under the same
wall-clock budget on this machine's CPU cores, all in one run.

    .venv/bin/python bench/learning_curve.py [--minutes 4] [--sizes xs s] [--test 1000]

Training frames are the first N of the shared train split; validation (early stopping)
uses 50 other frames of the train split. Anchors (long GPU training, 50 frames): NequIP
about 52 meV/Å, MACE 43 meV/Å on malonaldehyde.
Appends to bench/results/learning_curve.jsonl, rewrites learning_curve.md and .png.
"""

import argparse
import tempfile
import warnings
from pathlib import Path

import common
import numpy as np
import torch

from sapis.io import read_rmd17
from sapis.surrogate.ensemble import Ensemble
from sapis.surrogate.ensemble_training import train_ensemble
from sapis.surrogate.settings import TrainingConfig

ANCHORS = {"NequIP (50 frames, GPU)": 52.0, "MACE (50 frames, GPU)": 43.0}


def fit(
    size: str, n: int, minutes: float, train, val, test, folder: Path, patience: int = 100
) -> dict:
    """One model on the first ``n`` of ``train`` under ``minutes``; its test errors."""
    training = TrainingConfig(
        size=size, members=1, bootstrap=False, max_minutes=minutes, patience=patience
    )
    manifest = train_ensemble(train[:n], val, folder, training, progress=False)
    pred = Ensemble.load(folder).predict(test)
    f_err = np.concatenate(
        [np.abs(pred.force_mean(i) - a.get_forces()).ravel() for i, a in enumerate(test)]
    )
    e_err = np.abs(pred.energy_mean - np.array([a.get_potential_energy() for a in test]))
    member = manifest.members[0]
    return {
        "date": common.timestamp(),
        "size": size,
        "N": n,
        "parameters": member.parameters,
        "budget (min)": minutes,
        "threads": torch.get_num_threads(),
        "steps": member.steps,
        "seconds": member.wall_seconds,
        "test frames": len(test),
        "force MAE (meV/Å)": round(1000 * float(f_err.mean()), 1),
        "energy MAE (meV)": round(1000 * float(e_err.mean()), 1),
        "val force MAE (meV/Å)": round(1000 * member.val_force_mae, 1),
    }


def write_outputs() -> None:
    cols = [
        "date",
        "size",
        "parameters",
        "N",
        "budget (min)",
        "threads",
        "steps",
        "seconds",
        "force MAE (meV/Å)",
        "energy MAE (meV)",
        "val force MAE (meV/Å)",
    ]
    intro = [
        "# Learning curve: rMD17 malonaldehyde, test split",
        "",
        "One model per row, trained on the first N frames of the shared train split "
        "under the wall-clock budget (CPU), early-stopped on 50 other train-split "
        "frames, scored on the test split. Anchors after long GPU training with 50 "
        "frames: NequIP ≈ 52, MACE ≈ 43 meV/Å.",
        "",
    ]
    rows = common.write_table("learning_curve", intro, cols)

    fig, ax = common.subplots(figsize=(5.5, 4))
    runs = common.latest(rows, "size", "N", "budget (min)")  # the latest run of each
    for size, budget in sorted({(s, b) for s, _, b in runs}):
        pts = sorted(
            (n, r["force MAE (meV/Å)"])
            for (s, n, b), r in runs.items()
            if s == size and b == budget
        )
        ax.loglog(*zip(*pts), "o-", label=f"{size}, {budget} min CPU")
    for label, value in ANCHORS.items():
        ax.plot([50], [value], "x", ms=9, label=label)
    ax.set_xlabel("training frames")
    ax.set_ylabel("test force MAE (meV/Å)")
    ax.set_title("rMD17 malonaldehyde")
    ax.legend(fontsize=8)
    common.save_figure(fig, "learning_curve")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--sizes", nargs="+", default=["xs", "s"])
    parser.add_argument("--frames", nargs="+", type=int, default=[50, 100, 200, 400])
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--table", action="store_true", help="only rewrite table and plot")
    args = parser.parse_args()
    if not args.table:
        warnings.filterwarnings("ignore")
        train = read_rmd17(common.TRAIN)
        test = read_rmd17(common.TEST)[: args.test]
        val = train[900:950]
        with tempfile.TemporaryDirectory() as tmp:
            for size in args.sizes:
                for n in args.frames:
                    row = fit(size, n, args.minutes, train, val, test, Path(tmp) / f"{size}{n}")
                    print(row, flush=True)
                    common.record("learning_curve", row)
    write_outputs()


if __name__ == "__main__":
    main()
