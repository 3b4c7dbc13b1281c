"""The campaign configuration: a YAML file validated with pydantic.

Example::

    system: {structures: seeds.xyz, charge: 0, multiplicity: 1}
    dft: {xc: PBE, basis: def2-svp, density_fit: true, conv_tol: 1.0e-9, threads: 1}
    executor: {profile: local, workers: 2}   # threads | local | slurm | pbs
    database: runs/demo/data.db              # SQLite path or postgresql:// URL

Relative paths are resolved against the folder of the YAML file. Any unknown or wrong
field is an :class:`~sapis.errors.InputError` naming it, raised before anything starts.
"""

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sapis.errors import InputError


class Strict(BaseModel):
    """A config block that rejects unknown fields."""

    model_config = ConfigDict(extra="forbid")


class SystemConfig(Strict):
    """The chemical system: seed structures, total charge and spin multiplicity (2S+1)."""

    structures: Path | None = None
    charge: int = 0
    multiplicity: int = Field(1, ge=1, le=20)


class Rung(Strict):
    """One rung of the SCF fallback ladder.

    ``max_cycle`` None means ``dft.max_cycle``; ``damp`` is the Fock damping factor
    (applied until DIIS starts at ``diis_start_cycle``),
    ``level_shift`` in Hartree, ``second_order`` switches on PySCF's Newton (SOSCF)
    solver, ``init_guess`` is a PySCF initial guess name.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    max_cycle: int | None = Field(None, ge=1)
    damp: float = Field(0.0, ge=0.0, lt=1.0)
    diis_start_cycle: int = Field(1, ge=1)
    level_shift: float = Field(0.0, ge=0.0)
    second_order: bool = False
    init_guess: Literal["minao", "atom", "huckel", "1e", "sap"] = "minao"


DEFAULT_LADDER: tuple[Rung, ...] = (
    Rung(name="default"),
    Rung(name="damped", max_cycle=150, damp=0.5, diis_start_cycle=12),
    Rung(name="level_shift", max_cycle=150, level_shift=0.5),
    Rung(name="second_order", max_cycle=60, second_order=True),
    Rung(name="huckel_guess", max_cycle=60, second_order=True, init_guess="huckel"),
)


class DFTSettings(Strict):
    """PySCF settings of a label.

    ``conv_tol`` is the SCF energy convergence in Hartree, ``time_limit`` the wall-time
    limit of one label over all rungs in seconds, ``max_memory`` PySCF's memory in MB,
    ``threads`` the cores one label uses (the executors reserve that many per label).
    ``grid_response`` adds the derivative of the DFT grid weights to the forces, so they
    are the exact gradient of the energy and sum to zero (without it, a net force of a
    few meV/Å remains on a 9-atom molecule at grid level 3).
    """

    xc: str = "PBE"
    basis: str = "def2-svp"
    density_fit: bool = True
    auxbasis: str | None = None
    conv_tol: float = Field(1.0e-9, gt=0.0, le=1.0e-4)
    max_cycle: int = Field(50, ge=1)
    grid_level: int = Field(3, ge=0, le=9)
    grid_response: bool = True
    threads: int = Field(1, ge=1)
    max_memory: int = Field(4000, ge=100)
    time_limit: float = Field(3600.0, gt=0.0)
    ladder: list[Rung] = Field(default_factory=lambda: list(DEFAULT_LADDER), min_length=1)

    @field_validator("xc")
    @classmethod
    def _known_xc(cls, xc: str) -> str:
        from pyscf.dft import libxc

        try:
            libxc.parse_xc(xc)
        except Exception:
            raise ValueError(f"unknown exchange-correlation functional {xc!r}") from None
        return xc

    @field_validator("basis")
    @classmethod
    def _known_basis(cls, basis: str) -> str:
        import warnings

        from pyscf.gto import basis as pyscf_basis

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                pyscf_basis.load(basis, "H")
            except Exception:
                raise ValueError(f"unknown basis set {basis!r}") from None
        return basis.lower()

    @field_validator("ladder")
    @classmethod
    def _unique_rungs(cls, ladder: list[Rung]) -> list[Rung]:
        names = [r.name for r in ladder]
        if len(set(names)) != len(names):
            raise ValueError(f"rung names must be unique, got {names}")
        return ladder

    @property
    def level_of_theory(self) -> str:
        """``XC/basis``, e.g. ``PBE/def2-svp``."""
        return f"{self.xc.upper()}/{self.basis}"


_WALLTIME = re.compile(r"^\d+:\d{2}:\d{2}$")


class ExecutorConfig(Strict):
    """Where labels run (Parsl).

    ``threads``: in-process threads (tests); ``local``: HighThroughputExecutor on this
    machine; ``slurm`` / ``pbs``: batch jobs of ``nodes`` nodes each, at most
    ``max_blocks`` at once, ``workers`` labels at once per node, ``walltime`` HH:MM:SS.
    ``queue`` is the Slurm partition or PBS queue. ``worker_init`` runs before workers
    start (module loads); the virtual environment's ``bin/`` is put on PATH for you.
    """

    profile: Literal["threads", "local", "slurm", "pbs"] = "local"
    workers: int = Field(2, ge=1)
    retries: int = Field(2, ge=0)
    walltime: str = "01:00:00"
    nodes: int = Field(1, ge=1)
    max_blocks: int = Field(1, ge=1)
    queue: str | None = None
    account: str | None = None
    scheduler_options: str = ""
    worker_init: str = ""
    run_dir: Path | None = None

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, value: str) -> str:
        if not _WALLTIME.match(value):
            raise ValueError(f"walltime must be HH:MM:SS, got {value!r}")
        return value


class SplitConfig(Strict):
    """Fractions of new structures sent to the validation and test splits (by hash)."""

    val: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _fractions(self) -> "SplitConfig":
        if self.val + self.test >= 1.0:
            raise ValueError("val + test must leave something for train")
        return self


class ModelSize(Strict):
    """One rung of the NequIP size ladder: interaction layers, largest rotation order,
    features per irrep, width of the radial MLP."""

    layers: int = Field(ge=1)
    l_max: int = Field(ge=0, le=4)
    features: int = Field(ge=1)
    radial_width: int = Field(ge=1)


#: Sizes from a seconds-long CPU test model to a production-grade molecular potential.
SIZES: dict[str, ModelSize] = {
    "xs": ModelSize(layers=2, l_max=1, features=8, radial_width=16),
    "s": ModelSize(layers=3, l_max=1, features=16, radial_width=32),
    "m": ModelSize(layers=4, l_max=2, features=32, radial_width=64),
    "l": ModelSize(layers=5, l_max=2, features=64, radial_width=128),
}


class TrainingConfig(Strict):
    """How a surrogate ensemble is trained.

    ``size`` is a name in :data:`SIZES`; ``members`` the ensemble size K (each member has
    its own seed and bootstrap resample of the training split); ``r_max`` the cutoff in Å;
    ``max_minutes`` the wall-time budget of one member; ``patience`` the epochs without
    validation improvement before stopping; ``energy_weight``/``force_weight`` weigh the
    per-atom energy and force MSE in the loss; ``isolated_atom_energies`` (eV, by element)
    fix the per-type energy shifts, otherwise they are fitted to the training energies.
    """

    size: str = "s"
    members: int = Field(4, ge=1)
    dtype: Literal["float32", "float64"] = "float32"
    r_max: float = Field(4.0, gt=0.5)
    batch_size: int = Field(5, ge=1)
    learning_rate: float = Field(0.01, gt=0.0)
    max_epochs: int = Field(10000, ge=1)
    max_minutes: float = Field(30.0, gt=0.0)
    patience: int = Field(50, ge=1)
    energy_weight: float = Field(1.0, ge=0.0)
    force_weight: float = Field(10.0, ge=0.0)
    ema_decay: float = Field(0.99, ge=0.0, lt=1.0)
    bootstrap: bool = True
    seed: int = 0
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
    """

    temperatures: list[float] = Field(default_factory=lambda: [300.0, 600.0], min_length=1)
    steps: int = Field(1000, ge=1)
    sample_every: int = Field(20, ge=1)
    timestep: float = Field(0.5, gt=0.0, le=5.0)
    friction: float = Field(0.01, gt=0.0)
    stop_force_dev: float = Field(1.0, gt=0.0)
    min_distance: float = Field(0.7, gt=0.0)
    check_bonds: bool = True
    seed: int = 0

    @field_validator("temperatures")
    @classmethod
    def _positive(cls, temps: list[float]) -> list[float]:
        if any(t <= 0 for t in temps):
            raise ValueError(f"temperatures must be positive kelvin, got {temps}")
        return temps


class GeneratorConfig(Strict):
    """The diffusion generator: its network, training budget and share of candidates.

    ``share`` is the fraction of each round's candidates the generator proposes (the
    rest come from MD; 0 turns it off), but at least ``min_samples`` (MD may stop early
    where the surrogate is unsure: there the generator matters most). It is retrained,
    warm-started, every round for ``max_minutes`` on the store's configurations and the
    MD frames explored so far. ``hidden`` and
    ``layers`` size its equivariant network; ``prior_weight`` is λ of the feasibility
    penalty in training (0: none); ``steps`` the sampling steps. Over the last
    ``guide_from`` of the sampling times, ``guidance`` (Å per step, 0 for none) moves
    samples toward high ensemble disagreement, and ``feasibility_steps`` gradient steps
    on the same penalty pull the Tweedie estimate into the observed pair ranges (the
    prior at sampling time; 0: none).
    """

    share: float = Field(0.0, ge=0.0, lt=1.0)
    min_samples: int = Field(100, ge=0)
    max_minutes: float = Field(2.0, gt=0.0)
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
    seed: int = 0


class SelectionConfig(Strict):
    """Which explored frames are labelled each round.

    The trust window on the calibrated max force deviation (eV/Å): below ``lo`` a frame
    counts as accurate, above ``hi`` as failed (unphysical or hopeless), in between as a
    candidate. ``labels_per_round`` caps each round's DFT labels. ``policy``
    ``uncertainty`` takes a diverse set of candidates (farthest-point sampling from the
    most uncertain); ``random`` draws uniformly from all explored frames (control arm).
    """

    policy: Literal["uncertainty", "random"] = "uncertainty"
    lo: float = Field(0.05, ge=0.0)
    hi: float = Field(0.5, gt=0.0)
    labels_per_round: int = Field(20, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _window(self) -> "SelectionConfig":
        if self.lo >= self.hi:
            raise ValueError(f"trust window needs lo < hi, got lo={self.lo}, hi={self.hi}")
        return self


class StopConfig(Strict):
    """When a campaign ends: whichever rule holds first.

    ``force_mae`` (eV/Å): the ensemble's force MAE on the test split at or below it;
    ``accurate_fraction``: at least this share of explored frames accurate for
    ``accurate_rounds`` rounds in a row; ``max_labels``: labels in the store (all
    rounds); ``max_rounds``: refinement rounds after pretraining; ``wall_hours``: time
    since the campaign started.
    """

    force_mae: float | None = Field(None, gt=0.0)
    accurate_fraction: float = Field(0.95, gt=0.0, le=1.0)
    accurate_rounds: int = Field(2, ge=1)
    max_labels: int | None = Field(None, ge=1)
    max_rounds: int = Field(5, ge=0)
    wall_hours: float | None = Field(None, gt=0.0)


class PretrainConfig(Strict):
    """The first dataset: an imported labelled file (any ASE format or rMD17 ``.npz``,
    labels taken as they are, split by hash) and/or ``displaced`` copies of each seed
    structure with Gaussian displacements of ``rattle`` Å per component, labelled by DFT.
    """

    labelled: Path | None = None
    labelled_level: str | None = None
    displaced: int = Field(20, ge=0)
    rattle: float = Field(0.05, gt=0.0, le=0.5)
    seed: int = 0


class ApprovalConfig(Strict):
    """Pause a round for approval in the Prefect UI before labelling when its estimated
    DFT cost (selected labels × mean label seconds so far × ``dft.threads``) exceeds
    ``max_core_seconds``; the pause fails the run after ``timeout_hours``."""

    max_core_seconds: float | None = Field(None, gt=0.0)
    timeout_hours: float = Field(24.0, gt=0.0)


class ScalingConfig(Strict):
    """Scaling laws that steer the campaign.

    After each round's training the joint law L(N, P) is fitted to every training of the
    campaign (validation force MAE); with too few points, probes train single models on
    ``fractions`` of the data at the current size and its neighbour within
    ``probe_minutes`` in all. The decision compares ``selection.labels_per_round`` more
    labels with the next size, per core-second, and the next round follows it: a larger
    model (no new labels that round) or more data. ``pin_size`` / ``pin_labels`` keep the
    configured size / label budget whatever the decision; the campaign stops when the best
    predicted gain is below ``min_gain`` (eV/Å) or the error is within ``floor_margin``
    (relative) of the fitted floor.
    """

    enabled: bool = True
    pin_size: bool = False
    pin_labels: bool = False
    probe_minutes: float = Field(2.0, ge=0.0)
    fractions: list[float] = Field(default_factory=lambda: [0.25, 0.5, 1.0], min_length=3)
    min_gain: float = Field(0.0, ge=0.0)
    floor_margin: float = Field(0.05, ge=0.0)
    bootstrap: int = Field(100, ge=0)

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, fractions: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in fractions) or len(set(fractions)) < 3:
            raise ValueError(f"need three distinct fractions in (0, 1], got {fractions}")
        return fractions


class CampaignConfig(Strict):
    """A whole campaign file.

    ``folder`` holds the campaign's rounds, models and report (default: beside a SQLite
    database, else ``./campaign``). ``oracle`` is a labelled file whose labels replace
    DFT and whose structures replace exploration (for comparing strategies at no DFT
    cost); ``test_file`` a labelled file the errors are measured on instead of the
    store's test split.
    """

    system: SystemConfig = Field(default_factory=SystemConfig)
    dft: DFTSettings = Field(default_factory=DFTSettings)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    explore: ExploreConfig = Field(default_factory=ExploreConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    database: str
    split: SplitConfig = Field(default_factory=SplitConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    stop: StopConfig = Field(default_factory=StopConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    approval: ApprovalConfig = Field(default_factory=ApprovalConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    folder: Path | None = None
    oracle: Path | None = None
    test_file: Path | None = None


def is_url(database: str) -> bool:
    """True for a server URL (``postgresql://``), False for a file path."""
    return "://" in database


def format_validation_error(err: ValidationError, source: str) -> str:
    """One readable message naming every wrong field."""
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "missing":
            msg = "required field is missing"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if "input" in e and not isinstance(e["input"], dict | list):
                msg += f" (got {e['input']!r})"
        lines.append(f"{field}: {msg}")
    return f"{source}: invalid configuration\n  " + "\n  ".join(lines)


def parse_config(data: dict, base: Path = Path("."), source: str = "config") -> CampaignConfig:
    """Validate a config mapping; relative paths are taken relative to ``base``."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    try:
        config = CampaignConfig.model_validate(data)
    except ValidationError as err:
        raise InputError(format_validation_error(err, source)) from None
    if config.system.structures is not None and not config.system.structures.is_absolute():
        config.system.structures = base / config.system.structures
    if not is_url(config.database) and not Path(config.database).is_absolute():
        config.database = str(base / config.database)
    if config.executor.run_dir is not None and not config.executor.run_dir.is_absolute():
        config.executor.run_dir = base / config.executor.run_dir
    for owner, name in (
        (config, "folder"),
        (config, "oracle"),
        (config, "test_file"),
        (config.pretrain, "labelled"),
    ):
        value = getattr(owner, name)
        if value is not None and not value.is_absolute():
            setattr(owner, name, base / value)
    if config.folder is None:
        db = Path(config.database)
        config.folder = base / "campaign" if is_url(config.database) else db.parent
    return config


def load_config(path: str | Path) -> CampaignConfig:
    """Read and validate a campaign YAML file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({err})") from None
    return parse_config(data or {}, base=path.parent.resolve(), source=str(path))
