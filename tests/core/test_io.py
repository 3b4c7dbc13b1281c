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
