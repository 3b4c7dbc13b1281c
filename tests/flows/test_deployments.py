"""The Prefect deployments: deploy/prefect.yaml and those `sapis serve` serves point at
the real flows with parameters the flows accept."""

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_prefect_yaml_deployments_point_at_real_flows_with_valid_parameters():
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((DEPLOY / "prefect.yaml").read_text())
    names = set()
    for deployment in spec["deployments"]:
        flow = load_flow_from_entrypoint(
            str(DEPLOY.parent / deployment["entrypoint"]), use_placeholder_flow=False
        )
        names.add(flow.name)
        flow.validate_parameters(deployment["parameters"])  # raises on a wrong form
        for schedule in deployment.get("schedules", []):
            CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    assert names == {"campaign", "refinement-round"}


def test_served_deployments_carry_the_campaign_and_the_schedule(tmp_path):
    from sapis.campaign.folder import CampaignFolder
    from sapis.flows.deployments import served_deployments

    campaign, round_ = served_deployments(CampaignFolder(tmp_path / "ethanol"), "0 2 * * *")
    assert campaign.name == "ethanol-campaign" and round_.name == "ethanol-round"
    assert round_.parameters == {"params": {"folder": str(tmp_path / "ethanol")}}
    assert round_.schedules[0].schedule.cron == "0 2 * * *"
    assert campaign.parameters["params"]["config"] == str(tmp_path / "ethanol")
