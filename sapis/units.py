"""Unit conversions, done once at the boundary.

Inside SAPIS-MD everything is in eV, Å, eV/Å, fs and K. The constants come from
``ase.units`` (CODATA 2014) so that every conversion in the code base agrees.
"""

import numpy as np
from ase import units

HARTREE_TO_EV: float = units.Hartree
"""1 Hartree in eV."""
BOHR_TO_ANGSTROM: float = units.Bohr
"""1 Bohr in Å."""
HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM: float = units.Hartree / units.Bohr
"""1 Hartree/Bohr in eV/Å."""
KCAL_PER_MOL_TO_EV: float = units.kcal / units.mol
"""1 kcal/mol in eV (per molecule)."""


def hartree_to_ev(energy: float) -> float:
    """Energy in Hartree to eV."""
    return float(energy) * HARTREE_TO_EV


def gradient_to_forces(gradient: np.ndarray) -> np.ndarray:
    """Nuclear gradient (Hartree/Bohr, as PySCF returns it) to forces in eV/Å."""
    return -np.asarray(gradient, dtype=float) * HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM


def kcal_per_mol_to_ev(value: float | np.ndarray) -> float | np.ndarray:
    """kcal/mol (or kcal/mol/Å) to eV (or eV/Å)."""
    return np.asarray(value, dtype=float) * KCAL_PER_MOL_TO_EV
