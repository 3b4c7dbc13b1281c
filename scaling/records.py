"""Training records as scaling points, kept with the campaign, and the fits they support.

Every training of a campaign (each round's ensemble, each probe) becomes one
:class:`ScalingPoint` in ``FOLDER/scaling/points.jsonl``: data count N, parameters P,
training compute C (FLOPs), wall time, validation errors, and the DFT core-seconds paid
for the labels the run trained on.
"""

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sapis.io import write_text_atomically
from sapis.scaling.fits import FORMS, InsufficientData, PowerLawFit, fit

POINTS = "points.jsonl"


@dataclass
class ScalingPoint:
    """One training run (an ensemble's members averaged). Errors in eV/Å and eV, compute
    in FLOPs, times in seconds, DFT cost in core-seconds."""

    source: str
    round: int
    size: str
    n: int
    parameters: int
    flops: float
    wall_seconds: float
    val_force_mae: float
    val_energy_mae: float
    dft_core_seconds: float


def point_from_records(
    records: list[dict], source: str, round_: int, dft_core_seconds: float
) -> ScalingPoint:
    """A point from the ``record.json`` dicts of one training's members."""
    return ScalingPoint(
        source=source,
        round=round_,
        size=records[0]["size"],
        n=int(records[0]["n_train"]),
        parameters=int(records[0]["parameters"]),
        flops=float(np.mean([r["flops"] for r in records])),
        wall_seconds=float(np.sum([r["wall_seconds"] for r in records])),
        val_force_mae=float(np.mean([r["val_force_mae"] for r in records])),
        val_energy_mae=float(np.mean([r["val_energy_mae"] for r in records])),
        dft_core_seconds=dft_core_seconds,
    )


def load_points(folder: str | Path) -> list[ScalingPoint]:
    """Every point recorded in ``folder`` (the campaign's ``scaling/`` folder)."""
    path = Path(folder) / POINTS
    if not path.is_file():
        return []
    return [ScalingPoint(**json.loads(line)) for line in path.read_text().splitlines() if line]


def add_points(folder: str | Path, points: list[ScalingPoint]) -> None:
    """Record ``points``, replacing earlier ones from the same source (a rerun)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    new = {p.source for p in points}
    kept = [p for p in load_points(folder) if p.source not in new]
    text = "".join(json.dumps(asdict(p)) + "\n" for p in [*kept, *points])
    write_text_atomically(folder / POINTS, text)


def fit_points(points: list[ScalingPoint], bootstrap: int = 100) -> dict[str, PowerLawFit | str]:
    """Each form fitted to the validation force MAE of ``points``, or why it was refused.

    The data law uses the points of the most common size, the model law those of the
    largest N, the joint and compute laws all points.
    """
    usable = [p for p in points if math.isfinite(p.val_force_mae) and p.val_force_mae > 0]
    out: dict[str, PowerLawFit | str] = {}
    loss = np.array([p.val_force_mae for p in usable])
    n = np.array([p.n for p in usable], dtype=float)
    params = np.array([p.parameters for p in usable], dtype=float)
    for form in FORMS:
        try:
            if form == "data":
                sizes = [p.parameters for p in usable]
                common = max(set(sizes), key=sizes.count) if sizes else 0
                mask = params == common
                out[form] = fit(form, loss[mask], n[mask], bootstrap=bootstrap)
            elif form == "model":
                mask = n == (n.max() if len(n) else 0)
                out[form] = fit(form, loss[mask], params[mask], bootstrap=bootstrap)
            elif form == "joint":
                out[form] = fit(form, loss, n, params, bootstrap=bootstrap)
            else:
                flops = np.array([p.flops for p in usable])
                out[form] = fit(form, loss, flops, bootstrap=bootstrap)
        except InsufficientData as err:
            out[form] = str(err)
    return out


def plot_fits(
    points: list[ScalingPoint], fits: dict[str, PowerLawFit | str], path: str | Path, note=""
) -> Path:
    """Validation force MAE (meV/Å) against N per model size with the joint law's curves
    (or the data law's), and against compute with its law; ``note`` as the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.3), layout="constrained")
    sizes = sorted({(p.parameters, p.size) for p in points})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    n_all = np.array([p.n for p in points], dtype=float)
    grid = np.geomspace(max(n_all.min() / 1.5, 1), n_all.max() * 4, 60) if len(points) else []
    joint = fits.get("joint")
    data = fits.get("data")
    for k, (parameters, size) in enumerate(sizes):
        mine = [p for p in points if p.parameters == parameters]
        colour = colours[k % len(colours)]
        ax1.loglog(
            [p.n for p in mine],
            [1000 * p.val_force_mae for p in mine],
            "o",
            color=colour,
            label=f"{size} ({parameters:,} parameters)",
        )
        if isinstance(joint, PowerLawFit):
            ax1.loglog(grid, 1000 * joint(grid, np.full(len(grid), parameters)), "-", color=colour)
        elif isinstance(data, PowerLawFit) and k == len(sizes) - 1:
            ax1.loglog(grid, 1000 * data(grid), "-", color=colour)
    law = joint if isinstance(joint, PowerLawFit) else data
    if isinstance(law, PowerLawFit):
        ax1.axhline(1000 * law.floor, color="gray", ls=":", lw=1, label="fitted floor ε")
    ax1.set(xlabel="training structures N", ylabel="validation force MAE (meV/Å)")
    ax1.legend(fontsize=8)
    ax1.set_title(note or "error against data, per model size", fontsize=9)
    ax2.loglog([p.flops for p in points], [1000 * p.val_force_mae for p in points], "o")
    compute = fits.get("compute")
    if isinstance(compute, PowerLawFit):
        c = np.geomspace(min(p.flops for p in points), max(p.flops for p in points) * 4, 60)
        ax2.loglog(c, 1000 * compute(c), "-", label=f"γ = {compute.params['gamma']:.2f}")
        ax2.legend(fontsize=8)
    ax2.set(xlabel="training compute C (FLOPs, estimated)", ylabel="validation force MAE (meV/Å)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
