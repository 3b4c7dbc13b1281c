"""Every labeller keeps one contract: PySCF, xTB and the reference oracle give results of
the same shape, with the same provenance fields, and fail the same way."""

import numpy as np
import pytest
from ase.build import molecule
from conftest import DATA

from sapis.dft.labeller import PySCFLabeller
from sapis.dft.protocol import Labeller
from sapis.dft.reference import ReferenceOracle
from sapis.dft.settings import DFTSettings, Rung
from sapis.dft.xtb import XTBLabeller
from sapis.errors import InputError
from sapis.labels import PROVENANCE_KEYS, Attempt
from sapis.store import DatasetStore


@pytest.fixture(scope="module")
def oracle():
    return ReferenceOracle(DATA / "rmd17_malonaldehyde_test_01.npz")


@pytest.fixture(params=["pyscf", "xtb", "oracle"])
def case(request, oracle):
    """(labeller, a structure it labels, one it fails on, one its check refuses)."""
    water = molecule("H2O")
    stretched = water.copy()
    stretched.positions[1] *= 1.1
    crushed = water.copy()
    crushed.positions[1] = crushed.positions[0] + [0.1, 0.0, 0.0]
    if request.param == "pyscf":
        hopeless = DFTSettings(
            basis="sto-3g", density_fit=False, ladder=[Rung(name="a", max_cycle=1)]
        )
        return (
            PySCFLabeller(DFTSettings(basis="sto-3g", density_fit=False)),
            water,
            (PySCFLabeller(hopeless), stretched),
            crushed,
        )
    if request.param == "xtb":
        xtb = DFTSettings(program="xtb")
        hopeless = xtb.model_copy(update={"max_cycle": 1})
        return XTBLabeller(xtb), water, (XTBLabeller(hopeless), stretched), crushed
    return oracle, oracle.pool()[3], (oracle, water), water


def test_both_are_labellers_and_give_results_of_one_shape(case):
    labeller, good, _, _ = case
    assert isinstance(labeller, Labeller)
    assert isinstance(labeller.level, str) and labeller.cores >= 1
    assert labeller.seconds_per_label >= 0 and isinstance(labeller.remote, bool)
    (result,) = labeller.label([good])
    assert result.converged and result.reason is None and isinstance(result.rung, str)
    assert isinstance(result.energy, float) and np.isfinite(result.energy)
    assert result.forces.shape == (len(good), 3) and np.isfinite(result.forces).all()
    assert result.seconds >= 0 and result.attempts
    assert all(isinstance(a, Attempt) for a in result.attempts) and result.attempts[-1].converged
    assert set(PROVENANCE_KEYS) <= set(result.provenance)
    assert result.provenance["level"] == labeller.level


def test_both_record_a_failure_the_same_way_and_the_store_keeps_it(case, tmp_path):
    labeller, good, (failing, structure), _ = case
    (result,) = failing.label([structure])
    assert not result.converged and result.energy is None and result.forces is None
    assert result.rung is None and isinstance(result.reason, str) and result.reason
    assert result.attempts and not result.attempts[-1].converged
    assert set(PROVENANCE_KEYS) <= set(result.provenance)

    store = DatasetStore(tmp_path / "data.db")
    ids = store.add([structure, good]).added
    store.record(ids[0], result, "run-a")
    store.record(ids[1], labeller.label([good])[0], "run-a")
    failed, done = (store.db.get(id=i) for i in ids)
    assert failed.status == "failed" and failed.reason == result.reason
    assert failed.data["attempts"] == result.attempts_as_dicts()
    assert done.status == "labelled" and done.level == labeller.level
    assert done.program == result.program and done.program.startswith(result.provenance["program"])


def test_both_check_structures_before_any_work(case):
    labeller, good, _, refused = case
    labeller.check(good, "good")
    with pytest.raises(InputError, match="refused one"):
        labeller.check(refused, "refused one")
