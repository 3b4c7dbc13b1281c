"""The active-learning loop as Prefect flows: ``pretrain``, ``refinement_round`` and
``campaign``, which read like the loop of DESIGN.md::

    pretrain ensemble ──► explore (surrogate MD) + generator proposals + dynamics rollouts
    ──► select ──► label ──► fine-tune ──► evaluate ──► scaling decision ──► record ─┐
        ▲                                                                            │
        └───────────────────────── until a stop rule holds ◄─────────────────────────┘

Each flow opens its campaign once (or shares the enclosing flow run's), so rerunning a
killed flow continues the round and stage it was in.
"""

from pathlib import Path

from prefect import flow, get_run_logger

from sapis.campaign.clock import StageClock
from sapis.campaign.report import write_report
from sapis.campaign.rounds import RoundRecord, plan_next_round, stop_reason
from sapis.flows.monitoring import approval_gate, publish_round
from sapis.flows.parameters import CampaignParameters, RoundOverrides, RoundParameters
from sapis.surrogate.manifest import EnsembleManifest
from sapis.tasks import stages
from sapis.tasks.session import Session, folder_session, started_session


def decide(
    session: Session, record: RoundRecord, clock: StageClock, ensemble: Path, evaluation: dict
) -> None:
    """Fill the round's record from the store, the ensemble and its test errors; then let
    the scaling laws decide what the next round buys (when ``scaling.enabled``)."""
    campaign = session.campaign
    record.fill(campaign.label_counts(record.round), EnsembleManifest.read(ensemble), evaluation)
    if campaign.config.scaling.enabled:
        with clock.stage("scaling"):
            record.decision = stages.decide_by_scaling_laws(session, record.round, record.size)
        print(f"round {record.round}: scaling: {record.decision['reason']}")


def finish(session: Session, record: RoundRecord, clock: StageClock) -> RoundRecord:
    """Apply the stop rules, write the round's record with the time of every attempt at
    it (the round is finished from then on) and publish it: artifacts and the report."""
    folder, rules = session.campaign.folder, session.campaign.config.stop
    record.stop_reason = stop_reason([*folder.records(), record], rules, folder.hours())
    record.seconds, record.attempts = dict(clock.seconds), clock.attempts
    stages.record_round(session, record)
    with clock.stage("report"):
        publish_round(session.campaign)
    return record


@flow(name="pretrain", log_prints=True)
def pretrain(folder: str) -> RoundRecord:
    """Round 0: the first dataset (imported labels and/or structures labelled by the
    campaign's labeller) and the first ensemble."""
    with folder_session(folder) as session:
        campaign = session.campaign
        if campaign.folder.record_path(0).is_file():
            return RoundRecord.load(campaign.folder.record_path(0))
        record = RoundRecord(round=0, policy="pretrain")
        clock = StageClock(campaign.folder.clock_path(0)).new_attempt()
        cheap, parent = campaign.config.pretrain.cheap, None
        with clock.stage("select"):
            print(f"pretraining data: {stages.store_pretraining(session)}")
        if cheap is not None:
            with clock.stage("cheap"):
                record.cheap = {"level": campaign.cheap_level, **stages.sample_cheap(session)}
                print(f"cheap level: {record.cheap}")
                parent = stages.pretrain_on_cheap_level(session)
        with clock.stage("label"):
            stages.label_pending_rows(session, 0)
        with clock.stage("train"):
            ensemble = stages.train_round_ensemble(
                session, 0, parent, refit_shifts=parent is not None
            )
        with clock.stage("evaluate"):
            evaluation = stages.evaluate_on_test_set(session, ensemble, 0)
        if cheap is not None and cheap.compare:
            with clock.stage("compare"):
                without = stages.compare_without_cheap(session)
            record.cheap.update(
                test_force_mae_without=without["force_mae"],
                test_energy_mae_without=without["energy_mae"],
            )
        decide(session, record, clock, ensemble, evaluation)
        return finish(session, record, clock)


def run_round(session: Session, overrides: RoundOverrides) -> RoundRecord:
    """One refinement round: explore with the surrogate, add the generator's proposals
    and the dynamics model's rollouts from the MD frames, select, (approve,) label,
    fine-tune, evaluate, and let the scaling laws decide what the next round buys. The
    label budget and model size follow the previous decision."""
    campaign = session.campaign
    r = campaign.folder.next_round()
    if r == 0:
        raise ValueError(f"{campaign.folder.root}: pretrain the campaign before a round")
    parent = campaign.folder.ensemble_dir(r - 1)
    config = campaign.config
    plan = plan_next_round(
        campaign.folder.records(),
        config.selection.labels_per_round,
        config.training.size,
        config.scaling,
        labels=overrides.labels,
    )
    record = RoundRecord(round=r, policy=config.selection.policy)
    clock = StageClock(campaign.folder.clock_path(r)).new_attempt()
    with clock.stage("explore"):
        md, explored = stages.explore_with_surrogate(session, parent, r, overrides.temperatures)
        generated, proposed = stages.propose_with_generator(session, parent, r, md)
        rolled, rollouts = stages.propose_with_dynamics(session, parent, r, md)
    for summary in (explored, proposed, rollouts):  # proposed / valid per source
        for source, counts in summary.get("by_source", {}).items():
            print(f"round {r}: {source} {counts}")
    with clock.stage("select"):
        candidates = md + generated + rolled
        sel = stages.select_for_labelling(session, candidates, r, plan.labels, parent)
    record.add_selection(sel, explored, proposed, rollouts)
    print(
        f"round {r}: {sel.accurate} accurate, {sel.candidate} candidate, {sel.failed} failed; "
        f"{len(sel.chosen)} selected"
    )
    approval_gate(campaign, r)
    with clock.stage("label"):
        stages.label_pending_rows(session, r)
    with clock.stage("train"):
        ensemble = stages.train_round_ensemble(session, r, parent, plan.size)
    with clock.stage("evaluate"):
        evaluation = stages.evaluate_on_test_set(session, ensemble, r)
    decide(session, record, clock, ensemble, evaluation)
    return finish(session, record, clock)


@flow(name="refinement-round", log_prints=True)
def refinement_round(params: RoundParameters) -> RoundRecord:
    """One more round of an existing campaign (by hand, or on a schedule)."""
    with folder_session(params.folder) as session:
        return run_round(session, params.round)  # its report is written as it finishes


@flow(name="campaign", log_prints=True)
def campaign(params: CampaignParameters) -> dict:
    """Pretrain, then refinement rounds until a stop rule holds; write the report."""
    logger = get_run_logger()
    with started_session(params.config, params.overrides()) as session:
        folder, rules = session.campaign.folder, session.campaign.config.stop
        pretrain(str(folder.root))
        while (reason := stop_reason(folder.records(), rules, folder.hours())) is None:
            refinement_round(RoundParameters(folder=str(folder.root), round=params.round))
        report = write_report(session.campaign)
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
