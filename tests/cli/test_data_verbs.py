"""``sapis label`` and ``sapis db``: bad input stops before any DFT with the database untouched."""

import hashlib

import ase.io
import numpy as np
import pytest
import yaml
from ase.build import molecule
from conftest import DATA, jiggled
from typer.testing import CliRunner

from sapis.cli import app
from sapis.store import DatasetStore

runner = CliRunner()


def config_file(tmp_path, **changes):
    config = {
        "system": {"charge": 0, "multiplicity": 1},
        "dft": {"xc": "PBE", "basis": "sto-3g", "density_fit": False},
        "executor": {"profile": "threads", "workers": 2},
        "database": "data.db",
    }
    for section, values in changes.items():
        config[section].update(values)
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def stored(tmp_path):
    """A database that already holds two labelled waters."""
    ase.io.write(tmp_path / "first.xyz", jiggled("H2O", 2, seed=1))
    result = runner.invoke(
        app, ["label", str(tmp_path / "first.xyz"), "-c", str(config_file(tmp_path))]
    )
    assert result.exit_code == 0, result.output
    return tmp_path / "data.db"


def bad_file(tmp_path, kind):
    path = tmp_path / f"{kind}.xyz"
    good = "3\n\nO 0 0 0.119\nH 0 0.763 -0.477\nH 0 -0.763 -0.477\n"
    bad = {
        "unknown_element": "3\n\nO 0 0 0.119\nXq 0 0.763 -0.477\nH 0 -0.763 -0.477\n",
        "too_close": "3\n\nO 0 0 0.119\nH 0 0.1 0.1\nH 0 -0.763 -0.477\n",
        "nan": "3\n\nO 0 0 nan\nH 0 0.763 -0.477\nH 0 -0.763 -0.477\n",
        "malformed": "3\n\nO 0 0\nH 0 0.763\n",
    }[kind]
    path.write_text(good + bad)  # one good structure first: it must not be stored either
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("unknown_element", "unknown element"),
        ("too_close", "closer than 0.5 Å"),
        ("nan", "NaN"),
        ("malformed", "cannot read structures"),
    ],
)
def test_bad_structures_stop_before_dft_with_the_database_untouched(
    tmp_path, stored, kind, message
):
    before = digest(stored)
    result = runner.invoke(
        app, ["label", str(bad_file(tmp_path, kind)), "-c", str(config_file(tmp_path))]
    )
    assert result.exit_code == 2
    assert message in result.output
    assert digest(stored) == before


def test_charge_and_multiplicity_that_cannot_fit_stop_before_dft(tmp_path, stored):
    before = digest(stored)
    ase.io.write(tmp_path / "new.xyz", jiggled("H2O", 2, seed=9))
    config = config_file(tmp_path, system={"multiplicity": 2})
    result = runner.invoke(app, ["label", str(tmp_path / "new.xyz"), "-c", str(config)])
    assert result.exit_code == 2
    assert "multiplicity 2 cannot fit 10 electrons" in result.output
    assert digest(stored) == before


def test_a_bad_config_stops_before_anything(tmp_path, stored):
    before = digest(stored)
    config = config_file(tmp_path, dft={"basis_set": "def2-svp"})
    ase.io.write(tmp_path / "new.xyz", jiggled("H2O", 1, seed=9))
    result = runner.invoke(app, ["label", str(tmp_path / "new.xyz"), "-c", str(config)])
    assert result.exit_code == 2
    assert "dft.basis_set: unknown field" in result.output
    assert digest(stored) == before


def test_a_new_database_is_not_even_created_on_bad_input(tmp_path):
    result = runner.invoke(
        app, ["label", str(bad_file(tmp_path, "nan")), "-c", str(config_file(tmp_path))]
    )
    assert result.exit_code == 2
    assert not (tmp_path / "data.db").exists()


def test_a_second_level_is_stored_beside_the_first_and_each_is_read_back_alone(tmp_path, stored):
    first = DatasetStore(stored).labelled(level="PBE/sto-3g")
    config = config_file(tmp_path, dft={"program": "xtb"})
    result = runner.invoke(app, ["label", str(tmp_path / "first.xyz"), "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert "also holds labels at PBE/sto-3g" in result.output and "2 new" in result.output
    store = DatasetStore(stored)
    assert store.levels() == {"PBE/sto-3g", "GFN2-xTB"} and store.count() == 4
    dft, xtb = (store.labelled(level=lv) for lv in ("PBE/sto-3g", "GFN2-xTB"))
    assert [a.info["hash"] for a in dft] == [a.info["hash"] for a in xtb]  # same structures
    assert [a.get_potential_energy() for a in dft] == [a.get_potential_energy() for a in first]
    gap = [d.get_potential_energy() - x.get_potential_energy() for d, x in zip(dft, xtb)]
    assert min(abs(g) for g in gap) > 100.0  # the levels' absolute energies differ by hartrees
    # labelling again at either level pays for nothing
    again = runner.invoke(app, ["label", str(tmp_path / "first.xyz"), "-c", str(config)])
    assert "0 new, 2 already stored" in again.output and store.count() == 4
    mixed = runner.invoke(app, ["db", "export", "--db", str(stored), str(tmp_path / "all.xyz")])
    assert mixed.exit_code == 2 and "several levels" in mixed.output
    assert not (tmp_path / "all.xyz").exists()
    out = tmp_path / "xtb.xyz"
    one = runner.invoke(app, ["db", "export", "--db", str(stored), str(out), "--level", "GFN2-xTB"])
    assert one.exit_code == 0 and "2 labelled structures at GFN2-xTB" in one.output
    assert {a.info["level"] for a in ase.io.read(out, ":")} == {"GFN2-xTB"}
    stats = runner.invoke(app, ["db", "stats", "--db", str(stored)])
    assert "by level of theory" in stats.output and "pick one with --level" in stats.output
    alone = runner.invoke(app, ["db", "stats", "--db", str(stored), "--level", "GFN2-xTB"])
    assert alone.exit_code == 0 and "energy per atom" in alone.output
    unknown = runner.invoke(app, ["db", "stats", "--db", str(stored), "--level", "HF/sto-3g"])
    assert unknown.exit_code == 2 and "no labels at level 'HF/sto-3g'" in unknown.output
    # imported labels keep their own level, beside the others
    imported = runner.invoke(app, ["db", "import", str(out), "--db", str(stored)])
    assert "0 stored, 2 already stored" in imported.output


def test_label_reports_duplicates_and_labels_only_new_structures(tmp_path, stored):
    images = [*jiggled("H2O", 2, seed=1), molecule("NH3")]
    ase.io.write(tmp_path / "more.xyz", images)
    result = runner.invoke(
        app, ["label", str(tmp_path / "more.xyz"), "-c", str(config_file(tmp_path))]
    )
    assert result.exit_code == 0, result.output
    assert "1 new, 2 already stored" in result.output
    store = DatasetStore(stored)
    assert store.count(status="labelled") == 3
    assert len({r.run for r in store.db.select()}) == 2


def test_import_stats_export_round_trip(tmp_path):
    db = str(tmp_path / "import.db")
    result = runner.invoke(
        app, ["db", "import", str(DATA / "rmd17_uracil_test_01.npz"), "--db", db, "--split", "test"]
    )
    assert result.exit_code == 0, result.output
    assert "1000 stored" in result.output
    again = runner.invoke(app, ["db", "import", str(DATA / "rmd17_uracil_test_01.npz"), "--db", db])
    assert "0 stored, 1000 already stored" in again.output
    png = tmp_path / "stats.png"
    stats = runner.invoke(app, ["db", "stats", "--db", db, "--plot", str(png)])
    assert stats.exit_code == 0, stats.output
    assert "labelled: 1000" in stats.output and "test: 1000" in stats.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    out = tmp_path / "uracil.extxyz"
    export = runner.invoke(app, ["db", "export", "--db", db, str(out)])
    assert export.exit_code == 0 and "1000 labelled" in export.output
    back = ase.io.read(out, ":")
    raw = np.load(DATA / "rmd17_uracil_test_01.npz")
    energies = sorted(a.get_potential_energy() for a in back)
    np.testing.assert_allclose(energies, sorted(raw["energies"] * 0.0433641), rtol=1e-6)


def test_import_of_labelled_extxyz_keeps_or_asks_for_the_level(tmp_path, stored):
    out = tmp_path / "labelled.extxyz"
    assert runner.invoke(app, ["db", "export", "--db", str(stored), str(out)]).exit_code == 0
    db = str(tmp_path / "other.db")
    ok = runner.invoke(app, ["db", "import", str(out), "--db", db])  # level comes with the file
    assert ok.exit_code == 0 and "2 stored" in ok.output
    assert DatasetStore(db).levels() == {"PBE/sto-3g"}
    bare = tmp_path / "bare.extxyz"
    images = ase.io.read(out, ":")
    for atoms in images:
        del atoms.info["level"]
    ase.io.write(bare, images)
    db2 = str(tmp_path / "third.db")
    refused = runner.invoke(app, ["db", "import", str(bare), "--db", db2])
    assert refused.exit_code == 2 and "unknown level of theory" in refused.output
    given = runner.invoke(app, ["db", "import", str(bare), "--db", db2, "--level", "PBE/sto-3g"])
    assert given.exit_code == 0 and DatasetStore(db2).levels() == {"PBE/sto-3g"}


def test_retry_failed_labels_rows_that_failed_before_and_keeps_the_failure(tmp_path):
    ase.io.write(tmp_path / "in.xyz", jiggled("H2O", 2, seed=4))
    hopeless = config_file(tmp_path, dft={"max_cycle": 1, "ladder": [{"name": "only"}]})
    first = runner.invoke(app, ["label", str(tmp_path / "in.xyz"), "-c", str(hopeless)])
    assert first.exit_code == 0 and "row 1 failed: SCF did not converge" in first.output
    store = DatasetStore(tmp_path / "data.db")
    assert store.count(status="failed") == 2
    config = config_file(tmp_path)
    rerun = runner.invoke(app, ["label", str(tmp_path / "in.xyz"), "-c", str(config)])
    assert rerun.exit_code == 0 and store.count(status="failed") == 2  # not retried unasked
    retry = runner.invoke(
        app, ["label", str(tmp_path / "in.xyz"), "-c", str(config), "--retry-failed"]
    )
    assert retry.exit_code == 0, retry.output
    assert "2 failed rows set back to pending" in retry.output
    rows = list(store.db.select())
    assert all(r.status == "labelled" and "reason" not in r for r in rows)
    assert all("did not converge" in r.data["previous_failure"]["reason"] for r in rows)


def test_a_bad_split_stops_before_a_database_is_created(tmp_path):
    ase.io.write(tmp_path / "in.xyz", jiggled("H2O", 1))
    result = runner.invoke(
        app,
        [
            "label",
            str(tmp_path / "in.xyz"),
            "-c",
            str(config_file(tmp_path)),
            "--split",
            "training",
        ],
    )
    assert result.exit_code == 2 and "unknown split 'training'" in result.output
    assert not (tmp_path / "data.db").exists()


def test_pending_rows_stored_earlier_are_checked_before_any_dft(tmp_path):
    # an unlabelled OH radical imported earlier cannot be a singlet: nothing is computed
    ase.io.write(tmp_path / "radical.xyz", molecule("OH"))
    db = str(tmp_path / "data.db")
    assert (
        runner.invoke(app, ["db", "import", str(tmp_path / "radical.xyz"), "--db", db]).exit_code
        == 0
    )
    ase.io.write(tmp_path / "in.xyz", jiggled("H2O", 1))
    result = runner.invoke(
        app, ["label", str(tmp_path / "in.xyz"), "-c", str(config_file(tmp_path))]
    )
    assert result.exit_code == 2 and "row 1" in result.output and "cannot fit" in result.output
    store = DatasetStore(db)
    assert store.count(status="labelled") == 0 and store.count(status="pending") == 2
