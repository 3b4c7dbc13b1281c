"""The campaign's database: reached before anything is written, a clear one-line error
when it cannot be, and its password never shown or left readable by others."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from postgres import PASSWORD, ROLE
from typer.testing import CliRunner

from sapis.campaign.campaign import Campaign
from sapis.cli import app
from sapis.config import redact
from sapis.errors import InputError
from sapis.store import DatasetStore

SAPIS = Path(sys.executable).parent / "sapis"
SECRET = "Zq9-s3cret"
runner = CliRunner()


def campaign_file(tmp_path: Path, database: str) -> Path:
    config = {
        "system": {"structures": str(REPO / "examples" / "ethanol.xyz")},
        "dft": {"xc": "PBE", "basis": "sto-3g", "density_fit": False, "threads": 1},
        "executor": {"profile": "threads", "workers": 1},
        "database": database,
        "folder": "camp",
        "pretrain": {"displaced": 2},
        "training": {"size": "xs", "members": 2, "max_epochs": 1},
        "stop": {"max_rounds": 1},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def sapis(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PREFECT_HOME": str(home)}
    return subprocess.run(
        [SAPIS, *args], capture_output=True, text=True, env=env, timeout=300
    )  # fmt: skip


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:p@ss:w/rd@db.example:5432/x", "postgresql://u:***@db.example:5432/x"),
        ("postgresql://u@h/db?password=pw&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
        ("postgres://u:pw@h/db", "postgres://u:***@h/db"),
        ("postgresql://h:5432/db", "postgresql://h:5432/db"),
        ("runs/data.db", "runs/data.db"),
        ("no postgres://u:pw@h/db: down", "no postgres://u:***@h/db: down"),
    ],
)  # fmt: skip
def test_redact_hides_the_password_and_nothing_else(url, shown):
    assert redact(url) == shown


def test_an_unreachable_server_stops_the_campaign_before_anything_starts(tmp_path):
    url = f"postgresql://{ROLE}:{SECRET}@127.0.0.1:1/x"  # nothing listens on port 1
    home = tmp_path / "prefect"
    home.mkdir()
    out = sapis("campaign", str(campaign_file(tmp_path, url)), home=home)
    assert out.returncode == 2, out.stderr[-3000:]
    assert SECRET not in out.stdout + out.stderr
    assert out.stderr.startswith("error: cannot reach database postgresql://sapis_test:***@")
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert not (tmp_path / "camp").exists()
    assert not list(home.iterdir())  # no Prefect server was started


def test_a_missing_database_is_refused_and_the_corrected_rerun_works(tmp_path, postgres_server):
    missing = postgres_server.url("sapis_no_such_database")
    home = tmp_path / "prefect"
    home.mkdir()
    config = campaign_file(tmp_path, missing)
    out = sapis("campaign", str(config), home=home)
    assert out.returncode == 2, out.stderr[-3000:]
    assert 'database "sapis_no_such_database" does not exist' in out.stderr
    assert f":{PASSWORD}@" not in out.stdout + out.stderr and ":***@" in out.stderr
    assert not (tmp_path / "camp").exists() and not list(home.iterdir())

    url = postgres_server.create_database()
    try:
        campaign = Campaign.start(campaign_file(tmp_path, url))  # the corrected file
        copy = campaign.folder.config_path
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600  # it holds the password
        assert yaml.safe_load(copy.read_text())["database"] == url
        assert not list(copy.parent.glob("*.tmp"))
        assert Campaign.open(campaign.folder.root).config.database == url
        Campaign.start(copy)  # rerun from its own copy: still private
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    finally:
        postgres_server.drop_database(url)


def test_label_on_a_wrong_database_shows_no_password(tmp_path, postgres_server):
    config = campaign_file(tmp_path, "data.db")
    for url in (
        f"postgresql://{ROLE}:{SECRET}@127.0.0.1:1/x",
        f"postgresql://{ROLE}:{SECRET}@127.0.0.1:{postgres_server.port}/postgres",
    ):
        result = runner.invoke(app, ["label", "-c", str(config), "--db", url])
        assert result.exit_code == 2, result.output
        assert "cannot reach database" in result.output and SECRET not in result.output
    assert "password authentication failed" in result.output


def test_the_password_may_come_from_pgpassword_or_a_pgpass_file(
    tmp_path, postgres_server, monkeypatch
):
    url = postgres_server.create_database()
    bare = url.replace(f":{PASSWORD}@", "@")
    try:
        monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
        monkeypatch.delenv("PGPASSWORD", raising=False)
        with pytest.raises(InputError, match="password"):
            DatasetStore(bare)
        monkeypatch.setenv("PGPASSWORD", PASSWORD)
        assert DatasetStore(bare).count() == 0
        monkeypatch.delenv("PGPASSWORD")
        pgpass = tmp_path / "pgpass"
        pgpass.write_text(f"127.0.0.1:{postgres_server.port}:*:{ROLE}:{PASSWORD}\n")
        pgpass.chmod(0o600)
        monkeypatch.setenv("PGPASSFILE", str(pgpass))
        assert DatasetStore(bare).count() == 0
    finally:
        postgres_server.drop_database(url)


def test_connections_give_up_after_a_short_timeout(postgres_server, monkeypatch):
    url = postgres_server.create_database()
    try:
        monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
        store = DatasetStore(url)
        assert store.db._connect().con.get_dsn_parameters()["connect_timeout"] == "10"
        own = DatasetStore(f"{url}?connect_timeout=3")  # a timeout of the user's is kept
        assert own.db._connect().con.get_dsn_parameters()["connect_timeout"] == "3"
        monkeypatch.setenv("PGCONNECT_TIMEOUT", "4")
        assert DatasetStore(url).db._connect().con.get_dsn_parameters()["connect_timeout"] == "4"
    finally:
        postgres_server.drop_database(url)


def test_sapis_round_on_an_unreachable_server_stops_before_prefect_starts(tmp_path):
    from sapis.campaign.folder import CONFIG_NAME
    from sapis.campaign.rounds import RoundRecord

    url = f"postgresql://{ROLE}:{SECRET}@127.0.0.1:1/x"  # nothing listens on port 1
    config = yaml.safe_load(campaign_file(tmp_path, url).read_text())
    folder = tmp_path / "camp"
    (folder / "round-000").mkdir(parents=True)
    (folder / CONFIG_NAME).write_text(yaml.safe_dump(config | {"folder": str(folder)}))
    RoundRecord(round=0).save(folder / "round-000" / "round.json")  # as if pretrained
    home = tmp_path / "prefect"
    home.mkdir()
    out = sapis("round", str(folder), home=home)
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.startswith("error: cannot reach database postgresql://sapis_test:***@")
    assert SECRET not in out.stdout + out.stderr and "Traceback" not in out.stderr
    assert not list(home.iterdir())  # no Prefect server was started
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, "round-000"]
