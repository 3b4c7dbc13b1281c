"""Whole campaigns through Prefect: the loop, resume after kill -9, the approval gate,
artifacts and the report, and bad input refused before any work."""

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import ase.io
import pytest
import yaml
from ase.build import molecule
from conftest import DATA

from sapis.campaign.folder import CampaignFolder
from sapis.store import DatasetStore

VENV_BIN = Path(sys.executable).parent
RMD17 = DATA / "rmd17_malonaldehyde_train_01.npz"


def write_config(tmp_path: Path, **sections) -> Path:
    """A water campaign at PBE/STO-3G on in-process threads with the smallest model."""
    ase.io.write(tmp_path / "water.xyz", molecule("H2O"))
    config = {
        "system": {"structures": "water.xyz"},
        "dft": {"xc": "PBE", "basis": "sto-3g", "density_fit": False, "conv_tol": 1e-8},
        "executor": {"profile": "threads", "workers": 1},
        "database": "campaign/data.db",
        "split": {"val": 0.25, "test": 0.25},
        "pretrain": {"displaced": 12, "rattle": 0.08},
        "training": {"size": "xs", "members": 2, "max_epochs": 40},
        "explore": {
            "temperatures": [300.0],
            "steps": 60,
            "sample_every": 5,
            "stop_force_dev": 1000.0,
            "check_bonds": False,
            "min_distance": 0.5,
        },
        "selection": {"lo": 0.0, "hi": 1000.0, "labels_per_round": 4},
        "stop": {"max_rounds": 2},
        "scaling": {"enabled": False},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _artifacts(key_prefix: str) -> list:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=key_prefix))
            )

    return asyncio.run(read())


def test_a_whole_campaign_runs_two_rounds_and_reports(prefect_server, tmp_path):
    from sapis.flows.campaign import campaign
    from sapis.flows.parameters import CampaignParameters

    config = write_config(
        tmp_path,
        scaling={"enabled": True, "bootstrap": 20, "floor_margin": 0.0},
        generator={
            "share": 0.5,
            "min_samples": 20,
            "train_steps": 1500,
            "hidden": 16,
            "layers": 2,
            "steps": 10,
        },
    )
    result = campaign(CampaignParameters(config=str(config)))

    folder = CampaignFolder(tmp_path / "campaign")
    records = folder.records()
    assert [r.round for r in records] == [0, 1, 2]
    assert result["stop_reason"].startswith("round cap")
    store = DatasetStore(tmp_path / "campaign" / "data.db")
    for previous, r in itertools.pairwise(records):
        # each round follows the scaling decision of the one before
        grow = previous.decision["action"] == "model"
        assert r.size == (previous.decision["next_size"] if grow else previous.size)
        assert r.explored > 0 and r.selected == r.new_labels == (0 if grow else 4)
        assert r.candidate == r.explored  # the window takes everything here
        assert {"explore", "select", "label", "train", "evaluate", "scaling"} == set(r.seconds)
        assert r.test_force_mae > 0 and r.n_test > 0
        assert store.count(round=r.round) == r.new_labels
        assert folder.is_trained(r.round)
    assert records[0].new_labels == 12
    # the generator proposed half of each round's candidates, warm-started round to round
    for r in records[1:]:
        md, gen = r.by_source["md"], r.by_source["generator"]
        assert gen["proposed"] == max(md["valid"], 20) and gen["valid"] <= gen["proposed"]
        assert r.explored == md["valid"] + gen["valid"]
        explored = ase.io.read(folder.explored_path(r.round), ":")
        generated = ase.io.read(folder.generated_path(r.round), ":")
        assert {a.info["source"] for a in explored} == {"md"}
        assert {a.info["source"] for a in generated} == {"generator"}
        assert len(generated) == gen["valid"]
        assert all("max_force_dev_calibrated" in a.info for a in generated)
    assert sum(r.by_source["generator"]["valid"] for r in records[1:]) > 0
    trainings = json.loads((folder.round_dir(2) / "generator" / "generator.json").read_text())
    assert [t["warm_start"] for t in trainings["trainings"]] == [False, True]
    assert (
        store.count(status="labelled")
        == records[-1].labels
        == 12 + sum(r.new_labels for r in records[1:])
    )
    # scaling: the first decision needed probes; every decision is recorded and explained
    assert records[0].decision["action"] in ("data", "model")
    assert "joint: eps = " in records[0].decision["fits"]["joint"]
    assert (folder.root / "scaling" / "points.jsonl").read_text().count("probe-000") == 6
    assert "## Scaling decision after round 2" in Path(result["report"]).read_text()
    report = Path(result["report"]).read_text()
    assert "## Rounds" in report and "plots/learning_curve.png" in report
    assert "generator valid/in window/selected" in report and "| generator |" in report
    for name in ("learning_curve", "ratios", "parity", "calibration", "scaling"):
        assert (folder.root / "plots" / f"{name}.png").stat().st_size > 5_000
    keys = {a.key for a in _artifacts("campaign-%")}
    assert {"campaign-rounds", "campaign-report", "labels-round-1"} <= keys | {
        a.key for a in _artifacts("labels-round-%")
    }
    members = (folder.ensemble_dir(2) / "member-0" / "model.nequip.zip").stat().st_size
    assert members > 10_000

    # the status command reads the same records
    out = subprocess.run(
        [VENV_BIN / "sapis", "status", str(folder.root)], capture_output=True, text=True
    )
    assert out.returncode == 0 and "F MAE meV/Å" in out.stdout and "round cap" in out.stdout

    # the scaling command: every training, the fits, the plot
    out = subprocess.run(
        [VENV_BIN / "sapis", "scaling", str(folder.root), "--out", str(tmp_path / "s.png")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "probe-000-s-0.25" in out.stdout and "joint: eps = " in out.stdout
    assert "latest decision (round 2)" in out.stdout
    assert (tmp_path / "s.png").stat().st_size > 10_000

    # a round by hand, with its own label budget, past the round cap
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    out = subprocess.run(
        [VENV_BIN / "sapis", "round", str(folder.root), "--labels", "2", "--temperature", "500"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    third = folder.records()[3]
    assert third.new_labels == 2 and third.selected == 2  # --labels overrides the plan
    explored = ase.io.read(folder.round_dir(3) / "explored.extxyz", ":")
    md = [a for a in explored if a.info["source"] == "md"]
    assert md and {a.info["temperature"] for a in md} == {500.0}


def test_kill_9_mid_round_then_rerun_finishes_without_paying_twice(tmp_path):
    config = write_config(
        tmp_path,
        dft={"basis": "def2-svp", "density_fit": True},  # ~1 s labels: time to kill
        selection={"labels_per_round": 6},
        stop={"max_rounds": 1},
    )
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    db = tmp_path / "campaign" / "data.db"
    proc = subprocess.Popen(
        [VENV_BIN / "sapis", "campaign", str(config)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    before = None
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            rows = DatasetStore(db).summary_rows()
            round1 = [r for r in rows if r["round"] == 1]
            done = [r for r in round1 if r["status"] == "labelled"]
            if round1 and 0 < len(done) < len(round1):
                before = {
                    r.id: (r.get("run"), r.energy)
                    for r in DatasetStore(db).db.select()
                    if r.get("status") == "labelled"
                }
                os.killpg(proc.pid, signal.SIGKILL)
                break
        time.sleep(0.1)
    proc.wait()
    assert before is not None, "the run never was in the middle of round 1's labels"
    selected = (tmp_path / "campaign" / "round-001" / "selected.extxyz").read_text()

    out = subprocess.run(
        [VENV_BIN / "sapis", "campaign", str(config)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    store = DatasetStore(db)
    after = {r.id: (r.get("run"), r.energy) for r in store.db.select(status="labelled")}
    assert all(after[k] == v for k, v in before.items())  # nothing relabelled or lost
    assert store.count(round=1) == 6 == store.count(round=1, status="labelled")
    assert store.count() == 12 + 6
    assert (tmp_path / "campaign" / "round-001" / "selected.extxyz").read_text() == selected
    assert len(CampaignFolder(tmp_path / "campaign").records()) == 2
    assert "report:" in out.stdout and "Prefect UI" in out.stdout


def test_the_approval_gate_pauses_until_resumed(prefect_server, tmp_path):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState
    from prefect.flow_runs import resume_flow_run

    from sapis.flows.campaign import campaign, refinement_round
    from sapis.flows.parameters import CampaignParameters, RoundParameters

    config = write_config(tmp_path, stop={"max_rounds": 0})
    campaign(CampaignParameters(config=str(config)))  # pretraining only
    folder = tmp_path / "campaign"
    text = yaml.safe_load((folder / "campaign.yaml").read_text())
    text["approval"] = {"max_core_seconds": 0.001, "timeout_hours": 0.1}
    (folder / "campaign.yaml").write_text(yaml.safe_dump(text))

    result = {}
    thread = threading.Thread(
        target=lambda: result.update(record=refinement_round(RoundParameters(folder=str(folder))))
    )
    thread.start()

    async def paused_runs():
        async with get_client() as client:
            return await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(name={"any_": ["Paused"]}))
            )

    runs = []
    deadline = time.monotonic() + 300
    while not runs and time.monotonic() < deadline:
        time.sleep(1)
        runs = asyncio.run(paused_runs())
    assert runs, "the round never paused"
    store = DatasetStore(folder / "data.db")
    assert store.count(status="pending") == 4  # selected, not labelled while paused
    assert not (folder / "round-001" / "approved").exists()
    resume_flow_run(runs[0].id)
    thread.join(timeout=300)
    assert result["record"].round == 1 and result["record"].new_labels == 4
    assert (folder / "round-001" / "approved").is_file()
    assert {a.key for a in _artifacts("campaign-approval")} == {"campaign-approval"}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"selection": {"lo": 0.5, "hi": 0.1}}, "lo < hi"),
        ({"stop": {"max_rounds": -1}}, "stop.max_rounds"),
        ({"training": {"size": "huge"}}, "unknown model size"),
        ({"system": {"structures": "missing.xyz"}}, "missing.xyz: no such file"),
        ({"system": {"structures": "broken.xyz"}}, "broken.xyz"),
        ({"system": {"multiplicity": 2}}, "cannot fit"),
        ({"oracle": "water.xyz"}, "carries no energy and forces"),
        ({"test_file": "water.xyz"}, "carries no energies and forces"),
        ({"generator": {"share": 1.0}}, "generator.share"),
        ({"generator": {"share": 0.5}, "oracle": str(RMD17)}, "an oracle labels only its own"),
        (
            {"selection": {"policy": "top-k", "density_weight": 1.0}},
            "selection.density_weight 1.0 needs each round's candidate densities from a "
            "trained flow",
        ),
        ({"pretrain": {"cheap": {"method": "GFN3-xTB"}}}, "pretrain.cheap.method"),
        ({"pretrain": {"cheap": {"program": "pyscf"}}}, "no cheap level to sample with"),
        (
            {"dft": {"program": "xtb", "method": "GFN2-xTB"}, "pretrain": {"cheap": {}}},
            "GFN2-xTB is the level the campaign refines",
        ),
    ],
)
def test_bad_config_or_seeds_stop_before_any_work(tmp_path, change, message):
    (tmp_path / "broken.xyz").write_text("3\nnot xyz\nO 0 0\n")
    config = write_config(tmp_path)
    data = yaml.safe_load(config.read_text())
    for key, value in change.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    config.write_text(yaml.safe_dump(data))
    out = subprocess.run(
        [VENV_BIN / "sapis", "campaign", str(config)], capture_output=True, text=True
    )
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert not (tmp_path / "campaign").exists()  # no folder, no database, no Prefect run


def test_an_oracle_campaign_takes_candidates_and_labels_from_the_pool(
    prefect_server, tmp_path, monkeypatch
):
    from sapis.campaign import campaign as campaign_module
    from sapis.dft.reference import ReferenceOracle
    from sapis.flows.campaign import campaign
    from sapis.flows.parameters import CampaignParameters

    made = []  # the pool is read and hashed once for the whole flow run and its subflows

    def counted(path):
        made.append(path)
        return ReferenceOracle(path)

    monkeypatch.setattr(campaign_module, "ReferenceOracle", counted)

    pool_file = DATA / "rmd17_malonaldehyde_test_01.npz"
    config = {
        "oracle": str(pool_file),
        "database": "campaign/data.db",
        "split": {"val": 0.2, "test": 0.2},
        "pretrain": {"displaced": 15, "seed": 1},
        "training": {"size": "xs", "members": 2, "max_epochs": 20},
        "selection": {"lo": 0.0, "hi": 100.0, "labels_per_round": 5},
        "stop": {"max_rounds": 1},
        "scaling": {"enabled": False},
    }
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    campaign(CampaignParameters(config=str(path)))
    assert len(made) == 1

    records = CampaignFolder(tmp_path / "campaign").records()
    oracle = ReferenceOracle(pool_file)
    assert records[1].explored == len(oracle) - 15  # the pool less what is stored
    assert records[1].by_source["reference"]["selected"] == 5
    store = DatasetStore(tmp_path / "campaign" / "data.db")
    labelled = store.labelled()
    assert len(labelled) == 20 and store.levels() == {"reference:" + pool_file.name}
    for atoms in labelled:
        reference = oracle.structures[oracle.index[atoms.info["hash"]]]
        assert atoms.get_potential_energy() == reference.get_potential_energy()


def test_an_xtb_campaign_runs_end_to_end_with_lcmd_and_the_quantile_window(
    prefect_server, tmp_path
):
    from sapis.flows.campaign import campaign
    from sapis.flows.parameters import CampaignParameters

    ase.io.write(tmp_path / "ethanol.xyz", molecule("CH3CH2OH"))
    config = write_config(
        tmp_path,
        system={"structures": "ethanol.xyz"},
        dft={"program": "xtb", "method": "GFN2-xTB"},
        executor={"profile": "local", "workers": 2},
        training={"max_epochs": 15, "patience": 5},
        explore={"temperatures": [500.0], "steps": 200, "sample_every": 4},
        selection={"policy": "lcmd", "window": "quantile", "labels_per_round": 6},
        stop={"max_rounds": 2},
    )
    result = campaign(CampaignParameters(config=str(config)))
    folder = CampaignFolder(tmp_path / "campaign")
    records = folder.records()
    assert [r.round for r in records] == [0, 1, 2] and result["stop_reason"]
    store = DatasetStore(tmp_path / "campaign" / "data.db")
    assert store.levels() == {"GFN2-xTB"}
    assert store.count(status="labelled") == records[-1].labels == 12 + 6 + 6
    for r in records[1:]:
        assert r.selected == r.new_labels == 6 and r.policy == "lcmd"
        # the window comes from the uncertainty's distribution, not from the config
        assert 0 < r.window_lo < r.window_hi and r.window_hi != 1000.0
        assert r.members == 2 and 0 <= r.converged <= 2
    report = Path(result["report"]).read_text()
    assert "| converged |" in report and "| window (eV/Å) |" in report
    row = next(iter(store.db.select(status="labelled")))
    assert row.program.startswith("tblite-") and row.data["dft"]["method"] == "GFN2-xTB"


CHEAP = {"temperatures": [300.0, 600.0], "picoseconds": 0.5, "sample_every": 10}


def test_a_cheap_pretrained_campaign_runs_through_prefect_and_reports_both_levels(
    prefect_server, tmp_path
):
    from sapis.flows.campaign import campaign
    from sapis.flows.parameters import CampaignParameters

    config = write_config(
        tmp_path,
        pretrain={"cheap": {**CHEAP, "test_frames": 10, "max_epochs": 20}},
        stop={"max_rounds": 1},
    )
    result = campaign(CampaignParameters(config=str(config)))
    folder = CampaignFolder(tmp_path / "campaign")
    records = folder.records()
    assert [r.round for r in records] == [0, 1]
    store = DatasetStore(tmp_path / "campaign" / "data.db")
    expensive = "PBE/sto-3g"
    assert store.levels() == {"GFN2-xTB", expensive}

    # every cheap frame stored once at the cheap level, train or val, never test
    cheap_dir = folder.round_dir(0) / "cheap"
    frames = sum(len(ase.io.read(f, ":")) for f in cheap_dir.glob("train-*.extxyz"))
    cheap = records[0].cheap
    assert cheap["level"] == "GFN2-xTB" and cheap["frames"] == frames > 50
    assert store.count(level="GFN2-xTB", status="labelled") == frames
    assert store.count(level="GFN2-xTB", split="test") == 0
    # the fixed test set: 10 frames labelled at the expensive level, the same every round
    assert store.count(level=expensive, split="test", status="labelled") == 10
    assert [r.n_test for r in records] == [10, 10]
    assert records[1].new_labels == 4 and store.count(round=1, split="test") == 0
    # round 0 fine-tuned the cheap ensemble; its comparison trained without it
    assert (folder.round_dir(0) / "cheap-ensemble" / "ensemble.json").is_file()
    assert cheap["test_force_mae_without"] > 0 and records[0].test_force_mae > 0
    member = json.loads((folder.ensemble_dir(0) / "member-0" / "record.json").read_text())
    assert "cheap-ensemble" in str(member.get("parent"))
    # training reads one level: the round-1 members saw only expensive labels
    trained = ase.io.read(folder.ensemble_dir(1) / "member-0" / "train.xyz", ":")
    assert {a.info.get("level") for a in trained} == {expensive}

    report = Path(result["report"]).read_text()
    assert "## Levels of theory" in report and "| GFN2-xTB | cheap (pretraining) |" in report
    assert "**Cheap pretraining** at GFN2-xTB" in report and "without it" in report


def test_kill_9_during_cheap_pretraining_then_rerun_loses_nothing_and_pays_nothing_twice(
    tmp_path,
):
    config = write_config(
        tmp_path,
        pretrain={
            "cheap": {
                **CHEAP,
                "temperatures": [300.0, 400.0, 500.0, 600.0],
                "max_epochs": 5,
                "compare": False,
            }
        },
        executor={"profile": "threads", "workers": 1},  # one trajectory at a time
        training={"max_epochs": 5},
        stop={"max_rounds": 0},
    )
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    cheap_dir = tmp_path / "campaign" / "round-000" / "cheap"
    proc = subprocess.Popen(
        [VENV_BIN / "sapis", "campaign", str(config)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    finished = {}
    while time.monotonic() < deadline and proc.poll() is None:
        markers = sorted(cheap_dir.glob("*.json")) if cheap_dir.is_dir() else []
        if 1 <= len(markers) < 4:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    markers = sorted(cheap_dir.glob("*.json"))
    assert 1 <= len(markers) < 4, "the run never was in the middle of its cheap MD"
    for marker in markers:
        frames = marker.with_suffix(".extxyz")
        finished[frames.name] = (frames.stat().st_mtime_ns, frames.read_bytes())
    db = tmp_path / "campaign" / "data.db"
    kept = {r.unique_id for r in DatasetStore(db).db.select()} if db.exists() else set()

    out = subprocess.run(
        [VENV_BIN / "sapis", "campaign", str(config)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for name, (mtime, data) in finished.items():  # finished trajectories did not rerun
        path = cheap_dir / name
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == data
    assert len(list(cheap_dir.glob("*.json"))) == 4
    store = DatasetStore(db)
    assert kept <= {r.unique_id for r in store.db.select()}  # nothing stored was lost
    frames = sum(len(ase.io.read(f, ":")) for f in cheap_dir.glob("*.extxyz"))
    assert store.count(level="GFN2-xTB") == frames  # every frame once
    record = CampaignFolder(tmp_path / "campaign").records()[0]
    assert record.cheap["frames"] == frames and record.cheap["trajectories"] == 4
