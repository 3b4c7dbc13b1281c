"""Scaling-law forecast check on rMD17 malonaldehyde.

Fit L(N, P) = ε + A·N^-α + B·P^-β on trainings with N ≤ 200 at two sizes, forecast the
test force MAE at N = 400 and 800, then train there and compare, all in one run. Training
compute grows with the data (a fixed number of passes over it, as a campaign that keeps
its epochs would): each fit gets ``--minutes-per-25`` minutes per 25 training frames.
Goal: forecasts within 15 %. Also reports β against Frey et al. 2023 (β ≈ 0.26 for
equivariant potentials).

    .venv/bin/python bench/scaling_forecast.py [--sizes xs s] [--fit 25 50 100 200]

Appends to bench/results/scaling_forecast.jsonl; rewrites scaling_forecast.md and .png.
"""

import argparse
import tempfile
import warnings
from pathlib import Path

import common
import numpy as np
from learning_curve import fit

from sapis.campaign.report import markdown_table
from sapis.io import read_rmd17
from sapis.scaling.fits import fit as fit_law

FREY_BETA = 0.26


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["xs", "s"])
    parser.add_argument("--fit", nargs="+", type=int, default=[25, 50, 100, 200])
    parser.add_argument("--forecast", nargs="+", type=int, default=[400, 800])
    parser.add_argument("--minutes-per-25", type=float, default=0.12)
    parser.add_argument("--test", type=int, default=500)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    train = read_rmd17(common.TRAIN)
    test = read_rmd17(common.TEST)[: args.test]
    val = train[-50:]
    pool = train[:-50]
    rng = np.random.default_rng(0)
    pool = [pool[i] for i in rng.permutation(len(pool))]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for n in [*args.fit, *args.forecast]:
                minutes = args.minutes_per_25 * n / 25
                out = fit(size, n, minutes, pool, val, test, Path(tmp) / f"{size}{n}", 10_000)
                row = {
                    "size": size,
                    "N": n,
                    "parameters": out["parameters"],
                    "minutes": round(minutes, 2),
                    "steps": out["steps"],
                    "test force MAE": out["force MAE (meV/Å)"] / 1000,
                }
                print(row, flush=True)
                runs.append(row)
    fitted = [r for r in runs if r["N"] in args.fit]
    law = fit_law(
        "joint",
        [r["test force MAE"] for r in fitted],
        [r["N"] for r in fitted],
        [r["parameters"] for r in fitted],
        bootstrap=300,
    )
    rows = []
    for r in runs:
        if r["N"] in args.forecast:
            forecast = float(law(r["N"], r["parameters"]))
            rows.append(
                {
                    "size": r["size"],
                    "N": r["N"],
                    "forecast (meV/Å)": round(1000 * forecast, 1),
                    "trained (meV/Å)": round(1000 * r["test force MAE"], 1),
                    "error of forecast": f"{100 * (forecast / r['test force MAE'] - 1):+.1f} %",
                }
            )
    result = {
        "date": common.timestamp(),
        "minutes per 25 frames": args.minutes_per_25,
        "fit": law.describe(),
        "params": law.params,
        "intervals": law.intervals,
        "runs": runs,
        "forecasts": rows,
    }
    common.record("scaling_forecast", result)
    lo, hi = law.intervals["beta"]
    lines = [
        "# Scaling-law forecast: rMD17 malonaldehyde",
        "",
        f"Latest run {result['date']}: single models, test force MAE on {args.test} test "
        f"frames, training budget {args.minutes_per_25} CPU minutes per 25 frames (2 cores). "
        f"Joint law fitted on N = {args.fit} at sizes {args.sizes}, 95 % bootstrap "
        "intervals:",
        "",
        f"    {law.describe()}",
        "",
        f"β = {law.params['beta']:.2f} [{lo:.2f}, {hi:.2f}] against Frey et al. 2023's "
        f"{FREY_BETA} for equivariant potentials; α = {law.params['alpha']:.2f} "
        f"[{law.intervals['alpha'][0]:.2f}, {law.intervals['alpha'][1]:.2f}]. Goal: "
        "forecasts within 15 %.",
        "",
        *markdown_table(rows),
        "",
        "Every training of the run:",
        "",
        *markdown_table(
            [r | {"test force MAE": round(1000 * r["test force MAE"], 1)} for r in runs]
        ),
    ]
    common.write_markdown("scaling_forecast", lines)

    fig, ax = common.subplots(figsize=(6, 4.2), layout="constrained")
    grid = np.geomspace(min(args.fit) / 1.3, max(args.forecast) * 1.3, 80)
    for k, size in enumerate(args.sizes):
        mine = [r for r in runs if r["size"] == size]
        colour = f"C{k}"
        fit_pts = [(r["N"], 1000 * r["test force MAE"]) for r in mine if r["N"] in args.fit]
        new_pts = [(r["N"], 1000 * r["test force MAE"]) for r in mine if r["N"] not in args.fit]
        ax.loglog(*zip(*fit_pts), "o", color=colour, label=f"{size}: fitted")
        ax.loglog(*zip(*new_pts), "s", mfc="none", color=colour, label=f"{size}: forecast check")
        ax.loglog(grid, 1000 * law(grid, np.full(len(grid), mine[0]["parameters"])), "-", c=colour)
    ax.set(xlabel="training frames N", ylabel="test force MAE (meV/Å)")
    ax.set_title("joint law fitted on N ≤ 200", fontsize=9)
    ax.legend(fontsize=8)
    common.save_figure(fig, "scaling_forecast")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
