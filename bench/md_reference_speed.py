"""Reference MD speed: simulated fs per CPU-second (and per wall second) of NVE MD of
malonaldehyde (9 atoms, velocity Verlet, 0.5 fs) with GFN2-xTB (tblite) and with a small
NequIP ensemble (one member, and all K of the default config), side by side in one run on
one thread. The yardstick a generative dynamics model must beat (issue 16: ≥ 10× xTB MD).

    .venv/bin/python bench/md_reference_speed.py [--seconds 20] [--sizes xs s]

Waits (up to 10 min, polling every 30 s) while the machine's 1-minute load is above
``--max-load``, trains the ensembles, then times each arm for at least ``--seconds`` CPU
seconds. Appends to bench/results/md_reference_speed.jsonl and rewrites
md_reference_speed.md.
"""

import argparse
import os
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import common
import numpy as np
import torch
from ase import Atoms, units
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from threadpoolctl import threadpool_limits

from sapis.io import read_rmd17
from sapis.surrogate.calculator import EnsembleCalculator
from sapis.surrogate.ensemble import Ensemble
from sapis.surrogate.ensemble_training import train_ensemble
from sapis.surrogate.settings import TrainingConfig

TIMESTEP_FS = 0.5
CHUNK = 50  # steps between clock readings

COLUMNS = [
    "date",
    "engine",
    "steps",
    "simulated fs",
    "CPU s",
    "wall s",
    "fs per CPU-s",
    "fs per wall-s",
    "ms CPU per step",
    "vs xTB (CPU)",
    "load before",
    "load after",
]


def wait_for_quiet(max_load: float, patience: float = 600.0, poll: float = 30.0) -> float:
    """The 1-minute load average once it is at most ``max_load`` (or after ``patience`` s)."""
    deadline = time.monotonic() + patience
    while (load := os.getloadavg()[0]) > max_load and time.monotonic() < deadline:
        print(f"load {load:.2f} > {max_load}: waiting {poll:.0f} s")
        time.sleep(poll)
    return load


def rate(start: Atoms, calc, seconds: float, seed: int = 0) -> dict:
    """Velocity-Verlet steps of ``start`` on ``calc`` (300 K Maxwell–Boltzmann momenta) until
    ``seconds`` of CPU time have passed; steps, CPU and wall seconds."""
    atoms = Atoms(start.numbers, start.positions)
    atoms.calc = calc
    thermalize_momenta(atoms, 300.0, rng=np.random.default_rng(seed))
    Stationary(atoms)
    ZeroRotation(atoms)
    dyn = VelocityVerlet(atoms, TIMESTEP_FS * units.fs)
    dyn.run(CHUNK)  # warm-up
    steps, cpu, wall = 0, time.process_time(), time.perf_counter()
    while time.process_time() - cpu < seconds:
        dyn.run(CHUNK)
        steps += CHUNK
    return {
        "steps": steps,
        "cpu": time.process_time() - cpu,
        "wall": time.perf_counter() - wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--sizes", nargs="+", default=["xs", "s"])
    parser.add_argument("--max-load", type=float, default=0.5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from tblite.ase import TBLite

    before = wait_for_quiet(args.max_load)
    images = read_rmd17(common.TRAIN)
    arms = {
        "GFN2-xTB (tblite, accuracy 1.0: repo default)": lambda: TBLite(
            method="GFN2-xTB", accuracy=1.0, verbosity=0
        ),
        "GFN2-xTB (tblite, accuracy 0.01: the data set's)": lambda: TBLite(
            method="GFN2-xTB", accuracy=0.01, verbosity=0
        ),
    }
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            training = TrainingConfig(size=size, max_epochs=1)
            train_ensemble(images[:20], images[500:505], Path(tmp), training, progress=False)
            ensemble = Ensemble.load(tmp, device="cpu")
        single = Ensemble(ensemble.models[:1], ensemble.manifest, ensemble.folder, "cpu")
        params = sum(p.numel() for p in ensemble.models[0].parameters())
        k = ensemble.member_count
        arms[f"NequIP {size} ({params} parameters), 1 member"] = partial(EnsembleCalculator, single)
        arms[f"NequIP {size} ({params} parameters), ensemble K={k}"] = partial(
            EnsembleCalculator, ensemble
        )
    torch.set_num_threads(1)
    measured = {}
    with threadpool_limits(limits=1):
        for name, make in arms.items():
            measured[name] = rate(images[0], make(), args.seconds)
            print(name, measured[name])
    after = os.getloadavg()[0]
    xtb = next(iter(measured.values()))
    xtb_rate = xtb["steps"] * TIMESTEP_FS / xtb["cpu"]
    for name, m in measured.items():
        fs = m["steps"] * TIMESTEP_FS
        row = {
            "date": common.timestamp(),
            "engine": name,
            "steps": m["steps"],
            "simulated fs": fs,
            "CPU s": round(m["cpu"], 1),
            "wall s": round(m["wall"], 1),
            "fs per CPU-s": round(fs / m["cpu"], 1),
            "fs per wall-s": round(fs / m["wall"], 1),
            "ms CPU per step": round(1000 * m["cpu"] / m["steps"], 2),
            "vs xTB (CPU)": round(fs / m["cpu"] / xtb_rate, 2),
            "load before": round(before, 2),
            "load after": round(after, 2),
            "threads": torch.get_num_threads(),
        }
        common.record("md_reference_speed", row)
    intro = [
        "# Reference MD speed (9-atom malonaldehyde, NVE velocity Verlet, 0.5 fs, one thread)",
        "",
        "Simulated femtoseconds per CPU second (`time.process_time()`) and per wall second "
        "of plain ASE `VelocityVerlet` from the same rMD17 frame and 300 K momenta, each arm "
        f"timed for ≥ {args.seconds:.0f} CPU s, all in one run. GFN2-xTB: tblite's ASE "
        "calculator. NequIP: `sapis.surrogate.calculator.EnsembleCalculator` (the "
        "surrogate MD path) over one member and over all K (the default config's) of "
        "ensembles of the named size (nequip parameters per member), each trained 1 epoch "
        "on 20 rMD17 frames (speed does not depend on accuracy). `vs xTB (CPU)` is "
        "relative to the first xTB row of the same run (tblite's default accuracy). "
        "`load before`: the 1-minute load average (2-core machine) when the run began (it "
        "waits for ≤ 0.5); `load after`: at its end, the benchmark's own process included "
        "(~1). CPU s ≈ wall s shows each arm had its core to itself.",
        "",
    ]
    common.write_table("md_reference_speed", intro, COLUMNS)


if __name__ == "__main__":
    main()
