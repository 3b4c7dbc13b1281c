"""The packaged members compile with nequip's own ``nequip-compile`` (AOTInductor) for
its ASE calculator and for LAMMPS' ``pair_nequip``, and the compiled models give the
ensemble members' forces.

The members a campaign writes (``round-NNN/ensemble/member-k/model.nequip.zip``) are the
files ``campaign.training.train_round`` writes through
:func:`sapis.surrogate.export.package_members`, the function called here: these tests
compile a campaign's final model.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sapis.surrogate.ensemble import Ensemble
from sapis.surrogate.export import package_members

NEQUIP_COMPILE = shutil.which("nequip-compile", path=str(Path(sys.executable).parent))

#: |compiled - member| force tolerance (eV/Å): float64 members agree to round-off
#: (~1e-15); float32 ones to float32 round-off of the differently fused compiled kernels
#: (nequip's own compile check allows 5e-5 on its example frame)
FORCE_TOL = {"float64": 1e-10, "float32": 1e-4}


def nequip_compile(package: Path, out: Path, target: str) -> subprocess.CompletedProcess:
    """``nequip-compile PACKAGE OUT --mode aotinductor --device cpu --target TARGET``, the
    command the README gives, run as a user would (its own process and global state)."""
    command = [str(NEQUIP_COMPILE), str(package), str(out), "--mode", "aotinductor"]
    command += ["--device", "cpu", "--target", target]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)


def test_a_package_holds_an_example_frame_whose_stress_the_model_can_compute(tiny_ensemble):
    """nequip-compile checks the compiled model against the eager one on the package's
    example frame, ``stress`` included (ASE target): a molecule with ASE's zero cell gives
    NaN stress there and fails the check, so the example must be boxed."""
    from nequip.data import AtomicDataDict
    from nequip.model.saved_models.load_utils import load_saved_model

    for package in package_members(tiny_ensemble):
        model, data = load_saved_model(str(package), return_data_dict=True)
        cell = data[AtomicDataDict.CELL_KEY].reshape(3, 3)
        assert torch.linalg.det(cell).abs() > 1000.0  # a padded box, not ASE's zero cell
        assert not data[AtomicDataDict.PBC_KEY].any()
        out = model.eval()(dict(data))
        assert torch.isfinite(out[AtomicDataDict.STRESS_KEY]).all()
        assert torch.isfinite(out[AtomicDataDict.FORCE_KEY]).all()


@pytest.fixture(scope="module")
def packaged(trained_ensemble):
    """The trained ensemble's folder, its members packaged as a campaign packages them."""
    folder, _ = trained_ensemble
    return folder, package_members(folder)


@pytest.mark.slow
def test_the_ase_target_compiles_and_gives_the_members_forces(packaged, malonaldehyde, tmp_path):
    """``nequip-compile --mode aotinductor --target ase`` of a trained member (float32,
    the campaign default) exits 0, and nequip's ``NequIPCalculator`` on the compiled file
    gives the member's forces and energy on held-out frames."""
    from nequip.integrations.ase import NequIPCalculator

    folder, packages = packaged
    ensemble = Ensemble.load(folder)
    images = [atoms.copy() for atoms in malonaldehyde[1][:5]]
    pred = ensemble.predict(images)
    compiled = tmp_path / "member-0.nequip.pt2"
    done = nequip_compile(packages[0], compiled, "ase")
    assert done.returncode == 0, done.stderr[-3000:]
    calc = NequIPCalculator.from_compiled_model(
        str(compiled), device="cpu", chemical_species_to_atom_type_map=True
    )
    for i, atoms in enumerate(images):
        atoms.calc = calc
        forces = atoms.get_forces()
        assert np.abs(forces).max() > 0.1  # a trained model: real forces to compare
        tol = FORCE_TOL[ensemble.manifest.dtype]
        np.testing.assert_allclose(forces, pred.forces[i][0], rtol=0, atol=tol)
        assert atoms.get_potential_energy() == pytest.approx(pred.energies[0, i], abs=1e-4)


@pytest.mark.slow
def test_the_pair_nequip_target_compiles_to_a_model_with_the_members_forces(
    packaged, malonaldehyde, tmp_path
):
    """``--target pair_nequip`` (LAMMPS) compiles without LAMMPS; the file it writes,
    called with that target's fields as ``pair_nequip`` calls it, gives the member's
    forces and a finite virial."""
    from nequip.data import AtomicDataDict
    from nequip.model.inference_models import load_compiled_model
    from nequip.scripts._compile_utils import COMPILE_TARGET_DICT

    folder, packages = packaged
    ensemble = Ensemble.load(folder)
    compiled = tmp_path / "member-0.nequip.pt2"
    done = nequip_compile(packages[0], compiled, "pair_nequip")
    assert done.returncode == 0, done.stderr[-3000:]
    target = COMPILE_TARGET_DICT["pair_nequip"]
    model, metadata = load_compiled_model(str(compiled), "cpu", target["input"], target["output"])
    assert metadata["type_names"] == ensemble.type_names
    images = malonaldehyde[1][:3]
    pred = ensemble.predict(images)
    for i, graph in enumerate(ensemble.graphs(images)):
        out = model({k: graph[k] for k in target["input"]})
        forces = out[AtomicDataDict.FORCE_KEY].detach().numpy()
        tol = FORCE_TOL[ensemble.manifest.dtype]
        np.testing.assert_allclose(forces, pred.forces[i][0], rtol=0, atol=tol)
        assert torch.isfinite(out[AtomicDataDict.VIRIAL_KEY]).all()
