"""One Parsl DataFlowKernel per flow run, shared by every labelling task inside it."""

import contextlib
from collections.abc import Iterator

from parsl.dataflow.dflow import DataFlowKernel

from sapis.campaign import CampaignFolder
from sapis.config import CampaignConfig
from sapis.dft.batch import parsl_session

_ACTIVE: list[DataFlowKernel] = []


@contextlib.contextmanager
def flow_parsl(config: CampaignConfig, folder: CampaignFolder) -> Iterator[None]:
    """Start Parsl for this flow run, unless an enclosing flow run has (a round inside a
    campaign) or labels come from an oracle; clean it up when the flow run ends."""
    if _ACTIVE or config.oracle is not None:
        yield
        return
    run_dir = config.executor.run_dir or folder.root / "runinfo"
    with parsl_session(config.executor, config.dft.threads, run_dir) as dfk:
        _ACTIVE.append(dfk)
        try:
            yield
        finally:
            _ACTIVE.remove(dfk)


def active_dfk() -> DataFlowKernel | None:
    """The flow run's DataFlowKernel, if one is running."""
    return _ACTIVE[-1] if _ACTIVE else None
