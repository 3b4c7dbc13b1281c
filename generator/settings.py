"""Settings of the ``generator:`` section: the network, its training and its sampling."""

from pydantic import Field

from sapis.config import Strict


class GeneratorConfig(Strict):
    """The diffusion generator: its network, training budget and share of candidates.

    ``share`` is the fraction of each round's candidates the generator proposes (the
    rest come from MD; 0 turns it off), but at least ``min_samples`` (MD may stop early
    where the surrogate is unsure: there the generator matters most). It is retrained,
    warm-started, every round for ``train_steps`` optimiser steps (``max_minutes``, if set,
    caps the wall time) on the store's configurations and the MD frames explored so far.
    ``hidden`` and
    ``layers`` size its equivariant network; ``prior_weight`` is λ of the feasibility
    penalty in training (0: none); ``steps`` the sampling steps. Over the last
    ``guide_from`` of the sampling times, ``guidance`` (Å per step, 0 for none) moves
    samples toward high ensemble disagreement, and ``feasibility_steps`` gradient steps
    on the same penalty pull the Tweedie estimate into the observed pair ranges (the
    prior at sampling time; 0: none).
    """

    share: float = Field(0.0, ge=0.0, lt=1.0)
    min_samples: int = Field(100, ge=0)
    train_steps: int = Field(3000, ge=1)
    max_minutes: float | None = Field(None, gt=0.0)
    hidden: int = Field(48, ge=4)
    layers: int = Field(4, ge=1)
    prior_weight: float = Field(0.1, ge=0.0)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(1e-3, gt=0.0)
    ema_decay: float = Field(0.995, ge=0.0, lt=1.0)
    steps: int = Field(50, ge=2)
    guidance: float = Field(0.0, ge=0.0)
    guide_from: float = Field(0.3, gt=0.0, le=1.0)
    feasibility_steps: int = Field(3, ge=0)
    seed: int = Field(0, ge=0, le=2**32 - 1)  # what every random generator accepts
