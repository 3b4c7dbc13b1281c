"""Labels through the `slurm` profile on a real one-node Slurm cluster, and a block's
job cancelled mid-batch."""

import subprocess
import threading
import time

import pytest
from conftest import jiggled
from parsl.dataflow.dflow import DataFlowKernel

from sapis.dft.batch import AUDIT_ENV, label_pending
from sapis.dft.executors import ExecutorConfig, parsl_config
from sapis.dft.labeller import PySCFLabeller
from sapis.dft.settings import DFTSettings
from sapis.store import DatasetStore

pytestmark = pytest.mark.services


def slurm_executor(cluster, tmp_path) -> ExecutorConfig:
    """Blocks of one node on the test cluster, two labels at once, one retry."""
    return ExecutorConfig(
        profile="slurm",
        queue=cluster.partition,
        workers=2,
        walltime="00:10:00",
        retries=1,
        run_dir=tmp_path / "runinfo",
    )


def test_slurm_profile_labels_molecules_in_a_batch_job(slurm_cluster, tmp_path, cheap):
    store = DatasetStore(tmp_path / "data.db")
    store.add(jiggled("H2O", 2) + jiggled("NH3", 1))
    executor = slurm_executor(slurm_cluster, tmp_path)
    summary = label_pending(store, PySCFLabeller(cheap), executor)
    assert summary.labelled == 3 and not summary.errors
    rows = list(store.db.select())
    assert all(r.status == "labelled" for r in rows)
    jobs = {r.data["dft"]["batch_job"] for r in rows}
    assert len(jobs) == 1 and None not in jobs  # all three ran inside one Slurm job
    scripts = [
        p
        for p in (tmp_path / "runinfo").rglob("submit_scripts/parsl.slurm.*")
        if p.suffix not in (".stdout", ".stderr")
    ]
    assert len(scripts) == 1
    text = scripts[0].read_text()
    assert f"#SBATCH --partition={slurm_cluster.partition}" in text
    assert "#SBATCH --cpus-per-task=2" in text  # 2 workers × 1 thread per label


@pytest.mark.slow  # ~90 s: Parsl polls Slurm for the state of its jobs once a minute
def test_a_cancelled_block_is_replaced_and_each_row_labelled_once(
    slurm_cluster, tmp_path, monkeypatch
):
    n = 4
    store = DatasetStore(tmp_path / "data.db")
    store.add(jiggled("CH3CH2OH", n, seed=3))  # PBE/STO-3G ethanol: ~2 s a label
    audit = tmp_path / "audit.log"
    monkeypatch.setenv(AUDIT_ENV, str(audit))  # sbatch hands the environment to the job
    labeller = PySCFLabeller(DFTSettings(basis="sto-3g", density_fit=False))
    executor = slurm_executor(slurm_cluster, tmp_path)
    config = parsl_config(executor, labeller.cores, executor.run_dir)
    htex = config.executors[0]
    htex.heartbeat_threshold = 15  # its lost block's tasks fail (and are retried) in 15 s, not 120
    dfk = DataFlowKernel(config)
    outcome = {}
    driver = threading.Thread(
        target=lambda: outcome.update(
            summary=label_pending(DatasetStore(store.url), labeller, executor, dfk=dfk)
        )
    )
    try:
        driver.start()
        while not audit.exists() or not audit.read_text():  # a label runs in the block
            assert driver.is_alive(), outcome
            time.sleep(0.05)
        (job,) = jobs(slurm_cluster)
        subprocess.run(["scancel", job], check=True, env=slurm_cluster.env())
        driver.join(timeout=300)
        assert not driver.is_alive(), "the batch did not end after its block was cancelled"
    finally:
        dfk.cleanup()
    summary = outcome["summary"]
    assert summary.labelled == n and not summary.errors
    rows = list(store.db.select())
    assert all(r.status == "labelled" and r.run == summary.run for r in rows)
    assert all(r.get("owner") is None for r in rows)
    later = {r.data["dft"]["batch_job"] for r in rows} - {job}
    assert later, "no row was labelled by a new block"
    started = [int(line.split()[0]) for line in audit.read_text().splitlines()]
    assert set(started) == {r.id for r in rows}
    assert len(started) > n  # the labels the cancelled job was running were run again


def jobs(cluster) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=cluster.env()
    )
    return out.stdout.split()
