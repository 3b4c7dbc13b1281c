"""Checks that a structure can be labelled at a given level of theory, before any DFT."""

import functools
import warnings

from ase import Atoms

from sapis.errors import InputError
from sapis.structures import check_structure


def check_electronic_state(atoms: Atoms, charge: int, multiplicity: int, where: str) -> None:
    """Raise :class:`InputError` if ``charge`` and ``multiplicity`` (2S+1) cannot fit the
    electron count of ``atoms``."""
    electrons = int(atoms.numbers.sum()) - charge
    unpaired = multiplicity - 1
    if electrons <= 0:
        raise InputError(f"{where}: charge {charge} leaves {electrons} electrons")
    if unpaired > electrons or (electrons - unpaired) % 2:
        raise InputError(
            f"{where}: charge {charge} and multiplicity {multiplicity} cannot fit "
            f"{electrons} electrons ({atoms.get_chemical_formula()}); "
            f"an {'odd' if electrons % 2 else 'even'} electron count needs an "
            f"{'even' if electrons % 2 else 'odd'} multiplicity"
        )


@functools.cache
def _basis_covers(basis: str, symbol: str) -> bool:
    """Whether PySCF's ``basis`` has functions for ``symbol`` (read once per pair)."""
    from pyscf.gto import basis as pyscf_basis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pyscf_basis.load(basis, symbol)
        except Exception:
            return False
    return True


def check_basis(atoms: Atoms, basis: str, where: str) -> None:
    """Raise :class:`InputError` if ``basis`` has no functions for an element of ``atoms``."""
    for symbol in sorted(set(atoms.get_chemical_symbols())):
        if not _basis_covers(basis, symbol):
            raise InputError(f"{where}: basis {basis!r} has no functions for {symbol}")


def check_for_dft(
    atoms: Atoms, charge: int, multiplicity: int, basis: str, where: str = "structure"
) -> None:
    """All checks a structure must pass before it is sent to DFT."""
    check_structure(atoms, where)
    check_electronic_state(atoms, charge, multiplicity, where)
    check_basis(atoms, basis, where)
