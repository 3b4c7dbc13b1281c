"""Label every pending row of a dataset store with one labeller.

Results are written to the store as each label completes, so a killed batch loses
nothing that finished and a rerun labels only what is still pending. Labels that fail
are stored as ``failed`` with the reason; an app that dies for another reason (a lost
worker after Parsl's retries, an unexpected error) gives its row back (``pending``) for
the next run and is reported. A labeller that is worth sending to workers (``remote``)
runs one Parsl app per row; the others label in this process.

A row is claimed just before its label is submitted (status ``running``, see
:mod:`sapis.claims`), a few more than the workers can run at once, and its claim is
renewed by a heartbeat while the batch runs: drivers sharing a store (two ``sapis
label``, two campaigns, a campaign and a round) share the rows out and never label one
twice. Claims left at the end (Ctrl-C, an exception) are given back; those of a driver
killed outright lapse, and the next driver takes them over.
"""

import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path

from ase import Atoms
from parsl import python_app
from parsl.dataflow.dflow import DataFlowKernel

from sapis.background import every
from sapis.claims import Owner, lease_seconds
from sapis.dft.executors import ExecutorConfig, parsl_config
from sapis.dft.protocol import Labeller
from sapis.labels import LabelResult
from sapis.store import DatasetStore, new_run_id

OnResult = Callable[[int, LabelResult | None], None]
log = logging.getLogger(__name__)

#: Environment variable naming a file each label appends one line to as it starts:
#: ``row-id pid host`` (tests and audits count what was computed, and where).
AUDIT_ENV = "SAPIS_LABEL_AUDIT"


def _label_one(labeller: Labeller, atoms: Atoms, row_id: int | None = None) -> LabelResult:
    audit = os.environ.get(AUDIT_ENV)
    if audit:
        with open(audit, "a") as out:  # one short append per label
            out.write(f"{row_id} {os.getpid()} {socket.gethostname()}\n")
    return labeller.label([atoms])[0]


@dataclass
class BatchSummary:
    """What a batch did. ``submitted`` rows were claimed and labelled here; ``errors``
    maps row ids given back (pending) to what went wrong; ``label_seconds`` is the
    labels' own wall time (without waiting or transfer). Rows of other drivers:
    ``busy`` were held by another live driver when the batch ended (not waited for),
    ``elsewhere`` were labelled by another driver while this one waited or before it
    got to them, ``taken_over`` were lapsed claims this batch labelled, and ``lost``
    were labelled here but dropped because another driver had taken the row over."""

    run: str
    submitted: int = 0
    labelled: int = 0
    failed: int = 0
    errors: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0
    label_seconds: float = 0.0
    busy: int = 0
    elsewhere: int = 0
    taken_over: int = 0
    lost: int = 0

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
    wait_for_others: bool = True,
    lease: float | None = None,
) -> BatchSummary:
    """Label the rows of ``store`` waiting at the labeller's level (and those waiting at
    none in particular) with ``labeller``; returns a :class:`BatchSummary`.

    Every waiting structure is checked by the labeller before any label starts (rows
    stored earlier, by other commands, and rows other drivers hold, too). Rows are
    claimed for ``lease`` seconds (default :func:`~sapis.claims.lease_seconds`), renewed
    every third of it. Rows another live driver holds are skipped; with
    ``wait_for_others`` the batch then waits until that driver has labelled them (or
    its claims lapse, and labels them itself), so that every row waiting at the start
    is labelled, failed or reported when it returns. A ``remote`` labeller runs on
    ``dfk`` (from :func:`parsl_session`), or on a DataFlowKernel started for this batch
    from ``executor`` and cleaned up after it. ``on_result(row_id, result)`` is called
    after each row this batch claimed is written (``result`` None when the app failed
    or its result was dropped), e.g. to advance a progress bar.
    """
    start = time.monotonic()
    owner = Owner(new_run_id())
    summary = BatchSummary(run=owner.run)
    lease = lease_seconds() if lease is None else lease
    now = time.time()
    waiting = store.waiting(labeller.level)
    for row_id, atoms, _ in waiting:
        labeller.check(atoms, f"{store.safe_url} row {row_id}")
    structures = {row_id: atoms for row_id, atoms, _ in waiting}
    todo = deque(i for i, _, held in waiting if held is None or held.lapsed(now))
    busy = {i for i, _, held in waiting if held is not None and not held.lapsed(now)}
    if not todo and not (busy and wait_for_others):
        summary.busy = len(busy)
        return summary
    with contextlib.ExitStack() as stack:
        if labeller.remote:
            if dfk is None:
                if executor is None or executor.run_dir is None:
                    raise ValueError("give a running dfk, or an executor with its run_dir")
                session = parsl_session(executor, labeller.cores, executor.run_dir)
                dfk = stack.enter_context(session)
            app = python_app(_label_one, data_flow_kernel=dfk)
            window = _window(executor, len(structures))

            def submit(row_id: int) -> Future:
                return app(labeller, structures[row_id], row_id)
        else:
            window = 1

            def submit(row_id: int) -> Future:
                future: Future = Future()
                future.set_result(_label_one(labeller, structures[row_id], row_id))
                return future

        stack.enter_context(_heartbeat(store.url, owner, lease))
        stack.callback(_give_back, store, owner, summary)
        running: dict[Future, int] = {}
        while True:
            _fill(store, owner, lease, labeller.level, todo, busy, running, window, submit, summary)
            if not running:
                if not (busy and wait_for_others):
                    break
                time.sleep(min(lease / 3, 5.0))  # until the other drivers finish or lapse
                todo.extend(sorted(busy))
                busy.clear()
                continue
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                _store_result(store, owner, future, running.pop(future), summary, on_result)
    summary.busy = len(busy)
    summary.seconds = time.monotonic() - start
    return summary


def _window(executor: ExecutorConfig | None, rows: int) -> int:
    """How many rows to hold claimed at once: twice the labels the workers run at once,
    so that a worker finds the next label queued (all rows without an executor)."""
    if executor is None:
        return rows
    per_block = executor.workers
    if executor.profile in ("slurm", "pbs"):
        per_block *= executor.nodes * executor.max_blocks
    return 2 * per_block


def _fill(store, owner, lease, level, todo, busy, running, window, submit, summary) -> None:
    """Claim rows from ``todo`` and submit them until ``window`` are running; rows held
    by a live claim of another driver go to ``busy``."""
    while todo and len(running) < window:
        chunk = [todo.popleft() for _ in range(min(window - len(running), len(todo)))]
        outcome = store.claim(chunk, owner, lease, level)
        busy.update(outcome.busy)
        summary.elsewhere += len(outcome.done)
        summary.taken_over += len(outcome.taken_over)
        for row_id in outcome.claimed:
            summary.submitted += 1
            try:
                running[submit(row_id)] = row_id
            except Exception as err:  # a labeller error in this process
                future: Future = Future()
                future.set_exception(err)
                running[future] = row_id


def _store_result(store, owner, future: Future, row_id: int, summary, on_result) -> None:
    """Write one finished label; an app that died gives its row back (pending)."""
    try:
        result = future.result()
    except Exception as err:
        summary.errors[row_id] = f"{type(err).__name__}: {err}"
        store.release(owner, [row_id])
        result = None
    if result is not None:
        if store.record(row_id, result, summary.run):
            summary.add(result)
        else:
            summary.lost += 1
            result = None
    if on_result is not None:
        on_result(row_id, result)


def _give_back(store: DatasetStore, owner: Owner, summary: BatchSummary) -> None:
    """Release every claim ``owner`` still holds (the batch stopped early)."""
    left = store.release(owner)
    if left:
        log.warning("%s: %d claimed rows given back unlabelled", summary.run, len(left))


def _heartbeat(url: str, owner: Owner, lease: float):
    """Renew ``owner``'s claims every third of ``lease`` in a thread (with a connection
    of its own) while the block runs."""
    stores: list[DatasetStore] = []

    def beat() -> None:
        try:
            stores[:] = stores or [DatasetStore(url)]
            stores[0].renew(owner, lease)
        except Exception as err:  # the next beat tries again; the lease is long
            log.warning("%s: could not renew its claims: %s", owner.run, err)

    return every(lease / 3, beat, f"heartbeat-{owner.run}")
