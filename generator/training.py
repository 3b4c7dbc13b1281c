"""Training a generator on a molecule's frames for a budget of optimiser steps, warm-started
from the generator already in the output folder when it is the same molecule and size."""

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from sapis.errors import InputError
from sapis.generator.kinds import KINDS, AnyGenerator, load_generator
from sapis.generator.model import META, molecule_frames
from sapis.generator.settings import GeneratorConfig


@dataclass
class GeneratorTraining:
    """One training: frames used and left out, steps, time, and the last losses."""

    frames: int
    skipped: dict[str, int]
    steps: int
    seconds: float
    loss: float
    denoise: float  # diffusion: the denoising loss
    penalty: float  # diffusion: w(t)·‖R(x̂0)‖² in Å², before λ
    warm_start: bool
    parameters: int
    kind: str = "diffusion"
    nll: float = float("nan")  # flow: −log q(x, a) + log π(a|x) per degree of freedom
    energy: float = float("nan")  # flow: mean force-field energy of samples, eV
    dropped: int = 0  # steps whose loss or gradient was not finite (no update made)


def train_generator(
    images: Sequence[Atoms],
    out: str | Path,
    config: GeneratorConfig | None = None,
    reference: Atoms | None = None,
    max_steps: int | None = None,
    progress: bool = False,
) -> tuple[AnyGenerator, GeneratorTraining]:
    """Train on ``images`` for ``max_steps`` (default ``config.train_steps``) optimiser
    steps, or until ``config.max_minutes`` if that comes first; save into ``out``.

    ``reference`` fixes the molecule (else the most common one in ``images``). A
    generator already in ``out`` for the same molecule and network size is trained
    further; its prior's pair ranges widen to the new frames.
    """
    config = config or GeneratorConfig()
    out = Path(out)
    reference, positions, skipped = molecule_frames(images, reference)
    if len(positions) < 2:
        raise InputError(
            f"the generator needs at least 2 frames of the molecule, got {len(positions)}"
        )
    torch.manual_seed(config.seed)  # the network's initial weights
    warm = False
    if (out / META).is_file():
        gen = load_generator(out)
        if gen.matches(reference, config):
            warm = True
            gen.prepare(config)
            gen.observe(positions)
    if not warm:
        gen = KINDS[config.kind].new(reference, positions, config)

    torch.manual_seed(config.seed + len(gen.meta["trainings"]))
    rng = torch.Generator().manual_seed(config.seed + len(gen.meta["trainings"]))
    data = torch.as_tensor(positions, dtype=torch.float32)
    net = gen.net
    net.train()
    optimiser = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    max_steps = max_steps or config.train_steps
    cap = 60.0 * config.max_minutes if config.max_minutes else math.inf
    recent: list[dict] = []
    start, steps, dropped = time.perf_counter(), 0, 0
    with _progress(progress) as bar:
        task = bar.add_task("generator", total=max_steps) if bar else None
        while steps < max_steps and time.perf_counter() - start < cap:
            batch = data[torch.randint(len(data), (config.batch_size,), generator=rng)]
            losses = gen.losses(batch, rng)
            optimiser.zero_grad()
            losses["loss"].backward()
            norm = torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
            steps += 1
            if not (torch.isfinite(norm) and torch.isfinite(losses["loss"])):
                dropped += 1  # an overflowing sample: this step would poison the weights
                continue
            optimiser.step()
            gen.update_ema(config.ema_decay if steps > 50 else 0.0)
            recent = ([*recent, {k: float(v.detach()) for k, v in losses.items()}])[-100:]
            if bar and steps % 20 == 0:
                bar.update(task, completed=steps)
    net.eval()
    mean = {k: float(np.mean([r[k] for r in recent])) for k in recent[0]} if recent else {}
    record = GeneratorTraining(
        frames=len(positions),
        skipped=skipped,
        steps=steps,
        seconds=time.perf_counter() - start,
        loss=mean.get("loss", float("nan")),
        denoise=mean.get("denoise", float("nan")),
        penalty=mean.get("penalty", float("nan")),
        nll=mean.get("nll", float("nan")),
        energy=mean.get("energy", float("nan")),
        kind=gen.kind,
        dropped=dropped,
        warm_start=warm,
        parameters=net.parameter_count(),
    )
    gen.meta["trainings"].append(asdict(record))
    gen.save(out)
    return gen, record


def _progress(enabled: bool):
    from contextlib import nullcontext

    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("training generator"), BarColumn(), TimeElapsedColumn(), transient=True
    )
