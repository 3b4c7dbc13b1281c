"""GFN-xTB labels through tblite: the right numbers, the store and Parsl like PySCF, and
bad input refused before any work."""

import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.build import molecule
from conftest import jiggled

from sapis.campaign.config import load_config
from sapis.dft.batch import label_pending
from sapis.dft.executors import ExecutorConfig
from sapis.dft.settings import DFTSettings
from sapis.dft.xtb import XTBLabeller, label_xtb
from sapis.errors import InputError
from sapis.store import DatasetStore

XTB = DFTSettings(program="xtb")


@pytest.mark.parametrize("method", ["GFN2-xTB", "GFN1-xTB"])
def test_forces_are_minus_the_finite_difference_gradient_of_the_energy(method):
    settings = DFTSettings(program="xtb", method=method, accuracy=0.01)
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    result = label_xtb(atoms, settings)
    assert result.converged and result.provenance["level"] == method
    h = 1e-4
    for i, axis in [(0, 0), (2, 1), (8, 2)]:
        energies = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[i, axis] += sign * h
            energies.append(label_xtb(moved, settings).energy)
        numeric = -(energies[0] - energies[1]) / (2 * h)
        assert result.forces[i, axis] == pytest.approx(numeric, abs=2e-4)
    assert np.abs(result.forces.sum(axis=0)).max() < 1e-6  # no net force


def test_gfn2_and_gfn1_are_different_levels_in_the_store(tmp_path):
    water = molecule("H2O")
    store = DatasetStore(tmp_path / "data.db")
    store.add([water])
    gfn1 = XTBLabeller(DFTSettings(program="xtb", method="GFN1-xTB"), remote=False)
    label_pending(store, gfn1)
    row = store.db.get(id=1)
    assert row.status == "labelled" and row.level == "GFN1-xTB"
    assert row.program.startswith("tblite-") and np.isfinite(row.energy)
    gfn2 = label_xtb(water, XTB)
    assert abs(gfn2.energy - row.energy) > 1.0  # the methods' energy zeros differ by eVs


def test_labels_go_through_parsl_workers_and_the_store_like_pyscf(tmp_path):
    store = DatasetStore(tmp_path / "data.db")
    store.add(jiggled("CH4", 6))
    executor = ExecutorConfig(profile="local", workers=2, run_dir=tmp_path / "runinfo")
    summary = label_pending(store, XTBLabeller(XTB), executor)
    assert summary.labelled == 6 and summary.failed == 0 and not summary.errors
    assert store.count(status="labelled") == 6
    rows = list(store.db.select(status="labelled"))
    assert {r.level for r in rows} == {"GFN2-xTB"}
    assert all(r.data["dft"]["method"] == "GFN2-xTB" for r in rows)


def test_an_element_xtb_has_no_parameters_for_is_refused_before_any_work(tmp_path):
    heavy = Atoms("OgH", positions=[[0, 0, 0], [0, 0, 1.9]])
    with pytest.raises(InputError, match="no parameters for Og"):
        XTBLabeller(XTB).check(heavy, "seed 0")
    store = DatasetStore(tmp_path / "data.db")
    store.add([molecule("H2O"), heavy])
    with pytest.raises(InputError, match=r"row 2.*Og"):
        label_pending(store, XTBLabeller(XTB))
    assert store.count(status="pending") == 2  # the good row was not labelled either


def test_an_unknown_method_is_refused_when_the_config_is_read(tmp_path):
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump({"dft": {"program": "xtb", "method": "GFN9-xTB"}}))
    with pytest.raises(InputError, match=r"dft\.method.*GFN2-xTB"):
        load_config(path)
    path.write_text(yaml.safe_dump({"dft": {"program": "orca"}}))
    with pytest.raises(InputError, match=r"dft\.program"):
        load_config(path)
