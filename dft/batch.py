"""Label every pending row of a dataset store through Parsl.

Results are written to the store as each label completes, so a killed batch loses
nothing that finished and a rerun labels only what is still pending. Labels that fail
every rung are stored as ``failed`` with the reason; an app that dies for another reason
(a lost worker after Parsl's retries, an unexpected error) leaves its row ``pending``
for the next run and is reported.
"""

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path

from ase import Atoms
from parsl import python_app
from parsl.dataflow.dflow import DataFlowKernel

from sapis.config import DFTSettings, ExecutorConfig
from sapis.dft.checks import check_for_dft
from sapis.dft.executors import parsl_config
from sapis.dft.labeller import LabelResult, label
from sapis.store import DatasetStore, new_run_id


def _label(atoms: Atoms, settings: DFTSettings, charge: int, multiplicity: int) -> LabelResult:
    return label(atoms, settings, charge, multiplicity)


@dataclass
class BatchSummary:
    """What a batch did. ``errors`` maps row ids left pending to what went wrong."""

    run: str
    submitted: int = 0
    labelled: int = 0
    failed: int = 0
    errors: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0
    label_seconds: float = 0.0


@contextlib.contextmanager
def parsl_session(
    executor: ExecutorConfig, threads: int, run_dir: str | Path
) -> Iterator[DataFlowKernel]:
    """A private Parsl DataFlowKernel for many batches (a whole flow run), cleaned up on
    exit: workers start once instead of once per batch."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Parsl logs everything at DEBUG into run_dir/parsl.log; keep it out of the console
    # handlers of whoever configured the root logger (Prefect does)
    logging.getLogger("parsl").propagate = False
    dfk = DataFlowKernel(parsl_config(executor, threads, run_dir))
    try:
        yield dfk
    finally:
        dfk.cleanup()


def label_pending(
    store: DatasetStore,
    settings: DFTSettings,
    executor: ExecutorConfig,
    charge: int = 0,
    multiplicity: int = 1,
    run_dir: str | Path | None = None,
    on_result: Callable[[int, LabelResult | None], None] | None = None,
    dfk: DataFlowKernel | None = None,
) -> BatchSummary:
    """Label the pending rows of ``store`` on ``executor``; returns a :class:`BatchSummary`.

    ``on_result(row_id, result)`` is called after each row is written (``result`` None
    when the app itself failed), e.g. to advance a progress bar. Every pending structure
    is checked (:func:`~sapis.dft.checks.check_for_dft`) before any DFT starts. With
    ``dfk`` (from :func:`parsl_session`) the labels run there; otherwise a DataFlowKernel
    is started for this batch and cleaned up after it.
    """
    start = time.monotonic()
    summary = BatchSummary(run=new_run_id())
    todo = store.pending()
    if not todo:
        return summary
    for row_id, atoms in todo:  # rows stored earlier, by other commands, are checked too
        check_for_dft(atoms, charge, multiplicity, settings.basis, f"{store.url} row {row_id}")
    with contextlib.ExitStack() as stack:
        if dfk is None:
            session = parsl_session(executor, settings.threads, run_dir or "runinfo")
            dfk = stack.enter_context(session)
        _run(store, todo, dfk, settings, charge, multiplicity, summary, on_result)
    summary.seconds = time.monotonic() - start
    return summary


def _run(store, todo, dfk, settings, charge, multiplicity, summary, on_result) -> None:
    app = python_app(_label, data_flow_kernel=dfk)
    futures = {app(atoms, settings, charge, multiplicity): rid for rid, atoms in todo}
    summary.submitted = len(futures)
    for future in as_completed(futures):
        rid = futures[future]
        try:
            result = future.result()
        except Exception as err:
            summary.errors[rid] = f"{type(err).__name__}: {err}"
            result = None
        else:
            store.record(rid, result, summary.run)
            summary.label_seconds += result.seconds
            if result.converged:
                summary.labelled += 1
            else:
                summary.failed += 1
        if on_result is not None:
            on_result(rid, result)
