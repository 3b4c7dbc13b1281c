"""One campaign session per flow run: the :class:`~sapis.campaign.Campaign` opened once,
and Parsl started once when its labeller runs on workers, shared by every task inside
and by the flow runs nested in it (a campaign's pretraining and rounds)."""

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from parsl.dataflow.dflow import DataFlowKernel

from sapis.campaign.campaign import Campaign, folder_of
from sapis.dft.batch import parsl_session


@dataclass
class Session:
    campaign: Campaign
    dfk: DataFlowKernel | None = None


_ACTIVE: list[Session] = []


@contextlib.contextmanager
def campaign_session(campaign: Campaign) -> Iterator[Session]:
    """Make ``campaign`` the active one, with Parsl running for it if its labeller is
    remote or it samples a cheap level (one trajectory per app); cleaned up on exit."""
    with contextlib.ExitStack() as stack:
        session = Session(campaign)
        labeller, executor = campaign.labeller, campaign.config.executor
        if labeller.remote or campaign.config.pretrain.cheap is not None:
            dfk = parsl_session(executor, labeller.cores, executor.run_dir)
            session.dfk = stack.enter_context(dfk)
        _ACTIVE.append(session)
        try:
            yield session
        finally:
            _ACTIVE.remove(session)


def find_session(folder: str | Path) -> Session | None:
    """The active session of the campaign in ``folder``, if there is one."""
    root = Path(folder).resolve()
    return next((s for s in reversed(_ACTIVE) if s.campaign.folder.root == root), None)


@contextlib.contextmanager
def _active_or_new(folder: Path, open_campaign: Callable[[], Campaign]) -> Iterator[Session]:
    active = find_session(folder)
    if active is not None:
        yield active
        return
    with campaign_session(open_campaign()) as session:
        yield session


def folder_session(folder: str | Path) -> contextlib.AbstractContextManager[Session]:
    """The active session of the campaign in ``folder``, or a new one for it (the
    campaign reopened from its folder)."""
    return _active_or_new(Path(folder), lambda: Campaign.open(folder))


def started_session(
    config: str | Path, overrides: dict | None = None
) -> contextlib.AbstractContextManager[Session]:
    """The session of the campaign that a file (or folder) describes: the active one of
    its folder (the command line starts one to check everything before Prefect starts),
    or a new one from :meth:`Campaign.start`."""
    return _active_or_new(folder_of(config, overrides), lambda: Campaign.start(config, overrides))
