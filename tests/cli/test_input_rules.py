"""Input rules a user meets: which databases, output paths, thread counts and structures
are accepted; everything else ends in one ``error:`` line and exit code 2, never a
traceback, with the store untouched."""

import gzip
import hashlib
import os
from pathlib import Path

import ase.io
import pytest
import yaml
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from conftest import jiggled
from typer.testing import CliRunner

from sapis.cli import app
from sapis.store import DatasetStore

runner = CliRunner()
CORES = len(os.sched_getaffinity(0))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refused(args, *message: str):
    """Run ``sapis args``; assert a clear one-line error naming ``message``."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for part in message:
        assert part in lines[0], lines[0]
    return lines[0]


def write_config(tmp_path, name="campaign.yaml", **changes) -> Path:
    config = {
        "dft": {"xc": "PBE", "basis": "sto-3g", "density_fit": False},
        "executor": {"profile": "threads", "workers": 1},
        "database": "data.db",
    }
    for key, value in changes.items():
        if isinstance(value, dict):
            config[key] = {**config.get(key, {}), **value}
        else:
            config[key] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def store(tmp_path) -> Path:
    """A SQLite store with two labelled waters."""
    images = jiggled("H2O", 2, seed=3)
    for atoms in images:
        atoms.calc = SinglePointCalculator(atoms, energy=-2000.0, forces=0.01 * atoms.positions)
    db = tmp_path / "data.db"
    DatasetStore(db).add(images, level="PBE/sto-3g")
    return db


@pytest.fixture
def water(tmp_path) -> Path:
    path = tmp_path / "water.xyz"
    ase.io.write(path, jiggled("H2O", 1, seed=5))
    return path


# --- config files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [bytes(range(7, 250)), b"database: a\x00b\n", b"{a: [1, 2\n"],
    ids=["binary", "nul", "unclosed"],
)
def test_a_config_that_is_not_yaml_text_is_one_clear_line(tmp_path, store, water, content):
    before = digest(store)
    (tmp_path / "bad.yaml").write_bytes(content)
    refused(["label", water, "-c", tmp_path / "bad.yaml"], "bad.yaml: not valid YAML")
    assert digest(store) == before


def test_a_gzip_file_named_yaml_is_refused(tmp_path, store, water):
    path = tmp_path / "c.yaml"
    path.write_bytes(gzip.compress(b"database: data.db\n"))
    refused(["label", water, "-c", path], "c.yaml: not valid YAML")


# --- databases ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("database", "message"),
    [
        ("", "database: no database given (empty)"),
        ("x.txt", "x.txt' is neither a SQLite file (.db, .sqlite, .sqlite3) nor"),
        ("y.json", "y.json' is neither a SQLite file"),
        ("data", "data' is neither a SQLite file"),
        ("mysql://u@h/db", "only postgresql:// URLs"),
    ],
)
def test_a_database_that_is_no_sqlite_file_or_postgresql_url_is_refused(
    tmp_path, water, database, message
):
    refused(["label", water, "-c", write_config(tmp_path, database=database)], message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["campaign.yaml", "water.xyz"]


def test_a_directory_or_an_unwritable_place_is_no_database(tmp_path, water, store):
    (tmp_path / "folder.db").mkdir()
    config = write_config(tmp_path, database="folder.db")
    refused(["label", water, "-c", config], "folder.db is a directory")
    config = write_config(tmp_path, database="/proc/sapis/data.db")
    refused(["label", water, "-c", config], "/proc/sapis/data.db", "cannot create")
    text = tmp_path / "notes.db"
    text.write_text("not a database\n")
    refused(["db", "stats", "--db", text], "notes.db: not a SQLite database")
    assert text.read_text() == "not a database\n"


@pytest.mark.parametrize("verb", ["stats", "export", "train", "train-generator"])
def test_readers_refuse_a_missing_database_instead_of_creating_one(tmp_path, verb):
    typo = tmp_path / "typo.db"
    args = {
        "stats": ["db", "stats", "--db", typo],
        "export": ["db", "export", "--db", typo, tmp_path / "out.xyz"],
        "train": ["train", "--db", typo, "--out", tmp_path / "ens"],
        "train-generator": ["train-generator", "--db", typo, "--out", tmp_path / "gen"],
    }[verb]
    refused(args, f"no such database: {typo}")
    assert not typo.exists()


def test_readers_refuse_a_json_database(tmp_path):
    refused(["db", "stats", "--db", tmp_path / "y.json"], "y.json' is neither a SQLite file")
    assert not (tmp_path / "y.json").exists()


def test_writers_create_a_new_database(tmp_path):
    path = tmp_path / "w.xyz"
    labelled = molecule("H2O")
    labelled.calc = SinglePointCalculator(labelled, energy=-1.0, forces=labelled.positions)
    ase.io.write(path, labelled)
    result = runner.invoke(
        app, ["db", "import", str(path), "--db", str(tmp_path / "new.sqlite"), "--level", "x"]
    )
    assert result.exit_code == 0, result.output
    assert DatasetStore(tmp_path / "new.sqlite", create=False).count() == 1


# --- output files -------------------------------------------------------------------------


def test_export_into_a_missing_folder_is_refused_without_creating_it(tmp_path, store):
    out = tmp_path / "nowhere" / "deep" / "out.xyz"
    refused(["db", "export", "--db", store, out], f"{out.parent}: no such folder")
    assert not (tmp_path / "nowhere").exists()
    refused(["db", "export", "--db", store, tmp_path], f"{tmp_path} is a directory")
    refused(["db", "stats", "--db", store, "--plot", out], "no such folder")


# --- threads --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dft": {"threads": 100000}}, "dft.threads: Input should be less than or equal to 256"),
        (
            {"dft": {"threads": 64}, "executor": {"profile": "local", "workers": 1}},
            f"64 threads × 1 workers = 64 cores, but this machine has {CORES}",
        ),
        (
            {"dft": {"threads": 1}, "executor": {"profile": "threads", "workers": 500}},
            "1 threads × 500 workers = 500 cores",
        ),
    ],
)
def test_threads_beyond_the_machine_are_refused_before_any_label(
    tmp_path, store, water, changes, message
):
    before = digest(store)
    refused(["label", water, "-c", write_config(tmp_path, **changes)], message)
    assert digest(store) == before


def test_batch_profiles_cap_threads_per_label_not_by_this_machine(tmp_path):
    from sapis.campaign.config import parse_config

    slurm = {"profile": "slurm", "workers": 8}
    config = parse_config({"database": "d.db", "dft": {"threads": 64}, "executor": slurm})
    assert config.dft.threads * config.executor.workers == 512


# --- structures -----------------------------------------------------------------------------


def test_water_in_picometres_is_not_labelled(tmp_path, store):
    before = digest(store)
    water = molecule("H2O")
    water.positions *= 100.0  # pm read as Å
    ase.io.write(tmp_path / "pm.xyz", water)
    refused(
        ["label", tmp_path / "pm.xyz", "-c", write_config(tmp_path)],
        "pm.xyz structure 0: falls apart",
        "coordinates in Å? the nearest neighbour of atom 1 is 96.9 Å away",
    )
    h2 = Atoms("H2", positions=[[0, 0, 0], [0, 0, 1000.0]])
    ase.io.write(tmp_path / "h2.xyz", h2)
    refused(["db", "import", tmp_path / "h2.xyz", "--db", store], "atom 1 (H) is 1000.0 Å")
    assert digest(store) == before


def test_predict_refuses_bad_options_and_lone_atoms_before_loading_the_ensemble(
    tmp_path, tiny_ensemble
):
    ase.io.write(tmp_path / "in.xyz", molecule("CH3CHO"))
    out = tmp_path / "out.xyz"
    refused(["predict", tiny_ensemble, tmp_path / "in.xyz", out, "--batch-size", "0"],
            "--batch-size must be at least 1")  # fmt: skip
    refused(["predict", tiny_ensemble, tmp_path / "in.xyz", tmp_path / "no" / "out.xyz"],
            "no such folder")  # fmt: skip
    far = molecule("CH3CHO")
    far.positions *= 1000.0
    ase.io.write(tmp_path / "far.xyz", far)
    refused(["predict", tiny_ensemble, tmp_path / "far.xyz", out], "far.xyz structure 0: falls")
    pair = Atoms("H2", positions=[[0, 0, 0], [0, 0, 4.5]])  # one piece, but beyond r_max
    ase.io.write(tmp_path / "pair.xyz", [molecule("CH3CHO"), pair])
    refused(
        ["predict", tiny_ensemble, tmp_path / "pair.xyz", out],
        "structure 1: atom 0 (H) has no neighbour within the ensemble's cutoff r_max = 4.0 Å",
    )
    assert not out.exists()
