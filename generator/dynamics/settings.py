"""Settings of a dynamics model (its window, network, training budget, sampling and
priors) and of the ``dynamics:`` section that makes one a campaign's source."""

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from sapis.config import Strict


class DynamicsConfig(Strict):
    """A diffusion model of the next ``frames`` frames given one frame.

    The network (``hidden`` features, ``layers`` blocks) is trained for ``train_steps``
    optimiser steps of ``batch_size`` windows and sampled in ``steps`` denoising steps.
    Priors act on the Tweedie estimate x̂0 = E[x0 | xt], weighted by w(t) = ᾱ_t²:

    - ``momentum``: zero centre-of-mass drift and total momentum in every frame (in the
      first frame's centre-of-mass frame). ``project`` keeps noise, network output and
      samples in that linear subspace exactly; ``penalty`` adds
      ``momentum_weight · w(t) · ‖R(x̂0)‖²``; ``none`` leaves it to the data.
    - ``kinematic_weight``: λ of the penalty on (x_{l+1} − x_l)/Δt − (v_l + v_{l+1})/2.
    - ``energy``: ``naive`` penalises (E(x̂0) − E_0)² with the system's potential (the
      Jensen gap: E(E[x0|xt]) ≠ E[E(x0)|xt]); ``reduced`` has the network predict the
      potential's terms ĥ ≈ E[h(x0) | xt] (trained against h(x0)), penalises the energy
      through them, ½ Σ m v̂² + Σ ĥ − E_0 (kinetic energy convex, the rest linear in ĥ),
      and ties each term of x̂0 to its prediction; ``energy_weight`` is its λ.
    """

    frames: int = Field(10, ge=1, le=200)
    hidden: int = Field(64, ge=4)
    layers: int = Field(4, ge=1)
    train_steps: int = Field(3000, ge=1)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(2e-3, gt=0.0)
    ema_decay: float = Field(0.995, ge=0.0, lt=1.0)
    steps: int = Field(50, ge=2)
    momentum: Literal["none", "project", "penalty"] = "none"
    momentum_weight: float = Field(1.0, ge=0.0)
    kinematic_weight: float = Field(0.0, ge=0.0)
    energy: Literal["none", "naive", "reduced"] = "none"
    energy_weight: float = Field(1.0, ge=0.0)
    seed: int = Field(0, ge=0, le=2**32 - 1)

    def prior_names(self) -> list[str]:
        """The priors this model uses, as words (``momentum-project``, ``kinematic``, …)."""
        names = []
        if self.momentum != "none":
            names.append(f"momentum-{self.momentum}")
        if self.kinematic_weight > 0:
            names.append("kinematic")
        if self.energy != "none":
            names.append(f"energy-{self.energy}")
        return names


class DynamicsSourceConfig(Strict):
    """The ``dynamics:`` section: a trained dynamics model as a source of a campaign's
    candidates, next to surrogate MD and the configuration generator.

    ``model`` is a dynamics model folder (``sapis train-dynamics``) of the campaign's
    molecule. Each round it continues a seeded random subset of the round's MD frames
    (their velocities, or Maxwell–Boltzmann ones at their temperature) for ``windows``
    chained windows and keeps every ``every``-th generated frame, so that rollout frames
    are ``share`` of the round's proposals (0 turns it off). The kept frames are checked
    like the generator's (validity, hash) and scored by the ensemble; the selection
    judges them like any other candidate.
    """

    model: Path | None = None
    share: float = Field(0.0, ge=0.0, lt=1.0)
    windows: int = Field(1, ge=1, le=1000)
    every: int = Field(1, ge=1)
    seed: int = Field(0, ge=0, le=2**32 - 1)  # what every random generator accepts

    @model_validator(mode="after")
    def _model_when_on(self) -> "DynamicsSourceConfig":
        if self.share > 0 and self.model is None:
            raise ValueError("share > 0 needs model: a dynamics model folder")
        return self
