"""What a person sees of a running campaign: Prefect artifacts per round, the report in
the campaign folder, and the approval gate before expensive labelling."""

import re

from prefect import pause_flow_run
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from sapis.campaign.campaign import Campaign
from sapis.campaign.folder import CampaignFolder
from sapis.campaign.report import campaign_plots, markdown_report, round_table, write_report


def artifact_key(folder: CampaignFolder, what: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for this campaign."""
    name = re.sub(r"[^a-z0-9]+", "-", folder.root.name.lower()).strip("-") or "campaign"
    return f"{name}-{what}"


def publish_round(campaign: Campaign) -> None:
    """Artifacts of the round just finished: the round table and the report with its
    plots inlined; the folder's report is rewritten too."""
    folder = campaign.folder
    rounds = folder.records()
    last = rounds[-1]
    create_table_artifact(
        round_table(rounds),
        key=artifact_key(folder, "rounds"),
        description=f"{folder.root.name}: rounds so far (errors on the test split)",
    )
    plots = campaign_plots(campaign, rounds)
    create_markdown_artifact(
        markdown_report(rounds, plots, f"{folder.root.name}: round {last.round}", embed=True),
        key=artifact_key(folder, "report"),
        description=f"{folder.root.name}: report after round {last.round}",
    )
    write_report(campaign, plots)


def approval_gate(campaign: Campaign, r: int) -> None:
    """Pause the flow run for approval in the UI when round ``r``'s estimated label cost
    exceeds ``approval.max_core_seconds``; an approval is remembered in the round folder
    (a resumed round does not ask again)."""
    settings, folder = campaign.config.approval, campaign.folder
    approved = folder.round_dir(r) / "approved"
    if settings.max_core_seconds is None or approved.is_file():
        return
    pending = campaign.store.count(status="pending")
    cost = campaign.estimated_core_seconds(pending)
    budget = settings.max_core_seconds
    if cost <= budget:
        return
    create_markdown_artifact(
        f"# Approval needed: round {r}\n\n{pending} labels, estimated "
        f"{cost:,.0f} core-seconds, above the budget of {budget:,.0f}. Resume this flow "
        f"run to label them (Prefect UI: the run's **Resume** button).",
        key=artifact_key(folder, "approval"),
        description=f"round {r} waits for approval",
    )
    print(f"round {r}: {pending} labels ≈ {cost:,.0f} core-s > {budget:,.0f}: paused")
    pause_flow_run(timeout=int(settings.timeout_hours * 3600))
    approved.write_text(f"{pending} labels, {cost:.0f} core-seconds\n")
