"""The campaign file: one YAML file whose sections are the libraries' own settings.

Example::

    system: {structures: seeds.xyz, charge: 0, multiplicity: 1}
    dft: {xc: PBE, basis: def2-svp, density_fit: true, conv_tol: 1.0e-9, threads: 1}
    executor: {profile: local, workers: 2}   # threads | local | slurm | pbs
    database: runs/demo/data.db              # SQLite path or postgresql:// URL

Relative paths are resolved against the folder of the YAML file. Any unknown or wrong
field is an :class:`~sapis.errors.InputError` naming it, raised before anything starts.
The sections ``dft``, ``executor``, ``training``, ``explore``, ``generator``, ``dynamics``,
``scaling`` and ``split`` belong to the libraries that read them; the rest are the
campaign's own.
"""

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sapis.campaign.selection import DENSITY_POLICIES
from sapis.config import Strict, is_url, read_yaml, resolve, validate
from sapis.dft.executors import ExecutorConfig, run_dir_problem
from sapis.dft.settings import DFTSettings
from sapis.errors import InputError
from sapis.generator.dynamics.settings import DynamicsSourceConfig
from sapis.generator.settings import GeneratorConfig
from sapis.scaling.settings import ScalingConfig
from sapis.store import SplitConfig, database_problem
from sapis.surrogate.settings import ExploreConfig, TrainingConfig


class SystemConfig(Strict):
    """The chemical system: seed structures, total charge and spin multiplicity (2S+1)."""

    structures: Path | None = None
    charge: int = 0
    multiplicity: int = Field(1, ge=1, le=20)


class SelectionConfig(Strict):
    """Which explored frames are labelled each round.

    The trust window on the calibrated max force deviation (eV/Å): below ``lo`` a frame
    counts as accurate, above ``hi`` as failed (unphysical or hopeless), in between as a
    candidate. With ``window: quantile`` (the default unless ``lo`` or ``hi`` is given)
    the bounds come from the uncertainty's own distribution each round: ``lo`` is the
    ``lo_quantile`` of the validation structures' uncertainty (a frame as certain as the
    data the ensemble was checked on is accurate), ``hi`` the ``hi_quantile`` of the
    explored frames' (the extreme tail is left out); ``window: fixed`` uses ``lo`` and
    ``hi`` as given. ``labels_per_round`` caps each round's DFT labels. ``policy`` picks
    among the candidates (see :mod:`sapis.campaign.selection`): ``lcmd`` (the default:
    batch selection on the ensemble's features, which never starves when every frame
    is as certain as the validation data), ``maxdet`` (the same features, greedy
    determinant), ``uncertainty`` (farthest-point from the most uncertain), ``top-k``,
    or ``random`` (all explored frames, the control arm).

    ``density_weight`` β (0: off) weighs the ranking of ``top-k`` and ``uncertainty`` by
    how representative a frame is: the score becomes uncertainty × w, with w =
    exp(β·(ℓ − max ℓ)/(3N − 3)) and ℓ each candidate's log-density (per Å^(3N−3)) under
    the round's normalizing flow, so it needs ``generator.kind: flow`` with
    ``generator.share`` > 0 (the flow is trained each round; see
    :mod:`sapis.campaign.selection`).
    """

    policy: Literal["uncertainty", "top-k", "lcmd", "maxdet", "random"] = "lcmd"
    window: Literal["quantile", "fixed"] = "quantile"
    lo: float = Field(0.05, ge=0.0)
    hi: float = Field(0.5, gt=0.0)
    lo_quantile: float = Field(0.9, ge=0.0, lt=1.0)
    hi_quantile: float = Field(0.99, gt=0.0, le=1.0)
    labels_per_round: int = Field(20, ge=1)
    density_weight: float = Field(0.0, ge=0.0)
    seed: int = Field(0, ge=0, le=2**32 - 1)  # what every random generator accepts

    @model_validator(mode="after")
    def _window(self) -> "SelectionConfig":
        if {"lo", "hi"} & self.model_fields_set and "window" not in self.model_fields_set:
            self.window = "fixed"  # bounds given by hand mean a fixed window
        if self.lo >= self.hi:
            raise ValueError(f"trust window needs lo < hi, got lo={self.lo}, hi={self.hi}")
        if self.density_weight > 0 and self.policy not in DENSITY_POLICIES:
            raise ValueError(
                f"density_weight multiplies the uncertainty ranking of the policies "
                f"{' and '.join(DENSITY_POLICIES)}; policy {self.policy!r} does not rank by "
                "uncertainty (set selection.policy to one of them, or density_weight to 0)"
            )
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


class CheapPretraining(DFTSettings):
    """Broad pretraining on a cheap level before the expensive one (``pretrain.cheap``).

    The level: ``program: xtb`` (the only program cheap enough to be its own sampler)
    with ``method`` (GFN2-xTB or GFN1-xTB) and the ``dft:`` fields xTB reads. Sampling:
    Langevin MD at that level from every seed structure at each of ``temperatures`` (K),
    ``trajectories`` runs of ``picoseconds`` each with ``timestep`` (fs) and ``friction``
    (1/fs), a labelled frame every ``sample_every`` steps; all of them are stored at the
    cheap level and the ensemble is pretrained on them (for ``max_epochs``, default
    ``training.max_epochs``), then fine-tuned on the expensive labels with its per-type
    energy shifts refitted. ``test_frames`` > 0 draws that many frames from separate
    cheap trajectories (one per seed and temperature) and labels them at the expensive
    level as the campaign's fixed test set (later rounds send nothing to the test split),
    so every round is measured on the same frames. ``compare`` also trains round 0's
    ensemble without the cheap data, to report what pretraining bought.
    """

    program: Literal["pyscf", "xtb"] = "xtb"
    temperatures: list[float] = Field(default_factory=lambda: [300.0, 600.0, 900.0], min_length=1)
    picoseconds: float = Field(5.0, gt=0.0)
    timestep: float = Field(0.5, gt=0.0, le=5.0)
    friction: float = Field(0.01, gt=0.0)
    sample_every: int = Field(20, ge=1)
    trajectories: int = Field(1, ge=1)
    max_epochs: int | None = Field(None, ge=1)
    test_frames: int = Field(0, ge=0)
    compare: bool = True
    seed: int = Field(0, ge=0, le=2**32 - 1)  # what every random generator accepts

    @field_validator("temperatures")
    @classmethod
    def _positive(cls, temperatures: list[float]) -> list[float]:
        if any(t <= 0 for t in temperatures):
            raise ValueError(f"temperatures must be > 0 K, got {temperatures}")
        return temperatures

    @model_validator(mode="after")
    def _cheap_program(self) -> "CheapPretraining":
        if self.program != "xtb":
            raise ValueError(
                f"program {self.program!r} is no cheap level to sample with: use program: xtb "
                "(GFN2-xTB or GFN1-xTB)"
            )
        return self

    @property
    def steps(self) -> int:
        """MD steps of one trajectory."""
        return max(round(1000.0 * self.picoseconds / self.timestep), 1)


class PretrainConfig(Strict):
    """The first dataset: an imported labelled file (any ASE format or rMD17 ``.npz``,
    labels taken as they are, split by hash) and/or ``displaced`` copies of each seed
    structure with Gaussian displacements of ``rattle`` Å per component, labelled at the
    expensive level; ``cheap`` adds broad pretraining at a cheap level first.
    """

    cheap: CheapPretraining | None = None
    labelled: Path | None = None
    labelled_level: str | None = Field(None, min_length=1)
    displaced: int = Field(20, ge=0)
    rattle: float = Field(0.05, gt=0.0, le=0.5)
    seed: int = Field(0, ge=0, le=2**32 - 1)  # what every random generator accepts


class ApprovalConfig(Strict):
    """Pause a round for approval in the Prefect UI before labelling when its estimated
    DFT cost (selected labels × mean label seconds so far × ``dft.threads``) exceeds
    ``max_core_seconds``; the pause fails the run after ``timeout_hours``."""

    max_core_seconds: float | None = Field(None, gt=0.0)
    timeout_hours: float = Field(24.0, gt=0.0)


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
    dynamics: DynamicsSourceConfig = Field(default_factory=DynamicsSourceConfig)
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

    @field_validator("database")
    @classmethod
    def _database(cls, database: str) -> str:
        problem = database_problem(database)
        if problem:
            raise ValueError(problem)
        return database

    @model_validator(mode="after")
    def _density_needs_a_flow(self) -> "CampaignConfig":
        """A density weight reads each candidate's density under the round's flow: the
        campaign must train one (``generator.kind: flow``, ``generator.share`` > 0)."""
        if self.selection.density_weight <= 0:
            return self
        if self.generator.kind != "flow" or self.generator.share <= 0:
            raise ValueError(
                f"selection.density_weight {self.selection.density_weight} needs each "
                f"round's candidate densities from a trained flow, but generator.kind is "
                f"{self.generator.kind!r} and generator.share {self.generator.share}; set "
                "generator.kind: flow and generator.share > 0, or density_weight to 0"
            )
        return self

    @model_validator(mode="after")
    def _cores(self) -> "CampaignConfig":
        """Labels on this machine (profiles threads and local) must fit its cores: more
        threads than cores make every label many times slower. Batch profiles run on
        other nodes; there only ``dft.threads`` <= MAX_THREADS holds."""
        if self.executor.profile not in ("threads", "local"):
            return self
        cheap = self.pretrain.cheap
        threads = max(self.dft.threads, cheap.threads if cheap is not None else 1)
        workers, cores = self.executor.workers, available_cores()
        if threads * workers > cores:
            raise ValueError(
                f"dft.threads × executor.workers: {threads} threads × {workers} workers = "
                f"{threads * workers} cores, but this machine has {cores} (profile "
                f"{self.executor.profile}); lower either, or run labels on a batch profile"
            )
        return self


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a Slurm allocation's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parse_config(data: dict, base: Path = Path("."), source: str = "config") -> CampaignConfig:
    """Validate a config mapping; relative paths are taken relative to ``base``.

    Defaults that depend on other fields are filled here, once: the campaign folder
    (beside a SQLite database, else ``./campaign``) and Parsl's run folder
    (``executor.run_dir``: the campaign folder's ``runinfo/``).
    """
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    config = validate(CampaignConfig, data, source)
    if not is_url(config.database) and not Path(config.database).is_absolute():
        config.database = str(base / config.database)
    config.system.structures = resolve(config.system.structures, base)
    config.executor.run_dir = resolve(config.executor.run_dir, base)
    config.folder = resolve(config.folder, base)
    config.oracle = resolve(config.oracle, base)
    config.test_file = resolve(config.test_file, base)
    config.pretrain.labelled = resolve(config.pretrain.labelled, base)
    config.dynamics.model = resolve(config.dynamics.model, base)
    if config.folder is None:
        db = Path(config.database)
        config.folder = base / "campaign" if is_url(config.database) else db.parent
    if config.executor.run_dir is None:
        config.executor.run_dir = config.folder / "runinfo"
    problem = run_dir_problem(config.executor.profile, config.executor.run_dir)
    if problem:  # checked again once resolved: Parsl hands it to a shell
        raise InputError(f"{source}: executor.run_dir: {problem}")
    return config


def load_config(path: str | Path) -> CampaignConfig:
    """Read and validate a campaign YAML file."""
    path = Path(path)
    return parse_config(read_yaml(path), base=path.parent.resolve(), source=str(path))
