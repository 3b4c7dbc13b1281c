"""The active-learning loop as Prefect flows: ``pretrain``, ``refinement_round`` and
``campaign``, which reads like the loop of DESIGN.md::

    pretrain ensemble ──► explore ──► select ──► label ──► fine-tune ──► evaluate ─┐
                             ▲                                                     │
                             └──────────────── until a stop rule holds ◄───────────┘

Each flow reopens the campaign from its folder and store, so rerunning a killed flow
continues the round and stage it was in.
"""

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from prefect import flow, get_run_logger

from sapis import campaign as lib
from sapis.campaign import CampaignFolder
from sapis.campaign_scaling import plan_next_round
from sapis.config import CampaignConfig
from sapis.flows.monitoring import approval_gate, publish_round, write_report
from sapis.flows.parameters import CampaignParameters, RoundOverrides, RoundParameters
from sapis.rounds import RoundRecord, stop_reason
from sapis.store import DatasetStore
from sapis.tasks import stages
from sapis.tasks.parsl_session import flow_parsl


@contextlib.contextmanager
def timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    """Add the wall time of the block to ``seconds[stage]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = round(seconds.get(stage, 0.0) + time.perf_counter() - started, 2)


def _finish(
    config: CampaignConfig,
    folder: CampaignFolder,
    record: RoundRecord,
    ensemble: Path,
    evaluation: dict,
) -> RoundRecord:
    """Fill the record from the store, the ensemble and the evaluation; write it."""
    import json

    store = DatasetStore(config.database)
    record.new_labels, record.failed_labels, record.dft_seconds = lib.round_labels(
        store, record.round, config.dft.threads
    )
    record.labels = store.count(status="labelled")
    manifest = json.loads((ensemble / "ensemble.json").read_text())
    record.size = manifest["size"]
    record.parameters = manifest["members"][0]["parameters"]
    record.val_force_mae = min(m["val_force_mae"] for m in manifest["members"])
    record.test_force_mae = evaluation["force_mae"]
    record.test_energy_mae = evaluation["energy_mae"]
    record.n_test = evaluation["n"]
    if config.scaling.enabled:
        with timed(record.seconds, "scaling"):
            record.decision = stages.scaling(config, folder, record.round, record.size)
        print(f"round {record.round}: scaling: {record.decision['reason']}")
    record.stop_reason = stop_reason([*folder.records(), record], config.stop, folder.hours())
    stages.record_round(folder, record)
    publish_round(config, folder)
    return record


@flow(name="pretrain", log_prints=True)
def pretrain(folder: str) -> RoundRecord:
    """Round 0: the first dataset (imported labels and/or displaced seeds labelled by
    DFT) and the first ensemble."""
    campaign_folder = CampaignFolder(folder)
    config = campaign_folder.config()
    if campaign_folder.record_path(0).is_file():
        return RoundRecord.load(campaign_folder.record_path(0))
    record = RoundRecord(round=0, policy="pretrain")
    with flow_parsl(config, campaign_folder):
        with timed(record.seconds, "select"):
            stored = stages.store_pretraining_data(config)
        print(f"pretraining data: {stored}")
        with timed(record.seconds, "label"):
            stages.label_batch(config, 0)
        with timed(record.seconds, "train"):
            ensemble = stages.train_ensemble(config, campaign_folder, 0, None)
    with timed(record.seconds, "evaluate"):
        evaluation = stages.evaluate(config, campaign_folder, ensemble, 0)
    return _finish(config, campaign_folder, record, ensemble, evaluation)


def run_round(
    config: CampaignConfig, folder: CampaignFolder, overrides: RoundOverrides
) -> RoundRecord:
    """One refinement round: explore, select, (approve,) label, fine-tune, evaluate, and
    (with ``scaling.enabled``) decide by the scaling laws what the next round buys. The
    label budget and model size follow the previous round's decision."""
    r = folder.next_round()
    if r == 0:
        raise ValueError(f"{folder.root}: pretrain the campaign before a refinement round")
    parent = folder.ensemble_dir(r - 1)
    labels, size = plan_next_round(config, folder.records())
    if overrides.labels is not None:
        labels = overrides.labels
    record = RoundRecord(round=r, policy=config.selection.policy)
    with timed(record.seconds, "explore"):
        explored, info = stages.explore(config, folder, parent, r, overrides.temperatures)
    print(f"round {r}: explored {info}")
    with timed(record.seconds, "select"):
        sel = stages.select(config, folder, explored, r, labels)
    record.explored, record.accurate = sel.explored, sel.accurate
    record.candidate, record.failed = sel.candidate, sel.failed
    record.selected, record.duplicates = len(sel.chosen), sel.duplicates
    proposed = info.get("by_source", {})  # proposed / valid, from exploration
    record.by_source = {
        src: {**proposed.get(src, {}), **sel.by_source.get(src, {})}
        for src in sorted({*proposed, *sel.by_source})
    }
    record.max_force_dev_median, record.max_force_dev_p95 = lib.uncertainty_stats(explored)
    print(
        f"round {r}: {sel.accurate} accurate, {sel.candidate} candidate, {sel.failed} failed; "
        f"{len(sel.chosen)} selected"
    )
    approval_gate(config, folder, r)
    with timed(record.seconds, "label"):
        stages.label_batch(config, r)
    with timed(record.seconds, "train"):
        ensemble = stages.train_ensemble(config, folder, r, parent, size)
    with timed(record.seconds, "evaluate"):
        evaluation = stages.evaluate(config, folder, ensemble, r)
    return _finish(config, folder, record, ensemble, evaluation)


@flow(name="refinement-round", log_prints=True)
def refinement_round(params: RoundParameters) -> RoundRecord:
    """One more round of an existing campaign (by hand, or on a schedule)."""
    folder = CampaignFolder(params.folder)
    config = folder.config()
    with flow_parsl(config, folder):
        record = run_round(config, folder, params.round)
    write_report(config, folder)
    return record


@flow(name="campaign", log_prints=True)
def campaign(params: CampaignParameters) -> dict:
    """Pretrain, then refinement rounds until a stop rule holds; write the report."""
    logger = get_run_logger()
    overrides: dict = {}
    if params.max_rounds is not None:
        overrides["stop"] = {"max_rounds": params.max_rounds}
    if params.policy is not None:
        overrides["selection"] = {"policy": params.policy}
    config, folder = lib.start_folder(params.config, overrides)
    with flow_parsl(config, folder):
        pretrain(str(folder.root))
        while (reason := stop_reason(folder.records(), config.stop, folder.hours())) is None:
            refinement_round(RoundParameters(folder=str(folder.root), round=params.round))
    report = write_report(config, folder)
    last = folder.records()[-1]
    logger.info(f"campaign stopped: {reason}; report {report}")
    return {
        "folder": str(folder.root),
        "report": str(report),
        "rounds": last.round,
        "labels": last.labels,
        "test_force_mae": last.test_force_mae,
        "test_energy_mae": last.test_energy_mae,
        "stop_reason": reason,
    }
