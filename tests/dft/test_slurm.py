"""Labels through the `slurm` profile on a real one-node Slurm cluster."""

import pytest
from conftest import jiggled

from sapis.dft.batch import label_pending
from sapis.dft.executors import ExecutorConfig
from sapis.dft.labeller import PySCFLabeller
from sapis.store import DatasetStore

pytestmark = pytest.mark.services


def test_slurm_profile_labels_molecules_in_a_batch_job(slurm_cluster, tmp_path, cheap):
    store = DatasetStore(tmp_path / "data.db")
    store.add(jiggled("H2O", 2) + jiggled("NH3", 1))
    executor = ExecutorConfig(
        profile="slurm",
        queue=slurm_cluster.partition,
        workers=2,
        walltime="00:10:00",
        retries=1,
        run_dir=tmp_path / "runinfo",
    )
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
