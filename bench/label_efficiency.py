"""Label efficiency on a real pool: active learning against the random arm.

Both arms run the real campaign flow (Prefect, temporary server) with the reference
oracle on the rMD17 malonaldehyde train split (1000 frames, labels from the file), the
same model size, ensemble and training budget, the same pretraining draw, and rounds of
the same label budget; the held-out force MAE is measured on the rMD17 test split. Goal:
random needs ≥ 2× the labels active learning needs for the same error.

    .venv/bin/python bench/label_efficiency.py [--seeds 0 1 2] [--labels 50 100 200]

Also records the orchestration overhead of a round: its wall time outside training and
labelling (exploration by prediction, selection, evaluation, Prefect, reports).
Appends to bench/results/label_efficiency.jsonl; rewrites label_efficiency.md and .png.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import yaml


def run_arm(policy: str, seed: int, args, root: Path) -> dict:
    from sapis.campaign.folder import CampaignFolder
    from sapis.flows.campaign import campaign
    from sapis.flows.parameters import CampaignParameters

    folder = root / f"{policy}-{seed}"
    folder.mkdir(parents=True)
    step = args.round_labels
    config = {
        "oracle": str(common.TRAIN),
        "test_file": str(common.TEST),
        "database": "data.db",
        "split": {"val": 0.1, "test": 0.0},
        "pretrain": {"displaced": args.labels[0] // 2, "seed": seed},
        "training": {
            "size": args.size,
            "members": args.members,
            "max_minutes": args.minutes,
            "patience": 40,
            "seed": seed,
        },
        "selection": {
            "policy": policy,
            "lo": 0.0,
            "hi": 10.0,
            "labels_per_round": step,
            "seed": seed,
        },
        "stop": {"max_labels": max(args.labels), "max_rounds": 100},
        "scaling": {"enabled": False},  # same model size in both arms
    }
    path = folder / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.perf_counter()
    campaign(CampaignParameters(config=str(path)))
    records = CampaignFolder(folder).records()
    wall = time.perf_counter() - started
    curve = [(r.labels, r.test_force_mae) for r in records]
    overhead = [
        r.seconds.get("explore", 0) + r.seconds.get("select", 0) + r.seconds.get("evaluate", 0)
        for r in records[1:]
    ]
    return {
        "date": common.timestamp(),
        "policy": policy,
        "seed": seed,
        "size": args.size,
        "members": args.members,
        "minutes per member": args.minutes,
        "labels per round": step,
        "curve": curve,
        "stage overhead per round (s)": round(float(np.mean(overhead)), 2),
        "round wall (s)": round(wall / len(records), 1),
        "train per round (s)": round(float(np.mean([r.seconds["train"] for r in records])), 1),
    }


def mae_at(curve: list, n: int) -> float:
    """Force MAE (meV/Å) at ``n`` labels, interpolated in log-log between rounds."""
    labels = np.array([c[0] for c in curve], dtype=float)
    mae = np.array([c[1] for c in curve], dtype=float)
    if n < labels.min() or n > labels.max():
        return float("nan")
    return 1000 * float(np.exp(np.interp(np.log(n), np.log(labels), np.log(mae))))


def labels_for(curve: list, target_mev: float) -> float:
    """Labels at which the curve first reaches ``target_mev`` (log-log interpolation)."""
    labels = np.array([c[0] for c in curve], dtype=float)
    mae = 1000 * np.array([c[1] for c in curve], dtype=float)
    below = np.nonzero(mae <= target_mev)[0]
    if not len(below):
        return float("nan")
    k = below[0]
    if k == 0:
        return float(labels[0])
    t = (np.log(target_mev) - np.log(mae[k - 1])) / (np.log(mae[k]) - np.log(mae[k - 1]))
    return float(np.exp(np.log(labels[k - 1]) + t * (np.log(labels[k]) - np.log(labels[k - 1]))))


def write_outputs(marks: list[int]) -> None:
    runs = common.latest(common.read_records("label_efficiency"), "policy", "seed", "size")
    lines = [
        "# Label efficiency: active learning vs random, rMD17 malonaldehyde pool",
        "",
        "Reference oracle on the train split (1000 frames), test split for errors, the same "
        "ensemble and training budget per round in both arms; force MAE in meV/Å at a "
        "number of labels (log-log interpolation between rounds). Latest run per (policy, "
        "seed, size). Stage overhead: exploration (prediction on the pool), selection and "
        "evaluation per round; outside training: a round's wall time (whole campaign incl. "
        "Prefect server start, artifacts and reports, divided by rounds) less its training "
        "(labels from the oracle take milliseconds).",
        "",
        "| policy | seed | size | K | min/member | labels/round | "
        + " | ".join(f"MAE @ {n}" for n in marks)
        + " | stage overhead/round (s) | round wall (s) | train/round (s) "
        "| outside training/round (s) |",
        "|" + "---|" * (10 + len(marks)),
    ]
    for (policy, seed, size), r in sorted(runs.items()):
        maes = " | ".join(f"{mae_at(r['curve'], n):.1f}" for n in marks)
        lines.append(
            f"| {policy} | {seed} | {size} | {r['members']} | {r['minutes per member']} | "
            f"{r['labels per round']} | {maes} | {r['stage overhead per round (s)']} | "
            f"{r['round wall (s)']} | {r['train per round (s)']} | "
            f"{r['round wall (s)'] - r['train per round (s)']:.1f} |"
        )
    # label ratio: labels random needs to reach active learning's error at each mark
    lines += ["", "Labels the random arm needs for active learning's error (mean over seeds):", ""]
    for n in marks:
        ratios = []
        for (policy, seed, size), r in runs.items():
            if policy != "uncertainty" or (("random", seed, size) not in runs):
                continue
            target = mae_at(r["curve"], n)
            needed = labels_for(runs[("random", seed, size)]["curve"], target)
            ratios.append(needed / n)
        finite = [x for x in ratios if np.isfinite(x)]
        reached = f"{np.mean(finite):.2f}×" if finite else "not reached"
        lines.append(
            f"- at {n} AL labels: random needs {reached} "
            f"({len(finite)} of {len(ratios)} seeds reach it within the run)"
        )
    common.write_markdown("label_efficiency", lines)

    fig, ax = common.subplots(figsize=(6, 4.2), layout="constrained")
    colours = {"uncertainty": "tab:blue", "random": "tab:gray"}
    for (policy, seed, _), r in sorted(runs.items()):
        x, y = zip(*r["curve"])
        ax.loglog(
            x,
            1000 * np.array(y),
            "o-",
            color=colours[policy],
            alpha=0.7,
            label=f"{policy} (seed {seed})",
        )
    ax.set_xlabel("labels")
    ax.set_ylabel("test force MAE (meV/Å)")
    ax.set_title("rMD17 malonaldehyde: active learning vs random")
    ax.legend(fontsize=7)
    common.save_figure(fig, "label_efficiency")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--labels", nargs="+", type=int, default=[50, 100, 200])
    parser.add_argument("--round-labels", type=int, default=25)
    parser.add_argument("--size", default="xs")
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=0.3)
    parser.add_argument("--table", action="store_true", help="only rewrite table and plot")
    args = parser.parse_args()
    if not args.table:
        os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-prefect-"))
        os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        with tempfile.TemporaryDirectory() as tmp:
            for seed in args.seeds:
                for policy in ("uncertainty", "random"):
                    row = run_arm(policy, seed, args, Path(tmp))
                    print(row, flush=True)
                    common.record("label_efficiency", row)
    write_outputs(args.labels)


if __name__ == "__main__":
    main()
