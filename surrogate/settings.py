"""Settings of the ``training:`` (ensembles) and ``explore:`` (surrogate MD) sections."""

from typing import Literal

from pydantic import Field, field_validator

from sapis.config import Strict
from sapis.surrogate.sizes import SIZES, ModelSize


class TrainingConfig(Strict):
    """How a surrogate ensemble is trained.

    ``size`` is a name in :data:`SIZES`; ``members`` the ensemble size K (each member has
    its own seed and bootstrap resample of the training split); ``r_max`` the cutoff in Å.
    A member trains until its validation loss has not improved by ``min_delta``
    (relative) for ``patience`` epochs (it converged), or for at most ``max_epochs``
    epochs (the budget: counted in epochs, it grows with the data and gives the same
    model on a busy and an idle machine); ``max_minutes`` is only a wall-time cap (None:
    none), and a member it stops is reported as capped. ``energy_weight`` and
    ``force_weight`` weigh the per-atom energy and force MSE in the loss;
    ``isolated_atom_energies`` (eV, by element) fix the per-type energy shifts, otherwise
    they are fitted to the training energies.
    """

    size: str = "s"
    members: int = Field(4, ge=1)
    dtype: Literal["float32", "float64"] = "float32"
    r_max: float = Field(4.0, gt=0.5)
    batch_size: int = Field(5, ge=1)
    learning_rate: float = Field(0.01, gt=0.0)
    max_epochs: int = Field(2000, ge=1)
    max_minutes: float | None = Field(None, gt=0.0)
    patience: int = Field(50, ge=1)
    min_delta: float = Field(0.01, ge=0.0, lt=1.0)
    energy_weight: float = Field(1.0, ge=0.0)
    force_weight: float = Field(10.0, ge=0.0)
    ema_decay: float = Field(0.99, ge=0.0, lt=1.0)
    bootstrap: bool = True
    seed: int = Field(0, ge=0, le=2**32 - 1)  # what every random generator accepts
    isolated_atom_energies: dict[str, float] | None = None

    @field_validator("size")
    @classmethod
    def _known_size(cls, size: str) -> str:
        if size not in SIZES:
            raise ValueError(f"unknown model size {size!r}; known: {', '.join(SIZES)}")
        return size

    @property
    def model_size(self) -> ModelSize:
        return SIZES[self.size]


class ExploreConfig(Strict):
    """Langevin MD with the ensemble-mean potential.

    From each seed structure, one trajectory per temperature (K) of ``steps`` steps of
    ``timestep`` fs with ``friction`` in 1/fs; a frame is kept every ``sample_every``
    steps. A trajectory stops when the max force deviation (calibrated, eV/Å) exceeds
    ``stop_force_dev``, when two atoms come closer than ``min_distance`` Å, or when a
    covalent bond breaks or forms, or (for a chiral molecule) a stereo centre inverts.
    ``bias`` w (1/eV, 0: none) runs uncertainty-biased MD on Ē − w·σ²_E, pulling the
    trajectories toward where the members disagree.
    """

    temperatures: list[float] = Field(default_factory=lambda: [300.0, 600.0], min_length=1)
    steps: int = Field(1000, ge=1)
    sample_every: int = Field(20, ge=1)
    timestep: float = Field(0.5, gt=0.0, le=5.0)
    friction: float = Field(0.01, gt=0.0)
    stop_force_dev: float = Field(1.0, gt=0.0)
    min_distance: float = Field(0.7, gt=0.0)
    check_bonds: bool = True
    bias: float = Field(0.0, ge=0.0)
    seed: int = Field(0, ge=0, le=2**32 - 1)  # what every random generator accepts

    @field_validator("temperatures")
    @classmethod
    def _positive(cls, temps: list[float]) -> list[float]:
        if any(t <= 0 for t in temps):
            raise ValueError(f"temperatures must be positive kelvin, got {temps}")
        return temps
