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
from sapis.surrogate.settings import TrainingConfig


def training_sets(campaign: Campaign, level: str | None = None) -> tuple[list[Atoms], list[Atoms]]:
    """Labelled train and val structures at ``level`` (default: the campaign's); a clear
    error if there are too few."""
    store, level = campaign.store, level or campaign.level
    train, val = (store.labelled(split, level=level) for split in ("train", "val"))
    if len(train) < 2 or not val:
        raise InputError(
            f"{store.safe_url}: {len(train)} train and {len(val)} val structures labelled at "
            f"{level}: need ≥ 2 and ≥ 1 (add data, or raise split.val)"
        )
    return train, val


def cheap_ensemble_dir(campaign: Campaign) -> Path:
    """Where the ensemble pretrained at the cheap level lives."""
    return campaign.folder.round_dir(0) / "cheap-ensemble"


def without_cheap_dir(campaign: Campaign) -> Path:
    """Where round 0's ensemble trained without the cheap data lives (``compare``)."""
    return campaign.folder.round_dir(0) / "without-cheap"


def _train_from_scratch(
    campaign: Campaign, out: Path, level: str, training: TrainingConfig
) -> Path:
    """An ensemble in ``out`` trained from scratch on the labels at ``level``; kept once
    trained (a killed training keeps its finished members)."""
    if EnsembleManifest.finished(out):
        return out
    train, val = training_sets(campaign, level)
    train_ensemble(train, val, out, training, progress=False)
    return out


def train_cheap(campaign: Campaign) -> Path:
    """The ensemble pretrained on the cheap level's labels (``pretrain.cheap``), from
    scratch at ``training.size`` for ``pretrain.cheap.max_epochs``; kept once trained."""
    cheap, training = campaign.config.pretrain.cheap, campaign.config.training
    if cheap.max_epochs is not None:
        training = training.model_copy(update={"max_epochs": cheap.max_epochs})
    return _train_from_scratch(
        campaign, cheap_ensemble_dir(campaign), campaign.cheap_level, training
    )


def train_without_cheap(campaign: Campaign) -> Path:
    """Round 0's ensemble trained on the expensive labels alone, from scratch: what the
    campaign would have had without cheap pretraining."""
    return _train_from_scratch(
        campaign, without_cheap_dir(campaign), campaign.level, campaign.config.training
    )


def train_round(
    campaign: Campaign,
    r: int,
    parent: Path | None,
    size: str | None = None,
    refit_shifts: bool = False,
) -> Path:
    """Round ``r``'s ensemble folder, trained unless it is done: fine-tuned from
    ``parent``, or from scratch at ``size`` when that differs from the parent's; a copy
    of ``parent`` when the round added no label and keeps the size. ``refit_shifts``
    refits the parent's per-type energy shifts to this level's data (a parent trained at
    the cheap level). A killed training resumes: finished members are kept, and a
    trained ensemble whose packaging was cut short is packaged."""
    folder = campaign.folder
    out = folder.ensemble_dir(r)
    if folder.is_trained(r):
        if not all(m.package for m in EnsembleManifest.read(out).members):
            package_members(out)
        return out
    parent_size = EnsembleManifest.read(parent).size if parent is not None else None
    new_labels = campaign.store.count(round=r, status="labelled", level=campaign.level)
    if parent is not None and size in (None, parent_size) and not new_labels and not refit_shifts:
        # nothing new to learn from: keep the parent (copied whole, then renamed)
        partial = out.with_name(out.name + ".copy")
        for stale in (partial, out):
            if stale.exists():
                shutil.rmtree(stale)
        shutil.copytree(parent, partial)
        partial.rename(out)
        return out
    train, val = training_sets(campaign)
    training = campaign.config.training
    train_ensemble(
        train,
        val,
        out,
        training,
        parent=parent,
        size=size,
        progress=False,
        refit_shifts=refit_shifts,
    )
    package_members(out)
    return out
