"""Deployments served from one process (``sapis serve``): no work pool needed."""

from prefect.deployments.runner import RunnerDeployment

from sapis.campaign.folder import CampaignFolder
from sapis.flows.campaign import campaign, refinement_round


def served_deployments(folder: CampaignFolder, cron: str | None = None) -> list[RunnerDeployment]:
    """``<name>-campaign`` (run by hand) and ``<name>-round`` (by hand, or on ``cron``),
    both pointed at the campaign in ``folder``."""
    name = folder.root.name
    return [
        campaign.to_deployment(
            name=f"{name}-campaign", parameters={"params": {"config": str(folder.root)}}
        ),
        refinement_round.to_deployment(
            name=f"{name}-round", parameters={"params": {"folder": str(folder.root)}}, cron=cron
        ),
    ]
