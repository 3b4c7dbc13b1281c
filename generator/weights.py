"""A generator network's weights and their moving average: updating the average, sampling
with it, and saving both atomically. The configuration and the dynamics generators share
these."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn


def average_of(net: nn.Module) -> dict[str, torch.Tensor]:
    """A new moving average: a copy of ``net``'s current weights."""
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def update_average(net: nn.Module, average: dict[str, torch.Tensor], decay: float) -> None:
    """``average ← decay · average + (1 − decay) · weights`` (integer buffers copied)."""
    with torch.no_grad():
        for k, v in net.state_dict().items():
            if v.dtype.is_floating_point:
                average[k].mul_(decay).add_(v, alpha=1 - decay)
            else:
                average[k].copy_(v)


@contextmanager
def averaged(net: nn.Module, average: dict[str, torch.Tensor]) -> Iterator[nn.Module]:
    """``net`` with the averaged weights inside the block, its own weights after it."""
    trained = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(average)
    try:
        yield net
    finally:
        net.load_state_dict(trained)


def save_weights(path: Path, net: nn.Module, average: dict[str, torch.Tensor]) -> None:
    """Write the weights and their average to ``path`` through a temporary file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"weights": net.state_dict(), "ema": average}, tmp)
    tmp.replace(path)
