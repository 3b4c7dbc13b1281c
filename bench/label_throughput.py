"""Labelling throughput: the `local` profile (2 HighThroughput workers, 1 thread each,
through the dataset store) against plain sequential PySCF calls on the same structures,
side by side in one run. Goal: within 5 % of ideal (2 × the sequential rate).

    .venv/bin/python bench/label_throughput.py [--frames 20]

Appends a line to bench/results/label_throughput.jsonl and rewrites the table in
bench/results/label_throughput.md.
"""

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import common
import numpy as np

from sapis.dft.batch import label_pending
from sapis.dft.executors import ExecutorConfig
from sapis.dft.labeller import PySCFLabeller
from sapis.dft.settings import DFTSettings
from sapis.io import read_rmd17
from sapis.store import DatasetStore
from sapis.units import gradient_to_forces, hartree_to_ev


def plain_pyscf(atoms, settings: DFTSettings) -> tuple[float, np.ndarray]:
    """The same calculation as the labeller, written directly against PySCF."""
    from pyscf import dft, gto

    mol = gto.M(
        atom=[(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
        basis=settings.basis,
        verbose=0,
    )
    mf = dft.RKS(mol)
    mf.xc, mf.conv_tol, mf.grids.level = settings.xc, settings.conv_tol, settings.grid_level
    mf = mf.density_fit()
    energy = mf.kernel()
    grad = mf.nuc_grad_method()
    grad.grid_response = settings.grid_response
    return hartree_to_ev(energy), gradient_to_forces(grad.kernel())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--table", action="store_true", help="only rewrite the results table")
    args = parser.parse_args()
    if args.table:
        write_table()
        return
    frames = read_rmd17(common.TRAIN)[:: 1000 // args.frames][: args.frames]
    for atoms in frames:
        atoms.calc = None  # the rMD17 labels are not wanted: we compute our own
    settings = DFTSettings(threads=1)

    from pyscf import lib
    from threadpoolctl import threadpool_limits

    lib.num_threads(1)
    with threadpool_limits(limits=1):  # numpy's OpenBLAS keeps its own thread pool
        t0 = time.perf_counter()
        sequential = [plain_pyscf(a, settings) for a in frames]
        t_seq = time.perf_counter() - t0
    print(f"sequential PySCF: {len(frames)} labels in {t_seq:.1f} s")

    with tempfile.TemporaryDirectory() as tmp:
        store = DatasetStore(Path(tmp) / "data.db")
        store.add(frames, split="train")
        ids = {k: rid for k, (rid, _) in enumerate(store.pending())}
        t0 = time.perf_counter()
        done = []  # (completion time, DFT seconds) of each label

        def on_result(_row, result):
            done.append((time.perf_counter() - t0, result.seconds))

        summary = label_pending(
            store,
            PySCFLabeller(settings),
            ExecutorConfig(profile="local", workers=2, run_dir=Path(tmp) / "runinfo"),
            on_result=on_result,
        )
        t_par = time.perf_counter() - t0
        rows = {r.id: r for r in store.db.select()}
        worst = max(np.abs(rows[ids[k]].forces - f).max() for k, (_, f) in enumerate(sequential))
    assert summary.labelled == len(frames), summary
    ideal = t_seq / 2
    row = {
        "date": common.timestamp(),
        "host": platform.node(),
        "cores": os.cpu_count(),
        "frames": len(frames),
        "level": settings.level_of_theory,
        "sequential_s": round(t_seq, 2),
        "local_2_workers_s": round(t_par, 2),
        "ideal_s": round(ideal, 2),
        "overhead_percent": round(100 * (t_par / ideal - 1), 1),
        "first_result_s": round(done[0][0], 2),
        # from label_pending's start to the first label's DFT starting (Parsl start-up)
        "startup_s": round(min(t - dft for t, dft in done), 2),
        # from the last label's completion to label_pending returning (shut-down)
        "shutdown_s": round(t_par - done[-1][0], 2),
        "worker_dft_s": round(summary.label_seconds, 2),
        "contention_percent": round(100 * (summary.label_seconds / t_seq - 1), 1),
        "orchestration_percent": round(100 * (t_par / (summary.label_seconds / 2) - 1), 1),
        "max_force_difference_eV_per_A": float(worst),
    }
    print(json.dumps(row, indent=1))
    common.record("label_throughput", row)
    write_table()


def write_table() -> None:
    """Rewrite label_throughput.md from every run recorded in label_throughput.jsonl."""
    runs = common.read_records("label_throughput")
    table = [
        "| date | frames | sequential (s) | local ×2 (s) | ideal (s) | overhead | "
        "core contention | orchestration | start-up (s) | shut-down (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    table += [
        f"| {r['date']} | {r['frames']} | {r['sequential_s']} | {r['local_2_workers_s']} | "
        f"{r['ideal_s']} | {r['overhead_percent']} % | {r['contention_percent']} % | "
        f"{r['orchestration_percent']} % | {r.get('startup_s', '–')} | "
        f"{r.get('shutdown_s', '–')} |"
        for r in runs
    ]
    intro = (
        f"{runs[-1]['level']}, density fitting, 1 thread per label, rMD17 malonaldehyde "
        "frames, one run per row (`make bench` adds a row). overhead = local / (sequential "
        "/ 2) − 1 ≈ core contention + orchestration, where core contention = summed DFT "
        "time inside the workers / sequential − 1 (two labels sharing the machine's cores "
        "and memory bandwidth) and orchestration = local / (summed worker DFT time / 2) − 1 "
        "(Parsl start-up, scheduling, database writes, shut-down). start-up: from the call "
        "to the first DFT starting; shut-down: from the last result to the call returning."
    )
    title = "# Labelling throughput: `local` profile (2 workers) vs sequential PySCF"
    common.write_markdown("label_throughput", [title, "", intro, "", *table])


if __name__ == "__main__":
    main()
