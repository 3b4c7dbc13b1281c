"""The stages of a round as Prefect tasks over :mod:`sapis.campaign`.

Each task takes the flow run's :class:`~sapis.tasks.session.Session` (the campaign and
its Parsl) and small values, and returns small records; the heavy data stays in the
store and the campaign folder. Tasks carry no Prefect cache (``cache_policy=NONE``):
resuming is the campaign folder's job, which knows which stage's output exists.
"""

from pathlib import Path

from ase import Atoms
from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE

from sapis.campaign.cheap import sample_cheap_level
from sapis.campaign.evaluation import evaluate, evaluate_round
from sapis.campaign.exploration import explore_round
from sapis.campaign.generation import generate_round
from sapis.campaign.pretraining import store_pretraining_data
from sapis.campaign.rollouts import dynamics_round
from sapis.campaign.round_selection import select_round
from sapis.campaign.rounds import RoundRecord
from sapis.campaign.scaling import scaling_step
from sapis.campaign.selection import Selection
from sapis.campaign.training import train_cheap, train_round, train_without_cheap
from sapis.tasks.session import Session


@task(name="store-pretraining-data", cache_policy=NONE)
def store_pretraining(session: Session) -> dict:
    """Import the labelled file and store the structures to label (round 0) as pending."""
    return store_pretraining_data(session.campaign)


@task(name="cheap-level-md", cache_policy=NONE)
def sample_cheap(session: Session) -> dict:
    """MD at the cheap level from every seed (Parsl apps when the session has Parsl); its
    frames stored at that level, the fixed test set's frames pending at the expensive one."""
    return sample_cheap_level(
        session.campaign,
        session.dfk,
        on_job=lambda job, t: print(
            f"cheap MD {job.name}: {len(t.frames)} frames, {t.steps} steps in "
            f"{t.seconds:.1f} s ({t.stopped_by})"
        ),
    )


@task(name="train-cheap", cache_policy=NONE)
def pretrain_on_cheap_level(session: Session) -> Path:
    """The ensemble trained on the cheap level's labels."""
    return train_cheap(session.campaign)


@task(name="compare-without-cheap", cache_policy=NONE)
def compare_without_cheap(session: Session) -> dict:
    """Round 0's ensemble trained without the cheap data, and its test errors."""
    campaign = session.campaign
    out = evaluate(train_without_cheap(campaign), campaign.evaluation_set())
    out.pop("parity", None)
    return out


@task(name="explore", cache_policy=NONE)
def explore_with_surrogate(
    session: Session, ensemble: Path, round_: int, temperatures: list[float] | None = None
) -> tuple[list[Atoms], dict]:
    """Surrogate MD (or the labeller's pool) scored by ``ensemble``."""
    return explore_round(session.campaign, ensemble, round_, temperatures)


@task(name="generate", cache_policy=NONE)
def propose_with_generator(
    session: Session, ensemble: Path, round_: int, md_frames: list[Atoms]
) -> tuple[list[Atoms], dict]:
    """The generator's valid proposals (diffusion model or flow, ``generator.kind``; a
    flow's with their log-density for a density weight), scored by ``ensemble`` (none
    when off)."""
    return generate_round(session.campaign, ensemble, round_, md_frames)


@task(name="roll-out", cache_policy=NONE)
def propose_with_dynamics(
    session: Session, ensemble: Path, round_: int, md_frames: list[Atoms]
) -> tuple[list[Atoms], dict]:
    """The dynamics model's valid rollout frames from ``md_frames``, scored by ``ensemble``
    (none when off)."""
    return dynamics_round(session.campaign, ensemble, round_, md_frames)


@task(name="select", cache_policy=NONE)
def select_for_labelling(
    session: Session, candidates: list[Atoms], round_: int, labels: int, ensemble: Path
) -> Selection:
    """Trust window, the policy's picks within the budget (weighted by each candidate's
    density under the round's flow with ``selection.density_weight``); stored as pending."""
    return select_round(session.campaign, candidates, round_, labels, ensemble)


@task(name="label", cache_policy=NONE)
def label_pending_rows(session: Session, round_: int) -> dict:
    """Label every pending row (on the session's Parsl when the labeller is remote), with
    a progress artifact; rows another driver is labelling are waited for; rows whose app
    died stay pending and fail the task."""
    campaign = session.campaign
    total = len(campaign.store.waiting(campaign.level))
    if total == 0:
        return {"labelled": 0, "failed": 0}
    progress = create_progress_artifact(
        0.0, key=f"labels-round-{round_}", description=f"round {round_}: {total} labels"
    )
    done = 0

    def advance(row_id: int, result) -> None:
        nonlocal done
        done += 1
        update_progress_artifact(progress, 100.0 * done / total)

    summary = campaign.label_pending(session.dfk, advance)
    if summary.errors:
        raise RuntimeError(
            f"{len(summary.errors)} labels did not run and stay pending (rerun to retry): "
            + "; ".join(f"row {k}: {v}" for k, v in list(summary.errors.items())[:3])
        )
    return {"labelled": summary.labelled, "failed": summary.failed}


@task(name="train-ensemble", cache_policy=NONE)
def train_round_ensemble(
    session: Session,
    round_: int,
    parent: Path | None,
    size: str | None = None,
    refit_shifts: bool = False,
) -> Path:
    """Round ``round_``'s ensemble unless it is done: fine-tuned from ``parent`` (its
    energy shifts refitted when it was trained at another level), or from scratch at
    ``size`` when that differs from the parent's."""
    return train_round(session.campaign, round_, parent, size, refit_shifts)


@task(name="evaluate", cache_policy=NONE)
def evaluate_on_test_set(session: Session, ensemble: Path, round_: int) -> dict:
    """Test errors of the round's ensemble, and its parity plot."""
    return evaluate_round(session.campaign, ensemble, round_)


@task(name="scaling", cache_policy=NONE)
def decide_by_scaling_laws(session: Session, round_: int, size: str) -> dict:
    """Record the round's training, fit the scaling laws (probing when points are
    lacking), and decide what the next round buys."""
    return scaling_step(session.campaign, round_, size)


@task(name="record-round", cache_policy=NONE)
def record_round(session: Session, record: RoundRecord) -> RoundRecord:
    """Write the round's record: from now on the round counts as finished."""
    record.save(session.campaign.folder.record_path(record.round))
    return record
