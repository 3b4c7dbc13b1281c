"""Scaling laws in the campaign: record each training, probe when the fit lacks points,
and decide what the next round buys.

Points live in ``FOLDER/scaling/points.jsonl``, probes in ``FOLDER/scaling/probes/``, the
latest fit plot in ``FOLDER/plots/scaling.png``.
"""

import textwrap

import numpy as np

from sapis.campaign.campaign import Campaign
from sapis.campaign.training import training_sets
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
from sapis.surrogate.manifest import EnsembleManifest
from sapis.surrogate.model import build_model, model_config, parameter_count
from sapis.surrogate.sizes import SIZES
from sapis.surrogate.training import TrainRecord, train_member

LADDER = list(SIZES)


def record_training(campaign: Campaign, r: int) -> ScalingPoint:
    """Add round ``r``'s ensemble training to the campaign's scaling points."""
    folder = campaign.folder.ensemble_dir(r)
    checkpoints = EnsembleManifest.read(folder).checkpoints(folder)
    records = [TrainRecord.load(c.parent).__dict__ for c in checkpoints]
    point = point_from_records(records, f"round-{r:03d}", r, campaign.core_seconds(up_to_round=r))
    same = [
        p
        for p in load_points(campaign.folder.scaling_dir)
        if (p.n, p.parameters, p.val_force_mae) == (point.n, point.parameters, point.val_force_mae)
        and p.source != point.source
    ]
    if not same:  # a round that kept its parent's ensemble adds no new point
        add_points(campaign.folder.scaling_dir, [point])
    return point


def run_probes(campaign: Campaign, r: int, size: str) -> list[ScalingPoint]:
    """Single-model trainings on fractions of the data at ``size`` and its neighbour,
    trained like the round's members (to convergence, no bootstrap), within
    ``scaling.probe_minutes`` in all if set; probes already recorded are not run again."""
    config, scaling_dir = campaign.config, campaign.folder.scaling_dir
    train, val = training_sets(campaign)
    plan = plan_probes(size, LADDER, config.scaling.fractions)
    cap = config.scaling.probe_minutes
    training = config.training.model_copy(
        update={"max_minutes": cap / len(plan) if cap else None, "bootstrap": False}
    )
    order = np.random.default_rng(config.training.seed + r).permutation(len(train))
    done = {p.source for p in load_points(scaling_dir)}
    cost = campaign.core_seconds(up_to_round=r)
    points = []
    for probe_size, fraction in plan:
        source = f"probe-{r:03d}-{probe_size}-{fraction:g}"
        if source in done:
            continue
        n = max(2, round(fraction * len(train)))
        out = scaling_dir / "probes" / source
        record = train_member(
            [train[i] for i in order[:n]], val, out, training, size=probe_size, progress=False
        )
        points.append(point_from_records([record.__dict__], source, r, cost * n / len(train)))
        add_points(scaling_dir, points[-1:])
    return points


def measured_costs(
    campaign: Campaign, points: list[ScalingPoint], size: str, bigger: str | None
) -> Costs:
    """Core-seconds of a label (mean so far × cores) and of an ensemble training at
    ``size`` and at ``bigger``: measured where that size was trained, else the current
    size's time scaled by the parameter ratio (the compute a bigger model needs to reach
    the error the law predicts for it)."""
    training = campaign.config.training
    trained = [p for p in points if p.source.startswith("round-")]
    cap = training.members * training.max_minutes * 60.0 if training.max_minutes else 0.0

    def train_cost(name: str | None) -> float | None:
        if name is None:
            return None
        mine = [p.wall_seconds for p in trained if p.size == name]
        if mine:
            return float(np.mean(mine))
        ref = [p.wall_seconds for p in trained if p.size == size]
        base = float(np.mean(ref)) if ref else cap
        return (
            base * parameters(campaign, name, points) / max(parameters(campaign, size, points), 1)
        )

    return Costs(
        label=campaign.estimated_core_seconds(1),
        train_current=train_cost(size),
        train_next=train_cost(bigger),
    )


def parameters(campaign: Campaign, size: str, points: list[ScalingPoint]) -> int:
    """Parameters of a size: from a point where one was trained, else counted on a model
    of that size built for the campaign's training data."""
    for p in points:
        if p.size == size:
            return p.parameters
    train, _ = training_sets(campaign)
    return parameter_count(build_model(model_config(campaign.config.training, train, 0, size)))


def scaling_step(campaign: Campaign, r: int, size: str) -> dict:
    """Record round ``r``'s training, fit (probing first if the joint law lacks points),
    decide, plot; returns the decision as a dict (``action`` None when no fit)."""
    settings, scaling_dir = campaign.config.scaling, campaign.folder.scaling_dir
    latest = record_training(campaign, r)
    points = load_points(scaling_dir)
    fits = fit_points(points, settings.bootstrap)
    if not isinstance(fits["joint"], PowerLawFit) and settings.probes:
        run_probes(campaign, r, size)
        points = load_points(scaling_dir)
        fits = fit_points(points, settings.bootstrap)
    summary = {
        form: law.describe() if isinstance(law, PowerLawFit) else f"refused: {law}"
        for form, law in fits.items()
    }
    joint = fits["joint"]
    if not isinstance(joint, PowerLawFit):
        out = {"action": None, "reason": f"no joint fit ({joint})", "fits": summary}
        _plot(campaign, points, fits, out["reason"])
        return out
    bigger = next_size(size, LADDER)
    decision = decide(
        joint,
        latest.n,
        latest.parameters,
        campaign.config.selection.labels_per_round,
        measured_costs(campaign, points, size, bigger),
        parameters(campaign, bigger, points) if bigger else None,
        settings.min_gain,
        settings.floor_margin,
    )
    out = decision.to_dict() | {"fits": summary, "size": size, "next_size": bigger}
    _plot(campaign, points, fits, f"round {r}: {decision.action} — {decision.reason}")
    return out


def _plot(campaign: Campaign, points, fits, note: str) -> None:
    campaign.folder.plots_dir.mkdir(parents=True, exist_ok=True)
    plot_fits(points, fits, campaign.folder.plots_dir / "scaling.png", textwrap.fill(note, 80))
