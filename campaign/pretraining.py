"""Round 0's dataset: an imported labelled file and/or structures to label, drawn from
the labeller's pool when it has one, else displaced copies of the seed structures."""

import numpy as np
from ase import Atoms

from sapis.campaign.campaign import Campaign
from sapis.io import read_structures


def pretraining_structures(campaign: Campaign) -> tuple[list[Atoms], list[Atoms]]:
    """(labelled structures to import, unlabelled structures to label) for round 0.

    Draws come from ``pretrain.seed``: the same every time, so a rerun stores nothing
    twice. With a pool, ``pretrain.displaced`` pool structures are drawn (the labeller can
    label nothing else); otherwise each seed gets that many copies with Gaussian
    displacements of ``pretrain.rattle`` Å per component.
    """
    settings = campaign.config.pretrain
    labelled: list[Atoms] = []
    if settings.labelled is not None:
        labelled = read_structures(settings.labelled)
        for atoms in labelled:
            atoms.info.update(source="import", round=0)
    rng = np.random.default_rng(settings.seed)
    to_label: list[Atoms] = []
    pool = campaign.labeller.pool() if settings.displaced else None
    if pool is not None:
        picks = rng.choice(len(pool), min(settings.displaced, len(pool)), replace=False)
        to_label = [pool[int(i)] for i in picks]
    elif settings.displaced:
        for atoms in campaign.seeds:
            for _ in range(settings.displaced):
                copy = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
                copy.positions += rng.normal(0.0, settings.rattle, copy.positions.shape)
                to_label.append(copy)
    for atoms in to_label:
        atoms.info.update(source="seed", round=0)
    return labelled, to_label


def store_pretraining_data(campaign: Campaign) -> dict:
    """Import the labelled file and store the structures to label as pending (round 0);
    returns counts of what was new and what was stored already."""
    labelled, to_label = pretraining_structures(campaign)
    store, config = campaign.store, campaign.config
    level = config.pretrain.labelled_level or campaign.level
    fractions = campaign.fractions
    imported = store.add(labelled, fractions=fractions, level=level) if labelled else None
    pending = store.add(to_label, fractions=fractions, level=campaign.level)
    return {
        "imported": len(imported.added) if imported else 0,
        "new_pending": len(pending.added),
        "already_stored": pending.duplicates + (imported.duplicates if imported else 0),
    }
