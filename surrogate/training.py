"""Train one NequIP model with nequip's Lightning module and a ``lightning.Trainer``.

What ``nequip-train`` does from a YAML file is done here from Python, so the resulting
checkpoint carries the same ``info_dict`` and can be packaged by ``nequip-package``:
the training and validation frames are written as extended XYZ files beside the
checkpoint and read by nequip's ``ASEDataModule``.
"""

import json
import logging
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms

from sapis.errors import InputError
from sapis.io import carries_labels, write_text_atomically
from sapis.surrogate.checkpoints import vet_checkpoint
from sapis.surrogate.model import (
    energy_shifts,
    input_graphs,
    input_transforms,
    model_config,
    parameter_count,
    type_names_of,
)
from sapis.surrogate.settings import TrainingConfig

MONITOR = "val0_epoch/weighted_sum"
RECORD = "record.json"
BEST = "best.ckpt"

#: Why a member stopped: it converged (validation plateau), or a budget ended it first.
CONVERGED, EPOCH_BUDGET, WALL_CAP = "converged", "epoch budget", "wall-time cap"


@dataclass
class TrainRecord:
    """What was trained and how well: one per member, written as ``record.json``."""

    member: int
    size: str
    parameters: int
    seed: int
    n_train: int
    n_val: int
    epochs: int
    steps: int
    wall_seconds: float
    flops: float
    device: str
    stopped_by: str
    checkpoint: str
    parent: str | None = None
    started_at: float = 0.0  # Unix time
    val_energy_mae: float = math.nan  # eV per structure
    val_energy_mae_per_atom: float = math.nan
    val_force_mae: float = math.nan  # eV/Å
    val_force_rmse: float = math.nan
    initial_val_force_mae: float = math.nan  # before the first step (fine-tuning: the parent's)
    history: list[dict] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        """Whether training stopped on a validation plateau rather than a budget."""
        return self.stopped_by == CONVERGED

    def save(self, folder: Path) -> None:
        write_text_atomically(folder / RECORD, json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, folder: str | Path) -> "TrainRecord":
        return cls(**json.loads((Path(folder) / RECORD).read_text()))


def check_training_data(train: Sequence[Atoms], val: Sequence[Atoms]) -> None:
    """Refuse data that cannot train a model, before anything is built."""
    if len(train) < 2:
        raise InputError(f"need at least 2 labelled training structures, got {len(train)}")
    if len(val) < 1:
        raise InputError("need at least 1 labelled validation structure (split 'val')")
    for name, images in (("train", train), ("val", val)):
        for i, atoms in enumerate(images):
            if not carries_labels(atoms):
                raise InputError(f"{name} structure {i} has no energy and forces")
    unknown = set(type_names_of(val)) - set(type_names_of(train))
    if unknown:
        raise InputError(f"validation has elements absent from training: {sorted(unknown)}")


def pick_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _datamodule_config(folder: Path, training: TrainingConfig, type_names: list[str]) -> dict:
    transforms = [
        {
            "_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper",
            "model_type_names": type_names,
            "chemical_species_to_atom_type_map": {t: t for t in type_names},
        },
        {"_target_": "nequip.data.transforms.NeighborListTransform", "r_max": training.r_max},
    ]
    loader = {"_target_": "torch.utils.data.DataLoader", "num_workers": 0}
    return {
        "_target_": "nequip.data.datamodule.ASEDataModule",
        "seed": training.seed,
        "train_file_path": str(folder / "train.xyz"),
        "val_file_path": str(folder / "val.xyz"),
        "transforms": transforms,
        "train_dataloader": loader | {"batch_size": training.batch_size, "shuffle": True},
        "val_dataloader": loader | {"batch_size": max(training.batch_size, 20)},
    }


def _module_config(model: dict, training: TrainingConfig) -> dict:
    return {
        "_target_": "nequip.train.EMALightningModule",
        "ema_decay": training.ema_decay,
        "model": model,
        "loss": {
            "_target_": "nequip.train.EnergyForceLoss",
            "per_atom_energy": True,
            "coeffs": {"total_energy": training.energy_weight, "forces": training.force_weight},
        },
        "val_metrics": {
            "_target_": "nequip.train.EnergyForceMetrics",
            "coeffs": {
                "total_energy_mae": None,
                "per_atom_energy_mae": training.energy_weight,
                "forces_mae": training.force_weight,
                "forces_rmse": None,
            },
        },
        "optimizer": {"_target_": "torch.optim.Adam", "lr": training.learning_rate},
        "lr_scheduler": {
            "scheduler": {
                "_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau",
                "factor": 0.6,
                "patience": max(2, training.patience // 5),
                "min_lr": training.learning_rate * 1e-3,
            },
            "monitor": MONITOR,
        },
    }


def _quiet_lightning() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "nequip"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*per_type_energy.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


class _History:
    """Lightning callback: validation metrics per epoch, counted steps, and why it stopped."""

    def __new__(cls, *args, **kwargs):
        import lightning

        class History(lightning.Callback):
            def __init__(self) -> None:
                self.epochs: list[dict] = []
                self.started = time.perf_counter()

            def on_validation_end(self, trainer, module) -> None:
                if trainer.sanity_checking or trainer.state.fn != "fit":
                    return
                m = {k: float(v) for k, v in trainer.callback_metrics.items()}
                self.epochs.append(
                    {
                        "epoch": trainer.current_epoch,
                        "step": trainer.global_step,
                        "seconds": round(time.perf_counter() - self.started, 2),
                        "force_mae": m.get("val0_epoch/forces_mae", math.nan),
                        "energy_mae_per_atom": m.get("val0_epoch/per_atom_energy_mae", math.nan),
                        "lr": trainer.optimizers[0].param_groups[0]["lr"],
                    }
                )

        return History(*args, **kwargs)


class _RelativeEarlyStopping:
    """Lightning's early stopping with ``min_delta`` relative to the best loss so far, so
    that "no improvement" means the same for a loss of 10 and of 0.01."""

    def __new__(cls, min_delta: float, **kwargs):
        from lightning.pytorch.callbacks import EarlyStopping

        class RelativeEarlyStopping(EarlyStopping):
            def _evaluate_stopping_criteria(self, current):
                best = float(self.best_score)
                self.min_delta = -abs(best) * min_delta if math.isfinite(best) else 0.0
                return super()._evaluate_stopping_criteria(current)

        return RelativeEarlyStopping(**kwargs)


def estimate_flops(parameters: int, atoms_seen: int) -> float:
    """Rough training compute: 6 FLOPs per parameter per atom seen (forward, force
    backward and weight backward of a model whose weights act once per atom; edge-wise
    radial weights make the true count larger by a model-specific factor)."""
    return 6.0 * parameters * atoms_seen


def train_member(
    train: Sequence[Atoms],
    val: Sequence[Atoms],
    folder: str | Path,
    training: TrainingConfig,
    member: int = 0,
    seed: int | None = None,
    parent: str | Path | None = None,
    size: str | None = None,
    progress: bool = True,
    device: str | None = None,
    refit_shifts: bool = False,
) -> TrainRecord:
    """Train one model on ``train``, stop early on ``val``, and record what happened.

    ``parent`` is a checkpoint to warm-start from (fine-tuning: the architecture and
    weights are the parent's); otherwise a fresh model of ``size`` (default
    ``training.size``) is built with shifts and scales from ``train``. The best model (by
    validation loss) is ``folder/best.ckpt``, a nequip checkpoint that ``nequip-package``
    can package; ``folder/record.json`` is the :class:`TrainRecord`. ``refit_shifts``
    replaces the parent's per-type energy shifts by a fit to ``train`` (fine-tuning on
    another level of theory, whose absolute energies differ by hartrees).
    """
    check_training_data(train, val)
    import lightning
    import torch
    from lightning.fabric.plugins.environments import LightningEnvironment
    from lightning.pytorch.callbacks import ModelCheckpoint
    from nequip.data.datamodule import ASEDataModule
    from nequip.train import EMALightningModule
    from nequip.utils import get_current_code_versions
    from nequip.utils.global_state import get_latest_global_state, set_global_state

    _quiet_lightning()
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    seed = training.seed + member if seed is None else seed
    device = device or pick_device()
    size = size or training.size
    lightning.seed_everything(seed, workers=True, verbose=False)
    set_global_state(allow_tf32=False)

    ase.io.write(folder / "train.xyz", list(train), format="extxyz", parallel=False)
    ase.io.write(folder / "val.xyz", list(val), format="extxyz", parallel=False)
    type_names = type_names_of(train)
    data_cfg = _datamodule_config(folder, training, type_names)
    if parent is not None:
        parent = Path(parent).resolve()
        if not parent.is_file():
            raise InputError(f"parent checkpoint {parent} does not exist")
        vet_checkpoint(parent)  # nequip's ModelFromCheckpoint unpickles it
        model = {"_target_": "nequip.model.ModelFromCheckpoint", "checkpoint_path": str(parent)}
    else:
        model = model_config(training, train, seed=seed, size=size)
    module_cfg = _module_config(model, training)
    datamodule = ASEDataModule(**{k: v for k, v in data_cfg.items() if k != "_target_"})
    trainer_cfg = {"max_epochs": training.max_epochs, "accelerator": device}
    info = {
        "versions": get_current_code_versions(verbose=False),
        "data": data_cfg,
        "trainer": trainer_cfg,
        "global_options": get_latest_global_state(),
        "runs": ["train"],
        "training_module": module_cfg,
    }
    cfg = {k: v for k, v in module_cfg.items() if k != "_target_"}
    module = EMALightningModule(**cfg, num_datasets=datamodule.num_datasets, info_dict=info)
    parameters = parameter_count(module.model)
    if parent is not None:
        size = _parent_size(parent) or size
        if refit_shifts:
            refit_energy_shifts(module.model, train, training.r_max)

    history = _History()
    stopper = _RelativeEarlyStopping(
        monitor=MONITOR, patience=training.patience, mode="min", min_delta=training.min_delta
    )
    checkpoint = ModelCheckpoint(
        dirpath=folder, filename="best", monitor=MONITOR, mode="min", save_last=True
    )
    for old in (folder / BEST, folder / "last.ckpt"):
        old.unlink(missing_ok=True)
    callbacks = [history, stopper, checkpoint]
    if progress:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar(leave=False))
    trainer = lightning.Trainer(
        **trainer_cfg,
        devices=1,
        max_time={"seconds": training.max_minutes * 60.0} if training.max_minutes else None,
        callbacks=callbacks,
        plugins=[LightningEnvironment()],
        logger=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        inference_mode=False,
        num_sanity_val_steps=0,
        default_root_dir=folder,
    )
    threads = torch.get_num_threads()
    initial = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    started, started_at = time.perf_counter(), time.time()
    trainer.fit(module, datamodule=datamodule, weights_only=False)
    wall = time.perf_counter() - started
    torch.set_num_threads(threads)

    if stopper.stopped_epoch > 0:
        stopped_by = CONVERGED
    elif trainer.current_epoch < training.max_epochs:
        stopped_by = WALL_CAP
    else:
        stopped_by = EPOCH_BUDGET
    final = trainer.validate(
        module,
        datamodule=datamodule,
        ckpt_path=str(folder / BEST),
        verbose=False,
        weights_only=False,
    )[0]
    n_atoms = float(np.mean([len(a) for a in train]))
    record = TrainRecord(
        member=member,
        size=size,
        parameters=parameters,
        seed=seed,
        n_train=len(train),
        n_val=len(val),
        epochs=trainer.current_epoch,
        steps=trainer.global_step,
        wall_seconds=round(wall, 2),
        flops=estimate_flops(parameters, trainer.global_step * training.batch_size * n_atoms),
        device=device,
        stopped_by=stopped_by,
        checkpoint=str(folder / BEST),
        parent=str(parent) if parent is not None else None,
        started_at=started_at,
        val_energy_mae=final["val0_epoch/total_energy_mae"],
        val_energy_mae_per_atom=final["val0_epoch/per_atom_energy_mae"],
        val_force_mae=final["val0_epoch/forces_mae"],
        val_force_rmse=final["val0_epoch/forces_rmse"],
        initial_val_force_mae=initial["val0_epoch/forces_mae"],
        history=history.epochs,
    )
    record.save(folder)
    os.environ.pop("PL_GLOBAL_SEED", None)
    return record


def refit_energy_shifts(model, images: Sequence[Atoms], r_max: float) -> dict[str, float]:
    """Refit the per-type energy shifts of ``model`` (a NequIP model, fine-tuned on another
    level of theory) so that its energies on ``images`` have no mean error per
    composition: the least-squares shifts of (label − prediction without shifts) against
    element counts, pinned along free directions as in
    :func:`~sapis.surrogate.model.energy_shifts`. Returns the new shifts by type name."""
    import torch
    from nequip.data import AtomicDataDict
    from nequip.nn.atomwise import PerTypeScaleShift

    if isinstance(model, torch.nn.ModuleDict):  # a training module's models, by name
        (model,) = model.values()
    layers = [m for m in model.modules() if isinstance(m, PerTypeScaleShift) and m.has_shifts]
    if len(layers) != 1:
        raise ValueError(f"expected one per-type energy shift layer, the model has {len(layers)}")
    layer = layers[0]
    type_names = list(layer.type_names)
    with torch.no_grad():
        layer.shifts.zero_()
    transforms = input_transforms(type_names, r_max)
    device = layer.shifts.device
    unshifted = []
    for start in range(0, len(images), 32):
        graphs = input_graphs(images[start : start + 32], transforms)
        batch = AtomicDataDict.to_(AtomicDataDict.batched_from_list(graphs), device)
        out = model(batch)[AtomicDataDict.TOTAL_ENERGY_KEY]
        unshifted.extend(out.detach().cpu().numpy().reshape(-1).tolist())
    labels = [a.get_potential_energy() for a in images]
    residuals = [e - e0 for e, e0 in zip(labels, unshifted)]
    shifts = energy_shifts(images, type_names, energies=residuals)
    values = torch.as_tensor([shifts[t] for t in type_names], dtype=layer.shifts.dtype)
    with torch.no_grad():
        layer.shifts.copy_(values.reshape(layer.shifts.shape).to(device))
    return shifts


def _parent_size(parent: Path) -> str | None:
    record = parent.parent / RECORD
    return json.loads(record.read_text()).get("size") if record.is_file() else None
