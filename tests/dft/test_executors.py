"""The cluster profiles in deploy/ validate and turn into Parsl providers with the
resources they promise (the PBS one is checked by its submit script: no PBS server here)."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from parsl.providers import PBSProProvider, SlurmProvider
from typer.testing import CliRunner

from sapis.campaign.config import parse_config
from sapis.cli import app
from sapis.dft.executors import ExecutorConfig, parsl_config, worker_init

runner = CliRunner()

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
    path_line = f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"'
    assert path_line in executor.provider.worker_init


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


# --- nothing from a config reaches a shell line of a job script --------------------------


def _slurm(**changes) -> dict:
    executor = {
        "profile": "slurm",
        "queue": "compute",
        "account": "my-project",
        "workers": 2,
        "walltime": "00:10:00",
        "worker_init": "module load gcc\n",
        "scheduler_options": "#SBATCH --mem=0\n#SBATCH --constraint=haswell\n",
    }
    return executor | changes


def _config_file(tmp_path: Path, executor: dict, threads: int = 4) -> Path:
    config = {
        "system": {"charge": 0, "multiplicity": 1},
        "dft": {"xc": "PBE", "basis": "sto-3g", "density_fit": False, "threads": threads},
        "executor": executor,
        "database": "data.db",
    }
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _header(script: str, directive: str) -> list[str]:
    """The directive lines a batch system reads: those before the first command."""
    lines = []
    for line in script.splitlines()[1:]:  # after the shebang
        if line.startswith(directive):
            lines.append(line)
        elif line.strip() and not line.startswith("#"):
            break
    return lines


def _rendered(provider, tmp_path: Path, answer: str) -> tuple[str, str]:
    """The job script and the submit command Parsl's real provider produces, with the
    submission itself (``sbatch`` / ``qsub``) recorded instead of run."""
    commands = []

    def record(cmd, timeout=None):
        commands.append(cmd)
        return 0, answer, ""

    provider.script_dir = str(tmp_path)
    provider.execute_wait = record
    assert provider.submit("process_worker_pool.py --fake", 1, "sapis-test")
    script = Path(shlex.split(commands[0])[-1]).read_text()
    return script, commands[0]


def test_the_slurm_script_keeps_every_directive_in_its_header(tmp_path):
    config = parse_config({"executor": _slurm(), "database": "x.db", "dft": {"threads": 4}})
    provider = parsl_config(config.executor, 4, tmp_path).executors[0].provider
    script, command = _rendered(provider, tmp_path, "Submitted batch job 42")
    header = _header(script, "#SBATCH")
    for line in ("--partition=compute", "--account=my-project", "--mem=0", "--constraint"):
        assert any(line in h for h in header), (line, script)
    assert "module load gcc" in script and command.startswith("sbatch ")


def test_the_pbs_submission_is_one_qsub_with_queue_and_account(tmp_path):
    executor = _slurm(profile="pbs", queue="workq", scheduler_options="#PBS -l mem=4gb")
    config = parse_config({"executor": executor, "database": "x.db"})
    provider = parsl_config(config.executor, 4, tmp_path).executors[0].provider
    script, command = _rendered(provider, tmp_path, "42.pbs-server")
    assert shlex.split(command)[:5] == ["qsub", "-q", "workq", "-A", "my-project"]
    header = _header(script, "#PBS")
    assert "#PBS -l mem=4gb" in header and any("walltime=00:10:00" in h for h in header)


INJECTIONS = {
    "queue with a shell line": {"queue": "compute\necho INJECTED"},
    "queue with a command": {"queue": "compute; touch INJECTED"},
    "queue with a space": {"queue": "com pute"},
    "queue as an option": {"queue": "-v"},
    "account substitution": {"account": "$(touch INJECTED)"},
    "options with a shell line": {"scheduler_options": "#SBATCH --mem=0\necho INJECTED"},
    "options of another scheduler": {"scheduler_options": "#PBS -l mem=4gb"},
    "options with a carriage return": {"scheduler_options": "#SBATCH --mem=0\r\necho hi"},
    "worker_init with a NUL": {"worker_init": "module load gcc\x00"},
    "worker_init with an escape": {"worker_init": "module load \x1b[2Jgcc"},
}


@pytest.mark.parametrize("name", INJECTIONS)
def test_injections_are_refused_when_the_config_is_read(tmp_path, name):
    changes = INJECTIONS[name]
    (field,) = changes
    result = runner.invoke(app, ["label", "-c", str(_config_file(tmp_path, _slurm(**changes)))])
    assert result.exit_code == 2, result.output
    assert f"executor.{field}" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "data.db").exists() and not (tmp_path / "INJECTED").exists()


def test_run_folders_a_shell_would_split_are_refused(tmp_path):
    for folder in ("my runs", "runs;touch INJECTED", "it's"):
        executor = {"profile": "local", "workers": 1, "run_dir": str(tmp_path / folder)}
        config = _config_file(tmp_path, executor, threads=1)
        result = runner.invoke(app, ["label", "-c", str(config)])
        assert result.exit_code == 2, result.output
        assert "run_dir" in result.output and "Traceback" not in result.output
    # a campaign folder (the default run_dir's parent) with a space, too
    spaced = tmp_path / "with space"
    spaced.mkdir()
    config = _config_file(spaced, {"profile": "local", "workers": 1}, threads=1)
    result = runner.invoke(app, ["label", "-c", str(config)])
    assert result.exit_code == 2 and "run_dir" in result.output, result.output
    # in-process threads start no shell: any folder is fine
    threads = parse_config({"executor": {"profile": "threads"}, "database": "x.db"}, spaced)
    assert threads.executor.run_dir == spaced / "runinfo"


def test_the_virtual_environment_is_put_on_path_quoted(tmp_path):
    odd = tmp_path / "my env $(touch INJECTED)" / "bin"
    executor = ExecutorConfig(profile="local", worker_init="export SAPIS_X=1")
    lines = worker_init(executor, bin_dir=odd)
    out = subprocess.run(
        ["bash", "-c", f'{lines}\nprintf "%s\\n" "$PATH" "$SAPIS_X"'],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    )  # fmt: skip
    path, x = out.stdout.splitlines()
    assert path.split(":")[0] == str(odd) and x == "1"
    assert not (tmp_path / "INJECTED").exists()
