"""Cheap pretraining: does broad GFN2-xTB pretraining let 50 DFT labels do the work of 200?

Issue 14's goals, measured on the rMD17 sample (PBE/def2-SVP labels): the train split is
the pool of DFT-labelled frames, a fixed subset of ``--test-frames`` frames of the test
split is the test set (the same for every arm and seed). The goals:

1. fine-tuned from a model pretrained on cheap GFN2-xTB MD, 50 DFT labels reach the test
   force MAE that random selection without pretraining reaches with 200 (≥ 4× fewer);
2. the cheap stage (xTB MD plus pretraining, in core-seconds) costs less than 10 DFT labels;
3. the final potential survives 500 K MD.

Per seed (``--seeds``), every arm side by side:

- cheap sampling: Langevin MD at GFN2-xTB (``sapis.dft.xtb.xtb_md``) from the pool's first
  frame at each of ``--cheap-temperatures``, ``--cheap-ps`` each (0.5 fs steps), a frame
  every ``--cheap-every`` steps; its cost is the trajectories' wall time on one core each;
- pretraining: one NequIP model from scratch on those frames for ``--pretrain-epochs``;
- DFT draws: one seeded permutation of the pool, nested subsets of N frames;
- ``random``: a model from scratch on N frames, for each N in ``--labels``;
- ``cheap+random``: the pretrained model fine-tuned on the same N frames with its per-type
  energy shifts refitted (the levels differ by hartrees), N in ``--finetune-labels``;
- ``delta``: Δ-learning on the same N frames (``--delta-labels``): a model from scratch on
  E_DFT − E_xTB and F_DFT − F_xTB (GFN2-xTB single points), predicting xTB + model.

Every model is one member (``--size``, no bootstrap) on an 80/20 train/val split of its
frames, trained until its validation loss plateaus for ``--patience`` epochs (converged)
or for ``--max-epochs``. Metrics on the test set against the DFT labels: force MAE,
RMSE, 95th and 99th percentile and max of the component errors, energy MAE; as baselines,
GFN2-xTB alone and the pretrained model alone. The final potentials (``cheap+random`` and
``delta`` at their smallest N, ``random`` at its largest) run ``--stability-trajectories``
Langevin trajectories of ``--stability-ps`` at 500 K from the pool's first frame
(``sapis.surrogate.stability.check_stability``); the cost of a force call (plain NequIP,
xTB, xTB + NequIP for Δ) is timed on that frame, and once per run the cost of a DFT label
(PySCF PBE/def2-SVP on ``--dft-timing-frames`` pool frames, one core each).

    .venv/bin/python bench/cheap_pretraining.py [--molecule uracil] [--seeds 3]

Estimated time with the defaults (malonaldehyde, one torch thread, measured per seed on a
2-core machine that was busy with other work): cheap MD 12,000 xTB steps at ~2.7 ms = 30 s
(600 frames); an epoch of size ``s`` costs ~3.5 ms per frame (train + val): 0.20 s at 50
frames, 0.37 s at 100, 0.71 s at 200, ~2.1 s on the 600 cheap frames, so pretraining
(80 epochs) ≤ 170 s and the five DFT-level models (≤ 200 epochs each) ≤ 330 s; stability
3 potentials × 4 × 2,000 steps at ~5 ms (Δ ~10 ms) ≈ 160 s. About 11–12 minutes per seed
at most (less where training converges early), about 35 minutes for 3 seeds. Uracil (12
atoms) takes about a third longer. ``--threads 1`` is the default on purpose: torch and
tblite share one OpenMP runtime, and two threads on a 2-core machine that has anything
else to do made training and MD 20× slower in the smoke runs.

A smoke run (about a minute) that records nothing in ``bench/results``::

    .venv/bin/python bench/cheap_pretraining.py --seeds 1 --labels 10 20 \\
        --finetune-labels 10 --delta-labels 10 --test-frames 20 --cheap-ps 0.1 \\
        --max-epochs 3 --pretrain-epochs 3 --stability-trajectories 1 --stability-ps 0.02 \\
        --dft-timing-frames 1 --results-dir /tmp/cheap-smoke

Rows go to ``<results-dir>/cheap_pretraining.jsonl`` as they are made (one per model,
one per seed for the cheap stage and timings, one per run for the DFT cost and the xTB
baseline); the page ``cheap_pretraining.md`` and figure ``cheap_pretraining.png`` are
rewritten from the latest run of each molecule (``--summarise`` only rewrites them).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import common
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

NAME = "cheap_pretraining"
TIMESTEP = 0.5  # fs, cheap MD
STABILITY_K = 500.0
TEST_DRAW_SEED = 12345  # the fixed test subset, the same for every run and arm
GOAL_RATIO = 4.0
GOAL_LABELS = 10

Frames = list[Atoms]


# --- data -------------------------------------------------------------------------------


def data_files(molecule: str) -> tuple[Path, Path]:
    return (
        common.DATA / f"rmd17_{molecule}_train_01.npz",
        common.DATA / f"rmd17_{molecule}_test_01.npz",
    )


def xtb_settings():
    from sapis.campaign.config import CheapPretraining

    return CheapPretraining()  # program xtb, GFN2-xTB, one thread


def xtb_single_points(
    frames: Sequence[Atoms],
) -> tuple[list[tuple[float, np.ndarray] | None], float]:
    """GFN2-xTB energy and forces of each frame (None where the SCF failed) and the
    core-seconds they took (one core each)."""
    from sapis.dft.xtb import label_xtb

    settings = xtb_settings()
    out: list[tuple[float, np.ndarray] | None] = []
    seconds = 0.0
    for atoms in frames:
        result = label_xtb(atoms, settings)
        seconds += result.seconds * settings.threads
        out.append((result.energy, result.forces) if result.converged else None)
    return out, seconds


def load(molecule: str, n_test: int) -> dict[str, Any]:
    """The pool, the fixed test subset (frames where GFN2-xTB converges, so that every
    arm is scored on the same frames) with its xTB labels, and the seed structure."""
    from sapis.io import read_structures

    train_file, test_file = data_files(molecule)
    pool = read_structures(train_file)
    test_all = read_structures(test_file)
    rng = np.random.default_rng(TEST_DRAW_SEED)
    test = [test_all[i] for i in sorted(rng.choice(len(test_all), n_test, replace=False))]
    xtb, seconds = xtb_single_points(test)
    kept = [i for i, r in enumerate(xtb) if r is not None]
    first = pool[0]
    return {
        "molecule": molecule,
        "pool": pool,
        "test": [test[i] for i in kept],
        "test_xtb": [xtb[i] for i in kept],
        "test_xtb_failed": len(test) - len(kept),
        "test_xtb_core_seconds": seconds,
        "seed_atoms": Atoms(first.numbers, first.positions),
    }


def split(frames: Sequence[Atoms], rng: np.random.Generator) -> tuple[Frames, Frames]:
    """80 / 20 train / validation (validation ≥ 2 frames)."""
    order = rng.permutation(len(frames))
    n_val = max(2, round(0.2 * len(frames)))
    return [frames[i] for i in order[n_val:]], [frames[i] for i in order[:n_val]]


def delta_targets(
    frames: Sequence[Atoms], xtb: Sequence[tuple[float, np.ndarray] | None]
) -> Frames:
    """The frames (those where xTB converged) labelled with DFT − xTB."""
    out = []
    for atoms, base in zip(frames, xtb):
        if base is None:
            continue
        copy = Atoms(atoms.numbers, atoms.positions)
        copy.calc = SinglePointCalculator(
            copy,
            energy=atoms.get_potential_energy() - base[0],
            forces=atoms.get_forces() - base[1],
        )
        out.append(copy)
    return out


# --- models -----------------------------------------------------------------------------


def train(
    frames: Sequence[Atoms],
    folder: Path,
    args: argparse.Namespace,
    seed: int,
    epochs: int,
    parent: Path | None = None,
) -> tuple[Any, dict[str, Any]]:
    """One model on ``frames`` (80 / 20 train / validation split drawn from ``seed``),
    fine-tuned from the model in ``parent`` with its energy shifts refitted when given;
    the loaded model and what its training did."""
    import torch

    from sapis.surrogate.ensemble import Ensemble
    from sapis.surrogate.ensemble_training import train_ensemble
    from sapis.surrogate.settings import TrainingConfig

    config = TrainingConfig(
        size=args.size,
        members=1,
        bootstrap=False,
        max_epochs=epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        seed=seed,
    )
    tr, val = split(frames, np.random.default_rng(seed))
    manifest = train_ensemble(
        tr, val, folder, config, parent=parent, refit_shifts=parent is not None, progress=False
    )
    (member,) = manifest.members
    threads = torch.get_num_threads()
    info = {
        "n_train": len(tr),
        "n_val": len(val),
        "converged": member.stopped_by == "converged",
        "stopped_by": member.stopped_by,
        "epochs": member.epochs,
        "wall_seconds": member.wall_seconds,
        "seconds_per_epoch": round(member.wall_seconds / max(member.epochs, 1), 3),
        "threads": threads,
        "core_seconds": round(member.wall_seconds * threads, 2),
        "val_force_mae": member.val_force_mae,
    }
    return Ensemble.load(folder), info


def predict(
    model, frames: Sequence[Atoms], base: Sequence[tuple[float, np.ndarray]] | None = None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Energies and forces of ``model`` on ``frames``, plus ``base`` (xTB) when given."""
    pred = model.predict(frames)
    energies = np.array(pred.energy_mean, dtype=float)
    forces = [pred.force_mean(i) for i in range(len(frames))]
    if base is not None:
        energies = energies + np.array([b[0] for b in base])
        forces = [f + b[1] for f, b in zip(forces, base)]
    return energies, forces


def errors(
    energies: np.ndarray | None, forces: Sequence[np.ndarray], test: Sequence[Atoms]
) -> dict[str, float]:
    """Force component errors (eV/Å) and, when ``energies`` are given, the energy MAE and
    mean error (eV) against the DFT labels of ``test``."""
    ref = np.concatenate([a.get_forces().ravel() for a in test])
    err = np.abs(np.concatenate([f.ravel() for f in forces]) - ref)
    out = {
        "force_mae": float(err.mean()),
        "force_rmse": float(np.sqrt((err**2).mean())),
        "force_p95": float(np.quantile(err, 0.95)),
        "force_p99": float(np.quantile(err, 0.99)),
        "force_max": float(err.max()),
    }
    if energies is not None:
        e_err = energies - np.array([a.get_potential_energy() for a in test])
        out |= {"energy_mae": float(np.abs(e_err).mean()), "energy_bias": float(e_err.mean())}
    return out


def xtb_calculator():
    """tblite's ASE calculator at GFN2-xTB, each call on ``settings.threads`` OpenMP
    threads (one) as the library's own xTB labels and MD run: tblite and torch share
    the process's OpenMP runtime, and two threads for a 9-atom molecule only cost time
    (on a busy machine, seconds per call)."""
    from tblite.ase import TBLite
    from threadpoolctl import ThreadpoolController

    settings = xtb_settings()
    controller = ThreadpoolController()

    class OneThreadTBLite(TBLite):
        def calculate(self, *args: Any, **kwargs: Any) -> None:
            with controller.limit(limits=settings.threads, user_api="openmp"):
                super().calculate(*args, **kwargs)

    return OneThreadTBLite(
        method=settings.method,
        accuracy=settings.accuracy,
        electronic_temperature=settings.electronic_temperature,
        max_iterations=settings.max_cycle,
        verbosity=0,
    )


def model_calculator(model):
    from sapis.surrogate.calculator import EnsembleCalculator

    return EnsembleCalculator(model)


def delta_calculator(model):
    """GFN2-xTB plus the Δ model, as one ASE calculator."""
    from ase.calculators.mixing import SumCalculator

    return SumCalculator([xtb_calculator(), model_calculator(model)])


def stability(
    factory: Callable[[], Any], seed_atoms: Atoms, args: argparse.Namespace, rng_seed: int
) -> dict[str, Any]:
    from sapis.surrogate.stability import check_stability

    started = time.perf_counter()
    result = check_stability(
        factory,
        seed_atoms,
        temperature=STABILITY_K,
        trajectories=args.stability_trajectories,
        picoseconds=args.stability_ps,
        rng_seed=rng_seed,
    )
    return {
        "survived_fraction": result.survived_fraction,
        "median_time_to_failure_ps": result.median_time_to_failure_ps,
        "first_failure_ps": result.first_failure_ps,
        "length_ps": result.settings.length_ps,
        "trajectories": [
            {"survived": t.survived, "time_to_failure_ps": t.time_to_failure_ps, "reason": t.reason}
            for t in result.trajectories
        ],
        "seconds": round(time.perf_counter() - started, 1),
    }


def ms_per_call(calculator, atoms: Atoms, calls: int, warmup: int = 5) -> float:
    """Wall milliseconds of one energy-and-forces call of ``calculator`` on ``atoms``
    displaced anew each call (as an MD step would), after ``warmup`` calls."""
    rng = np.random.default_rng(0)
    work = atoms.copy()
    work.calc = calculator
    times = []
    for k in range(warmup + calls):
        work.positions = atoms.positions + rng.normal(0.0, 0.01, atoms.positions.shape)
        started = time.perf_counter()
        work.get_forces()
        if k >= warmup:
            times.append(time.perf_counter() - started)
    return 1000.0 * float(np.mean(times))


def dft_cost(pool: Sequence[Atoms], frames: int) -> dict[str, Any]:
    """Core-seconds of PySCF PBE/def2-SVP labels (the campaign's default DFT settings) on
    the first ``frames`` pool frames."""
    from sapis.dft.labeller import PySCFLabeller
    from sapis.dft.settings import DFTSettings

    settings = DFTSettings()
    labeller = PySCFLabeller(settings)
    results = labeller.label([Atoms(a.numbers, a.positions) for a in pool[:frames]])
    seconds = [r.seconds * labeller.cores for r in results]
    return {
        "level": settings.level_of_theory,
        "density_fit": settings.density_fit,
        "frames": frames,
        "converged": sum(r.converged for r in results),
        "core_seconds": seconds,
        "core_seconds_per_label": float(np.mean(seconds)),
    }


# --- one seed ---------------------------------------------------------------------------


def run_seed(
    seed: int, data: dict[str, Any], args: argparse.Namespace, tmp: Path, emit: Callable
) -> None:
    """Every arm for one seed; each row goes to ``emit`` as soon as it exists."""
    from sapis.dft.xtb import xtb_md

    molecule, test, seed_atoms = data["molecule"], data["test"], data["seed_atoms"]
    say = _say(f"{molecule} seed {seed}")

    # cheap sampling and pretraining
    settings = xtb_settings()
    steps = max(1, round(1000.0 * args.cheap_ps / TIMESTEP))
    trajectories = [
        xtb_md(
            seed_atoms,
            settings,
            t,
            steps,
            args.cheap_every,
            TIMESTEP,
            seed=int(np.random.SeedSequence([seed, int(t)]).generate_state(1)[0]),
        )
        for t in args.cheap_temperatures
    ]
    cheap = [f for t in trajectories for f in t.frames]
    xtb_md_core_s = sum(t.seconds for t in trajectories) * settings.threads
    say(f"cheap MD: {len(cheap)} frames, {xtb_md_core_s:.0f} core-s")
    pretrained, pre = train(cheap, tmp / "pretrain", args, seed, args.pretrain_epochs)
    say(f"pretrained: {pre['epochs']} epochs, {pre['seconds_per_epoch']} s/epoch")
    row: dict[str, Any] = {
        "kind": "seed",
        "seed": seed,
        "cheap_frames": len(cheap),
        "cheap_steps": [t.steps for t in trajectories],
        "cheap_stopped_by": [t.stopped_by for t in trajectories],
        "xtb_md_core_seconds": round(xtb_md_core_s, 2),
        "pretrain": pre,
        "pretrained_errors": errors(None, predict(pretrained, test)[1], test),
    }

    # DFT draws and the arms
    order = np.random.default_rng(seed).permutation(len(data["pool"]))
    draws = {n: [data["pool"][i] for i in order[:n]] for n in _all_counts(args)}
    models: dict[tuple[str, int], Any] = {}

    def model_row(arm: str, n: int, model, info: dict, base=None, **extra) -> dict:
        energies, forces = predict(model, test, base)
        out = {"kind": "model", "arm": arm, "labels": n, "seed": seed, "training": info}
        out |= {"errors": errors(energies, forces, test), **extra}
        e = out["errors"]
        say(
            f"{arm}@{n}: force MAE {1000 * e['force_mae']:.1f} meV/Å, "
            f"E MAE {1000 * e['energy_mae']:.1f} meV, {info['epochs']} epochs "
            f"({info['seconds_per_epoch']} s/epoch, {info['stopped_by']})"
        )
        return out

    rows = []
    for n in args.labels:
        models["random", n], info = train(
            draws[n], tmp / f"random-{n}", args, seed, args.max_epochs
        )
        rows.append(model_row("random", n, models["random", n], info))
    for n in args.finetune_labels:
        folder = tmp / f"cheap-{n}"
        models["cheap+random", n], info = train(
            draws[n], folder, args, seed, args.max_epochs, parent=tmp / "pretrain"
        )
        rows.append(model_row("cheap+random", n, models["cheap+random", n], info))
    for n in args.delta_labels:
        xtb, xtb_s = xtb_single_points(draws[n])
        frames = delta_targets(draws[n], xtb)
        models["delta", n], info = train(frames, tmp / f"delta-{n}", args, seed, args.max_epochs)
        rows.append(
            model_row(
                "delta",
                n,
                models["delta", n],
                info,
                base=data["test_xtb"],
                xtb_core_seconds=round(xtb_s, 2),
                xtb_failed=n - len(frames),
            )
        )

    # the final potentials in MD, and what a force call costs
    finals = final_potentials(args)
    for r in rows:
        key = (r["arm"], r["labels"])
        if key in finals and args.stability_trajectories:
            model = models[key]
            make = delta_calculator if r["arm"] == "delta" else model_calculator
            r["stability"] = stability(lambda m=model, f=make: f(m), seed_atoms, args, seed)
            s = r["stability"]
            say(
                f"{key[0]}@{key[1]} at {STABILITY_K:g} K: {100 * s['survived_fraction']:.0f} % "
                f"survived ({s['seconds']:.0f} s)"
            )
        emit(r)
    plain = models["random", max(args.labels)]
    delta = models["delta", min(args.delta_labels)]
    row["ms_per_step"] = {
        "nequip": ms_per_call(model_calculator(plain), seed_atoms, args.timing_calls),
        "xtb": ms_per_call(xtb_calculator(), seed_atoms, args.timing_calls),
        "delta": ms_per_call(delta_calculator(delta), seed_atoms, args.timing_calls),
    }
    say("ms per force call: " + ", ".join(f"{k} {v:.1f}" for k, v in row["ms_per_step"].items()))
    emit(row)


def _all_counts(args: argparse.Namespace) -> list[int]:
    return sorted({*args.labels, *args.finetune_labels, *args.delta_labels})


def final_potentials(args: argparse.Namespace) -> set[tuple[str, int]]:
    return {
        ("cheap+random", min(args.finetune_labels)),
        ("random", max(args.labels)),
        ("delta", min(args.delta_labels)),
    }


def _say(prefix: str) -> Callable[[str], None]:
    started = time.perf_counter()

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {prefix}: {text}", flush=True)

    return say


def run(args: argparse.Namespace) -> None:
    """Every seed, then the DFT cost (last: PySCF sets its thread count for the process)."""
    run_id = common.timestamp()
    settings = {k: v for k, v in vars(args).items() if k not in ("summarise", "results_dir")}

    def emit(row: dict) -> None:
        row = {"run": run_id, "molecule": args.molecule, **row, "time": common.timestamp()}
        common.record(NAME, {**row, "settings": settings})

    started = time.perf_counter()
    data = load(args.molecule, args.test_frames)
    ref = data["test"]
    xtb_errors = errors(None, [b[1] for b in data["test_xtb"]], ref)
    print(
        f"{args.molecule}: {len(data['pool'])} pool frames, {len(ref)} test frames "
        f"(xTB failed on {data['test_xtb_failed']}); GFN2-xTB alone: force MAE "
        f"{1000 * xtb_errors['force_mae']:.0f} meV/Å",
        flush=True,
    )
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory(prefix="cheap-pretraining-") as tmp:
            run_seed(seed, data, args, Path(tmp), emit)
    emit(
        {
            "kind": "run",
            "test_frames": len(ref),
            "test_xtb_failed": data["test_xtb_failed"],
            "test_xtb_core_seconds": round(data["test_xtb_core_seconds"], 2),
            "xtb_errors": xtb_errors,
            "dft": dft_cost(data["pool"], args.dft_timing_frames),
            "seconds": round(time.perf_counter() - started, 1),
        }
    )


# --- summary ----------------------------------------------------------------------------


def labels_needed(counts: Sequence[float], mae: Sequence[float], target: float) -> float:
    """Labels at which the (decreasing) curve first reaches ``target`` by log-log
    interpolation: its first count when already there, NaN when it never does."""
    counts, mae = np.asarray(counts, float), np.asarray(mae, float)
    below = np.nonzero(mae <= target)[0]
    if not len(below):
        return float("nan")
    k = below[0]
    if k == 0:
        return float(counts[0])
    t = (np.log(target) - np.log(mae[k - 1])) / (np.log(mae[k]) - np.log(mae[k - 1]))
    return float(np.exp(np.log(counts[k - 1]) + t * (np.log(counts[k]) - np.log(counts[k - 1]))))


def _spread(values: Sequence[float], scale: float = 1000.0, digits: int = 0) -> str:
    v = [scale * x for x in values]
    if not v:
        return "-"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{np.mean(v):.{digits}f} ({min(v):.{digits}f}–{max(v):.{digits}f})"


def latest_run(rows: list[dict], molecule: str) -> list[dict]:
    mine = [r for r in rows if r["molecule"] == molecule]
    return [r for r in mine if r["run"] == mine[-1]["run"]]


def summarise_molecule(rows: list[dict], ax_mae, ax_tail) -> list[str]:
    molecule = rows[0]["molecule"]
    models = [r for r in rows if r["kind"] == "model"]
    seeds = [r for r in rows if r["kind"] == "seed"]
    run = next((r for r in rows if r["kind"] == "run"), None)
    settings = rows[-1]["settings"]
    arms = list(dict.fromkeys(r["arm"] for r in models))
    lines = [
        f"## {molecule}",
        "",
        f"Run {rows[0]['run']}, {len({r['seed'] for r in models})} seed(s). "
        f"Settings: `{json.dumps(settings)}`",
        "",
        "Test-set errors against the PBE/def2-SVP labels: forces in meV/Å (component "
        "errors), energy in meV per structure; mean over seeds (min–max). Converged: models "
        "whose validation loss plateaued before the epoch budget.",
        "",
        "| arm | labels | F MAE | F RMSE | F p95 | F p99 | F max | E MAE | converged | epochs "
        "| s/epoch |",
        "|" + "---|" * 11,
    ]
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for arm in arms:
        counts = sorted({r["labels"] for r in models if r["arm"] == arm})
        maes, p99s = [], []
        for n in counts:
            at = [r for r in models if r["arm"] == arm and r["labels"] == n]

            def cell(key: str, at: list[dict] = at) -> str:
                return _spread([r["errors"][key] for r in at])

            conv = sum(r["training"]["converged"] for r in at)
            epochs = _spread([r["training"]["epochs"] for r in at], 1.0)
            per_epoch = _spread([r["training"]["seconds_per_epoch"] for r in at], 1.0, 2)
            lines.append(
                f"| {arm} | {n} | {cell('force_mae')} | {cell('force_rmse')} | "
                f"{cell('force_p95')} | {cell('force_p99')} | {cell('force_max')} | "
                f"{cell('energy_mae')} | {conv}/{len(at)} | {epochs} | {per_epoch} |"
            )
            maes.append(float(np.mean([r["errors"]["force_mae"] for r in at])))
            p99s.append(float(np.mean([r["errors"]["force_p99"] for r in at])))
        curves[arm] = (counts, maes)
        ax_mae.plot(counts, 1000 * np.array(maes), "o-", label=arm)
        ax_tail.plot(counts, 1000 * np.array(p99s), "o-", label=arm)
    base = []
    if run:
        base.append(("GFN2-xTB alone", run["xtb_errors"]))
    if seeds:
        mean = {
            k: float(np.mean([s["pretrained_errors"][k] for s in seeds]))
            for k in seeds[0]["pretrained_errors"]
        }
        base.append(("pretrained on xTB only (mean over seeds)", mean))
    if base:
        lines += ["", "Baselines on the same test frames (forces only; meV/Å):", ""]
        for (label, e), style in zip(base, (":", "--")):
            lines.append(
                f"- {label}: F MAE {1000 * e['force_mae']:.0f}, p99 {1000 * e['force_p99']:.0f}, "
                f"max {1000 * e['force_max']:.0f}"
            )
            ax_mae.axhline(1000 * e["force_mae"], ls=style, color="gray", label=label)

    # goal 1: labels random needs for the fine-tuned (and Δ) error at their smallest N
    lines += ["", "### Goals", ""]
    verdicts = []
    random_curve = curves.get("random")
    for arm in ("cheap+random", "delta"):
        if arm not in curves or random_curve is None:
            continue
        n0, target = curves[arm][0][0], curves[arm][1][0]
        needed = labels_needed(*random_curve, target)
        top = max(random_curve[0])
        text = f"beyond {top}" if np.isnan(needed) else f"{needed:.0f}"
        ratio = f"> {top / n0:.1f}×" if np.isnan(needed) else f"{needed / n0:.1f}×"
        met = np.isnan(needed) or needed >= GOAL_RATIO * n0
        lines.append(
            f"- {arm}@{n0} ({1000 * target:.0f} meV/Å): random needs {text} labels ({ratio})"
            + (
                f" — goal ≥ {GOAL_RATIO:g}× fewer labels: **{'met' if met else 'not met'}**"
                if arm == "cheap+random"
                else " (Δ-learning, for comparison)"
            )
        )
        if arm == "cheap+random":
            verdicts.append(met)

    # goal 2: cost of the cheap stage against 10 DFT labels
    if seeds:
        xtb_s = [s["xtb_md_core_seconds"] for s in seeds]
        pre_s = [s["pretrain"]["core_seconds"] for s in seeds]
        total = [a + b for a, b in zip(xtb_s, pre_s)]
        lines.append(
            f"- cheap stage per seed: xTB MD {_spread(xtb_s, 1.0)} core-s "
            f"({_spread([s['cheap_frames'] for s in seeds], 1.0)} frames) + pretraining "
            f"{_spread(pre_s, 1.0)} core-s (wall × {seeds[0]['pretrain']['threads']} torch "
            f"threads) = {_spread(total, 1.0)} core-s"
        )
        if run:
            label_s = run["dft"]["core_seconds_per_label"]
            met = float(np.mean(total)) < GOAL_LABELS * label_s
            lines.append(
                f"- a DFT label ({run['dft']['level']}, density fitting "
                f"{run['dft']['density_fit']}, mean of {run['dft']['frames']}): "
                f"{label_s:.1f} core-s; {GOAL_LABELS} labels {GOAL_LABELS * label_s:.0f} core-s; "
                f"the cheap stage costs {np.mean(total) / label_s:.1f} labels — goal < "
                f"{GOAL_LABELS} labels: **{'met' if met else 'not met'}**"
            )
            verdicts.append(met)
        else:
            lines.append("- DFT label cost: not measured (the run did not finish)")
        delta_rows = [r for r in models if r["arm"] == "delta"]
        if delta_rows:
            lines.append(
                f"- Δ-learning's xTB single points on its {delta_rows[0]['labels']} frames: "
                f"{_spread([r['xtb_core_seconds'] for r in delta_rows], 1.0, 1)} core-s"
            )

    # goal 3: the final potentials in MD at 500 K
    lines += ["", f"### MD stability at {STABILITY_K:g} K (final potentials)", ""]
    for r0 in [r for r in models if "stability" in r and r["seed"] == models[0]["seed"]]:
        at = [r for r in models if r["arm"] == r0["arm"] and r["labels"] == r0["labels"]]
        trajs = [t for r in at for t in r["stability"]["trajectories"]]
        length = at[0]["stability"]["length_ps"]
        survived = sum(t["survived"] for t in trajs)
        ttf = [length if t["survived"] else t["time_to_failure_ps"] for t in trajs]
        reasons = sorted({t["reason"] for t in trajs if t["reason"]})
        lines.append(
            f"- {r0['arm']}@{r0['labels']}: {survived}/{len(trajs)} trajectories of "
            f"{length:g} ps survived, median time to failure {np.median(ttf):.2f} ps"
            + (f" (failures: {'; '.join(reasons[:3])})" if reasons else "")
        )
        if r0["arm"] == "cheap+random":
            met = survived == len(trajs)
            lines[-1] += f" — goal survives: **{'met' if met else 'not met'}**"
            verdicts.append(met)

    # inference cost
    if seeds and "ms_per_step" in seeds[0]:
        ms = {k: [s["ms_per_step"][k] for s in seeds] for k in seeds[0]["ms_per_step"]}
        lines += [
            "",
            "### Inference cost per MD step (one force call on the seed structure)",
            "",
            f"- NequIP alone: {_spread(ms['nequip'], 1.0, 1)} ms; GFN2-xTB alone: "
            f"{_spread(ms['xtb'], 1.0, 1)} ms; Δ (xTB + NequIP): {_spread(ms['delta'], 1.0, 1)} "
            f"ms, {np.mean(ms['delta']) / np.mean(ms['nequip']):.1f}× plain",
        ]
    lines += [
        "",
        f"Goals met: {sum(verdicts)} of {len(verdicts)} measured"
        + ("" if len(verdicts) == 3 else " (the run did not measure all three)"),
        "",
    ]
    for ax, what in ((ax_mae, "force MAE"), (ax_tail, "force p99")):
        ax.set(xscale="log", yscale="log", xlabel="DFT labels", ylabel=f"test {what} (meV/Å)")
        ax.set_title(f"{molecule}: {what}")
        ax.legend(fontsize=8)
    return lines


def summarise() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = common.read_records(NAME)
    molecules = list(dict.fromkeys(r["molecule"] for r in rows))
    fig, axes = plt.subplots(
        len(molecules), 2, figsize=(11, 4.2 * len(molecules)), squeeze=False, layout="constrained"
    )
    lines = [
        "# Cheap pretraining: GFN2-xTB pretraining against DFT labels (rMD17)",
        "",
        "Does broad pretraining at GFN2-xTB let 50 PBE/def2-SVP labels reach the test force "
        "error random selection without pretraining reaches with 200? See the docstring of "
        "`bench/cheap_pretraining.py` for the arms. Latest run per molecule.",
        "",
    ]
    for molecule, (ax_mae, ax_tail) in zip(molecules, axes):
        lines += summarise_molecule(latest_run(rows, molecule), ax_mae, ax_tail)
    common.save_figure(fig, NAME)
    lines += [f"![learning curves]({NAME}.png)", ""]
    path = common.write_markdown(NAME, lines)
    print("\n".join(lines))
    print(f"wrote {path}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--molecule", default="malonaldehyde", choices=["malonaldehyde", "uracil"])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    parser.add_argument("--labels", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--finetune-labels", type=int, nargs="+", default=[50])
    parser.add_argument("--delta-labels", type=int, nargs="+", default=[50])
    parser.add_argument("--test-frames", type=int, default=300)
    parser.add_argument(
        "--cheap-temperatures", type=float, nargs="+", default=[300.0, 600.0, 900.0]
    )
    parser.add_argument("--cheap-ps", type=float, default=2.0, help="per temperature")
    parser.add_argument("--cheap-every", type=int, default=20, help="MD steps per frame")
    parser.add_argument("--size", default="s")
    parser.add_argument("--batch-size", type=int, default=5)
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--pretrain-epochs", type=int, default=80)
    parser.add_argument("--patience", type=int, default=30)
    parser.add_argument("--stability-trajectories", type=int, default=4)
    parser.add_argument("--stability-ps", type=float, default=1.0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads for training and inference"
    )
    parser.add_argument("--timing-calls", type=int, default=50)
    parser.add_argument("--dft-timing-frames", type=int, default=2)
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=common.RESULTS,
        help="where rows, page and figure go (default bench/results; a smoke run: a temp dir)",
    )
    parser.add_argument(
        "--summarise", action="store_true", help="only rewrite the page from the recorded rows"
    )
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    common.RESULTS = args.results_dir.resolve()
    started = time.perf_counter()
    if not args.summarise:
        run(args)
    summarise()
    print(f"done in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
