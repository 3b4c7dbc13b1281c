"""Checks that a structure can be labelled at a given level of theory, before any DFT."""

import functools
import warnings
from collections import Counter

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


@functools.cache
def _functions(basis: str, symbol: str) -> int:
    """Basis functions (spherical) of one ``symbol`` atom in ``basis``."""
    from ase.data import atomic_numbers
    from pyscf import gto

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mol = gto.M(atom=[[symbol, (0, 0, 0)]], basis=basis, spin=atomic_numbers[symbol] % 2)
    return int(mol.nao_nr())


def basis_functions(atoms: Atoms, basis: str) -> int:
    """Basis functions of ``atoms`` in ``basis`` (every element must be covered)."""
    counts = Counter(atoms.get_chemical_symbols())
    return sum(n * _functions(basis, symbol) for symbol, n in counts.items())


def check_size(atoms: Atoms, basis: str, max_functions: int, where: str) -> None:
    """Raise :class:`InputError` if ``atoms`` has more than ``max_functions`` basis
    functions in ``basis``: DFT cost grows with their cube, memory with their square."""
    n = basis_functions(atoms, basis)
    if n > max_functions:
        raise InputError(
            f"{where}: {len(atoms)} atoms have {n} basis functions at {basis}, more than "
            f"dft.max_basis_functions = {max_functions} (a label's time grows with their "
            "cube); raise dft.max_basis_functions if you mean it"
        )


def check_for_dft(
    atoms: Atoms,
    charge: int,
    multiplicity: int,
    basis: str,
    where: str = "structure",
    max_functions: int | None = None,
) -> None:
    """All checks a structure must pass before it is sent to DFT (its size too, with
    ``max_functions``)."""
    check_structure(atoms, where)
    check_electronic_state(atoms, charge, multiplicity, where)
    check_basis(atoms, basis, where)
    if max_functions is not None:
        check_size(atoms, basis, max_functions, where)
