import numpy as np
import pytest
from conftest import DATA

from sapis.errors import InputError
from sapis.io import read_structures
from sapis.units import KCAL_PER_MOL_TO_EV


def test_rmd17_npz_reads_with_labels_converted_to_ev():
    path = DATA / "rmd17_malonaldehyde_test_01.npz"
    raw = np.load(path)
    images = read_structures(path)
    assert len(images) == 1000
    first = images[0]
    assert first.get_chemical_formula() == "C3H4O2"
    np.testing.assert_allclose(first.positions, raw["coords"][0])
    assert first.get_potential_energy() == pytest.approx(raw["energies"][0] * KCAL_PER_MOL_TO_EV)
    np.testing.assert_allclose(first.get_forces(), raw["forces"][0] * 0.0433641, rtol=1e-5)
    assert first.info["source"] == "import"


def test_unknown_element_malformed_and_missing_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.xyz"
    bad.write_text("2\n\nXx 0 0 0\nH 0 0 1\n")
    with pytest.raises(InputError, match="unknown element"):
        read_structures(bad)
    garbage = tmp_path / "garbage.xyz"
    garbage.write_text("this is not\na structure file\n")
    with pytest.raises(InputError, match="cannot read structures"):
        read_structures(garbage)
    with pytest.raises(InputError, match="no such file"):
        read_structures(tmp_path / "missing.xyz")
    npz = tmp_path / "other.npz"
    np.savez(npz, something=np.zeros(3))
    with pytest.raises(InputError, match="missing keys"):
        read_structures(npz)


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda d: d["energies"].__setitem__(3, np.nan), "frame 3: energy"),
        (lambda d: d["forces"].__setitem__((5, 2, 1), np.inf), r"frame 5: forces of atoms \[2\]"),
        (lambda d: d.update(energies=d["energies"][:-2]), "10 frames but 8 energies"),
        (
            lambda d: d.update(forces=d["forces"][:, :4]),
            r"frame 0: forces have shape \(4, 3\), expected \(9, 3\)",
        ),
    ],
)
def test_an_npz_with_broken_labels_is_refused_naming_the_frame(tmp_path, spoil, message):
    raw = np.load(DATA / "rmd17_malonaldehyde_test_01.npz")
    data = {
        k: raw[k] if k == "nuclear_charges" else np.array(raw[k][:10])
        for k in ("nuclear_charges", "coords", "energies", "forces")
    }
    spoil(data)
    path = tmp_path / "broken.npz"
    np.savez(path, **data)
    with pytest.raises(InputError, match=message):
        read_structures(path)


def test_the_store_refuses_non_finite_or_misshapen_labels_before_writing(tmp_path):
    from ase.build import molecule
    from ase.calculators.singlepoint import SinglePointCalculator

    from sapis.store import DatasetStore

    good, bad = molecule("H2O"), molecule("NH3")
    good.calc = SinglePointCalculator(good, energy=-1.0, forces=np.zeros((3, 3)))
    bad.calc = SinglePointCalculator(bad, energy=-2.0, forces=np.zeros((3, 3)))  # 4 atoms
    store = DatasetStore(tmp_path / "s.db")
    with pytest.raises(InputError, match=r"structure 1: forces have shape \(3, 3\)"):
        store.add([good, bad], level="PBE/sto-3g")
    assert store.count() == 0  # nothing of the batch was written
    bad.calc = SinglePointCalculator(bad, energy=float("nan"), forces=np.zeros((4, 3)))
    with pytest.raises(InputError, match="structure 0: energy nan is not one finite number"):
        store.add([bad], level="PBE/sto-3g")
