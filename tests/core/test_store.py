import subprocess
import sys

import ase.io
import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from conftest import jiggled

from sapis.claims import Owner
from sapis.dft import label
from sapis.dft.settings import DFTSettings
from sapis.errors import InputError
from sapis.store import DatasetStore, SplitConfig, split_for
from sapis.structures import structure_hash


def test_new_structures_are_pending_and_duplicates_are_refused(db_url):
    store = DatasetStore(db_url)
    water = molecule("H2O")
    turned = water.copy()
    turned.rotate(40, "x")
    turned = turned[[1, 2, 0]]
    report = store.add([water, molecule("NH3"), turned])
    assert len(report.added) == 2 and report.duplicates == 1
    assert store.add([water]).duplicates == 1
    assert store.count() == 2
    assert store.count(status="pending") == 2
    assert store.hashes() == {structure_hash(water), structure_hash(molecule("NH3"))}


def test_provenance_round_and_split_are_stored(db_url):
    store = DatasetStore(db_url)
    atoms = molecule("CH4")
    atoms.info.update(source="md", round=3, temperature=600.0, parent=7)
    store.add([atoms], split="val")
    row = store.db.get(id=1)
    assert (row.source, row.round, row.temperature, row.parent, row.split) == (
        "md",
        3,
        600.0,
        7,
        "val",
    )
    with pytest.raises(InputError, match="unknown split"):
        store.add([molecule("H2O")], split="training")


def test_a_label_and_a_failure_are_recorded_with_their_ladder(db_url, cheap):
    store = DatasetStore(db_url)
    store.add([molecule("H2O"), molecule("NH3")])
    (i, water), (j, ammonia) = store.pending()
    good = label(water, cheap)
    store.record(i, good, run="r1")
    bad = label(ammonia, cheap.model_copy(update={"max_cycle": 1, "ladder": cheap.ladder[:1]}))
    store.record(j, bad, run="r1")
    row = store.db.get(id=i)
    assert row.status == "labelled" and row.level == "PBE/sto-3g" and row.rung == "default"
    assert row.energy == pytest.approx(good.energy)
    np.testing.assert_allclose(row.forces, good.forces)
    assert row.unique_id == structure_hash(water)
    assert row.data["dft"]["version"] and row.data["attempts"][0]["converged"]
    failed = store.db.get(id=j)
    assert failed.status == "failed" and "did not converge" in failed.reason
    assert failed.get("energy") is None and failed.get("forces") is None
    assert store.pending() == []
    stats = store.stats()
    assert stats["status"] == {"labelled": 1, "failed": 1}


def test_imported_labels_export_to_extxyz_in_ev(db_url, tmp_path):
    store = DatasetStore(db_url)
    atoms = molecule("H2O")
    forces = np.arange(9.0).reshape(3, 3) / 10
    atoms.calc = SinglePointCalculator(atoms, energy=-2075.5, forces=forces)
    store.add([atoms, molecule("NH3")], level="PBE/def2-svp", split="train")
    assert store.count(status="labelled") == 1 and store.count(status="pending") == 1
    out = tmp_path / "out.extxyz"
    assert store.export(out) == 1
    back = ase.io.read(out, ":")
    assert len(back) == 1
    assert back[0].get_potential_energy() == pytest.approx(-2075.5)
    np.testing.assert_allclose(back[0].get_forces(), forces)
    assert back[0].info["hash"] == structure_hash(atoms)
    moved = atoms.copy()
    moved.positions[0, 2] += 0.1
    moved.calc = SinglePointCalculator(moved, energy=-2075.4, forces=forces)
    with pytest.raises(InputError, match="need a level of theory"):
        store.add([moved])


def test_split_by_hash_is_deterministic_and_roughly_proportional():
    fractions = SplitConfig(val=0.2, test=0.1)
    hashes = [structure_hash(a) for a in jiggled("H2O", 400, seed=3)]
    splits = [split_for(h, fractions) for h in hashes]
    assert splits == [split_for(h, fractions) for h in hashes]
    assert 0.12 < splits.count("val") / 400 < 0.28
    assert 0.04 < splits.count("test") / 400 < 0.16


WRITER = """
import sys
from ase.build import molecule
from sapis.store import DatasetStore
store = DatasetStore(sys.argv[1])
first, count = int(sys.argv[2]), int(sys.argv[3])
for k in range(first, first + count):
    atoms = molecule("CH4")
    atoms.positions[0, 0] += 0.01 * k
    store.add([atoms])
"""


def test_processes_writing_at_once_lose_no_row_and_mix_up_nothing(db_url):
    DatasetStore(db_url)  # create the schema before the race
    # four writers, 40 structures each, overlapping by 10: 130 distinct rows expected.
    # (Before the PostgreSQL row-id fix this lost a row or mixed up search keys in about
    # one run in five.)
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, db_url, str(first), "40"])
        for first in (0, 30, 60, 90)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0, 0]
    store = DatasetStore(db_url)
    assert store.count() == 130
    assert len(store.hashes()) == 130
    rows = list(store.db.select())
    # every row has its own key-value pairs (none attached to another row's id)
    assert all(r.key_value_pairs.keys() >= {"status", "split", "source", "round"} for r in rows)
    assert store.count(status="pending") == 130


def test_one_structure_at_two_levels_and_each_level_read_alone(db_url):
    store = DatasetStore(db_url)
    water = molecule("H2O")
    cheap, dft = water.copy(), water.copy()
    cheap.calc = SinglePointCalculator(cheap, energy=-137.0, forces=np.zeros((3, 3)))
    dft.calc = SinglePointCalculator(dft, energy=-2079.0, forces=np.full((3, 3), 0.1))
    assert len(store.add([cheap], level="GFN2-xTB").added) == 1
    assert len(store.add([dft], level="PBE/def2-svp").added) == 1
    assert store.add([dft], level="PBE/def2-svp").duplicates == 1  # never twice at a level
    assert store.levels() == {"GFN2-xTB", "PBE/def2-svp"}
    (x,), (d,) = store.labelled(level="GFN2-xTB"), store.labelled(level="PBE/def2-svp")
    assert x.info["hash"] == d.info["hash"] == structure_hash(water)
    assert (x.get_potential_energy(), d.get_potential_energy()) == (-137.0, -2079.0)
    assert store.hashes("GFN2-xTB") == store.hashes("PBE/def2-svp") == {structure_hash(water)}
    # a structure pending at one level waits for that level's labeller only
    ammonia = molecule("NH3")
    store.add([ammonia], level="PBE/sto-3g")
    assert store.add([ammonia], level="PBE/sto-3g").duplicates == 1
    assert [a.get_chemical_formula() for _, a in store.pending("PBE/sto-3g")] == ["H3N"]
    assert store.pending("GFN2-xTB") == []
    ((row_id, _),) = store.pending("PBE/sto-3g")
    other = label(ammonia, DFTSettings(xc="PBE", basis="6-31g", density_fit=False))
    with pytest.raises(ValueError, match="waits for a label at PBE/sto-3g"):
        store.record(row_id, other, run="r1")
    assert store.db.get(id=row_id).status == "pending"
    assert store.label_seconds(level="GFN2-xTB")["labelled"] == 1
    with pytest.raises(InputError, match="several levels"):
        store.export("never-written.xyz")


# --- claims on rows being labelled -------------------------------------------------------


def test_a_claimed_row_is_skipped_by_another_driver_and_counted_as_running(db_url):
    store = DatasetStore(db_url)
    store.add(jiggled("H2O", 3, seed=2), level="PBE/sto-3g")
    first, second = Owner("run-a"), Owner("run-b")
    assert store.claim([1, 2], first, level="PBE/sto-3g").claimed == [1, 2]
    outcome = DatasetStore(db_url).claim([1, 2, 3], second, level="PBE/sto-3g")
    assert (outcome.claimed, outcome.busy, outcome.taken_over) == ([3], [1, 2], [])
    assert store.claim([1], first).claimed == [1]  # an owner may renew its own claim
    assert store.pending("PBE/sto-3g") == []
    assert store.count(status="running") == 3 and store.count(status="pending") == 0
    assert store.stats()["status"] == {"running": 3}
    assert sorted((c.row_id, c.run) for c in store.claims()) == [
        (1, "run-a"),
        (2, "run-a"),
        (3, "run-b"),
    ]
    row = store.db.get(id=1)
    assert row.owner == str(first) and row.lease_until > row.heartbeat
    # a claim ends with a release: the row waits again, without a trace of the claim
    assert store.release(first) == [1, 2]
    assert [i for i, _ in store.pending()] == [1, 2]
    assert store.db.get(id=1).get("owner") is None
    assert store.count(status="running") == 1


def test_a_lapsed_claim_is_taken_over_and_its_late_result_is_dropped(db_url, cheap, caplog):
    store = DatasetStore(db_url)
    store.add([molecule("H2O")])
    slow, other = Owner("run-slow"), Owner("run-other", machine="another machine")
    store.claim([1], slow, lease=10.0, now=1000.0)
    assert store.claim([1], other, now=1009.0).busy == [1]  # the lease still runs
    assert [i for i, _ in store.pending(now=1009.0)] == []
    assert [i for i, _ in store.pending(now=1010.0)] == [1]
    outcome = store.claim([1], other, now=1010.0)
    assert outcome.claimed == outcome.taken_over == [1]
    assert store.renew(slow) == []  # the slow driver learns it lost the row
    result = label(molecule("H2O"), cheap)
    with caplog.at_level("WARNING", logger="sapis.store"):
        assert store.record(1, result, run="run-slow") is False
    assert "result of run-slow not stored" in caplog.text
    assert store.db.get(id=1).status == "running"
    assert store.record(1, result, run="run-other") is True
    row = store.db.get(id=1)
    assert (row.status, row.run, row.get("owner")) == ("labelled", "run-other", None)
    # a row labelled meanwhile refuses the result of anyone else, claimed or not
    assert store.record(1, result, run="run-slow") is False
    assert store.claim([1], slow).done == [1]


def test_the_claim_of_a_killed_driver_on_this_machine_is_taken_over_at_once(db_url):
    store = DatasetStore(db_url)
    store.add(jiggled("H2O", 2, seed=4))
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    dead = Owner("run-dead", pid=int(gone.stdout))  # this machine, its process has ended
    alive = Owner("run-elsewhere", pid=int(gone.stdout), machine="another machine")
    store.claim([1], dead)
    store.claim([2], alive)
    assert [i for i, _ in store.pending()] == [1]
    outcome = store.claim([1, 2], Owner("run-new"))
    assert (outcome.taken_over, outcome.busy) == ([1], [2])


CLAIMER = """
import os, random, sys, time
from sapis.claims import Owner
from sapis.store import DatasetStore
store = DatasetStore(sys.argv[1])
owner = Owner(sys.argv[2], machine="far")  # held until the lease ends, though we exit
ids = list(range(1, int(sys.argv[3]) + 1))
random.Random(sys.argv[2]).shuffle(ids)
print("ready", flush=True)
while not os.path.exists(sys.argv[4]):  # all start claiming together
    time.sleep(0.01)
for row_id in ids:
    print(*store.claim([row_id], owner).claimed)
"""


def test_drivers_claiming_at_once_each_get_distinct_rows(db_url, tmp_path):
    n = 60
    store = DatasetStore(db_url)
    store.add(jiggled("CH4", n, seed=6))
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, db_url, f"run-{k}", str(n), str(go)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(4)
    ]
    assert [p.stdout.readline() for p in procs] == ["ready\n"] * 4
    go.touch()
    got = [p.communicate(timeout=300)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4
    claimed = [int(i) for ids in got for i in ids]
    assert sorted(claimed) == list(range(1, n + 1))  # every row once, none twice
    owners = {c.row_id: c.run for c in store.claims()}
    for k, ids in enumerate(got):
        assert all(owners[int(i)] == f"run-{k}" for i in ids)


OPENER = """
import os, sys, time
from ase.build import molecule
from sapis.store import DatasetStore
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
DatasetStore(sys.argv[1]).add([molecule(sys.argv[3])])
"""


def test_drivers_opening_a_new_store_at_once_all_get_it(db_url, tmp_path):
    go = tmp_path / "go"
    names = ["H2O", "NH3", "CH4", "CO2"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, db_url, str(go), name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in names
    ]
    assert [p.stdout.readline() for p in procs] == ["ready\n"] * 4
    go.touch()
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    assert DatasetStore(db_url).count() == 4


def test_a_reader_never_creates_a_store_and_only_sqlite_or_postgresql_is_one(tmp_path):
    with pytest.raises(InputError, match=r"no such database: .*typo\.db"):
        DatasetStore(tmp_path / "deep" / "typo.db", create=False)
    assert not (tmp_path / "deep").exists()
    writer = DatasetStore(tmp_path / "deep" / "new.sqlite3")  # a writer creates it
    writer.add([molecule("H2O")])
    assert DatasetStore(tmp_path / "deep" / "new.sqlite3", create=False).count() == 1
    for name, message in [
        ("", "no database given"),
        ("y.json", "neither a SQLite file"),
        ("data", "neither a SQLite file"),
        ("mysql://u:p@h/x", "only postgresql:// URLs"),
    ]:
        with pytest.raises(InputError, match=message):
            DatasetStore(name if "://" in name or not name else tmp_path / name)
    (tmp_path / "text.db").write_text("hello\n")
    with pytest.raises(InputError, match=r"text\.db: not a SQLite database"):
        DatasetStore(tmp_path / "text.db")
    assert (tmp_path / "text.db").read_text() == "hello\n"
    (tmp_path / "folder.db").mkdir()
    with pytest.raises(InputError, match=r"folder\.db is a directory"):
        DatasetStore(tmp_path / "folder.db")
    (tmp_path / "empty.db").touch()  # an empty file is a new store to a writer only
    with pytest.raises(InputError, match="not a SQLite database"):
        DatasetStore(tmp_path / "empty.db", create=False)
    assert DatasetStore(tmp_path / "empty.db").count() == 0
