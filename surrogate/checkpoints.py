"""Checkpoints are vetted before nequip loads them.

nequip's loaders (``ModelFromCheckpoint``, ``load_saved_model``) unpickle a checkpoint
with ``weights_only=False`` and build every ``_target_`` its saved config names, so a
crafted ``best.ckpt`` runs any code it likes. :func:`vet_checkpoint` reads the file first
with ``torch.load(weights_only=True)`` (tensors and plain containers only: no object is
built, no code runs) and refuses any ``_target_`` other than those our own training
writes, following ``ModelFromCheckpoint`` to parent checkpoints, which are vetted the
same way. ``SAPIS_TRUST_CHECKPOINTS=1`` skips the vetting, with a warning, for
checkpoints of other nequip setups one trusts.
"""

import os
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

from sapis.errors import InputError

TRUST_ENV = "SAPIS_TRUST_CHECKPOINTS"
PARENT = "nequip.model.ModelFromCheckpoint"

#: Every ``_target_`` that ``sapis.surrogate.training`` and ``.model`` write into a
#: checkpoint's saved config (tests check the two agree).
ALLOWED_TARGETS = frozenset(
    {
        "nequip.model.NequIPGNNModel",
        PARENT,
        "nequip.train.EMALightningModule",
        "nequip.train.EnergyForceLoss",
        "nequip.train.EnergyForceMetrics",
        "torch.optim.Adam",
        "torch.optim.lr_scheduler.ReduceLROnPlateau",
        "nequip.data.datamodule.ASEDataModule",
        "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper",
        "nequip.data.transforms.NeighborListTransform",
        "torch.utils.data.DataLoader",
    }
)


def trusted() -> bool:
    """Whether the user asked to load checkpoints without vetting."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def vet_checkpoint(path: str | Path) -> None:
    """Raise :class:`InputError` unless the checkpoint at ``path`` (and every parent it
    names through ``ModelFromCheckpoint``) holds only tensors and plain data and names
    only :data:`ALLOWED_TARGETS`. Nothing in the file is built or run."""
    path = Path(path).resolve()
    if trusted():
        print(
            f"warning: {TRUST_ENV} is set: checkpoint {path} is not vetted; nequip will "
            "unpickle it and build whatever its saved config names (only do this for "
            "checkpoints you trust as you would trust code)",
            file=sys.stderr,
        )
        return
    _vet(path, ())


def _vet(path: Path, children: tuple[Path, ...]) -> None:
    via = "".join(f" (parent of {c})" for c in reversed(children))
    if path in children:
        raise InputError(f"checkpoint {path}{via} refers back to itself; refused")
    if not path.is_file():
        raise InputError(f"checkpoint {path}{via} is missing")
    checkpoint = _plain_load(path, via)
    info = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    if not isinstance(info, dict) or "training_module" not in info.get("info_dict", {}):
        raise InputError(f"{path}{via}: not a nequip training checkpoint; refused")
    for where, target in saved_targets(checkpoint):
        if target not in ALLOWED_TARGETS:
            raise InputError(
                f"{path}{via}: refused: its saved config names _target_ {target!r} at "
                f"{where}, which sapis's training never writes (nequip would build it on "
                f"loading); set {TRUST_ENV}=1 only for checkpoints you trust"
            )
    for parent in _parents(checkpoint):
        if not isinstance(parent, str):
            raise InputError(f"{path}{via}: parent checkpoint_path {parent!r}; refused")
        _vet(Path(parent).resolve(), (*children, path))


def _plain_load(path: Path, via: str) -> object:
    """The checkpoint's content through torch's weights-only unpickler."""
    import torch

    try:
        # a zip checkpoint is memory-mapped: tensors are not read, only the pickle
        mmap = zipfile.is_zipfile(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. on pickle protocols torch does not write
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        name = re.search(r"GLOBAL (\S+)", str(err))
        other = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
        if name:
            raise InputError(
                f"{path}{via}: refused: unpickling it would build {name[1]} (a crafted "
                "checkpoint runs code when unpickled; a checkpoint holds only tensors and "
                "plain data)"
            ) from None
        raise InputError(
            f"{path}{via}: refused: not a checkpoint of tensors and plain data only (torch's "
            f"weights-only unpickler: {other[1] if other else type(err).__name__})"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}{via}: not a readable checkpoint ({first})") from None


def saved_targets(data: object, where: str = "") -> Iterator[tuple[str, str]]:
    """(where, target) for every ``_target_`` in a nested structure of dicts and lists."""
    if isinstance(data, dict):
        for key, value in data.items():
            here = f"{where}.{key}" if where else str(key)
            if key == "_target_":
                yield where or "(top level)", value if isinstance(value, str) else repr(value)
            else:
                yield from saved_targets(value, here)
    elif isinstance(data, list | tuple):
        for i, value in enumerate(data):
            yield from saved_targets(value, f"{where}[{i}]")


def _parents(data: object) -> Iterator[object]:
    """The ``checkpoint_path`` of every ``ModelFromCheckpoint`` config in ``data``."""
    if isinstance(data, dict):
        if data.get("_target_") == PARENT:
            yield data.get("checkpoint_path")
        for value in data.values():
            yield from _parents(value)
    elif isinstance(data, list | tuple):
        for value in data:
            yield from _parents(value)
