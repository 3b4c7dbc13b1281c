"""GFN-xTB energy and forces through tblite: a cheap level that can label any structure.

A label takes milliseconds on one core (PBE/def2-SVP takes seconds), so MD frames and
generator samples can all be labelled for real: quick demos, cheap exploration, and
benchmark worlds where the ground truth is known everywhere. :class:`XTBLabeller` is the
:class:`~sapis.dft.protocol.Labeller`; its results go to the store like PySCF's, with an
attempt record and a failed result (never an exception) when the SCF does not converge.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version

from ase import Atoms

from sapis.dft.checks import check_electronic_state
from sapis.dft.labeller import PySCFLabeller
from sapis.dft.settings import DFTSettings
from sapis.errors import InputError
from sapis.labels import Attempt, LabelResult, base_provenance
from sapis.structures import check_structure

#: Heaviest element GFN1- and GFN2-xTB are parametrised for (radon).
MAX_Z = 86

#: Wall seconds of one label assumed before any is measured (a 9-atom molecule takes ~10 ms).
SECONDS_PER_LABEL = 0.05


def provenance(settings: DFTSettings, charge: int, multiplicity: int) -> dict:
    """What produced an xTB label: tblite's version, the method and its SCF settings."""
    return {
        **base_provenance("tblite", version("tblite"), settings.method),
        "method": settings.method,
        "charge": charge,
        "multiplicity": multiplicity,
        "accuracy": settings.accuracy,
        "electronic_temperature": settings.electronic_temperature,
        "max_cycle": settings.max_cycle,
        "threads": settings.threads,
    }


def label_xtb(
    atoms: Atoms, settings: DFTSettings, charge: int = 0, multiplicity: int = 1
) -> LabelResult:
    """Energy (eV) and forces (eV/Å) of ``atoms`` at ``settings.method``.

    tblite's SCF runs at most ``settings.max_cycle`` iterations; a structure whose SCF
    fails gives a failed result with tblite's message as the reason.
    """
    from tblite.ase import TBLite
    from threadpoolctl import threadpool_limits

    record = provenance(settings, charge, multiplicity)
    calc = TBLite(
        method=settings.method,
        charge=charge,
        multiplicity=multiplicity,
        accuracy=settings.accuracy,
        electronic_temperature=settings.electronic_temperature,
        max_iterations=settings.max_cycle,
        verbosity=0,
    )
    work = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    work.calc = calc
    start = time.monotonic()
    try:
        with threadpool_limits(limits=settings.threads):
            energy = float(work.get_potential_energy())
            forces = work.get_forces().copy()
    except Exception as err:  # tblite raises on an SCF that does not converge
        seconds = time.monotonic() - start
        reason = f"{type(err).__name__}: {err}"
        attempt = Attempt("tblite", False, None, None, seconds, reason)
        return LabelResult(False, None, None, None, [attempt], seconds, reason, record)
    seconds = time.monotonic() - start
    attempt = Attempt("tblite", True, None, energy, seconds)
    return LabelResult(True, energy, forces, "tblite", [attempt], seconds, None, record)


def check_for_xtb(atoms: Atoms, charge: int, multiplicity: int, where: str = "structure") -> None:
    """All checks a structure must pass before it is sent to xTB."""
    check_structure(atoms, where)
    heavy = sorted({s for s, z in zip(atoms.get_chemical_symbols(), atoms.numbers) if z > MAX_Z})
    if heavy:
        raise InputError(
            f"{where}: GFN-xTB has no parameters for {', '.join(heavy)} (elements up to Rn only)"
        )
    check_electronic_state(atoms, charge, multiplicity, where)


@dataclass
class XTBLabeller(PySCFLabeller):
    """GFN-xTB at ``settings.method`` for structures of total ``charge`` (e) and spin
    ``multiplicity`` (2S+1): a :class:`~sapis.dft.protocol.Labeller` that shares
    :class:`PySCFLabeller`'s settings, level and cores, with its own check and label."""

    seconds_per_label: float = SECONDS_PER_LABEL

    def __post_init__(self) -> None:
        if self.settings.program != "xtb":
            raise InputError(f"XTBLabeller needs dft.program: xtb, got {self.settings.program}")

    def check(self, atoms: Atoms, where: str = "structure") -> None:
        check_for_xtb(atoms, self.charge, self.multiplicity, where)

    def label(self, images: Sequence[Atoms]) -> list[LabelResult]:
        return [label_xtb(atoms, self.settings, self.charge, self.multiplicity) for atoms in images]
