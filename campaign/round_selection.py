"""A round's choice of what to label: the selection applied to its candidates, written
to ``selected.extxyz`` before the chosen structures are stored as pending."""

import json
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np
from ase import Atoms

from sapis.campaign.campaign import Campaign
from sapis.campaign.generation import candidate_log_densities
from sapis.campaign.selection import FEATURE_POLICIES, UNCERTAINTY, Selection, select
from sapis.campaign.training import training_sets
from sapis.io import read_frames, write_frames, write_text_atomically
from sapis.surrogate.ensemble import Ensemble


def window_bounds(
    campaign: Campaign, frames: Sequence[Atoms], val_uncertainty: np.ndarray | None
) -> tuple[float, float]:
    """The trust window (lo, hi) in eV/Å: as configured (``window: fixed``), or ``lo``
    the ``lo_quantile`` of the validation structures' calibrated max force deviation and
    ``hi`` the ``hi_quantile`` of the explored frames' (``window: quantile``)."""
    window = campaign.config.selection
    if window.window == "fixed" or val_uncertainty is None or not len(val_uncertainty):
        return window.lo, window.hi
    lo = float(np.quantile(val_uncertainty, window.lo_quantile))
    explored = np.array([float(a.info[UNCERTAINTY]) for a in frames])
    explored = explored[np.isfinite(explored)]
    hi = float(np.quantile(explored, window.hi_quantile)) if len(explored) else np.inf
    return lo, max(hi, lo * (1 + 1e-9) + 1e-12)


def _ensemble_view(campaign: Campaign, ensemble: Path, frames: Sequence[Atoms]) -> dict:
    """What the selection needs from the ensemble: the validation uncertainty (quantile
    window) and the features of the frames and of the training data (lcmd, maxdet)."""
    window = campaign.config.selection
    needs_features = window.policy in FEATURE_POLICIES
    if window.window == "fixed" and not needs_features:
        return {}
    model = Ensemble.load(ensemble)
    train, val = training_sets(campaign)
    view: dict = {"val_uncertainty": model.predict(val).max_force_dev_calibrated}
    if needs_features:
        view["features"] = model.predict(frames, features=True).features
        view["known"] = model.predict(train, features=True).features
    return view


def select_round(
    campaign: Campaign,
    frames: Sequence[Atoms],
    r: int,
    labels: int,
    ensemble: Path | None = None,
) -> Selection:
    """Choose at most ``labels`` of round ``r``'s explored ``frames`` for labelling (fewer
    when ``stop.max_labels`` is near) and store them ``pending``. ``ensemble`` (the one
    that scored the frames) gives the quantile window and the features of ``lcmd`` and
    ``maxdet``. With ``selection.density_weight`` > 0 every frame first gets its
    log-density under the round's flow (:func:`candidate_log_densities`), and the
    ranking is weighted by it.

    The choice is written to ``selected.extxyz`` (and its counts and window to
    ``selection.json``) before anything is stored, so a rerun after a kill stores the same
    structures (the store skips those it has) and records the same counts, instead of
    choosing again with what the store holds by then.
    """
    window, store = campaign.config.selection, campaign.store
    chosen_path = campaign.folder.selected_path(r)
    summary_path = chosen_path.with_name("selection.json")
    if chosen_path.is_file() and summary_path.is_file():
        sel = Selection(chosen=read_frames(chosen_path), **json.loads(summary_path.read_text()))
        store.add(sel.chosen, fractions=campaign.fractions, level=campaign.level)
        return sel
    seed = window.seed + r
    view = _ensemble_view(campaign, ensemble, frames) if ensemble is not None else {}
    lo, hi = window_bounds(campaign, frames, view.get("val_uncertainty"))
    if chosen_path.is_file():  # chosen by a version that kept no selection.json
        sel = select(frames, 0, lo, hi, "random", seed=seed)
        sel.chosen = read_frames(chosen_path)
        chosen = {a.info["hash"] for a in sel.chosen}
        for a in frames:
            if a.info["hash"] in chosen:
                counts = sel.by_source.setdefault(str(a.info.get("source", "?")), {})
                counts["selected"] = counts.get("selected", 0) + 1
    else:
        max_labels = campaign.config.stop.max_labels
        if max_labels is not None:
            labelled = store.count(status="labelled", level=campaign.level)
            labels = min(labels, max(max_labels - labelled, 0))
        if window.density_weight > 0:
            candidate_log_densities(campaign, r, list(frames))
        sel = select(
            frames,
            labels,
            lo,
            hi,
            window.policy,
            stored=store.hashes(campaign.level),
            seed=seed,
            features=view.get("features"),
            known=view.get("known"),
            density_weight=window.density_weight,
        )
        for a in sel.chosen:
            a.info["round"] = r
        summary = {f.name: getattr(sel, f.name) for f in fields(sel) if f.name != "chosen"}
        write_text_atomically(summary_path, json.dumps(summary, indent=1))
        write_frames(chosen_path, sel.chosen)  # last: it marks the choice made
        sel.chosen = read_frames(chosen_path)  # as a resumed run reads them
    store.add(sel.chosen, fractions=campaign.fractions, level=campaign.level)
    return sel
