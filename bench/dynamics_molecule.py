"""The dynamics generator on a molecule: GFN2-xTB NVE MD of malonaldehyde (issue 16, part 4).

Models (``sapis.generator.dynamics``) of the next 20 frames (5 fs apart: 100 fs) given one
frame, trained on data/dynamics/malonaldehyde-xtb-train.npz (val for validation), arms
``none`` and ``priors`` (momentum projected + kinematic λ = 1 + reduced energy λ = 1) with
seeds 0, 1, 2, then each prior alone (seed 0) while the time budget lasts; every arm gets
the same optimiser steps. Convergence first: ``none`` seed 0 is trained for N and 2N steps
and the position error of one window compared (> 15 % apart: 2N for every arm).

Per model:

- one window from each of ``--windows`` test states (test frames with their true
  velocities) against the true xTB MD from the same state: position error per frame
  (mean and p95 over windows), velocity error, momentum drift and energy drift
  |E_l − E_0| (``metrics.dynamics_errors``), the generated frames' potential from GFN2-xTB
  single points (tblite, accuracy 0.01 as the data) and the kinetic energy from the
  generated velocities;
- ``--starts`` rollouts of ``--chain`` chained windows (``rollout``): per-bond length
  W1 to the test split's MD against each bond's thermal spread (its std in that MD), the
  xTB potential of every ``--every``-th frame against the MD's, the energy drift over the
  rollout, and the share of rollouts valid (bond graph kept, no clash) to the end.

Then, side by side in one process on one thread: xTB NVE MD (tblite GFN2, 0.5 fs), surrogate
MD (a tiny NequIP ensemble) and the dynamics model's sampling, in simulated fs per CPU-second.

    OMP_NUM_THREADS=1 .venv/bin/python bench/dynamics_molecule.py [--minutes 35]

Appends to bench/results/dynamics_molecule.jsonl (a piece already recorded for the same
setup is not redone: rerun the same command to resume) and rewrites dynamics_molecule.md
and .png. Trained models live in a temporary folder (``--work``).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import hashlib
import json
import shutil
import tempfile
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

import common
import numpy as np

NAME = "dynamics_molecule"
DATA = common.HERE.parent / "data" / "dynamics"
FRAMES = 20
ACCURACY = 0.01  # tblite's, as data/dynamics/make_molecule.py
ARMS = {
    "none": {},
    "priors": {"momentum": "project", "kinematic_weight": 1.0, "energy": "reduced"},
    "momentum": {"momentum": "project"},
    "kinematic": {"kinematic_weight": 1.0},
    "energy": {"energy": "reduced"},
}
LABELS = {
    "none": "no prior",
    "priors": "momentum project + kinematic λ=1 + energy reduced λ=1",
    "momentum": "momentum project only",
    "kinematic": "kinematic λ=1 only",
    "energy": "energy reduced λ=1 only",
}
BOND_BINS = np.linspace(0.7, 2.0, 131)
CONVERGED = 0.15
#: SCF iterations per xTB single point (tblite's default 250): a broken generated frame
#: can take minutes to fail; one that does not converge in 60 counts as failed (NaN)
MAX_SCF = 60  # relative change of the position error when the steps double


def records() -> list[dict]:
    """Every row recorded so far (none before the first)."""
    return common.read_records(NAME) if (common.RESULTS / f"{NAME}.jsonl").is_file() else []


def split(name: str):
    from sapis.generator.dynamics.data import Trajectories

    return Trajectories.load(DATA / f"malonaldehyde-xtb-{name}.npz")


def data_hash() -> str:
    h = hashlib.sha256()
    for name in ("train", "val", "test"):
        h.update((DATA / f"malonaldehyde-xtb-{name}.npz").read_bytes())
    return h.hexdigest()[:12]


def config(arm: str, seed: int, steps: int, args: dict):
    from sapis.generator.dynamics.settings import DynamicsConfig

    return DynamicsConfig(
        frames=FRAMES,
        hidden=args["hidden"],
        layers=args["layers"],
        batch_size=args["batch"],
        train_steps=steps,
        seed=seed,
        **ARMS[arm],
    )


# --- xTB ------------------------------------------------------------------------------


def xtb_potential(numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """GFN2-xTB (tblite, accuracy 0.01) energies (eV) of frames ``[..., N, 3]`` (Å); NaN
    where the SCF fails or does not converge in ``MAX_SCF`` iterations. A fresh calculator
    per frame, as the data's trajectories."""
    from ase.units import Bohr, Hartree
    from tblite.interface import Calculator

    flat = positions.reshape(-1, *positions.shape[-2:])
    out = np.full(len(flat), np.nan)
    for k, x in enumerate(flat):
        try:
            calc = Calculator("GFN2-xTB", numbers, x / Bohr)
            calc.set("accuracy", ACCURACY)
            calc.set("max-iter", MAX_SCF)
            calc.set("verbosity", 0)
            out[k] = calc.singlepoint().get("energy") * Hartree
        except Exception:  # (tblite raises its own errors on a failed SCF)
            pass
    return out.reshape(positions.shape[:-2])


# --- one model: train and evaluate (runs in a worker process) ----------------------------


def test_windows(test, n: int):
    """``n`` windows of FRAMES + 1 frames starting at seeded test frames (same for all)."""
    windows = test.windows(FRAMES + 1)
    pick = np.sort(np.random.default_rng(0).choice(len(windows.positions), n, replace=False))
    return windows.subset(pick)


def rollout_starts(test, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Start ``i``: test trajectory ``i % S`` at frame ``40 · (i // S)``."""
    s = test.shape[0]
    k, f = np.arange(n) % s, 40 * (np.arange(n) // s)
    return test.positions[k, f], test.velocities[k, f]


def bonds_and_reference(test):
    from ase import Atoms

    from sapis.validity import ValidityFilter

    check = ValidityFilter.from_reference(Atoms(test.numbers, test.positions[0, 0]))
    return check, sorted(check.bonds)


def bond_lengths(positions: np.ndarray, bonds) -> np.ndarray:
    pairs = np.array(bonds)
    return np.linalg.norm(positions[..., pairs[:, 0], :] - positions[..., pairs[:, 1], :], axis=-1)


def finite_windows(model, x0, v0) -> tuple[np.ndarray, np.ndarray]:
    """Windows sampled from each start in batches of 32; a batch whose sample holds NaN or
    inf (``sample`` then raises InputError) is sampled again start by start, and a window
    that still fails is NaN."""
    from sapis.errors import InputError

    s, n = x0.shape[:2]
    x, v = np.full((s, FRAMES + 1, n, 3), np.nan), np.full((s, FRAMES + 1, n, 3), np.nan)
    for a in range(0, s, 32):
        b = slice(a, a + 32)
        try:
            w = model.sample(x0[b], v0[b], seed=a, batch_size=32)
            x[b], v[b] = w.positions, w.velocities
        except InputError:
            for i in range(a, min(a + 32, s)):
                try:
                    w = model.sample(x0[i : i + 1], v0[i : i + 1], seed=i)
                    x[i], v[i] = w.positions[0], w.velocities[0]
                except InputError:
                    pass
    return x, v


def one_window(model, test, args: dict) -> dict:
    from sapis.generator.dynamics.metrics import dynamics_errors

    truth = test_windows(test, args["windows"])
    x0, v0 = truth.positions[:, 0], truth.velocities[:, 0]
    cpu = time.process_time()
    x, v = finite_windows(model, x0, v0)
    cpu = time.process_time() - cpu
    finite = np.isfinite(x).all((1, 2, 3)) & np.isfinite(v).all((1, 2, 3))
    gen = truth.subset(finite)
    gen.positions, gen.velocities = x[finite], v[finite]
    truth, x0, v0 = truth.subset(finite), x0[finite], v0[finite]
    potential = np.empty(gen.shape[:2])
    potential[:, 0] = truth.potential[:, 0]
    potential[:, 1:] = xtb_potential(gen.numbers, gen.positions[:, 1:])
    ok = np.isfinite(potential).all(1)
    errors = (
        dynamics_errors(gen.subset(ok), truth.subset(ok), generated_potential=potential[ok])
        if ok.any()
        else None
    )
    full = dynamics_errors(gen, truth)  # trajectory, velocity, momentum over every window
    dx = np.linalg.norm(gen.positions - truth.positions, axis=-1).mean(-1)  # [S, T]
    energy = gen.kinetic()[ok] + potential[ok]
    t = truth.shape[1]
    const = x0[:, None] + np.arange(t)[None, :, None, None] * truth.dt * v0[:, None]
    dconst = np.linalg.norm(const - truth.positions, axis=-1).mean(-1)
    true_energy = truth.energy()
    return {
        "trajectory": full.trajectory,
        "velocity": full.velocity,
        "momentum": full.momentum,
        "energy": errors.energy if errors else None,
        "non_finite_windows": int((~finite).sum()),
        "energy_truth_floor": float(np.abs(true_energy - true_energy[:, :1])[:, 1:].mean()),
        "momentum_truth_floor": full.truth_floor["momentum"],
        "xtb_failed_windows": int((~ok).sum()),
        "position_error_mean": dx.mean(0).tolist(),
        "position_error_p95": np.percentile(dx, 95, axis=0).tolist(),
        "constant_velocity_error_mean": dconst.mean(0).tolist(),
        "energy_drift_curve": np.abs(energy - energy[:, :1]).mean(0).tolist(),
        "true_energy_drift_curve": np.abs(true_energy - true_energy[:, :1]).mean(0).tolist(),
        "sample_cpu_s": cpu,
    }


def chained(model, x0, v0, windows: int, check) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rollouts of ``windows`` chained windows from each start, each stopped at its first
    invalid frame (bond graph changed, clash, not finite): positions and velocities
    ``[S, T, N, 3]`` (NaN after the stop) and each rollout's count of valid frames.

    ``DynamicsModel.rollout`` cannot stop one: a rollout that broke apart goes on until
    its numbers overflow and ``sample`` then refuses the whole batch (InputError).
    """
    from ase import Atoms

    from sapis.errors import InputError

    s, n = x0.shape[:2]
    t = windows * FRAMES + 1
    pos, vel = np.full((s, t, n, 3), np.nan), np.full((s, t, n, 3), np.nan)
    pos[:, 0], vel[:, 0] = x0, v0
    end = np.full(s, t)
    for k in range(windows):
        alive = np.flatnonzero(end == t)
        if not len(alive):
            break
        a = k * FRAMES
        try:
            w = model.sample(pos[alive, a], vel[alive, a], seed=k, batch_size=32)
            wx, wv = w.positions[:, 1:], w.velocities[:, 1:]
        except InputError:  # one start's window overflowed: sample them one by one
            wx = np.full((len(alive), FRAMES, n, 3), np.nan)
            wv = wx.copy()
            for j, i in enumerate(alive):
                try:
                    w = model.sample(pos[i : i + 1, a], vel[i : i + 1, a], seed=k)
                    wx[j], wv[j] = w.positions[0, 1:], w.velocities[0, 1:]
                except InputError:
                    pass
        pos[alive, a + 1 :], vel[alive, a + 1 :] = np.nan, np.nan
        pos[alive, a + 1 : a + FRAMES + 1], vel[alive, a + 1 : a + FRAMES + 1] = wx, wv
        for j, i in enumerate(alive):
            for f in range(FRAMES):
                x = wx[j, f]
                ok = np.isfinite(x).all() and np.isfinite(wv[j, f]).all()
                if not ok or check.check(Atoms(model.numbers, x)) is not None:
                    end[i] = a + 1 + f
                    pos[i, end[i] :], vel[i, end[i] :] = np.nan, np.nan
                    break
    return pos, vel, end


def rollouts(model, test, args: dict) -> dict:
    from scipy.stats import wasserstein_distance

    check, bonds = bonds_and_reference(test)
    x0, v0 = rollout_starts(test, args["starts"])
    cpu = time.process_time()
    positions, velocities, end = chained(model, x0, v0, args["chain"], check)
    cpu = time.process_time() - cpu
    s, t = positions.shape[:2]
    kinetic = 0.5 * (model.masses[:, None] * velocities**2).sum((-1, -2))
    true_lengths = bond_lengths(test.positions.reshape(-1, *test.shape[2:]), bonds)
    valid = np.concatenate([positions[i, 1 : end[i]] for i in range(s)])
    gen_lengths = bond_lengths(valid, bonds)
    if len(gen_lengths):
        w1 = [
            wasserstein_distance(gen_lengths[:, k], true_lengths[:, k]) for k in range(len(bonds))
        ]
    else:
        w1 = [float("nan")] * len(bonds)
    spread = true_lengths.std(0)
    every = args["every"]
    frames = np.arange(0, t, every)
    potential = np.full((s, len(frames)), np.nan)
    for i in range(s):
        keep = frames < end[i]
        potential[i, keep] = xtb_potential(model.numbers, positions[i, frames[keep]])
    energy = potential + kinetic[:, frames]
    drift = np.abs(energy - energy[:, :1])
    finite = np.isfinite(drift)
    u_gen = potential[:, 1:][np.isfinite(potential[:, 1:])]
    # true MD: the test split's potential; its drift over its own (shorter) trajectories
    true_e = test.energy()
    hist = {
        "-".join(f"{i}" for i in b): np.histogram(gen_lengths[:, k], BOND_BINS)[0].tolist()
        for k, b in enumerate(bonds)
    }
    true_hist = {
        "-".join(f"{i}" for i in b): np.histogram(true_lengths[:, k], BOND_BINS)[0].tolist()
        for k, b in enumerate(bonds)
    }
    return {
        "rollout_frames": t,
        "rollout_fs": (t - 1) * 5.0,
        "valid_to_end": float((end == t).mean()),
        "valid_frames": end.tolist(),
        "first_invalid_frame_median": float(np.median(end)),
        "generated_valid_frames": len(valid),
        "bonds": ["-".join(f"{test.numbers[i]}:{i}" for i in b) for b in bonds],
        "bond_w1": w1,
        "bond_spread": spread.tolist(),
        "bond_mean_true": true_lengths.mean(0).tolist(),
        "bond_mean_gen": gen_lengths.mean(0).tolist(),
        "bonds_w1_below_spread": int((np.array(w1) < spread).sum()),
        "potential_w1": (
            float(wasserstein_distance(u_gen, test.potential.ravel())) if len(u_gen) else None
        ),
        "potential_mean_gen": float(u_gen.mean()) if len(u_gen) else None,
        "potential_mean_true": float(test.potential.mean()),
        "potential_gen": np.round(u_gen, 4).tolist(),
        "xtb_failed_frames": int((~np.isfinite(potential)).sum()),
        "energy_drift_mean": (
            float(drift[:, 1:][finite[:, 1:]].mean()) if finite[:, 1:].any() else None
        ),
        "energy_drift_end_mean": float(np.nanmean(drift[:, -1])) if finite[:, -1].any() else None,
        "energy_drift_end_median": (
            float(np.nanmedian(drift[:, -1])) if finite[:, -1].any() else None
        ),
        "energy_drift_curve": [
            float(np.nanmean(c)) if np.isfinite(c).any() else None for c in drift.T
        ],
        "rollouts_alive_curve": finite.sum(0).tolist(),
        "energy_drift_times_fs": (frames * 5.0).tolist(),
        "true_energy_drift_curve": np.abs(true_e - true_e[:, :1]).mean(0).tolist(),
        "true_energy_drift_mean": float(np.abs(true_e - true_e[:, :1])[:, 1:].mean()),
        "bond_hist": hist,
        "true_bond_hist": true_hist,
        "rollout_cpu_s": cpu,
    }


def run_job(arm: str, seed: int, steps: int, args: dict) -> dict:
    """Train (or reuse) one model in the work folder and evaluate it; the result row."""
    import torch

    from sapis.generator.dynamics.model import DynamicsModel
    from sapis.generator.dynamics.training import train_dynamics

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    out = Path(args["work"]) / f"{arm}-s{seed}-n{steps}"
    train, val, test = split("train"), split("val"), split("test")
    cfg = config(arm, seed, steps, args)
    record, cpu_train = None, 0.0
    if (out / "dynamics.json").is_file():
        meta = json.loads((out / "dynamics.json").read_text())
        done = meta["trainings"]
        if len(done) == 1 and done[0]["steps"] == steps and meta["config"] == cfg.model_dump():
            model, record = DynamicsModel.load(out), done[0]
    if record is None:
        shutil.rmtree(out, ignore_errors=True)
        cpu_train = time.process_time()
        model, training = train_dynamics(train, out, cfg, val=val)
        cpu_train = time.process_time() - cpu_train
        record = training.__dict__
    row = {
        "kind": "model",
        "arm": arm,
        "seed": seed,
        "steps": steps,
        "priors": cfg.prior_names(),
        "parameters": record["parameters"],
        "train_wall_s": round(record["seconds"], 1),
        "train_cpu_s": round(cpu_train, 1),
        "train_losses": record["losses"],
        "validation": record["validation"],
    }
    row.update(one_window(model, test, args))
    row.update(rollouts(model, test, args))
    return row


# --- speed -----------------------------------------------------------------------------


def speed(args: dict, model_folder: Path) -> list[dict]:
    """Simulated fs per CPU-second of xTB MD, surrogate MD and the dynamics model, one after
    another in this process on one thread."""
    import md_reference_speed as ref
    import torch
    from tblite.ase import TBLite
    from threadpoolctl import threadpool_limits

    from sapis.generator.dynamics.model import DynamicsModel
    from sapis.io import read_rmd17
    from sapis.surrogate.calculator import EnsembleCalculator
    from sapis.surrogate.ensemble import Ensemble
    from sapis.surrogate.ensemble_training import train_ensemble
    from sapis.surrogate.settings import TrainingConfig

    seconds = args["speed_seconds"]
    images = read_rmd17(common.TRAIN)
    load = ref.wait_for_quiet(args["max_load"], patience=120.0)
    tmp = Path(args["work"]) / "ensemble-xs"
    if not (tmp / "manifest.json").is_file() and not any(tmp.glob("*")):
        training = TrainingConfig(size="xs", max_epochs=1)
        train_ensemble(images[:20], images[500:505], tmp, training, progress=False)
    ensemble = Ensemble.load(tmp, device="cpu")
    single = Ensemble(ensemble.models[:1], ensemble.manifest, ensemble.folder, "cpu")
    params = sum(p.numel() for p in ensemble.models[0].parameters())
    k = ensemble.member_count
    model = DynamicsModel.load(model_folder)
    test = split("test")
    windows = test.windows(2)
    torch.set_num_threads(1)
    rows = []
    with threadpool_limits(limits=1):
        md = {
            f"xTB NVE MD (tblite GFN2, accuracy {ACCURACY}, 0.5 fs)": lambda: TBLite(
                method="GFN2-xTB", accuracy=ACCURACY, verbosity=0
            ),
            f"surrogate MD: NequIP xs ({params} parameters), 1 member": lambda: EnsembleCalculator(
                single
            ),
            f"surrogate MD: NequIP xs ({params} parameters), ensemble K={k}": (
                lambda: EnsembleCalculator(ensemble)
            ),
        }
        for name, make in md.items():
            m = ref.rate(images[0], make(), seconds)
            rows.append({"engine": name, "fs": m["steps"] * ref.TIMESTEP_FS, **m})
        for batch in args["speed_batches"]:
            x0, v0 = windows.positions[:batch, 0], windows.velocities[:batch, 0]
            model.sample(x0, v0, seed=0, batch_size=batch)  # warm-up
            n, cpu, wall = 0, time.process_time(), time.perf_counter()
            while time.process_time() - cpu < seconds:
                model.sample(x0, v0, seed=n, batch_size=batch)
                n += 1
            what = "one window alone" if batch == 1 else f"batch of {batch} windows"
            rows.append(
                {
                    "engine": f"dynamics model ({what}, {model.config.steps} denoising steps)",
                    "fs": n * batch * FRAMES * 5.0,
                    "steps": n * batch,
                    "cpu": time.process_time() - cpu,
                    "wall": time.perf_counter() - wall,
                }
            )
    xtb_rate = rows[0]["fs"] / rows[0]["cpu"]
    for r in rows:
        r.update(
            kind="speed",
            fs_per_cpu_s=r["fs"] / r["cpu"],
            fs_per_wall_s=r["fs"] / r["wall"],
            vs_xtb=r["fs"] / r["cpu"] / xtb_rate,
            load_before=load,
            load_after=os.getloadavg()[0],
        )
        print(r)
    return rows


# --- the run ---------------------------------------------------------------------------


def step_seconds(args: dict) -> tuple[float, float]:
    """CPU and wall seconds of one training step of the ``priors`` arm (the slower),
    measured now (the wall time carries the machine's present load)."""
    import torch

    from sapis.generator.dynamics.model import DynamicsModel
    from sapis.generator.dynamics.training import window_batch

    torch.set_num_threads(1)
    train = split("train")
    cfg = config("priors", 0, 10, args)
    model = DynamicsModel.new(train, cfg)
    windows = train.windows(FRAMES + 1)
    opt = torch.optim.Adam(model.diffusion.net.parameters())
    rng = np.random.default_rng(0)
    cpus, walls = [], []
    for k in range(10):
        pick = rng.integers(0, len(windows.positions), args["batch"])
        x, v, c, u = (a.float() for a in window_batch(windows, pick))
        cpu, wall = time.process_time(), time.perf_counter()
        loss = model.diffusion.losses(x, v, c, u)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if k >= 2:
            cpus.append(time.process_time() - cpu)
            walls.append(time.perf_counter() - wall)
    return float(np.median(cpus)), float(np.median(walls))


#: CPU seconds to evaluate one model (100 windows, 20 × 25-window rollouts, xTB, validity)
EVAL_CPU_S = 110.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=35.0, help="wall budget of the run")
    parser.add_argument("--steps", type=int, default=0, help="training steps (0: sized)")
    parser.add_argument("--hidden", type=int, default=48)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--windows", type=int, default=100)
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--chain", type=int, default=25)
    parser.add_argument("--every", type=int, default=5, help="xTB on every k-th rollout frame")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--speed-seconds", type=float, default=10.0)
    parser.add_argument("--speed-batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-load", type=float, default=1.0)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--results", type=Path, default=common.RESULTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    common.RESULTS = args.results
    start = time.monotonic()
    deadline = start + 60 * args.minutes
    data = data_hash()
    rows = records()
    if args.report_only:
        write_outputs(rows)
        return
    sizing = [r for r in rows if r.get("kind") == "sizing" and r["data"] == data]
    if args.steps:
        steps = args.steps
    elif sizing:
        steps = sizing[-1]["steps"]
    else:
        # wall ≈ [t·N·(2 + 1 + 2·(seeds − 1) + 1) + eval·models] / workers · 1.2 + 4 min
        # (speed and slack); the single-prior arms come after and are cut if time is short
        cpu, wall = step_seconds(vars(args))
        load = max(1.0, wall / cpu)
        models = 2 + 2 * args.seeds
        spare = ((60 * args.minutes - 240) * args.workers / 1.2) - EVAL_CPU_S * load * models
        steps = int(np.clip(spare / (wall * (models + 2)) // 100 * 100, 200, 4000))
        row = {"kind": "sizing", "data": data, "step_cpu_s": cpu, "step_wall_s": wall}
        row.update(steps=steps, budget_min=args.minutes, date=common.timestamp())
        common.record(NAME, row)
        t = wall
        print(f"one training step {cpu:.3f} CPU s, {t:.3f} wall s → {steps} steps")
    setup = {
        "data": data,
        "hidden": args.hidden,
        "layers": args.layers,
        "batch": args.batch,
        "windows": args.windows,
        "starts": args.starts,
        "chain": args.chain,
        "every": args.every,
    }
    work = args.work or Path(tempfile.gettempdir()) / f"dynamics-molecule-{data}"
    work.mkdir(parents=True, exist_ok=True)
    job_args = {**vars(args), "work": str(work)}

    def done(arm, seed, n):
        return any(
            r.get("kind") == "model"
            and r["setup"] == setup
            and (r["arm"], r["seed"], r["steps"]) == (arm, seed, n)
            for r in records()
        )

    def save(row):
        row.update(setup=setup, date=common.timestamp())
        common.record(NAME, row)
        print(
            f"{row['arm']} s{row['seed']} n{row['steps']}: pos {row['trajectory']:.4f} Å, "
            f"energy {_num(row['energy']):.4f} eV, "
            f"rollout drift {_num(row['energy_drift_mean']):.3f} eV, "
            f"valid {row['valid_to_end']:.2f}, W1<spread {row['bonds_w1_below_spread']}/"
            f"{len(row['bonds'])}",
            flush=True,
        )

    durations: list[float] = []
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        running = {}

        def submit(arm, seed, n, optional=False):
            if done(arm, seed, n):
                return
            if optional:  # a job's wall time so far, else ~20 min (two jobs under load)
                ahead = sum(durations) / len(durations) if durations else 1200.0
                if time.monotonic() + ahead > deadline:
                    print(f"cut: {arm} seed {seed} (~{ahead:.0f} s would pass the budget)")
                    common.record(NAME, {"kind": "cut", "arm": arm, "seed": seed, "setup": setup})
                    return
            running[pool.submit(run_job, arm, seed, n, job_args)] = (arm, seed, n, time.monotonic())

        def drain(until_empty=True):
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    *_, began = running.pop(f)
                    durations.append(time.monotonic() - began)
                    save(f.result())
                if not until_empty:
                    return

        # convergence on `none` seed 0 (N and 2N), `priors` seed 0 speculatively at N
        submit("none", 0, 2 * steps)
        submit("none", 0, steps)
        submit("priors", 0, steps)
        while any(k[:2] == ("none", 0) for k in running.values()):
            drain(until_empty=False)
        latest = common.latest(
            [r for r in common.read_records(NAME) if r.get("kind") == "model"],
            "arm",
            "seed",
            "steps",
        )
        short, long = latest[("none", 0, steps)], latest[("none", 0, 2 * steps)]
        change = abs(long["trajectory"] - short["trajectory"]) / long["trajectory"]
        use = steps if change < CONVERGED else 2 * steps
        if not any(r.get("kind") == "convergence" and r["setup"] == setup for r in rows):
            common.record(
                NAME,
                {
                    "kind": "convergence",
                    "setup": setup,
                    "steps": steps,
                    "position_error": short["trajectory"],
                    "position_error_2x": long["trajectory"],
                    "energy": short["energy"],
                    "energy_2x": long["energy"],
                    "rollout_drift": short["energy_drift_mean"],
                    "rollout_drift_2x": long["energy_drift_mean"],
                    "relative_change": change,
                    "steps_used": use,
                    "date": common.timestamp(),
                },
            )
        print(f"convergence: position error changes {100 * change:.1f} % → {use} steps")
        for seed in range(args.seeds):
            for arm in ("none", "priors"):
                submit(arm, seed, use)
        for arm in ("momentum", "kinematic", "energy"):
            if running and len(running) >= args.workers:
                drain(until_empty=False)
            submit(arm, 0, use, optional=True)
        drain()
    rows = common.read_records(NAME)
    if not any(r.get("kind") == "speed" and r.get("setup") == setup for r in rows):
        for r in speed(job_args, work / f"none-s0-n{use}"):
            r.update(setup=setup, date=common.timestamp())
            common.record(NAME, r)
    print(f"run: {(time.monotonic() - start) / 60:.1f} min wall")
    write_outputs(common.read_records(NAME))


# --- the page and the figure ---------------------------------------------------------------


def _num(x) -> float:
    """``x`` as a float, NaN for None (a figure that could not be measured)."""
    return float("nan") if x is None else float(x)


def _mean_sd(values) -> str:
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    if not np.isfinite(v).any():
        return "–"
    if len(v) == 1:
        return f"{v[0]:.4g}"
    return f"{v.mean():.4g} ± {v.std(ddof=1):.2g}"


def write_outputs(rows: list[dict]) -> None:
    models = [r for r in rows if r.get("kind") == "model"]
    if not models:
        return
    setup = models[-1]["setup"]
    models = [r for r in models if r["setup"] == setup]
    conv = [r for r in rows if r.get("kind") == "convergence" and r["setup"] == setup]
    use = conv[-1]["steps_used"] if conv else models[-1]["steps"]
    arms = {}
    for r in models:
        if r["steps"] == use:
            arms.setdefault(r["arm"], {})[r["seed"]] = r
    speed = [r for r in rows if r.get("kind") == "speed" and r.get("setup") == setup]
    sizing = [r for r in rows if r.get("kind") == "sizing" and r["data"] == setup["data"]]
    lines = _page(arms, conv, speed, sizing, setup, use)
    common.write_markdown(NAME, lines)
    _figure(arms, speed)


def _page(arms, conv, speed, sizing, setup, use) -> list[str]:
    from sapis.campaign.report import markdown_table

    any_row = next(iter(next(iter(arms.values())).values()))
    lines = [
        "# The dynamics generator on a molecule (GFN2-xTB MD of malonaldehyde)",
        "",
        "`bench/dynamics_molecule.py`: diffusion models of the next 20 frames (5 fs apart: "
        "100 fs) given one frame (positions and velocities), trained on "
        "`data/dynamics/malonaldehyde-xtb-train.npz` (24 GFN2-xTB NVE trajectories × 160 "
        "frames at 300 K; val 8 for validation) and tested against the 8 test "
        f"trajectories. Network: hidden {setup['hidden']}, {setup['layers']} blocks "
        f"({any_row['parameters']} parameters), batch {setup['batch']}, {use} optimiser "
        "steps for every arm, 50 denoising steps when sampling, EMA weights. "
        "Energies of generated frames: GFN2-xTB single points (tblite, accuracy 0.01, as "
        "the data); kinetic energy from the generated velocities. Mean ± sample std over "
        "seeds where there are several. Data sha256 prefix "
        f"`{setup['data']}`; one thread per process, two processes side by side on a "
        "2-core machine shared with other jobs.",
        "",
    ]
    if sizing:
        s = sizing[-1]
        lines += [
            f"Sizing: one training step (priors arm, batch {setup['batch']}) took "
            f"{s['step_cpu_s']:.3f} CPU s ({s.get('step_wall_s', s['step_cpu_s']):.3f} s "
            f"wall under the machine's load then), so N = {s['steps']} steps fit the "
            f"{s.get('budget_min', 35):.0f}-minute budget.",
            "",
        ]
    if conv:
        c = conv[-1]
        verdict = "converged" if c["relative_change"] < CONVERGED else "NOT converged"
        lines += [
            "## Convergence (`none`, seed 0)",
            "",
            *markdown_table(
                [
                    {
                        "steps": c["steps"],
                        "position error (Å)": f"{c['position_error']:.4f}",
                        "energy drift, one window (eV)": f"{_num(c['energy']):.4f}",
                        "rollout energy drift (eV)": f"{_num(c['rollout_drift']):.3f}",
                    },
                    {
                        "steps": 2 * c["steps"],
                        "position error (Å)": f"{c['position_error_2x']:.4f}",
                        "energy drift, one window (eV)": f"{_num(c['energy_2x']):.4f}",
                        "rollout energy drift (eV)": f"{_num(c['rollout_drift_2x']):.3f}",
                    },
                ]
            ),
            "",
            f"Doubling the steps changes the position error by "
            f"{100 * c['relative_change']:.1f} % ({verdict} by the < 15 % rule); every arm "
            f"then trains {c['steps_used']} steps.",
            "",
        ]
    floor = next(iter(arms["none"].values()))
    table = []
    for arm, seeds in arms.items():
        rs = list(seeds.values())
        table.append(
            {
                "arm": LABELS[arm],
                "seeds": len(rs),
                "position error (Å)": _mean_sd([r["trajectory"] for r in rs]),
                "p95 at frame 20 (Å)": _mean_sd([r["position_error_p95"][-1] for r in rs]),
                "velocity error (Å/fs)": _mean_sd([r["velocity"] * _ase_per_fs() for r in rs]),
                "momentum drift (amu·Å/fs)": _mean_sd([r["momentum"] * _ase_per_fs() for r in rs]),
                "energy drift (meV)": _mean_sd([1000 * _num(r["energy"]) for r in rs]),
                "xTB SCF failed": sum(r["xtb_failed_windows"] for r in rs),
            }
        )
    cv = floor["constant_velocity_error_mean"]
    lines += [
        f"## One window (100 fs) from {setup['windows']} test states",
        "",
        "Against the true xTB MD from the same state (positions and velocities of a test "
        "frame). Position error: mean over generated frames and atoms of |x_gen − x_true|; "
        "p95 over windows of the per-window atom-mean error at the last frame. Energy drift: "
        "mean over frames of |E_l − E_0| (`metrics.dynamics_errors`).",
        "",
        *markdown_table(table),
        "",
        f"References: the true MD's own energy drift over the same windows (the "
        f"integrator's floor) is {1000 * floor['energy_truth_floor']:.2f} meV; its momentum "
        f"drift {floor['momentum_truth_floor'] * _ase_per_fs():.1e} amu·Å/fs. Constant-velocity "
        f"extrapolation x_0 + v_0·t has a position error of {np.mean(cv[1:]):.4f} Å "
        f"(mean over the 20 frames; {cv[-1]:.3f} Å at 100 fs).",
        "",
    ]
    roll = []
    for arm, seeds in arms.items():
        rs = list(seeds.values())
        w1 = np.array([r["bond_w1"] for r in rs])
        spread = np.array(rs[0]["bond_spread"])
        roll.append(
            {
                "arm": LABELS[arm],
                "seeds": len(rs),
                "valid to the end": _mean_sd([r["valid_to_end"] for r in rs]),
                "valid frames, median": _mean_sd([r["first_invalid_frame_median"] for r in rs]),
                "valid generated frames": _mean_sd([r["generated_valid_frames"] for r in rs]),
                "bonds W1 < spread": _mean_sd([r["bonds_w1_below_spread"] for r in rs])
                + f" of {len(spread)}",
                "mean W1 / spread": _mean_sd((w1 / spread).mean(1)),
                "max W1 / spread": _mean_sd((w1 / spread).max(1)),
                "potential W1 (meV)": _mean_sd([1000 * _num(r["potential_w1"]) for r in rs]),
                "energy drift mean (meV)": _mean_sd(
                    [1000 * _num(r["energy_drift_mean"]) for r in rs]
                ),
                "energy drift at end, median (meV)": _mean_sd(
                    [1000 * _num(r["energy_drift_end_median"]) for r in rs]
                ),
            }
        )
    first = next(iter(arms["none"].values()))
    lines += [
        f"## Long rollouts: {setup['starts']} test starts × {setup['chain']} chained windows "
        f"({first['rollout_frames'] - 1} frames, {first['rollout_fs'] / 1000:.1f} ps each)",
        "",
        "Bond lengths of every generated frame against those of the test split's MD (8 "
        "trajectories × 160 frames, 0.8 ps each: the only true MD at hand, shorter than the "
        "rollouts), per bond as Wasserstein-1; the thermal spread is each bond's std in that "
        "MD (goal: W1 < spread). Potential W1: GFN2-xTB energies of every "
        f"{setup['every']}th rollout frame against the test MD's. Energy drift: "
        "|E(t) − E(0)| with E = xTB potential + generated kinetic, mean over rollouts and "
        "sampled frames, and its median at the rollout's end. Valid: bond graph kept and no "
        "clash (`sapis.validity`) in every frame.",
        "",
        *markdown_table(roll),
        "",
        f"True MD: energy drift {1000 * first['true_energy_drift_mean']:.2f} meV (mean |E(t) − "
        "E(0)| over the test trajectories).",
        "",
        "Per bond (seed 0): W1 and the thermal spread (Å).",
        "",
    ]
    per_bond = []
    for k, name in enumerate(first["bonds"]):
        row = {"bond (Z:index)": name, "spread": f"{first['bond_spread'][k]:.4f}"}
        for arm, seeds in arms.items():
            if 0 in seeds:
                row[f"W1 {arm}"] = f"{seeds[0]['bond_w1'][k]:.4f}"
        per_bond.append(row)
    lines += [*markdown_table(per_bond), ""]
    if speed:
        sp = []
        for r in speed:
            sp.append(
                {
                    "engine": r["engine"],
                    "simulated fs": f"{r['fs']:.0f}",
                    "CPU s": f"{r['cpu']:.1f}",
                    "fs per CPU-s": f"{r['fs_per_cpu_s']:.0f}",
                    "fs per wall-s": f"{r['fs_per_wall_s']:.0f}",
                    "vs xTB MD": f"{r['vs_xtb']:.2f}",
                }
            )
        lines += [
            "## Speed (simulated fs per CPU-second, one thread, side by side in one process)",
            "",
            "xTB and surrogate MD: ASE velocity Verlet at 0.5 fs from an rMD17 frame at "
            "300 K (`bench/md_reference_speed.py`'s `rate`); surrogate: a NequIP `xs` "
            "ensemble trained 1 epoch on 20 rMD17 frames (speed does not depend on "
            "accuracy) through `EnsembleCalculator`. Dynamics model: `sample` of 20-frame "
            "windows (100 fs each) from test states, the no-prior seed-0 model (the priors "
            "model samples NaN, so `sample` refuses it; the network and its cost are the "
            "same). "
            f"Load average before: {speed[0]['load_before']:.2f}, after: "
            f"{speed[0]['load_after']:.2f} (2 cores).",
            "",
            *markdown_table(sp),
            "",
        ]
    lines += _goals(arms, speed)
    lines += ["![plots](dynamics_molecule.png)", ""]
    return lines


def _ase_per_fs() -> float:
    from ase import units

    return units.fs  # a velocity in Å per ASE time unit times this is Å/fs


def _goals(arms, speed) -> list[str]:
    from sapis.campaign.report import markdown_table

    none, pri = list(arms["none"].values()), list(arms.get("priors", {}).values())
    rows = []
    if pri:
        a = np.mean([_num(r["energy_drift_mean"]) for r in none])
        b = np.mean([_num(r["energy_drift_mean"]) for r in pri])
        a1 = np.mean([_num(r["energy"]) for r in none])
        b1 = np.mean([_num(r["energy"]) for r in pri])
        rows.append(
            {
                "goal": "rollout energy drift with priors ≤ 0.25× no prior",
                "measured": f"{1000 * b:.1f} / {1000 * a:.1f} meV = {b / a:.2f}×",
                "met": "yes"
                if b <= 0.25 * a
                else "no (not measurable)"
                if np.isnan(b / a)
                else "no",
            }
        )
        rows.append(
            {
                "goal": "(same, one 100-fs window)",
                "measured": f"{1000 * b1:.1f} / {1000 * a1:.1f} meV = {b1 / a1:.2f}×",
                "met": "yes" if b1 <= 0.25 * a1 else "no",
            }
        )
        rows.append(
            {
                "goal": "(windows whose sample was finite, of 100: no prior / priors)",
                "measured": f"{100 - none[0]['non_finite_windows']} / "
                f"{100 - pri[0]['non_finite_windows']}",
                "met": "",
            }
        )
    for arm, rs in (("no prior", none), ("priors", pri)):
        if not rs:
            continue
        below = [r["bonds_w1_below_spread"] for r in rs]
        total = len(rs[0]["bonds"])
        rows.append(
            {
                "goal": f"bond-length W1 < thermal spread ({arm})",
                "measured": f"{np.mean(below):.1f} of {total} bonds (mean over seeds)",
                "met": "yes" if min(below) == total else "no",
            }
        )
    if speed:
        best = max(r["vs_xtb"] for r in speed if r["engine"].startswith("dynamics"))
        alone = next(r["vs_xtb"] for r in speed if "alone" in r["engine"])
        rows.append(
            {
                "goal": "≥ 10× the simulated fs per CPU-s of xTB MD",
                "measured": f"{best:.1f}× batched, {alone:.1f}× one window alone",
                "met": "yes" if best >= 10 else "no",
            }
        )
    return ["## Goals (issue 16)", "", *markdown_table(rows), ""]


def _figure(arms, speed) -> None:
    fig, axes = common.subplots(nrows=2, ncols=3, figsize=(15, 8.5))
    colours = {"none": "C0", "priors": "C3", "momentum": "C1", "kinematic": "C2", "energy": "C4"}
    ax = axes[0, 0]
    first = next(iter(arms["none"].values()))
    t = 5.0 * np.arange(len(first["position_error_mean"]))
    for arm, seeds in arms.items():
        rs = list(seeds.values())
        mean = np.mean([r["position_error_mean"] for r in rs], 0)
        p95 = np.mean([r["position_error_p95"] for r in rs], 0)
        ax.plot(t, mean, color=colours[arm], label=f"{arm} (mean, finite windows)")
        if arm in ("none", "priors"):
            ax.plot(t, p95, color=colours[arm], ls="--", label=f"{arm} (p95)")
    ax.plot(t, first["constant_velocity_error_mean"], color="grey", ls=":", label="x0 + v0·t")
    ax.set(xlabel="time in window (fs)", ylabel="position error (Å)", title="One window")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    for arm in ("none", "priors"):
        for seed, r in arms.get(arm, {}).items():
            ax.plot(
                np.array(r["energy_drift_times_fs"]) / 1000,
                1000 * np.array(r["energy_drift_curve"], dtype=float),
                color=colours[arm],
                alpha=1.0 if seed == 0 else 0.4,
                label=f"{arm}" if seed == 0 else None,
            )
    true = np.array(first["true_energy_drift_curve"])
    ax.plot(5e-3 * np.arange(len(true)), 1000 * true, color="k", label="true xTB MD")
    ax.set(
        xlabel="time (ps)",
        ylabel="mean |E(t) − E(0)| (meV)",
        yscale="symlog",
        title="Energy drift over rollouts (xTB potential + kinetic)",
    )
    ax.legend(fontsize=7)
    ax = axes[0, 2]
    test = split("test")
    true_u = test.potential.ravel() - first["potential_mean_true"]
    lo = true_u.min() - 0.3
    gens = [
        np.array(arms[arm][0]["potential_gen"]) - first["potential_mean_true"]
        for arm in ("none", "priors")
        if 0 in arms.get(arm, {})
    ]
    tops = [np.percentile(g, 99) for g in gens if len(g)]
    hi = max(true_u.max() + 0.3, min(5.0, max(tops, default=0.0)))
    for arm, u in zip(("none", "priors"), gens):
        if not len(u):
            continue
        ax.hist(
            np.clip(u, lo, hi),
            80,
            range=(lo, hi),
            density=True,
            histtype="step",
            color=colours[arm],
            label=f"{arm} seed 0 (clipped to the axis)",
        )
    ax.hist(true_u, 80, range=(lo, hi), density=True, alpha=0.3, color="k", label="true MD")
    ax.set(xlabel="xTB potential − true mean (eV)", ylabel="density", title="Potential (rollouts)")
    ax.legend(fontsize=7)
    centres = 0.5 * (BOND_BINS[1:] + BOND_BINS[:-1])
    names = first["bonds"]
    keys = list(first["bond_hist"])
    types: dict[tuple, int] = {}
    for k, name in enumerate(names):  # one bond of each element pair: C-C, C-O, C-H, O-H
        pair = tuple(sorted(int(a.split(":")[0]) for a in name.split("-")))
        types.setdefault(pair, k)
    picks = list(types.values())[:4]
    for ax, group in zip(axes[1, :2], (picks[: len(picks) // 2 or 1], picks[len(picks) // 2 :])):
        for j, k in enumerate(group):
            true_h = np.array(first["true_bond_hist"][keys[k]], float)
            ax.fill_between(centres, true_h / true_h.sum(), step="mid", alpha=0.25, color=f"C{j}")
            for arm, ls in (("none", ":"), ("priors", "-")):
                if 0 in arms.get(arm, {}):
                    h = np.array(arms[arm][0]["bond_hist"][keys[k]], float)
                    ax.step(
                        centres,
                        h / h.sum(),
                        where="mid",
                        ls=ls,
                        color=f"C{j}",
                        label=f"{names[k]} {arm}",
                    )
        ax.set(xlabel="bond length (Å)", ylabel="share", title="Bond lengths: shaded true MD")
        ax.legend(fontsize=7)
    ax = axes[1, 2]
    if speed:
        labels = [r["engine"].replace(" (", "\n(", 1) for r in speed]
        ax.barh(range(len(speed)), [r["fs_per_cpu_s"] for r in speed], color="C0")
        ax.set_yticks(range(len(speed)), labels, fontsize=6)
        ax.axvline(10 * speed[0]["fs_per_cpu_s"], color="C3", ls="--", label="10× xTB MD")
        ax.set(xscale="log", xlabel="simulated fs per CPU-second", title="Speed (one thread)")
        ax.legend(fontsize=7)
    common.save_figure(fig, NAME)


if __name__ == "__main__":
    main()
