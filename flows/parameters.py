"""Flow parameters: pydantic models, which the Prefect UI turns into forms."""

from typing import Literal

from pydantic import BaseModel, Field


class RoundOverrides(BaseModel):
    """What a person may change for a round without editing the campaign file."""

    labels: int | None = Field(None, ge=0, description="DFT labels this round (budget).")
    temperatures: list[float] | None = Field(
        None, description="MD temperatures in K for this round's exploration."
    )


class CampaignParameters(BaseModel):
    """A campaign run: the YAML file (or a campaign folder holding ``campaign.yaml``)."""

    config: str = Field(description="Campaign YAML file, or a campaign folder.")
    max_rounds: int | None = Field(None, ge=0, description="Override stop.max_rounds.")
    policy: Literal["uncertainty", "random"] | None = Field(
        None, description="Override selection.policy."
    )
    round: RoundOverrides = Field(default_factory=RoundOverrides)

    def overrides(self) -> dict:
        """The campaign file's fields these parameters replace (nested sections)."""
        out: dict = {}
        if self.max_rounds is not None:
            out["stop"] = {"max_rounds": self.max_rounds}
        if self.policy is not None:
            out["selection"] = {"policy": self.policy}
        return out


class RoundParameters(BaseModel):
    """One refinement round of an existing campaign, triggered by hand or on a schedule."""

    folder: str = Field(description="Campaign folder (holds campaign.yaml).")
    round: RoundOverrides = Field(default_factory=RoundOverrides)
