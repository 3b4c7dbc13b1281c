"""Plots of a dataset for `sapis db stats --plot` (PNG, matplotlib without a screen)."""

from collections import Counter
from pathlib import Path

import numpy as np

SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}
STATUS_COLOURS = {
    "labelled": "tab:green",
    "pending": "tab:gray",
    "running": "tab:blue",
    "failed": "tab:red",
}


def plot_dataset(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Four panels from :meth:`DatasetStore.summary_rows`: energy per atom (eV) and
    largest atomic force (eV/Å) of the labelled rows by split, rows per round by status,
    and DFT seconds per label by the SCF rung that converged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labelled = [r for r in rows if r["status"] == "labelled"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), layout="constrained")
    for ax, key, label in [
        (axes[0, 0], "energy_per_atom", "energy per atom (eV)"),
        (axes[0, 1], "max_force", "largest atomic force (eV/Å)"),
    ]:
        values = {s: [r[key] for r in labelled if r["split"] == s] for s in SPLIT_COLOURS}
        present = {s: v for s, v in values.items() if v}
        if present:
            ax.hist(
                list(present.values()),
                bins=30,
                stacked=True,
                color=[SPLIT_COLOURS[s] for s in present],
                label=[f"{s} ({len(v)})" for s, v in present.items()],
            )
            ax.legend()
        ax.set(xlabel=label, ylabel="structures")
    rounds = sorted({r["round"] or 0 for r in rows})
    bottom = np.zeros(len(rounds))
    for status, colour in STATUS_COLOURS.items():
        counts = Counter(r["round"] or 0 for r in rows if r["status"] == status)
        heights = np.array([counts.get(k, 0) for k in rounds])
        axes[1, 0].bar(
            [str(k) for k in rounds], heights, bottom=bottom, color=colour, label=status, width=0.6
        )
        bottom += heights
    axes[1, 0].set(xlabel="round", ylabel="structures")
    axes[1, 0].legend()
    timed = [r for r in labelled if r["label_seconds"] is not None]
    rungs = sorted({r["rung"] for r in timed})
    if rungs:
        axes[1, 1].boxplot(
            [[r["label_seconds"] for r in timed if r["rung"] == g] for g in rungs],
            tick_labels=[f"{g} ({sum(r['rung'] == g for r in timed)})" for g in rungs],
        )
    else:
        axes[1, 1].text(
            0.5,
            0.5,
            "no DFT timings\n(no labels computed here)",
            ha="center",
            va="center",
            transform=axes[1, 1].transAxes,
        )
    axes[1, 1].set(xlabel="SCF rung that converged", ylabel="DFT time per label (s)")
    fig.suptitle(title or f"{len(rows)} structures")
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
