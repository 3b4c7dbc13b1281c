"""PySCF energy and analytic forces for an ``ase.Atoms``, with an SCF fallback ladder.

:func:`label` tries each rung of ``settings.ladder`` in turn until the SCF converges,
then computes analytic forces. Every attempt is recorded. A structure that fails every
rung (or runs past ``settings.time_limit``) comes back with ``converged=False`` and a
reason, never with numbers that could be mistaken for data. :class:`PySCFLabeller` is
the same behind the :class:`~sapis.dft.protocol.Labeller` interface.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass

from ase import Atoms

from sapis.dft.checks import check_for_dft
from sapis.dft.settings import XTB_ONLY, DFTSettings, Rung
from sapis.labels import Attempt, LabelResult, base_provenance
from sapis.units import gradient_to_forces, hartree_to_ev

#: Wall seconds of one label assumed before any is measured.
SECONDS_PER_LABEL = 30.0


class _TimeLimitReached(Exception):
    pass


class _CycleWatch:
    """SCF callback: counts cycles (PySCF's Newton solver keeps no count) and stops the
    SCF once the label's deadline (``time.monotonic()``) has passed."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.cycles = 0

    def __call__(self, envs: dict) -> None:
        self.cycles += 1
        if time.monotonic() > self.deadline:
            raise _TimeLimitReached


def build_molecule(atoms: Atoms, charge: int, multiplicity: int, settings: DFTSettings):
    """A PySCF ``Mole`` from ``atoms`` (positions in Å)."""
    from pyscf import gto

    mol = gto.Mole()
    mol.atom = [(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)]
    mol.unit = "Angstrom"
    mol.basis = settings.basis
    if settings.basis.startswith("def2") and atoms.numbers.max() > 36:
        mol.ecp = settings.basis
    mol.charge = charge
    mol.spin = multiplicity - 1  # PySCF's spin is 2S, not the multiplicity
    mol.max_memory = settings.max_memory
    mol.verbose = 0
    mol.build()
    return mol


def build_scf(mol, multiplicity: int, settings: DFTSettings, rung: Rung, watch: _CycleWatch):
    """A configured RKS (singlet) or UKS (otherwise) object for one rung."""
    from pyscf import dft

    mf = dft.RKS(mol) if multiplicity == 1 else dft.UKS(mol)
    mf.xc = settings.xc
    mf.grids.level = settings.grid_level
    mf.conv_tol = settings.conv_tol
    mf.max_cycle = rung.max_cycle or settings.max_cycle
    mf.init_guess = rung.init_guess
    mf.damp = rung.damp
    mf.diis_start_cycle = rung.diis_start_cycle
    mf.level_shift = rung.level_shift
    if settings.density_fit:
        mf = mf.density_fit(auxbasis=settings.auxbasis)
    if rung.second_order:
        mf = mf.newton()
    mf.callback = watch
    return mf


_TIME_LIMIT = "time limit reached"


def _try_rung(mol, multiplicity: int, settings: DFTSettings, rung: Rung, deadline: float):
    """Run the SCF of one rung; returns its :class:`Attempt` and the SCF object."""
    start = time.monotonic()
    watch = _CycleWatch(deadline)
    mf = build_scf(mol, multiplicity, settings, rung, watch)
    energy, error = None, None
    try:
        energy = hartree_to_ev(mf.kernel())
    except _TimeLimitReached:
        error = _TIME_LIMIT
    except Exception as err:  # a rung that crashes is a failed rung, not a failed batch
        error = f"{type(err).__name__}: {err}"
    converged = error is None and bool(mf.converged)
    return Attempt(rung.name, converged, watch.cycles, energy, time.monotonic() - start, error), mf


def provenance(settings: DFTSettings, charge: int, multiplicity: int) -> dict:
    """What produced a label: program, version and every setting that matters."""
    import pyscf

    return {
        **base_provenance("pyscf", pyscf.__version__, settings.level_of_theory),
        "method": "RKS" if multiplicity == 1 else "UKS",
        "charge": charge,
        "multiplicity": multiplicity,
        **settings.model_dump(exclude={"ladder", *XTB_ONLY}),
    }


def label(
    atoms: Atoms, settings: DFTSettings, charge: int = 0, multiplicity: int = 1
) -> LabelResult:
    """Energy (eV) and forces (eV/Å) of ``atoms`` at ``settings``' level of theory.

    Parameters
    ----------
    atoms
        The structure; positions in Å. Check it with
        :func:`sapis.dft.checks.check_for_dft` first.
    settings
        Functional, basis, SCF thresholds, threads, time limit and fallback ladder.
    charge
        Total charge in e.
    multiplicity
        Spin multiplicity 2S+1; 1 runs RKS, anything else UKS.
    """
    from pyscf import lib
    from threadpoolctl import threadpool_limits

    lib.num_threads(settings.threads)  # PySCF's OpenMP loops
    with threadpool_limits(limits=settings.threads):  # and numpy's BLAS, which has its own pool
        return _label(atoms, settings, charge, multiplicity)


def _label(atoms: Atoms, settings: DFTSettings, charge: int, multiplicity: int) -> LabelResult:
    start = time.monotonic()
    deadline = start + settings.time_limit
    attempts: list[Attempt] = []
    record = provenance(settings, charge, multiplicity)
    mol = build_molecule(atoms, charge, multiplicity, settings)
    reason = None
    for rung in settings.ladder:
        attempt, mf = _try_rung(mol, multiplicity, settings, rung, deadline)
        attempts.append(attempt)
        if attempt.error == _TIME_LIMIT:
            reason = f"time limit of {settings.time_limit:g} s reached during rung {rung.name}"
            break
        if not attempt.converged:
            continue
        if time.monotonic() > deadline:
            reason = f"time limit of {settings.time_limit:g} s reached before forces"
            break
        gradient = mf.nuc_grad_method()
        gradient.grid_response = settings.grid_response
        forces = gradient_to_forces(gradient.kernel())
        return LabelResult(
            True,
            attempt.energy,
            forces,
            rung.name,
            attempts,
            time.monotonic() - start,
            None,
            record,
        )
    if reason is None:
        tried = ", ".join(
            f"{a.rung} ({a.error or f'not converged after {a.cycles} cycles'})" for a in attempts
        )
        reason = f"SCF did not converge on any rung: {tried}"
    return LabelResult(False, None, None, None, attempts, time.monotonic() - start, reason, record)


@dataclass
class PySCFLabeller:
    """PySCF DFT at ``settings``' level for structures of total ``charge`` (e) and spin
    ``multiplicity`` (2S+1): a :class:`~sapis.dft.protocol.Labeller`."""

    settings: DFTSettings
    charge: int = 0
    multiplicity: int = 1
    remote: bool = True
    seconds_per_label: float = SECONDS_PER_LABEL

    @property
    def level(self) -> str:
        return self.settings.level_of_theory

    @property
    def cores(self) -> int:
        return self.settings.threads

    def check(self, atoms: Atoms, where: str = "structure") -> None:
        s = self.settings
        check_for_dft(atoms, self.charge, self.multiplicity, s.basis, where, s.max_basis_functions)

    def label(self, images: Sequence[Atoms]) -> list[LabelResult]:
        return [label(atoms, self.settings, self.charge, self.multiplicity) for atoms in images]

    def pool(self) -> None:
        return None
