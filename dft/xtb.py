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

import numpy as np
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


def tblite_calculator(settings: DFTSettings, charge: int = 0, multiplicity: int = 1):
    """tblite's ASE calculator at ``settings.method`` (accuracy, electronic temperature,
    ``max_cycle`` SCF iterations), silent."""
    from tblite.ase import TBLite

    return TBLite(
        method=settings.method,
        charge=charge,
        multiplicity=multiplicity,
        accuracy=settings.accuracy,
        electronic_temperature=settings.electronic_temperature,
        max_iterations=settings.max_cycle,
        verbosity=0,
    )


def label_xtb(
    atoms: Atoms, settings: DFTSettings, charge: int = 0, multiplicity: int = 1
) -> LabelResult:
    """Energy (eV) and forces (eV/Å) of ``atoms`` at ``settings.method``.

    tblite's SCF runs at most ``settings.max_cycle`` iterations; a structure whose SCF
    fails gives a failed result with tblite's message as the reason.
    """
    from threadpoolctl import threadpool_limits

    record = provenance(settings, charge, multiplicity)
    calc = tblite_calculator(settings, charge, multiplicity)
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


@dataclass
class CheapTrajectory:
    """What one cheap-level trajectory did: its labelled frames, the steps it ran, why it
    stopped (``completed``, ``unphysical: ...`` or ``SCF failed: ...``) and its wall time."""

    frames: list[Atoms]
    steps: int
    stopped_by: str
    seconds: float


def xtb_md(
    atoms: Atoms,
    settings: DFTSettings,
    temperature: float,
    steps: int,
    sample_every: int,
    timestep: float = 0.5,
    friction: float = 0.01,
    seed: int = 0,
    charge: int = 0,
    multiplicity: int = 1,
) -> CheapTrajectory:
    """Langevin MD at ``settings.method`` from ``atoms``: ``steps`` steps of ``timestep``
    fs at ``temperature`` K (friction in 1/fs), a labelled frame every ``sample_every``.

    The level is cheap enough to be its own sampler: every sampled frame carries the
    energy and forces MD computed anyway, with ``level``, ``source=cheap-md``,
    ``temperature``, ``step``, the seed's hash as ``parent``, and ``label_seconds`` (its
    share of the trajectory's wall time, so the store counts what the level cost). A
    bond that breaks or forms, a close contact or an SCF failure ends the trajectory with
    the frames sampled so far.
    """
    from ase.calculators.singlepoint import SinglePointCalculator
    from threadpoolctl import threadpool_limits

    from sapis.dynamics import langevin
    from sapis.structures import structure_hash
    from sapis.validity import ValidityFilter

    rng = np.random.default_rng(seed)
    work = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    work.calc = tblite_calculator(settings, charge, multiplicity)
    check = ValidityFilter.from_reference(atoms)
    parent = structure_hash(atoms)
    dyn = langevin(work, temperature, timestep, friction, rng)
    frames: list[Atoms] = []
    stopped_by, step = "completed", 0
    start = time.monotonic()
    with threadpool_limits(limits=settings.threads):
        while step < steps:
            try:
                dyn.run(1)
            except Exception as err:  # tblite raises on an SCF that does not converge
                stopped_by = f"SCF failed: {type(err).__name__}: {err}"
                break
            step += 1
            reason = check.reason(work)
            if reason:
                stopped_by = f"unphysical: {reason}"
                break
            if step % sample_every == 0:
                frame = Atoms(work.numbers, work.positions, cell=work.cell, pbc=work.pbc)
                results = work.calc.results
                frame.calc = SinglePointCalculator(
                    frame, energy=float(results["energy"]), forces=results["forces"].copy()
                )
                frame.info.update(
                    source="cheap-md",
                    level=settings.level_of_theory,
                    temperature=float(temperature),
                    step=step,
                    parent=parent,
                )
                frames.append(frame)
    seconds = time.monotonic() - start
    for frame in frames:
        frame.info["label_seconds"] = seconds / len(frames)
    return CheapTrajectory(frames, step, stopped_by, seconds)
