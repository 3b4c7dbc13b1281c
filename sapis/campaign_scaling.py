"""Scaling laws in the campaign: record each training, probe when the fit lacks points,
decide what the next round buys, and plan that round.

Points live in ``FOLDER/scaling/points.jsonl``, probes in ``FOLDER/scaling/probes/``, the
latest fit plot in ``FOLDER/plots/scaling.png``.
"""

import json
from pathlib import Path

import numpy as np

from sapis.campaign import CampaignFolder, estimated_core_seconds, level_of, training_sets
from sapis.config import SIZES, CampaignConfig
from sapis.rounds import RoundRecord
from sapis.scaling.decision import Costs, decide
from sapis.scaling.fits import PowerLawFit
from sapis.scaling.probes import next_size, plan_probes
from sapis.scaling.records import (
    ScalingPoint,
    add_points,
    fit_points,
    load_points,
    plot_fits,
    point_from_records,
)
from sapis.store import DatasetStore

LADDER = list(SIZES)


def scaling_dir(folder: CampaignFolder) -> Path:
    return folder.root / "scaling"


def dft_core_seconds(store: DatasetStore, up_to_round: int, threads: int) -> float:
    """DFT core-seconds paid for the labelled rows of rounds up to ``up_to_round``."""
    rows = store.summary_rows()
    return threads * sum(
        r["label_seconds"] or 0.0
        for r in rows
        if r["status"] == "labelled" and (r["round"] or 0) <= up_to_round
    )


def _member_records(ensemble: Path) -> list[dict]:
    manifest = json.loads((ensemble / "ensemble.json").read_text())
    return [
        json.loads((ensemble / m["checkpoint"]).with_name("record.json").read_text())
        for m in manifest["members"]
    ]


def record_training(config: CampaignConfig, folder: CampaignFolder, r: int) -> ScalingPoint:
    """Add round ``r``'s ensemble training to the campaign's scaling points."""
    store = DatasetStore(config.database)
    point = point_from_records(
        _member_records(folder.ensemble_dir(r)),
        f"round-{r:03d}",
        r,
        dft_core_seconds(store, r, config.dft.threads),
    )
    same = [
        p
        for p in load_points(scaling_dir(folder))
        if (p.n, p.parameters, p.val_force_mae) == (point.n, point.parameters, point.val_force_mae)
        and p.source != point.source
    ]
    if not same:  # a round that kept its parent's ensemble adds no new point
        add_points(scaling_dir(folder), [point])
    return point


def run_probes(config: CampaignConfig, folder: CampaignFolder, r: int, size: str) -> list:
    """Single-model trainings on fractions of the data at ``size`` and its neighbour,
    ``scaling.probe_minutes`` in all; probes already recorded are not run again."""
    from sapis.surrogate.training import train_member

    store = DatasetStore(config.database)
    train, val = training_sets(store, level_of(config))
    plan = plan_probes(size, LADDER, config.scaling.fractions)
    minutes = config.scaling.probe_minutes / len(plan)
    training = config.training.model_copy(update={"max_minutes": minutes, "bootstrap": False})
    order = np.random.default_rng(config.training.seed + r).permutation(len(train))
    done = {p.source for p in load_points(scaling_dir(folder))}
    cost = dft_core_seconds(store, r, config.dft.threads)
    points = []
    for probe_size, fraction in plan:
        source = f"probe-{r:03d}-{probe_size}-{fraction:g}"
        if source in done:
            continue
        n = max(2, round(fraction * len(train)))
        out = scaling_dir(folder) / "probes" / source
        record = train_member(
            [train[i] for i in order[:n]], val, out, training, size=probe_size, progress=False
        )
        points.append(point_from_records([record.__dict__], source, r, cost * n / len(train)))
        add_points(scaling_dir(folder), points[-1:])
    return points


def measured_costs(
    config: CampaignConfig, points: list[ScalingPoint], size: str, bigger: str | None
) -> Costs:
    """Core-seconds of a DFT label (mean so far × threads) and of an ensemble training at
    ``size`` and at ``bigger``: measured where that size was trained, else the current
    size's time scaled by the parameter ratio (the compute a bigger model needs to reach
    the error the law predicts for it)."""
    store = DatasetStore(config.database)
    label = estimated_core_seconds(store, 1, config.dft.threads)
    trained = [p for p in points if p.source.startswith("round-")]
    budget = config.training.members * config.training.max_minutes * 60.0

    def train_cost(name: str | None) -> float | None:
        if name is None:
            return None
        mine = [p.wall_seconds for p in trained if p.size == name]
        if mine:
            return float(np.mean(mine))
        ref = [p.wall_seconds for p in trained if p.size == size]
        base = float(np.mean(ref)) if ref else budget
        return base * _parameters(name, points, config) / max(_parameters(size, points, config), 1)

    return Costs(label=label, train_current=train_cost(size), train_next=train_cost(bigger))


def _parameters(size: str, points: list[ScalingPoint], config: CampaignConfig | None = None) -> int:
    """Parameters of a size: from a point where one was trained, else counted on a model
    of that size built for the store's training data."""
    for p in points:
        if p.size == size:
            return p.parameters
    from sapis.surrogate.model import build_model, model_config, parameter_count

    store = DatasetStore(config.database)
    train, _ = training_sets(store, level_of(config))
    return parameter_count(build_model(model_config(config.training, train, 0, size)))


def scaling_step(config: CampaignConfig, folder: CampaignFolder, r: int, size: str) -> dict:
    """Record round ``r``'s training, fit (probing first if the joint law lacks points),
    decide, plot; returns the decision as a dict (``action`` None when no fit)."""
    record_point = record_training(config, folder, r)
    points = load_points(scaling_dir(folder))
    fits = fit_points(points, config.scaling.bootstrap)
    if not isinstance(fits["joint"], PowerLawFit) and config.scaling.probe_minutes > 0:
        run_probes(config, folder, r, size)
        points = load_points(scaling_dir(folder))
        fits = fit_points(points, config.scaling.bootstrap)
    summary = {
        form: law.describe() if isinstance(law, PowerLawFit) else f"refused: {law}"
        for form, law in fits.items()
    }
    joint = fits["joint"]
    if not isinstance(joint, PowerLawFit):
        out = {"action": None, "reason": f"no joint fit ({joint})", "fits": summary}
        _plot(folder, points, fits, out["reason"])
        return out
    bigger = next_size(size, LADDER)
    latest = record_point
    decision = decide(
        joint,
        latest.n,
        latest.parameters,
        config.selection.labels_per_round,
        measured_costs(config, points, size, bigger),
        _parameters(bigger, points, config) if bigger else None,
        config.scaling.min_gain,
        config.scaling.floor_margin,
    )
    out = decision.to_dict() | {"fits": summary, "size": size, "next_size": bigger}
    _plot(folder, points, fits, f"round {r}: {decision.action} — {decision.reason}")
    return out


def _plot(folder: CampaignFolder, points, fits, note: str) -> None:
    import textwrap

    (folder.root / "plots").mkdir(parents=True, exist_ok=True)
    plot_fits(points, fits, folder.root / "plots" / "scaling.png", textwrap.fill(note, 80))


def plan_next_round(config: CampaignConfig, records: list[RoundRecord]) -> tuple[int, str]:
    """(label budget, model size) of the next round: the configured ones, unless the last
    round's scaling decision says otherwise and the user did not pin them."""
    labels = config.selection.labels_per_round
    size = records[-1].size if records and records[-1].size else config.training.size
    decision = records[-1].decision if records else None
    if not config.scaling.enabled or not decision or decision.get("action") != "model":
        return labels, size
    if not config.scaling.pin_size:
        size = decision["next_size"]
        if not config.scaling.pin_labels:
            labels = 0  # this round buys a model, not data
    return labels, size
