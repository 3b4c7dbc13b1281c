"""Label every pending row of a dataset store through Parsl.

Results are written to the store as each label completes, so a killed batch loses
nothing that finished and a rerun labels only what is still pending. Labels that fail
every rung are stored as ``failed`` with the reason; an app that dies for another reason
(a lost worker after Parsl's retries, an unexpected error) leaves its row ``pending``
for the next run and is reported.
"""

import time
import uuid
from collections.abc import Callable
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
from sapis.store import DatasetStore


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


def label_pending(
    store: DatasetStore,
    settings: DFTSettings,
    executor: ExecutorConfig,
    charge: int = 0,
    multiplicity: int = 1,
    run_dir: str | Path | None = None,
    on_result: Callable[[int, LabelResult | None], None] | None = None,
) -> BatchSummary:
    """Label the pending rows of ``store`` on ``executor``; returns a :class:`BatchSummary`.

    ``on_result(row_id, result)`` is called after each row is written (``result`` None
    when the app itself failed), e.g. to advance a progress bar. Every pending structure
    is checked (:func:`~sapis.dft.checks.check_for_dft`) before any DFT starts.
    """
    start = time.monotonic()
    summary = BatchSummary(run=uuid.uuid4().hex[:12])
    todo = store.pending()
    if not todo:
        return summary
    for row_id, atoms in todo:  # rows stored earlier, by other commands, are checked too
        check_for_dft(atoms, charge, multiplicity, settings.basis, f"{store.url} row {row_id}")
    run_dir = Path(run_dir or "runinfo")
    run_dir.mkdir(parents=True, exist_ok=True)
    dfk = DataFlowKernel(parsl_config(executor, settings.threads, run_dir))
    try:
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
    finally:
        dfk.cleanup()
        summary.seconds = time.monotonic() - start
    return summary
