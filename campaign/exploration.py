"""Exploration: the candidates of a round, each with the ensemble's uncertainty.

Surrogate MD from the seed structures at ``explore.temperatures``; or, when the labeller
can label only a pool of its own (the reference oracle), that pool's structures not yet
stored, predicted in batches. The candidates go to ``round-NNN/explored.extxyz`` and a
summary (trajectories and why they stopped, proposed and valid per source) to
``explore.json``; a rerun reads both back instead of exploring again.
"""

import json
from collections.abc import Sequence
from pathlib import Path

from ase import Atoms

from sapis.campaign.campaign import Campaign
from sapis.io import read_frames, write_frames, write_text_atomically
from sapis.surrogate.ensemble import Ensemble
from sapis.surrogate.md import explore


def score(ensemble: Ensemble, frames: list[Atoms]) -> list[Atoms]:
    """Write the ensemble's uncertainty onto ``frames`` (their predicted energies and
    forces are dropped: a candidate carries no labels)."""
    ensemble.predict(frames).annotate(frames)
    for atoms in frames:
        atoms.calc = None
    return frames


def saved_candidates(path: Path, summary_path: Path) -> tuple[list[Atoms], dict] | None:
    """The candidates and summary a stage wrote before (a rerun), or None."""
    if not path.is_file():
        return None
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return read_frames(path), {**summary, "resumed": True}


def save_candidates(
    path: Path, summary_path: Path, frames: list[Atoms], summary: dict
) -> list[Atoms]:
    """Write a stage's candidates and its summary, each atomically; the candidates as
    read back, so that a run and a resumed run go on from the very same numbers (the
    file keeps 8 decimals)."""
    write_frames(path, frames)
    write_text_atomically(summary_path, json.dumps(summary, indent=1))
    return read_frames(path)


def explore_round(
    campaign: Campaign,
    ensemble_dir: Path,
    r: int,
    temperatures: Sequence[float] | None = None,
) -> tuple[list[Atoms], dict]:
    """Round ``r``'s candidates with their uncertainty, and what exploration did.

    ``temperatures`` (K) replace ``explore.temperatures`` for this round.
    """
    path = campaign.folder.explored_path(r)
    summary_path = path.with_name("explore.json")
    if (saved := saved_candidates(path, summary_path)) is not None:
        return saved
    ensemble = Ensemble.load(ensemble_dir)
    pool = campaign.labeller.pool()
    if pool is not None:
        stored = campaign.store.hashes(campaign.level)
        frames = score(ensemble, [a for a in pool if a.info["hash"] not in stored])
        summary: dict = {"by_source": {"reference": {"proposed": len(frames)}}}
    else:
        frames, summary = _molecular_dynamics(campaign, ensemble, r, temperatures)
    for atoms in frames:
        atoms.info["round"] = r
    summary["frames"] = len(frames)
    return save_candidates(path, summary_path, frames, summary), summary


def _molecular_dynamics(
    campaign: Campaign, ensemble: Ensemble, r: int, temperatures: Sequence[float] | None
) -> tuple[list[Atoms], dict]:
    settings = campaign.config.explore
    if temperatures:
        settings = settings.model_copy(update={"temperatures": list(temperatures)})
    result = explore(ensemble, campaign.seeds, settings, round_=r, progress=False)
    stops: dict[str, int] = {}
    for t in result.trajectories:
        key = t.stopped_by.split(":")[0]
        stops[key] = stops.get(key, 0) + 1
    frames = result.candidates
    proposed = len(frames) + stops.get("unphysical", 0)
    return frames, {
        "trajectories": len(result.trajectories),
        "stopped_by": stops,
        "steps": result.steps,
        "by_source": {"md": {"proposed": proposed, "valid": len(frames)}},
    }
