"""What each round of a campaign did (``round-NNN/round.json``), the stop rules that read
those records, and the plan of the next round that the last record's decision makes."""

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sapis.campaign.config import StopConfig
from sapis.campaign.selection import Selection
from sapis.io import write_text_atomically
from sapis.scaling.settings import ScalingConfig
from sapis.surrogate.manifest import EnsembleManifest

NAN = float("nan")


@dataclass
class RoundRecord:
    """One finished round (0 is pretraining).

    Errors are the ensemble's after the round's training, on the test split: force MAE
    in eV/Å, energy MAE in eV. ``accurate``/``candidate``/``failed`` count explored
    frames by the trust window, ``by_source`` the same per exploration source with the
    selected ones; ``labels`` is the labelled rows in the store after the round,
    ``dft_seconds`` the DFT time this round paid, ``seconds`` the wall time per stage
    summed over the ``attempts`` at the round (a killed round's time included).
    ``converged`` counts the ensemble's members whose training converged (validation
    plateau) out of ``members``: fewer means the round's models are compute-limited.
    ``labels``, ``new_labels`` and ``dft_seconds`` count the campaign's (expensive)
    level only; round 0's ``cheap`` holds what cheap pretraining did: its ``level``,
    ``trajectories``, ``frames``, ``test_frames``, ``core_seconds``, trajectories
    ``stopped_early``, and (``compare``) the test errors without it,
    ``test_force_mae_without`` (eV/Å) and ``test_energy_mae_without`` (eV).
    """

    round: int
    labels: int = 0
    new_labels: int = 0
    failed_labels: int = 0
    explored: int = 0
    accurate: int = 0
    candidate: int = 0
    failed: int = 0
    selected: int = 0
    duplicates: int = 0
    by_source: dict[str, dict[str, int]] = field(default_factory=dict)
    max_force_dev_median: float = NAN  # eV/Å, calibrated, over explored frames
    max_force_dev_p95: float = NAN
    window_lo: float = NAN  # the trust window used (eV/Å)
    window_hi: float = NAN
    test_force_mae: float = NAN
    test_energy_mae: float = NAN
    val_force_mae: float = NAN
    n_test: int = 0
    size: str = ""
    parameters: int = 0
    members: int = 0
    converged: int = 0
    policy: str = ""
    dft_seconds: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)
    attempts: int = 1
    cheap: dict = field(default_factory=dict)  # round 0: what the cheap level gave and cost
    decision: dict | None = None  # the scaling decision for the next round
    stop_reason: str | None = None

    def add_selection(self, sel: Selection, *explorations: dict) -> None:
        """Take the selection's counts and uncertainty statistics, and what each source
        proposed from the exploration summaries (``by_source``)."""
        self.explored, self.accurate = sel.explored, sel.accurate
        self.candidate, self.failed = sel.candidate, sel.failed
        self.selected, self.duplicates = len(sel.chosen), sel.duplicates
        self.max_force_dev_median = sel.uncertainty_median
        self.max_force_dev_p95 = sel.uncertainty_p95
        self.window_lo, self.window_hi = sel.lo, sel.hi
        proposed: dict[str, dict[str, int]] = {}
        for summary in explorations:
            proposed.update(summary.get("by_source", {}))
        self.by_source = {
            src: {**proposed.get(src, {}), **sel.by_source.get(src, {})}
            for src in sorted({*proposed, *sel.by_source})
        }

    def fill(self, labels: dict, ensemble: EnsembleManifest, evaluation: dict) -> None:
        """Take the round's label counts (:meth:`Campaign.label_counts`), its ensemble's
        size and validation error, and its test errors (:func:`evaluate_round`)."""
        self.labels = labels["labels"]
        self.new_labels, self.failed_labels = labels["new_labels"], labels["failed_labels"]
        self.dft_seconds = labels["dft_seconds"]
        self.size, self.parameters = ensemble.size, ensemble.parameters
        self.members, self.converged = len(ensemble.members), ensemble.converged_members
        self.val_force_mae = ensemble.best_val_force_mae
        self.test_force_mae = evaluation["force_mae"]
        self.test_energy_mae = evaluation["energy_mae"]
        self.n_test = evaluation["n"]

    @property
    def accurate_fraction(self) -> float:
        return self.accurate / self.explored if self.explored else NAN

    def save(self, path: str | Path) -> None:
        """Write atomically: a reader (or a resumed run) never sees half a record."""
        write_text_atomically(path, json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "RoundRecord":
        return cls(**json.loads(Path(path).read_text()))


def stop_reason(rounds: Sequence[RoundRecord], rules: StopConfig, hours: float = 0.0) -> str | None:
    """Why the campaign should stop after ``rounds``, or None to go on.

    ``hours`` is the wall time since the campaign started.
    """
    if not rounds:
        return None
    last = rounds[-1]
    if last.decision and last.decision.get("action") == "stop":
        return f"scaling law: {last.decision['reason']}"
    if rules.force_mae is not None and last.test_force_mae <= rules.force_mae:
        return (
            f"test force MAE {1000 * last.test_force_mae:.1f} meV/Å reached the target "
            f"{1000 * rules.force_mae:.1f} meV/Å"
        )
    streak = rounds[-rules.accurate_rounds :]
    if len(streak) == rules.accurate_rounds and all(
        not math.isnan(r.accurate_fraction) and r.accurate_fraction >= rules.accurate_fraction
        for r in streak
    ):
        return (
            f"{100 * rules.accurate_fraction:.0f} % or more of explored frames accurate for "
            f"{rules.accurate_rounds} round(s) in a row"
        )
    if rules.max_labels is not None and last.labels >= rules.max_labels:
        return f"label budget spent ({last.labels} of {rules.max_labels})"
    if last.round >= rules.max_rounds:
        return f"round cap reached ({rules.max_rounds} refinement rounds)"
    if rules.wall_hours is not None and hours >= rules.wall_hours:
        return f"wall-time budget spent ({hours:.2f} of {rules.wall_hours:g} h)"
    return None


@dataclass
class RoundPlan:
    """What a refinement round buys: ``labels`` (the label budget) at model ``size``."""

    labels: int
    size: str


def plan_next_round(
    records: Sequence[RoundRecord],
    labels_per_round: int,
    size: str,
    scaling: ScalingConfig,
    labels: int | None = None,
) -> RoundPlan:
    """The next round's label budget and model size: ``labels_per_round`` at the last
    round's size (``size`` before any), unless the last round's scaling decision grows the
    model and the user did not pin it (then no labels that round, unless pinned); an
    explicit ``labels`` (a round triggered by hand) wins over both."""
    size = records[-1].size if records and records[-1].size else size
    budget = labels_per_round
    decision = records[-1].decision if records else None
    if scaling.enabled and decision and decision.get("action") == "model" and not scaling.pin_size:
        size = decision["next_size"]
        if not scaling.pin_labels:
            budget = 0  # this round buys a model, not data
    return RoundPlan(labels=budget if labels is None else labels, size=size)
