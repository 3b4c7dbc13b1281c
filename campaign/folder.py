"""A campaign's folder: where each stage's output lives, and which rounds are finished.

The campaign's state is its store plus this folder::

    FOLDER/campaign.yaml               the configuration the campaign runs with
    FOLDER/started_at                  when it first started (Unix time)
    FOLDER/round-000/ensemble/         pretraining: the first ensemble
    FOLDER/round-001/explored.extxyz   MD frames (or pool structures) with their uncertainty
    FOLDER/round-001/explore.json      what exploration did
    FOLDER/round-001/generator/        the generator, trained further this round
    FOLDER/round-001/generated.extxyz  the generator's valid samples with their uncertainty
    FOLDER/round-001/generated.json    what the generator did
    FOLDER/round-001/dynamics.extxyz   the dynamics model's valid rollout frames, scored
    FOLDER/round-001/dynamics.json     what the rollouts did
    FOLDER/round-001/selected.extxyz   what was chosen for labelling (stored as pending)
    FOLDER/round-001/ensemble/         the ensemble fine-tuned on the grown data
    FOLDER/round-001/clock.json        seconds per stage over every attempt, the stage running
    FOLDER/round-001/round.json        the round's record: written last, marks it finished
    FOLDER/scaling/                    every training as a scaling point, and the probes
    FOLDER/report.md, FOLDER/plots/    the report

Every stage writes its output atomically and is skipped when its output exists, so a
killed campaign resumes in the round and stage it was in.
"""

import time
from pathlib import Path

from sapis.campaign.rounds import RoundRecord
from sapis.errors import InputError
from sapis.surrogate.manifest import EnsembleManifest

CONFIG_NAME = "campaign.yaml"


class CampaignFolder:
    """Paths and finished work of a campaign folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    def check(self) -> None:
        """Raise :class:`InputError` unless this is a campaign folder."""
        if not self.config_path.is_file():
            raise InputError(f"{self.root}: not a campaign folder (no {CONFIG_NAME})")

    def round_dir(self, r: int) -> Path:
        return self.root / f"round-{r:03d}"

    def ensemble_dir(self, r: int) -> Path:
        return self.round_dir(r) / "ensemble"

    def record_path(self, r: int) -> Path:
        return self.round_dir(r) / "round.json"

    def clock_path(self, r: int) -> Path:
        return self.round_dir(r) / "clock.json"

    def explored_path(self, r: int) -> Path:
        return self.round_dir(r) / "explored.extxyz"

    def generated_path(self, r: int) -> Path:
        return self.round_dir(r) / "generated.extxyz"

    def dynamics_path(self, r: int) -> Path:
        return self.round_dir(r) / "dynamics.extxyz"

    def selected_path(self, r: int) -> Path:
        return self.round_dir(r) / "selected.extxyz"

    def generator_dir(self, r: int) -> Path:
        return self.round_dir(r) / "generator"

    @property
    def scaling_dir(self) -> Path:
        return self.root / "scaling"

    @property
    def plots_dir(self) -> Path:
        return self.root / "plots"

    def is_trained(self, r: int) -> bool:
        """Whether round ``r``'s ensemble finished (trained and calibrated)."""
        return EnsembleManifest.finished(self.ensemble_dir(r))

    def records(self) -> list[RoundRecord]:
        """Records of the finished rounds, in order."""
        out = []
        r = 0
        while self.record_path(r).is_file():
            out.append(RoundRecord.load(self.record_path(r)))
            r += 1
        return out

    def next_round(self) -> int:
        """The first round without a record (0 until pretraining has finished)."""
        return len(self.records())

    def mark_started(self) -> None:
        started = self.root / "started_at"
        if not started.is_file():
            started.write_text(f"{time.time():.0f}\n")

    def hours(self) -> float:
        """Wall time since the campaign first started, in hours."""
        started = self.root / "started_at"
        return (time.time() - float(started.read_text())) / 3600 if started.is_file() else 0.0
