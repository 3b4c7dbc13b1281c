"""Settings of the ``scaling:`` section: how the scaling laws steer a campaign."""

from pydantic import Field, field_validator

from sapis.config import Strict


class ScalingConfig(Strict):
    """Scaling laws that steer the campaign.

    After each round's training the joint law L(N, P) is fitted to every training of the
    campaign (validation force MAE); with too few points, probes train single models on
    ``fractions`` of the data at the current size and its neighbour (``probes``), each
    with the campaign's training settings (to convergence, without bootstrap), so the
    fit sees converged errors; ``probe_minutes``, if set, caps their wall time in all.
    The decision compares ``selection.labels_per_round`` more labels with the next size,
    per core-second, and the next round follows it: a larger model (no new labels that
    round) or more data. ``pin_size`` / ``pin_labels`` keep the
    configured size / label budget whatever the decision; the campaign stops when the best
    predicted gain is below ``min_gain`` (eV/Å) or the error is within ``floor_margin``
    (relative) of the fitted floor.
    """

    enabled: bool = True
    pin_size: bool = False
    pin_labels: bool = False
    probes: bool = True
    probe_minutes: float | None = Field(None, gt=0.0)
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
