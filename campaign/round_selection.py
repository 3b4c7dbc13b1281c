"""A round's choice of what to label: the selection applied to its candidates, written
to ``selected.extxyz`` before the chosen structures are stored as pending."""

from collections.abc import Sequence

from ase import Atoms

from sapis.campaign.campaign import Campaign
from sapis.campaign.selection import Selection, select
from sapis.io import read_frames, write_frames


def select_round(campaign: Campaign, frames: Sequence[Atoms], r: int, labels: int) -> Selection:
    """Choose at most ``labels`` of round ``r``'s explored ``frames`` for labelling (fewer
    when ``stop.max_labels`` is near) and store them ``pending``.

    The choice is written to ``selected.extxyz`` before anything is stored, so a rerun
    after a kill stores the same structures (the store skips those it has) instead of
    choosing again.
    """
    window, store = campaign.config.selection, campaign.store
    chosen_path = campaign.folder.selected_path(r)
    seed = window.seed + r
    if chosen_path.is_file():
        sel = select(frames, 0, window.lo, window.hi, window.policy, seed=seed)
        sel.chosen = read_frames(chosen_path)
        chosen = {a.info["hash"] for a in sel.chosen}
        for a in frames:
            if a.info["hash"] in chosen:
                counts = sel.by_source.setdefault(str(a.info.get("source", "?")), {})
                counts["selected"] = counts.get("selected", 0) + 1
    else:
        max_labels = campaign.config.stop.max_labels
        if max_labels is not None:
            labels = min(labels, max(max_labels - store.count(status="labelled"), 0))
        sel = select(
            frames, labels, window.lo, window.hi, window.policy, stored=store.hashes(), seed=seed
        )
        for a in sel.chosen:
            a.info["round"] = r
        write_frames(chosen_path, sel.chosen)
    store.add(sel.chosen, fractions=campaign.config.split)
    return sel
