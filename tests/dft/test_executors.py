"""The cluster profiles in deploy/ validate and turn into Parsl providers with the
resources they promise (the PBS one is checked by its submit script: no PBS server here)."""

import os
import sys
from pathlib import Path

import pytest
import yaml
from parsl.providers import PBSProProvider, SlurmProvider

from sapis.campaign.config import parse_config
from sapis.dft.executors import parsl_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "parsl"


def load(name: str):
    data = yaml.safe_load((DEPLOY / name).read_text())
    return parse_config({**data, "database": "x.db"}, source=name)


@pytest.mark.parametrize("name", ["local.yaml", "slurm.yaml", "pbs.yaml"])
def test_profiles_build_parsl_configs(name, tmp_path):
    config = load(name)
    parsl = parsl_config(config.executor, config.dft.threads, tmp_path)
    executor = parsl.executors[0]
    assert parsl.retries == 2
    assert executor.max_workers_per_node == config.executor.workers
    assert executor.cores_per_worker == config.dft.threads
    assert f'export PATH="{Path(sys.executable).parent}:$PATH"' in executor.provider.worker_init


def test_slurm_profile_asks_for_workers_times_threads_cores(tmp_path):
    config = load("slurm.yaml")
    provider = parsl_config(config.executor, config.dft.threads, tmp_path).executors[0].provider
    assert isinstance(provider, SlurmProvider)
    assert provider.cores_per_node == 32 and provider.partition == "compute"
    assert provider.walltime == "04:00:00" and provider.max_blocks == 4
    assert "module load gcc" in provider.worker_init


def test_pbs_profile_submits_a_script_with_queue_account_walltime_and_cores(tmp_path, monkeypatch):
    # no PBS server here: a stand-in qsub records what Parsl's real provider submits
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    qsub = bin_dir / "qsub"
    qsub.write_text(
        f'#!/bin/sh\necho "$@" > {tmp_path}/args\ncp "$5" {tmp_path}/job.sh\necho 42.pbs-server\n'
    )
    qsub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    config = load("pbs.yaml")
    provider = parsl_config(config.executor, config.dft.threads, tmp_path).executors[0].provider
    assert isinstance(provider, PBSProProvider)
    provider.script_dir = str(tmp_path)
    assert provider.submit("process_worker_pool.py --fake", 1, "sapis-test") == "42.pbs-server"
    assert (tmp_path / "args").read_text().split()[:4] == ["-q", "workq", "-A", "my-project"]
    script = (tmp_path / "job.sh").read_text()
    assert "#PBS -l walltime=04:00:00" in script
    assert "ncpus=32" in script and "module load gcc" in script
    assert "process_worker_pool.py --fake" in script
