"""PostgreSQL going away mid-run: the store waits and reconnects; past its patience a
clear error, and the same command resumes with nothing lost."""

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from test_campaign_flows import write_config

from sapis.campaign.folder import CampaignFolder
from sapis.errors import StoreUnavailable
from sapis.store import DatasetStore
from sapis.structures import structure_hash

VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def own_postgres():
    from postgres import private_postgres

    try:
        server = private_postgres()
    except Exception as err:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"cannot start a private PostgreSQL server: {err}")
    yield server
    server.remove()


class _Seen(logging.Handler):
    """Sets ``event`` when the store says it lost its database."""

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "lost database" in record.getMessage():
            self.event.set()


def test_the_store_waits_for_a_restarted_server_or_says_it_gave_up(own_postgres, monkeypatch):
    from ase.build import molecule

    store = DatasetStore(own_postgres.url())
    store.add([molecule("H2O")], level="PBE/sto-3g")
    seen = _Seen()
    logging.getLogger("sapis.store").addHandler(seen)
    try:
        own_postgres.stop()
        answer = {}
        reader = threading.Thread(target=lambda: answer.update(n=store.count()))
        reader.start()
        assert seen.event.wait(60), "the store never noticed the server had gone"
        own_postgres.start()
        reader.join(120)
        assert answer == {"n": 1}

        own_postgres.stop()
        monkeypatch.setenv("SAPIS_DB_RECONNECT", "1")
        with pytest.raises(StoreUnavailable, match="did not come back within 1 s"):
            store.hashes()
    finally:
        logging.getLogger("sapis.store").removeHandler(seen)
    own_postgres.start()
    assert store.hashes() == {structure_hash(molecule("H2O"))}


def _round_stage(folder: Path, r: int) -> tuple[int, str | None]:
    try:
        saved = json.loads((folder / f"round-{r:03d}" / "clock.json").read_text())
    except (OSError, ValueError):
        return 0, None
    return saved["attempts"], saved["stage"]


def _start(config: Path, env: dict, stderr: Path) -> subprocess.Popen:
    with stderr.open("w") as err:
        return subprocess.Popen(
            [VENV_BIN / "sapis", "campaign", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )


def _wait_for(condition, proc: subprocess.Popen, what: str, seconds: float = 900) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, f"the campaign ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_campaign_outlives_a_postgres_restart_and_resumes_after_a_long_outage(
    own_postgres, tmp_path
):
    config = write_config(
        tmp_path, dft={"program": "xtb", "method": "GFN2-xTB"}, stop={"max_rounds": 1}
    )
    settings = yaml.safe_load(config.read_text())
    settings.update(database=own_postgres.url(), folder="campaign")
    config.write_text(yaml.safe_dump(settings))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "SAPIS_DB_RECONNECT": "5"}
    env.pop("PREFECT_API_URL", None)
    folder = tmp_path / "campaign"

    # an outage longer than the store's patience: a clear error, then a rerun resumes
    proc = _start(config, env, tmp_path / "first.txt")
    _wait_for(lambda: _round_stage(folder, 1)[1] == "explore", proc, "round 1")
    store = DatasetStore(own_postgres.url())
    before = {r.unique_id: (r.energy, r.get("run")) for r in store.db.select(status="labelled")}
    own_postgres.stop()
    assert proc.wait(600) == 1
    lines = [x for x in (tmp_path / "first.txt").read_text().splitlines() if x.strip()]
    assert lines[-1].startswith("error: database postgresql://sapis_test@127.0.0.1"), lines[-3:]
    assert "did not come back within 5 s" in lines[-1]
    own_postgres.start()

    # a restart within its patience: the run waits, reconnects and finishes
    env["SAPIS_DB_RECONNECT"] = "300"
    proc = _start(config, env, tmp_path / "second.txt")
    _wait_for(lambda: _round_stage(folder, 1)[0] == 2, proc, "round 1's second attempt")
    own_postgres.stop()
    _wait_for(lambda: "lost database" in (tmp_path / "second.txt").read_text(), proc, "the loss")
    own_postgres.start()
    assert proc.wait(900) == 0, (tmp_path / "second.txt").read_text()[-3000:]

    records = CampaignFolder(folder).records()
    assert [r.round for r in records] == [0, 1] and records[1].new_labels == 4
    after = {r.unique_id: (r.energy, r.get("run")) for r in store.db.select(status="labelled")}
    assert all(after[k] == v for k, v in before.items())  # nothing lost or labelled again
    assert store.count(status="labelled") == 12 + 4
