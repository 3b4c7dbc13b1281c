"""Training a round's ensemble: fine-tuned from the previous round's members on the grown
data, trained from scratch at a new size, or kept when the round added no label."""

import shutil
from pathlib import Path

from ase import Atoms

from sapis.campaign.campaign import Campaign
from sapis.errors import InputError
from sapis.surrogate.ensemble_training import train_ensemble
from sapis.surrogate.export import package_members
from sapis.surrogate.manifest import EnsembleManifest


def training_sets(campaign: Campaign) -> tuple[list[Atoms], list[Atoms]]:
    """Labelled train and val structures at the campaign's level; a clear error if there
    are too few."""
    store, level = campaign.store, campaign.level
    train, val = (store.labelled(split, level=level) for split in ("train", "val"))
    if len(train) < 2 or not val:
        raise InputError(
            f"{store.url}: {len(train)} train and {len(val)} val structures labelled at "
            f"{level}: need ≥ 2 and ≥ 1 (add data, or raise split.val)"
        )
    return train, val


def train_round(campaign: Campaign, r: int, parent: Path | None, size: str | None = None) -> Path:
    """Round ``r``'s ensemble folder, trained unless it is done: fine-tuned from
    ``parent``, or from scratch at ``size`` when that differs from the parent's; a copy
    of ``parent`` when the round added no label and keeps the size."""
    folder = campaign.folder
    out = folder.ensemble_dir(r)
    if folder.is_trained(r):
        return out
    if out.exists():  # a killed training: its members start over
        shutil.rmtree(out)
    parent_size = EnsembleManifest.read(parent).size if parent is not None else None
    new_labels = campaign.store.count(round=r, status="labelled")
    if parent is not None and size in (None, parent_size) and not new_labels:
        shutil.copytree(parent, out)  # nothing new to learn from: keep the parent
        return out
    train, val = training_sets(campaign)
    training = campaign.config.training
    train_ensemble(train, val, out, training, parent=parent, size=size, progress=False)
    package_members(out)
    return out
