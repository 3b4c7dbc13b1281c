"""Settings of the ``generator:`` section: the network, its training and its sampling."""

from typing import Literal

from pydantic import Field, model_validator

from sapis.config import Strict


class FlowConfig(Strict):
    """The normalizing flow (``kind: flow``): ``blocks`` pairs of coupling layers, each with
    an equivariant conditioner of ``layers`` message-passing steps and ``hidden`` features,
    splines of ``bins`` bins; ``augment`` is η, the spread of the augmented coordinates
    (in units of the molecule's size). ``energy_weight`` is λ (1/eV) of the physics
    penalty λ·E(x) on ``energy_samples`` samples per step (0: none); ``density_draws``
    importance samples estimate each log-density.
    """

    blocks: int = Field(4, ge=1)
    hidden: int = Field(32, ge=4)
    layers: int = Field(2, ge=1)
    bins: int = Field(8, ge=2)
    augment: float = Field(0.2, gt=0.0)
    energy_weight: float = Field(10.0, ge=0.0)
    energy_samples: int = Field(16, ge=1)
    density_draws: int = Field(16, ge=1)


class GeneratorConfig(Strict):
    """The generator: its kind, network, training budget and share of candidates.

    ``kind`` is ``diffusion`` (the score model below) or ``flow`` (the normalizing flow of
    the ``flow:`` subsection, sampled in one pass, with an exact joint density).

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

    kind: Literal["diffusion", "flow"] = "diffusion"
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
    flow: FlowConfig = Field(default_factory=FlowConfig)

    @model_validator(mode="after")
    def _guidance_needs_diffusion(self) -> "GeneratorConfig":
        if self.kind == "flow" and self.guidance > 0:
            raise ValueError(
                "generator.guidance steers the diffusion sampler; the flow samples in one "
                "pass (set guidance to 0 or kind to diffusion)"
            )
        return self
