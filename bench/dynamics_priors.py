"""The dynamics generator's priors on the paper's particle systems (five-spring, three-body).

Side by side in one run, every arm trained with the same network, data, optimiser and
number of steps, differing only in its prior (λ = 1 unless swept):

- ``none``; ``momentum-project``; ``momentum-penalty``; ``kinematic``; ``energy-naive``
  (the Jensen-gap arm); ``energy-reduced``; ``all`` (project + kinematic + reduced);
- on three-body a λ sweep of energy-naive, energy-reduced and kinematic at 0.1 and 10;
- seeds 0, 1, 2 (``DynamicsConfig.seed``: initial weights, batches, noise, sampling).

Every model samples the same test windows (``--windows`` windows of ``frames + 1`` frames
from the test split, drawn with a fixed seed); the page gives the dynamics errors (means
and per-sample 95th percentiles, mean ± std over seeds, ratio to ``none``), the truth
floor, the issue's goals met or not, the conservation curves (|E_l − E_0| and |P_l − P_0|
per frame: the paper's figure), the last-100-step and validation losses, CPU-seconds per
training and milliseconds per sampled window. A convergence check trains the no-prior
model of each system (seed 0) for twice the steps.

    .venv/bin/python bench/dynamics_priors.py [--steps 1500] [--workers 2] [--check-only]

Trainings run in a pool of ``--workers`` processes with one thread each. Each finished
training is appended to bench/results/dynamics_priors.jsonl at once, and a rerun skips
the runs already recorded with the same settings (``--table`` only rewrites the page).
Rewrites dynamics_priors.md, dynamics_priors.png and dynamics_priors_lambda.png.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import common
import numpy as np

NAME = "dynamics_priors"
SYSTEMS = ("five-spring", "three-body")
METRICS = ("trajectory", "velocity", "energy", "momentum", "dynamic")
ARMS = (
    "none",
    "momentum-project",
    "momentum-penalty",
    "kinematic",
    "energy-naive",
    "energy-reduced",
    "all",
)
SWEPT = ("kinematic", "energy-naive", "energy-reduced")  # λ swept on three-body
LAMBDAS = (0.1, 1.0, 10.0)
GOALS = {  # system: [(metric, largest ratio to none)]: the goals
    "five-spring": [("momentum", 0.1), ("dynamic", 1.0)],
    "three-body": [("energy", 0.2), ("velocity", 0.4), ("trajectory", 1.0)],
}
GOAL_ARMS = {  # the arm that holds the prior each goal is about, besides `all`
    "five-spring": "momentum-project",
    "three-body": "energy-reduced",
}


def prior_settings(arm: str, lam: float) -> dict:
    """The DynamicsConfig fields of ``arm`` at weight ``lam``: the only difference between
    arms."""
    return {
        "none": {},
        "momentum-project": {"momentum": "project"},
        "momentum-penalty": {"momentum": "penalty", "momentum_weight": lam},
        "kinematic": {"kinematic_weight": lam},
        "energy-naive": {"energy": "naive", "energy_weight": lam},
        "energy-reduced": {"energy": "reduced", "energy_weight": lam},
        "all": {"momentum": "project", "kinematic_weight": lam, "energy": "reduced"},
    }[arm]


def run_key(job: dict) -> tuple:
    return tuple(job[k] for k in ("system", "arm", "lambda", "seed", "steps", "hidden", "layers"))


def test_windows(system: str, frames: int, n: int):
    """The ``n`` test windows every arm samples (fixed draw)."""
    from sapis.generator.dynamics.data import Trajectories

    test = Trajectories.load(common.HERE.parent / "data" / "dynamics" / f"{system}-test.npz")
    windows = test.windows(frames + 1, stride=frames)
    pick = np.sort(np.random.default_rng(2025).choice(len(windows.positions), n, replace=False))
    return windows.subset(pick)


def train_and_score(job: dict) -> dict:
    """One training of ``job`` and its scores on the shared test windows: a result row."""
    import torch

    torch.set_num_threads(1)
    from sapis.generator.dynamics.data import Trajectories
    from sapis.generator.dynamics.metrics import conservation_curves, dynamics_errors
    from sapis.generator.dynamics.settings import DynamicsConfig
    from sapis.generator.dynamics.systems import particle_system
    from sapis.generator.dynamics.training import evaluate, train_dynamics

    data = common.HERE.parent / "data" / "dynamics"
    train = Trajectories.load(data / f"{job['system']}-train.npz")
    val = Trajectories.load(data / f"{job['system']}-val.npz")
    config = DynamicsConfig(
        frames=job["frames"],
        hidden=job["hidden"],
        layers=job["layers"],
        train_steps=job["steps"],
        batch_size=job["batch"],
        seed=job["seed"],
        **prior_settings(job["arm"], job["lambda"]),
    )
    folder = Path(job["models"]) / "-".join(str(k) for k in run_key(job))
    c0, t0 = time.process_time(), time.perf_counter()
    model, record = train_dynamics(train, folder, config, val=val)
    train_cpu, train_wall = time.process_time() - c0, time.perf_counter() - t0
    # every prior's residual on x̂0 of validation windows at fixed noise, whatever the arm
    measure = config.model_copy(
        update={"momentum": "penalty", "kinematic_weight": 1.0, "energy": "naive"}
    )
    vwin = val.windows(config.frames + 1, stride=config.frames)
    measured = evaluate(model, vwin, measure=measure)

    truth = test_windows(job["system"], config.frames, job["windows"])
    t0 = time.perf_counter()
    generated = model.sample(
        truth.positions[:, 0], truth.velocities[:, 0], truth.couplings, seed=job["seed"]
    )
    sample_ms = 1000 * (time.perf_counter() - t0) / len(truth.positions)
    system = particle_system(job["system"])
    errors = dynamics_errors(generated, truth, system)
    curves = conservation_curves(generated, system)
    true_curves = conservation_curves(truth, system)
    return {
        **{k: v for k, v in job.items() if k != "models"},
        "date": common.timestamp(),
        "priors": config.prior_names(),
        **{m: getattr(errors, m) for m in METRICS},
        **{f"{m} p95": float(np.percentile(errors.per_sample[m], 95)) for m in METRICS},
        "truth_floor": errors.truth_floor,
        "energy_curve": curves["energy"].tolist(),
        "momentum_curve": curves["momentum"].tolist(),
        "true_energy_curve": true_curves["energy"].tolist(),
        "true_momentum_curve": true_curves["momentum"].tolist(),
        "losses": record.losses,
        "validation": record.validation,
        "measured": {
            k: measured.get(k, 0.0) for k in ("denoise", "momentum", "kinematic", "energy")
        },
        "train CPU-s": round(train_cpu, 1),
        "train wall-s": round(train_wall, 1),
        "ms per window": round(sample_ms, 2),
        "parameters": record.parameters,
        "threads": torch.get_num_threads(),
    }


def plan(args) -> list[dict]:
    """Every run, the convergence check first, then the arms, then the λ sweep."""
    base = {
        "frames": args.frames,
        "hidden": args.hidden,
        "layers": args.layers,
        "batch": args.batch,
        "windows": args.windows,
        "models": args.models,
    }

    def job(system, arm, lam, seed, steps, group):
        return {**base, "system": system, "arm": arm, "lambda": lam, "seed": seed,
                "steps": steps, "group": group}  # fmt: skip

    jobs = [
        job(s, "none", 1.0, 0, steps, "check")
        for s in SYSTEMS
        for steps in (2 * args.steps, args.steps)
    ]
    if args.check_only:
        return jobs
    jobs += [
        job(s, arm, 1.0, seed, args.steps, "arms")
        for seed in args.seeds
        for s in SYSTEMS
        for arm in ARMS
    ]
    sweep = [
        job("three-body", arm, lam, seed, args.steps, "lambda")
        for seed in args.sweep_seeds
        for arm in SWEPT
        for lam in LAMBDAS
        if lam != 1.0
    ]
    return jobs + sweep


def run(args) -> None:
    import multiprocessing

    done = set()
    if (common.RESULTS / f"{NAME}.jsonl").is_file():
        done = {run_key(r) for r in common.read_records(NAME)}
    todo, seen = [], set(done)
    for j in plan(args):
        if run_key(j) not in seen:
            seen.add(run_key(j))
            todo.append(j)
    print(f"{len(todo)} trainings to run ({len(done)} recorded)", flush=True)
    os.environ["OMP_NUM_THREADS"] = "1"
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for k, row in enumerate(pool.imap_unordered(train_and_score, todo), 1):
            common.record(NAME, row)
            print(
                f"[{k}/{len(todo)} {time.perf_counter() - start:.0f}s] {row['system']} "
                f"{row['arm']} λ={row['lambda']} seed {row['seed']} steps {row['steps']}: "
                + ", ".join(f"{m} {row[m]:.3g}" for m in METRICS)
                + f" ({row['train CPU-s']} CPU-s)",
                flush=True,
            )


# --- the page ------------------------------------------------------------------------


def fmt(x: float) -> str:
    if not np.isfinite(x):
        return "-"
    if x == 0 or abs(x) < 1e-4:
        return f"{x:.1e}"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def stats(rows: list[dict], field: str) -> tuple[float, float]:
    values = np.array([r[field] for r in rows], dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def pm(rows: list[dict], field: str) -> str:
    mean, std = stats(rows, field)
    return f"{fmt(mean)} ± {fmt(std)}" if len(rows) > 1 else fmt(mean)


def ratio(rows: list[dict], ref: list[dict], field: str) -> float:
    return stats(rows, field)[0] / stats(ref, field)[0]


def groups(rows: list[dict], steps: int) -> dict[tuple, list[dict]]:
    """Rows of ``steps`` by (system, arm, λ), seeds together (latest row per seed)."""
    latest = common.latest(rows, "system", "arm", "lambda", "seed", "steps", "hidden", "layers")
    out: dict[tuple, list[dict]] = {}
    for (system, arm, lam, _, s, _, _), row in latest.items():
        if s == steps:
            out.setdefault((system, arm, lam), []).append(row)
    return out


def arms_table(system: str, by: dict, tail: bool = False) -> list[str]:
    ref = by[(system, "none", 1.0)]
    fields = [f"{m} p95" if tail else m for m in METRICS]
    head = ["arm", "seeds", *fields, *[f"{m} ×none" for m in METRICS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in ARMS:
        rows = by.get((system, arm, 1.0))
        if not rows:
            continue
        cells = [arm, str(len(rows)), *[pm(rows, f) for f in fields]]
        cells += [fmt(ratio(rows, ref, f)) for f in fields]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def lambda_table(by: dict) -> list[str]:
    ref = by.get(("three-body", "none", 1.0))
    head = ["arm", "λ", "seeds", *METRICS, "energy ×none", "velocity ×none", "trajectory ×none"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in SWEPT:
        for lam in LAMBDAS:
            rows = by.get(("three-body", arm, lam))
            if not rows or not ref:
                continue
            cells = [arm, f"{lam:g}", str(len(rows)), *[pm(rows, m) for m in METRICS]]
            cells += [fmt(ratio(rows, ref, m)) for m in ("energy", "velocity", "trajectory")]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def goals_table(by: dict) -> tuple[list[str], list[str]]:
    head = ["system", "arm", "metric", "none", "with prior", "ratio", "goal", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    missed = []
    for system, goals in GOALS.items():
        ref = by.get((system, "none", 1.0))
        for arm in ("all", GOAL_ARMS[system]):
            rows = by.get((system, arm, 1.0))
            if not rows or not ref:
                continue
            for metric, goal in goals:
                r = ratio(rows, ref, metric)
                met = r <= goal
                if not met:
                    missed.append(f"{system} {arm}: {metric} ×{fmt(r)} (goal ≤ ×{goal:g})")
                lines.append(
                    f"| {system} | {arm} | {metric} | {pm(ref, metric)} | {pm(rows, metric)} "
                    f"| {fmt(r)} | ≤ {goal:g} | {'yes' if met else '**no**'} |"
                )
    return lines, missed


def losses_table(system: str, by: dict) -> list[str]:
    head = [
        "arm",
        "λ",
        "train loss (last 100)",
        "train denoise",
        "val loss",
        "val denoise",
        "val momentum resid.",
        "val kinematic resid.",
        "val energy resid. (naive)",
        "CPU-s / training",
        "ms / window",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = sorted((k for k in by if k[0] == system), key=lambda k: (ARMS.index(k[1]), k[2]))
    for key in keys:
        _, arm, lam = key
        rows = by[key]
        for r in rows:
            r["_loss"] = r["losses"]["loss"]
            r["_den"] = r["losses"]["denoise"]
            r["_vloss"] = r["validation"]["loss"]
            r["_vden"] = r["validation"]["denoise"]
            for k in ("momentum", "kinematic", "energy"):
                r[f"_m{k}"] = r["measured"][k]
        cells = [arm, f"{lam:g}"]
        cells += [pm(rows, f) for f in ("_loss", "_den", "_vloss", "_vden")]
        cells += [pm(rows, f"_m{k}") for k in ("momentum", "kinematic", "energy")]
        cells += [pm(rows, "train CPU-s"), pm(rows, "ms per window")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def convergence_table(rows: list[dict], steps: int) -> tuple[list[str], list[str]]:
    latest = common.latest(rows, "system", "arm", "lambda", "seed", "steps", "hidden", "layers")
    head = ["system", "metric", f"{steps} steps", f"{2 * steps} steps", "change"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for system in SYSTEMS:
        pair = [
            r
            for (s, arm, lam, seed, n, _, _), r in latest.items()
            if (s, arm, lam, seed) == (system, "none", 1.0, 0) and n in (steps, 2 * steps)
        ]
        if len(pair) < 2:
            continue
        one, two = sorted(pair, key=lambda r: r["steps"])
        for metric in ("trajectory", "velocity", "energy", "dynamic"):
            change = two[metric] / one[metric] - 1
            lines.append(
                f"| {system} | {metric} | {fmt(one[metric])} | {fmt(two[metric])} "
                f"| {100 * change:+.0f} % |"
            )
            if metric == "trajectory":
                verdict = "converged" if abs(change) < 0.15 else "**not converged**"
                notes.append(
                    f"{system}: doubling the steps changes the trajectory error by "
                    f"{100 * change:+.0f} % ({verdict} by the < 15 % rule)"
                )
        lines.append(
            f"| {system} | val denoise | {fmt(one['validation']['denoise'])} "
            f"| {fmt(two['validation']['denoise'])} "
            f"| {100 * (two['validation']['denoise'] / one['validation']['denoise'] - 1):+.0f} % |"
        )
    return lines, notes


def curve_figure(by: dict) -> None:
    fig, axes = common.subplots(nrows=2, ncols=2, figsize=(10, 7))
    for row, system in enumerate(SYSTEMS):
        for col, quantity in enumerate(("energy", "momentum")):
            ax = axes[row, col]
            first = None
            for arm in ARMS:
                rows = by.get((system, arm, 1.0))
                if not rows:
                    continue
                first = first or rows[0]
                curve = np.mean([r[f"{quantity}_curve"] for r in rows], axis=0)
                t = first["frames"] + 1
                style = {"lw": 2.2, "color": "k"} if arm in ("none", "all") else {"lw": 1.2}
                if arm == "none":
                    style["ls"] = "--"
                ax.semilogy(np.arange(1, t), np.maximum(curve[1:], 1e-16), label=arm, **style)
            if first:
                truth = np.array(first[f"true_{quantity}_curve"])
                ax.semilogy(
                    np.arange(1, len(truth)),
                    np.maximum(truth[1:], 1e-16),
                    ":",
                    color="grey",
                    label="true dynamics",
                )
            symbol = "E" if quantity == "energy" else "P"
            ax.set(
                xlabel="frame l (generated)",
                ylabel=f"mean |{symbol}_l − {symbol}_0|",
                title=f"{system}: {quantity} deviation",
            )
            if row == 0 and col == 0:
                ax.legend(fontsize=7)
    common.save_figure(fig, NAME)


def lambda_figure(by: dict) -> None:
    fig, axes = common.subplots(ncols=3, figsize=(12, 3.8))
    ref = by.get(("three-body", "none", 1.0))
    for ax, metric in zip(axes, ("energy", "velocity", "trajectory"), strict=True):
        for arm in SWEPT:
            pts = [(lam, by.get(("three-body", arm, lam))) for lam in LAMBDAS]
            pts = [(lam, rows) for lam, rows in pts if rows]
            if not pts:
                continue
            lams = [lam for lam, _ in pts]
            means = [stats(rows, metric)[0] for _, rows in pts]
            stds = [stats(rows, metric)[1] for _, rows in pts]
            ax.errorbar(lams, means, stds, marker="o", capsize=3, label=arm)
        if ref:
            ax.axhline(stats(ref, metric)[0], color="k", ls="--", label="none")
        ax.set(xscale="log", yscale="log", xlabel="λ", ylabel=f"{metric} error",
               title=f"three-body: {metric}")  # fmt: skip
    axes[0].legend(fontsize=7)
    common.save_figure(fig, f"{NAME}_lambda")


def write_outputs(args) -> None:
    """Rewrite the page and plots from the recorded runs of ``args``' network and batch."""
    steps = args.steps
    every = common.read_records(NAME)
    rows = [
        r
        for r in every
        if (r["hidden"], r["layers"], r["batch"], r["frames"], r["windows"])
        == (args.hidden, args.layers, args.batch, args.frames, args.windows)
    ]
    others = [r for r in every if r["group"] == "check" and r not in rows]
    by = groups(rows, steps)
    any_row = next(iter(by.values()))[0]
    conv, conv_notes = convergence_table(rows, steps)
    goals, missed = goals_table(by)
    lines = [
        "# Dynamics generator: priors on the particle systems (issue 16)",
        "",
        f"Run {any_row['date'][:10]}; each model: frames {any_row['frames']}, hidden "
        f"{any_row['hidden']}, layers {any_row['layers']} ({any_row['parameters']} "
        f"parameters), batch {any_row['batch']}, {steps} "
        "optimiser steps (cosine schedule), the same for every arm; one CPU thread per "
        "training, two trainings at once on a 2-core machine shared with other work (CPU "
        "times are comparable, wall times are not). Scores on the same "
        f"{any_row['windows']} test windows of {any_row['frames'] + 1} frames for every arm "
        "(fixed draw from the test split, frame 0 given); sampling seed = training seed. "
        "Mean ± std over seeds 0, 1, 2; ×none = ratio of means to the no-prior arm. "
        "Errors as defined in `sapis.generator.dynamics.metrics` (trajectory and velocity "
        "against the true frames, energy and momentum: mean |E_l − E_0|, |P_l − P_0| over "
        "the generated frames, dynamic: trapezoidal residual of Newton's law).",
        "",
        "    .venv/bin/python bench/dynamics_priors.py --steps " + str(steps),
        "",
        "## Goals (issue 16)",
        "",
        *goals,
        "",
    ]
    if missed:
        lines += ["Not met: " + "; ".join(missed) + ".", ""]
    else:
        lines += ["All goals met.", ""]
    for system in SYSTEMS:
        if (system, "none", 1.0) not in by:
            continue
        floor = by[(system, "none", 1.0)][0]["truth_floor"]
        lines += [
            f"## {system}",
            "",
            "Truth floor (the true windows' own figures): "
            + ", ".join(f"{k} {fmt(v)}" for k, v in floor.items())
            + ".",
            "",
            "Means over the test windows:",
            "",
            *arms_table(system, by),
            "",
            "Per-sample 95th percentiles (tails):",
            "",
            *arms_table(system, by, tail=True),
            "",
        ]
    lines += [
        "## λ sweep (three-body)",
        "",
        *lambda_table(by),
        "",
        "![λ sweep](dynamics_priors_lambda.png)",
        "",
        "## Conservation over time",
        "",
        "Mean over test windows (and seeds) of |E_l − E_0| and |P_l − P_0| at each generated "
        "frame; momentum under projection is at float64 rounding (plotted at 1e-16).",
        "",
        "![conservation](dynamics_priors.png)",
        "",
        "## Convergence check (no prior, seed 0)",
        "",
        *conv,
        "",
        *[f"- {n}" for n in conv_notes],
        *[
            f"- earlier setting (hidden {r['hidden']}, layers {r['layers']}, batch "
            f"{r['batch']}), {r['system']} no prior, seed 0, {r['steps']} steps: "
            f"trajectory {fmt(r['trajectory'])}, velocity {fmt(r['velocity'])}, energy "
            f"{fmt(r['energy'])} ({r['train CPU-s']} CPU-s)"
            for r in others
        ],
        "",
        "## Losses and cost",
        "",
        "Training losses: mean of the last 100 steps (`DynamicsTraining.losses`); validation: "
        "every loss term at fixed noise on the validation split's windows "
        "(`DynamicsTraining.validation`; each arm's own loss, so only `denoise` compares "
        "across arms); val … resid.: every prior's w(t)-weighted residual on x̂0 of the "
        "validation windows at the same noise, measured for every arm (`training.evaluate` "
        "with all priors, energy measured naively, E(x̂0)). CPU-s: process CPU time of one "
        "training (one thread); ms / window: wall time of sampling the test windows "
        "(batch 256, one thread), per window.",
        "",
    ]
    for system in SYSTEMS:
        lines += [f"### {system}", "", *losses_table(system, by), ""]
    common.write_markdown(NAME, lines)
    curve_figure(by)
    lambda_figure(by)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="optimiser steps per training")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--windows", type=int, default=200, help="test windows per model")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sweep-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--check-only", action="store_true", help="only the convergence check")
    parser.add_argument("--table", action="store_true", help="only rewrite the page and plots")
    args = parser.parse_args()
    if not args.table:
        with tempfile.TemporaryDirectory(prefix="dynamics-priors-") as models:
            args.models = models
            run(args)
    write_outputs(args)


if __name__ == "__main__":
    main()
