"""One campaign: its configuration, folder, dataset store and labeller, opened once.

:meth:`Campaign.start` checks everything that can be checked cheaply before any work
(the file, the inputs, that an existing folder was started from the same settings) and
:meth:`Campaign.open` reopens a campaign from its folder alone. The stages of a round
(:mod:`sapis.campaign.exploration`, ``selection``, ``training``, ...) take the object.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from ase import Atoms

from sapis.campaign.config import CampaignConfig, load_config, parse_config
from sapis.campaign.folder import CONFIG_NAME, CampaignFolder
from sapis.dft.batch import BatchSummary, OnResult, label_pending
from sapis.dft.labeller import PySCFLabeller
from sapis.dft.protocol import Labeller
from sapis.dft.reference import ReferenceOracle
from sapis.dft.xtb import XTBLabeller, check_for_xtb
from sapis.errors import InputError
from sapis.io import carries_labels, read_structures, write_text_atomically
from sapis.store import DatasetStore, SplitConfig

#: Sections that may change between runs of one campaign folder.
MAY_CHANGE = {"stop", "approval"}


def make_labeller(config: CampaignConfig) -> Labeller:
    """The campaign's labeller: the reference oracle when ``oracle`` names a labelled
    pool, else PySCF or xTB (``dft.program``) at ``dft``'s level for ``system``'s charge
    and multiplicity."""
    if config.oracle is not None:
        return ReferenceOracle(config.oracle)
    if config.dft.program == "xtb":
        return XTBLabeller(config.dft, config.system.charge, config.system.multiplicity)
    return PySCFLabeller(config.dft, config.system.charge, config.system.multiplicity)


def with_overrides(config: CampaignConfig, overrides: dict | None, source: str) -> CampaignConfig:
    """``config`` with fields replaced by ``overrides`` (nested sections, e.g.
    ``{"selection": {"policy": "random"}}``), validated again."""
    if not overrides:
        return config
    data = config.model_dump(mode="json")
    for section, fields in overrides.items():
        data[section] = {**data[section], **fields} if isinstance(fields, dict) else fields
    return parse_config(data, source=f"{source} with overrides {overrides}")


@dataclass
class Campaign:
    """A campaign's configuration, folder, store and labeller, and its seed structures
    (``system.structures``, read once; none if not given)."""

    config: CampaignConfig
    folder: CampaignFolder
    store: DatasetStore
    labeller: Labeller
    seeds: list[Atoms] = field(default_factory=list)
    _test_file: list[Atoms] | None = field(default=None, repr=False)

    @classmethod
    def start(cls, config_path: str | Path, overrides: dict | None = None) -> "Campaign":
        """Validate a campaign file (or folder) and its inputs, then create or reopen its
        folder; the configuration is copied to ``campaign.yaml`` (mode 0600: its database
        URL may hold a password) with absolute paths, so the folder alone reopens the
        campaign. Raises :class:`InputError` naming the first problem (the database is
        reached here too), before anything is written."""
        config_path, config = _load(config_path, overrides)
        folder = CampaignFolder(config.folder)
        _check_same_settings(folder, config, config_path)
        campaign = cls._assemble(config, folder)
        folder.root.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
        # private: the database URL in it may carry a password
        write_text_atomically(folder.config_path, text, mode=0o600)
        folder.mark_started()
        return campaign

    @classmethod
    def open(cls, folder: str | Path) -> "Campaign":
        """Reopen the campaign of a folder from its ``campaign.yaml``."""
        folder = CampaignFolder(folder)
        folder.check()
        return cls._assemble(load_config(folder.config_path), folder)

    @classmethod
    def _assemble(cls, config: CampaignConfig, folder: CampaignFolder) -> "Campaign":
        labeller = make_labeller(config)
        path = config.system.structures
        seeds = read_structures(path) if path is not None else []
        check_inputs(config, labeller, seeds)
        return cls(config, folder, DatasetStore(config.database), labeller, seeds)

    @property
    def level(self) -> str:
        """The level of theory of this campaign's labels (the expensive one)."""
        return self.labeller.level

    @property
    def cheap_level(self) -> str | None:
        """The level of ``pretrain.cheap``, or None without cheap pretraining."""
        cheap = self.config.pretrain.cheap
        return cheap.level_of_theory if cheap is not None else None

    @property
    def fractions(self) -> SplitConfig:
        """Split fractions of new structures: ``split``, without a test share when the
        campaign has a fixed test set (``pretrain.cheap.test_frames``)."""
        cheap = self.config.pretrain.cheap
        if cheap is not None and cheap.test_frames:
            return SplitConfig(val=self.config.split.val, test=0.0)
        return self.config.split

    def evaluation_set(self) -> list[Atoms]:
        """Structures the errors are measured on: ``test_file`` (read once) or the
        store's test split at the campaign's level."""
        if self.config.test_file is not None:
            if self._test_file is None:
                self._test_file = read_structures(self.config.test_file)
            return self._test_file
        return self.store.labelled("test", level=self.level)

    def label_pending(self, dfk=None, on_result: OnResult | None = None) -> BatchSummary:
        """Label every pending row with the campaign's labeller (on ``dfk``, the flow
        run's Parsl, when the labeller is remote; see :func:`sapis.dft.batch.label_pending`)."""
        return label_pending(self.store, self.labeller, self.config.executor, on_result, dfk)

    # --- what labels cost ------------------------------------------------------------------

    def core_seconds(self, round_: int | None = None, up_to_round: int | None = None) -> float:
        """Core-seconds the expensive labels of one round (or of rounds up to one, or all)
        took."""
        seconds = self.store.label_seconds(round_, up_to_round, level=self.level)["seconds"]
        return float(sum(seconds)) * self.labeller.cores

    def label_counts(self, r: int) -> dict:
        """Rows labelled at the campaign's level in the store, and the new, failed and
        DFT core-seconds of the rows round ``r`` added at that level."""
        times = self.store.label_seconds(round_=r, level=self.level)
        return {
            "labels": self.store.count(status="labelled", level=self.level),
            "new_labels": times["labelled"],
            "failed_labels": times["failed"],
            "dft_seconds": float(sum(times["seconds"])) * self.labeller.cores,
        }

    def levels_used(self) -> dict[str, dict]:
        """Per level of theory in the store: labelled rows and the core-seconds they cost
        (the cheap level's MD runs on one core per trajectory)."""
        out = {}
        for level in sorted(self.store.levels()):
            times = self.store.label_seconds(level=level)
            cores = self.labeller.cores if level == self.level else 1
            out[level] = {
                "labels": times["labelled"],
                "core_seconds": round(float(sum(times["seconds"])) * cores, 2),
                "expensive": level == self.level,
            }
        return out

    def estimated_core_seconds(self, n: int) -> float:
        """Cost of ``n`` more labels: the mean label time so far (the labeller's own
        estimate before any label) × its cores × ``n``."""
        seconds = self.store.label_seconds(level=self.level)["seconds"]
        mean = float(np.mean(seconds)) if seconds else self.labeller.seconds_per_label
        return n * self.labeller.cores * mean


def check_inputs(config: CampaignConfig, labeller: Labeller, seeds: list[Atoms]) -> None:
    """Check every input the campaign needs; raise :class:`InputError` naming the first
    problem. A labeller with a pool of its own (the oracle) explores and pretrains from
    that pool; any other labels displaced copies of the seeds, which are checked here."""
    pool = labeller.pool()
    _check_cheap(config, labeller, seeds, pool is not None)
    if pool is None and not seeds:
        raise InputError("system.structures: seed structures are needed (or an oracle file)")
    if pool is None:
        for k, atoms in enumerate(seeds):
            labeller.check(atoms, f"{config.system.structures} structure {k}")
    for name, path in (
        ("test_file", config.test_file),
        ("pretrain.labelled", config.pretrain.labelled),
    ):
        if path is not None and not carries_labels(read_structures(path)[0]):
            raise InputError(f"{name}: {path} carries no energies and forces")
    if config.generator.share > 0:
        if pool is not None:
            raise InputError(
                "generator.share: an oracle labels only its own pool, not generated "
                "structures; set generator.share to 0 or drop the oracle"
            )
        molecules = len({tuple(a.numbers) for a in seeds})
        if molecules > 1:
            raise InputError(
                f"generator.share: the generator models one molecule, but "
                f"{config.system.structures} holds {molecules} different atom sequences"
            )
        if config.generator.kind == "flow" and seeds:
            _check_flow(seeds[0])
    if pool is None and not config.pretrain.displaced and not config.pretrain.labelled:
        raise InputError("pretrain: give a labelled file or displaced > 0 to start from")
    _check_dynamics(config, seeds, pool is not None)


def _check_flow(seed: Atoms) -> None:
    """The flow's force field must have parameters for the seed molecule (it is built
    from the round's frames in the same way)."""
    from sapis.generator.forcefield import LightForceField
    from sapis.validity import bond_graph

    try:
        LightForceField.from_data(seed.numbers, sorted(bond_graph(seed)), seed.positions[None])
    except ValueError as err:
        raise InputError(f"generator.kind: flow: its force field: {err}") from None


def _check_dynamics(config: CampaignConfig, seeds: list[Atoms], oracle: bool) -> None:
    """With ``dynamics.share`` > 0: no oracle, and ``dynamics.model`` a dynamics model of
    the seeds' molecule (atomic numbers in their order, bond graph) whose rollouts keep a
    frame every ``dynamics.every``."""
    settings = config.dynamics
    if settings.share <= 0:
        return
    if oracle:
        raise InputError(
            "dynamics.share: an oracle labels only its own pool, not rollout frames; "
            "set dynamics.share to 0 or drop the oracle"
        )
    from sapis.generator.dynamics.model import DynamicsModel
    from sapis.validity import bond_graph

    try:
        model = DynamicsModel.load(settings.model)
    except InputError as err:
        raise InputError(f"dynamics.model: {err}") from None
    molecule = Atoms(model.numbers)
    couplings = np.triu(np.array(model.meta["couplings"]))
    bonds = {(int(i), int(j)) for i, j in np.argwhere(couplings)}
    for k, seed in enumerate(seeds):
        if seed.numbers.tolist() != model.numbers.tolist():
            raise InputError(
                f"dynamics.model: {settings.model} models {molecule.get_chemical_formula()} "
                f"with atoms {model.numbers.tolist()}, but seed structure {k} is "
                f"{seed.get_chemical_formula()} with atoms {seed.numbers.tolist()}"
            )
        if set(bond_graph(seed)) != bonds:
            raise InputError(
                f"dynamics.model: {settings.model} was trained on another bond graph than "
                f"seed structure {k}'s ({sorted(bonds)} against {sorted(bond_graph(seed))})"
            )
    generated = settings.windows * model.config.frames
    if settings.every > generated:
        raise InputError(
            f"dynamics.every: {settings.every} is more than the {generated} frames a rollout "
            f"makes ({settings.windows} windows of {model.config.frames}); lower it"
        )


def _check_cheap(config: CampaignConfig, labeller: Labeller, seeds: list, oracle: bool) -> None:
    """``pretrain.cheap`` must name a level other than the one the campaign refines, have
    seed structures to sample from, and no test frames an oracle could not label."""
    cheap = config.pretrain.cheap
    if cheap is None:
        return
    if cheap.level_of_theory == labeller.level:
        raise InputError(
            f"pretrain.cheap: {cheap.level_of_theory} is the level the campaign refines "
            f"(dft: {labeller.level}); pretrain at a cheaper level than that"
        )
    if not seeds:
        raise InputError("pretrain.cheap: MD at the cheap level starts from system.structures")
    if oracle and cheap.test_frames:
        raise InputError(
            "pretrain.cheap.test_frames: the oracle labels only its own pool; "
            "give test_file instead"
        )
    for k, atoms in enumerate(seeds):
        check_for_xtb(atoms, config.system.charge, config.system.multiplicity, f"seed {k}")


def _load(config_path: str | Path, overrides: dict | None) -> tuple[Path, CampaignConfig]:
    config_path = Path(config_path)
    if config_path.is_dir():
        config_path = config_path / CONFIG_NAME
    return config_path, with_overrides(load_config(config_path), overrides, str(config_path))


def folder_of(config_path: str | Path, overrides: dict | None = None) -> Path:
    """The campaign folder a campaign file (or folder) runs in; reads only the file."""
    return CampaignFolder(_load(config_path, overrides)[1].folder).root


def _check_same_settings(folder: CampaignFolder, config: CampaignConfig, source: Path) -> None:
    """Refuse to run a folder started with other settings (only stop: and approval: may
    change), unless it is being run from its own ``campaign.yaml``."""
    copy = folder.config_path
    if not copy.is_file() or source.resolve() == copy.resolve():
        return
    old = load_config(copy).model_dump(mode="json", exclude=MAY_CHANGE)
    new = config.model_dump(mode="json", exclude=MAY_CHANGE)
    if old != new:
        changed = sorted(k for k in new if new[k] != old.get(k))
        raise InputError(
            f"{folder.root} holds a campaign started with other settings "
            f"({', '.join(changed)} differ); use a new folder, or run it from "
            f"{copy} (only stop: and approval: may change)"
        )
