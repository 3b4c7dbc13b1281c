"""The stages of a round as Prefect tasks over :mod:`sapis.campaign`."""

from pathlib import Path

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE

from sapis import campaign
from sapis.campaign import CampaignFolder
from sapis.config import CampaignConfig
from sapis.rounds import RoundRecord
from sapis.selection import Selection
from sapis.store import DatasetStore
from sapis.tasks.parsl_session import active_dfk


@task(name="store-pretraining-data", cache_policy=NONE)
def store_pretraining_data(config: CampaignConfig) -> dict:
    """Import the labelled file and store the displaced seeds as pending (round 0)."""
    labelled, to_label = campaign.pretraining_structures(config)
    store = DatasetStore(config.database)
    level = config.pretrain.labelled_level or campaign.level_of(config)
    imported = store.add(labelled, fractions=config.split, level=level) if labelled else None
    pending = store.add(to_label, fractions=config.split)
    return {
        "imported": len(imported.added) if imported else 0,
        "new_pending": len(pending.added),
        "already_stored": pending.duplicates + (imported.duplicates if imported else 0),
    }


@task(name="label-batch", cache_policy=NONE)
def label_batch(config: CampaignConfig, round_: int) -> dict:
    """Label every pending row (DFT through the flow run's Parsl, or the oracle), with a
    progress artifact; rows whose app died stay pending and fail the task."""
    from sapis.dft.batch import label_pending

    store = DatasetStore(config.database)
    total = store.count(status="pending")
    if total == 0:
        return {"labelled": 0, "failed": 0, "dft_seconds": 0.0}
    progress = create_progress_artifact(
        0.0, key=f"labels-round-{round_}", description=f"round {round_}: {total} labels"
    )
    done = 0

    def advance(row_id: int, result) -> None:
        nonlocal done
        done += 1
        update_progress_artifact(progress, 100.0 * done / total)

    if config.oracle is not None:
        out = campaign.label_with_oracle(store, config.oracle, advance)
        return {"labelled": out["labelled"], "failed": 0, "dft_seconds": 0.0}
    summary = label_pending(
        store,
        config.dft,
        config.executor,
        config.system.charge,
        config.system.multiplicity,
        run_dir=config.executor.run_dir or Path(config.folder) / "runinfo",
        on_result=advance,
        dfk=active_dfk(),
    )
    if summary.errors:
        raise RuntimeError(
            f"{len(summary.errors)} labels did not run and stay pending (rerun to retry): "
            + "; ".join(f"row {k}: {v}" for k, v in list(summary.errors.items())[:3])
        )
    return {
        "labelled": summary.labelled,
        "failed": summary.failed,
        "dft_seconds": summary.label_seconds * config.dft.threads,
    }


@task(name="train-ensemble", cache_policy=NONE)
def train_ensemble(
    config: CampaignConfig,
    folder: CampaignFolder,
    round_: int,
    parent: Path | None,
    size: str | None = None,
) -> Path:
    """Train round ``round_``'s ensemble unless it is done: fine-tuned from ``parent``, or
    from scratch at ``size`` when that differs from the parent's."""
    store = DatasetStore(config.database)
    return campaign.train_round(config, folder, store, round_, parent, size)


@task(name="scaling", cache_policy=NONE)
def scaling(config: CampaignConfig, folder: CampaignFolder, round_: int, size: str) -> dict:
    """Record the round's training, fit the scaling laws (probing when points are
    lacking), and decide what the next round buys."""
    from sapis.campaign_scaling import scaling_step

    return scaling_step(config, folder, round_, size)


@task(name="explore", cache_policy=NONE)
def explore(
    config: CampaignConfig,
    folder: CampaignFolder,
    ensemble: Path,
    round_: int,
    temperatures: list[float] | None = None,
) -> tuple[Path, dict]:
    """Surrogate MD (or the oracle's pool) predicted by ``ensemble``: candidates file."""
    return campaign.explore_round(config, folder, ensemble, round_, temperatures)


@task(name="select", cache_policy=NONE)
def select(
    config: CampaignConfig,
    folder: CampaignFolder,
    explored: Path,
    round_: int,
    labels: int | None = None,
) -> Selection:
    """Trust window, diversity, budget; the chosen structures stored as pending."""
    store = DatasetStore(config.database)
    return campaign.select_round(config, folder, store, explored, round_, labels)


@task(name="evaluate", cache_policy=NONE)
def evaluate(config: CampaignConfig, folder: CampaignFolder, ensemble: Path, round_: int) -> dict:
    """Test errors of the round's ensemble, and its parity plot."""
    from sapis.campaign_report import plot_parity

    store = DatasetStore(config.database)
    out = campaign.evaluate(ensemble, campaign.evaluation_set(config, store))
    parity = out.pop("parity", None)
    if parity is not None:
        plot_parity(
            *parity,
            folder.round_dir(round_) / "parity.png",
            title=f"round {round_}: ensemble mean on {out['n']} test structures",
        )
    return out


@task(name="record-round", cache_policy=NONE)
def record_round(folder: CampaignFolder, record: RoundRecord) -> RoundRecord:
    """Write the round's record: from now on the round counts as finished."""
    record.save(folder.record_path(record.round))
    return record
