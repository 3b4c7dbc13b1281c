"""Label every pending row of a dataset store with one labeller.

Results are written to the store as each label completes, so a killed batch loses
nothing that finished and a rerun labels only what is still pending. Labels that fail
are stored as ``failed`` with the reason; an app that dies for another reason (a lost
worker after Parsl's retries, an unexpected error) leaves its row ``pending`` for the
next run and is reported. A labeller that is worth sending to workers (``remote``) runs
one Parsl app per row; the others label in this process.
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

from sapis.dft.executors import ExecutorConfig, parsl_config
from sapis.dft.protocol import Labeller
from sapis.labels import LabelResult
from sapis.store import DatasetStore, new_run_id

OnResult = Callable[[int, LabelResult | None], None]


def _label_one(labeller: Labeller, atoms: Atoms) -> LabelResult:
    return labeller.label([atoms])[0]


@dataclass
class BatchSummary:
    """What a batch did. ``errors`` maps row ids left pending to what went wrong;
    ``label_seconds`` is the labels' own wall time (without waiting or transfer)."""

    run: str
    submitted: int = 0
    labelled: int = 0
    failed: int = 0
    errors: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0
    label_seconds: float = 0.0

    def add(self, result: LabelResult) -> None:
        self.label_seconds += result.seconds
        if result.converged:
            self.labelled += 1
        else:
            self.failed += 1


@contextlib.contextmanager
def parsl_session(
    executor: ExecutorConfig, cores_per_label: int, run_dir: str | Path
) -> Iterator[DataFlowKernel]:
    """A private Parsl DataFlowKernel for many batches (a whole flow run), cleaned up on
    exit: workers start once instead of once per batch. Parsl's logs go to ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Parsl logs everything at DEBUG into run_dir/parsl.log; keep it out of the console
    # handlers of whoever configured the root logger (Prefect does)
    logging.getLogger("parsl").propagate = False
    dfk = DataFlowKernel(parsl_config(executor, cores_per_label, run_dir))
    try:
        yield dfk
    finally:
        dfk.cleanup()


def label_pending(
    store: DatasetStore,
    labeller: Labeller,
    executor: ExecutorConfig | None = None,
    on_result: OnResult | None = None,
    dfk: DataFlowKernel | None = None,
) -> BatchSummary:
    """Label the rows of ``store`` pending at the labeller's level (and those pending at
    none in particular) with ``labeller``; returns a :class:`BatchSummary`.

    Every pending structure is checked by the labeller before any label starts (rows
    stored earlier, by other commands, too). A ``remote`` labeller runs on ``dfk`` (from
    :func:`parsl_session`), or on a DataFlowKernel started for this batch from
    ``executor`` and cleaned up after it. ``on_result(row_id, result)`` is called after
    each row is written (``result`` None when the app itself failed), e.g. to advance a
    progress bar.
    """
    start = time.monotonic()
    summary = BatchSummary(run=new_run_id())
    todo = store.pending(labeller.level)
    for row_id, atoms in todo:
        labeller.check(atoms, f"{store.safe_url} row {row_id}")
    if not todo:
        return summary
    summary.submitted = len(todo)
    with contextlib.ExitStack() as stack:
        if not labeller.remote:
            results = ((row_id, _label_one(labeller, atoms)) for row_id, atoms in todo)
        else:
            if dfk is None:
                if executor is None or executor.run_dir is None:
                    raise ValueError("give a running dfk, or an executor with its run_dir")
                session = parsl_session(executor, labeller.cores, executor.run_dir)
                dfk = stack.enter_context(session)
            results = _on_workers(todo, dfk, labeller, summary.errors)
        for row_id, result in results:
            if result is not None:
                store.record(row_id, result, summary.run)
                summary.add(result)
            if on_result is not None:
                on_result(row_id, result)
    summary.seconds = time.monotonic() - start
    return summary


def _on_workers(todo, dfk, labeller, errors: dict[int, str]):
    """(row id, result) as each Parsl app finishes; an app that died gives None, with
    what went wrong in ``errors``."""
    app = python_app(_label_one, data_flow_kernel=dfk)
    futures = {app(labeller, atoms): row_id for row_id, atoms in todo}
    for future in as_completed(futures):
        row_id = futures[future]
        try:
            result = future.result()
        except Exception as err:
            errors[row_id] = f"{type(err).__name__}: {err}"
            result = None
        yield row_id, result
