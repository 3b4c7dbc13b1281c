"""Training a dynamics model on trajectories for a budget of optimiser steps,
warm-started from the model already in the output folder when it is the same system
and size."""

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from sapis.errors import InputError
from sapis.generator.dynamics.data import Trajectories
from sapis.generator.dynamics.model import META, DynamicsModel
from sapis.generator.dynamics.settings import DynamicsConfig
from sapis.generator.weights import averaged


@dataclass
class DynamicsTraining:
    """One training: windows used, steps, time, the last losses and the validation's."""

    windows: int
    steps: int
    seconds: float
    losses: dict[str, float]
    validation: dict[str, float]
    warm_start: bool
    parameters: int


def window_batch(windows: Trajectories, index) -> tuple[torch.Tensor, ...]:
    """Positions, velocities, couplings and potentials of the ``index``-ed windows."""
    return (
        torch.as_tensor(windows.positions[index]),
        torch.as_tensor(windows.velocities[index]),
        torch.as_tensor(windows.couplings[index]),
        torch.as_tensor(windows.potential[index]),
    )


def evaluate(
    model: DynamicsModel,
    windows: Trajectories,
    n: int = 256,
    seed: int = 1234,
    measure: DynamicsConfig | None = None,
) -> dict[str, float]:
    """Every loss term averaged over ``n`` windows at fixed noise (the same draws for
    any model), with the averaged weights: a comparable figure before and after
    training. ``measure`` names priors to measure that the model was not trained with
    (their residuals are reported; the model is unchanged)."""
    pick = np.random.default_rng(seed).choice(len(windows.positions), size=n)
    x, v, c, u = (a.float() for a in window_batch(windows, pick))
    diffusion = model.diffusion
    own = diffusion.config
    if measure is not None:  # the same noise draws: projection stays the model's own
        diffusion.config = measure.model_copy(update={"momentum": _measured(own, measure)})
    try:
        with averaged(diffusion.net, model.ema), torch.no_grad():
            losses = diffusion.losses(x, v, c, u, torch.Generator().manual_seed(seed))
    finally:
        diffusion.config = own
    return {k: float(val) for k, val in losses.items()}


def _measured(own: DynamicsConfig, measure: DynamicsConfig) -> str:
    """The momentum setting that measures ``measure``'s penalty on a model trained
    with ``own`` (a projecting model keeps projecting; its residual is then zero)."""
    if own.momentum == "project":
        return "project"
    return "penalty" if measure.momentum != "none" else "none"


def train_dynamics(
    train: Trajectories,
    out: str | Path,
    config: DynamicsConfig | None = None,
    val: Trajectories | None = None,
    max_steps: int | None = None,
    progress: bool = False,
) -> tuple[DynamicsModel, DynamicsTraining]:
    """Train on windows of ``train`` for ``max_steps`` (default ``config.train_steps``)
    optimiser steps and save into ``out``; evaluate on ``val`` if given. A model already
    in ``out`` for the same system and size is trained further."""
    config = config or DynamicsConfig()
    out = Path(out)
    if val is not None and val.system != train.system:
        raise InputError(f"validation trajectories are {val.system}, training {train.system}")
    warm = False
    torch.manual_seed(config.seed)  # the network's initial weights
    if (out / META).is_file():
        model = DynamicsModel.load(out)
        if model.matches(train, config):
            warm = True
            model.meta["config"] = config.model_dump()
            model.diffusion.config = config
    if not warm:
        model = DynamicsModel.new(train, config)
    windows = train.windows(config.frames + 1)
    salt = config.seed + len(model.meta["trainings"])
    torch.manual_seed(salt)
    rng = torch.Generator().manual_seed(salt)
    net = model.diffusion.net
    net.train()
    optimiser = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    max_steps = max_steps or config.train_steps
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimiser, max_steps, 0.05 * config.learning_rate
    )
    recent: list[dict] = []
    start = time.perf_counter()
    with _progress(progress) as bar:
        task = bar.add_task("dynamics", total=max_steps) if bar else None
        for step in range(max_steps):
            pick = torch.randint(len(windows.positions), (config.batch_size,), generator=rng)
            x, v, c, u = (a.float() for a in window_batch(windows, pick.numpy()))
            losses = model.diffusion.losses(x, v, c, u, generator=rng)
            optimiser.zero_grad()
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
            optimiser.step()
            schedule.step()
            model.update_ema(config.ema_decay if step > 50 else 0.0)
            recent = [*recent, {k: float(w.detach()) for k, w in losses.items()}][-100:]
            if bar and (step + 1) % 20 == 0:
                bar.update(task, completed=step + 1)
    net.eval()
    mean = {k: float(np.mean([r[k] for r in recent])) for k in recent[0]}
    validation = {}
    if val is not None:
        validation = evaluate(model, val.windows(config.frames + 1, stride=config.frames))
    record = DynamicsTraining(
        windows=len(windows.positions),
        steps=max_steps,
        seconds=time.perf_counter() - start,
        losses=mean,
        validation=validation,
        warm_start=warm,
        parameters=net.parameter_count(),
    )
    model.meta["trainings"].append(asdict(record))
    model.save(out)
    return model, record


def _progress(enabled: bool):
    from contextlib import nullcontext

    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("training dynamics"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    )
