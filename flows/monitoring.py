"""What a person sees of a running campaign: Prefect artifacts per round, the report in
the campaign folder, and the approval gate before expensive labelling."""

import re
import shutil

from prefect import pause_flow_run
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from sapis import campaign as lib
from sapis.campaign import CampaignFolder
from sapis.campaign_report import markdown_report, plot_rounds, round_table
from sapis.config import CampaignConfig
from sapis.store import DatasetStore


def artifact_key(folder: CampaignFolder, what: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for this campaign."""
    name = re.sub(r"[^a-z0-9]+", "-", folder.root.name.lower()).strip("-") or "campaign"
    return f"{name}-{what}"


def _plots(config: CampaignConfig, folder: CampaignFolder, rounds) -> dict:
    plots = plot_rounds(
        rounds,
        folder.root / "plots",
        accurate_target=config.stop.accurate_fraction,
        window=(config.selection.lo, config.selection.hi),
    )
    last = rounds[-1].round
    if (folder.root / "plots" / "scaling.png").is_file():
        plots["scaling"] = folder.root / "plots" / "scaling.png"
    for name, source in (
        ("parity", folder.round_dir(last) / "parity.png"),
        ("calibration", folder.ensemble_dir(last) / "calibration.png"),
    ):
        if source.is_file():
            plots[name] = folder.root / "plots" / f"{name}.png"
            shutil.copy(source, plots[name])
    return plots


def _extra(config: CampaignConfig, folder: CampaignFolder) -> str:
    last = folder.records()[-1]
    ensemble = folder.ensemble_dir(last.round)
    return (
        f"\nModels: `{ensemble}` (members as nequip packages `member-k/model.nequip.zip`). "
        f"Dataset: `{config.database}`. Level of theory: {lib.level_of(config)}.\n"
    )


def write_report(config: CampaignConfig, folder: CampaignFolder):
    """``report.md`` with PNG plots in the campaign folder; returns its path."""
    rounds = folder.records()
    plots = _plots(config, folder, rounds) if rounds else {}
    text = markdown_report(
        rounds, plots, f"Campaign {folder.root.name}", extra=_extra(config, folder)
    )
    path = folder.root / "report.md"
    path.write_text(text)
    return path


def publish_round(config: CampaignConfig, folder: CampaignFolder) -> None:
    """Artifacts of the round just finished: the round table and the report with its
    plots inlined; the folder's report is rewritten too."""
    rounds = folder.records()
    last = rounds[-1]
    create_table_artifact(
        round_table(rounds),
        key=artifact_key(folder, "rounds"),
        description=f"{folder.root.name}: rounds so far (errors on the test split)",
    )
    plots = _plots(config, folder, rounds)
    create_markdown_artifact(
        markdown_report(rounds, plots, f"{folder.root.name}: round {last.round}", embed=True),
        key=artifact_key(folder, "report"),
        description=f"{folder.root.name}: report after round {last.round}",
    )
    write_report(config, folder)


def approval_gate(config: CampaignConfig, folder: CampaignFolder, r: int) -> None:
    """Pause the flow run for approval in the UI when round ``r``'s estimated DFT cost
    exceeds ``approval.max_core_seconds``; an approval is remembered in the round folder
    (a resumed round does not ask again)."""
    budget = config.approval.max_core_seconds
    approved = folder.round_dir(r) / "approved"
    if budget is None or approved.is_file():
        return
    store = DatasetStore(config.database)
    pending = store.count(status="pending")
    cost = lib.estimated_core_seconds(store, pending, config.dft.threads)
    if cost <= budget:
        return
    create_markdown_artifact(
        f"# Approval needed: round {r}\n\n{pending} DFT labels, estimated "
        f"{cost:,.0f} core-seconds, above the budget of {budget:,.0f}. Resume this flow "
        f"run to label them (Prefect UI: the run's **Resume** button).",
        key=artifact_key(folder, "approval"),
        description=f"round {r} waits for approval",
    )
    print(f"round {r}: {pending} labels ≈ {cost:,.0f} core-s > {budget:,.0f}: paused")
    pause_flow_run(timeout=int(config.approval.timeout_hours * 3600))
    approved.write_text(f"{pending} labels, {cost:.0f} core-seconds\n")
