"""The one interface every level of theory implements, so the loop never asks which it holds.

A labeller takes ``Atoms`` and gives :class:`~sapis.labels.LabelResult` records, the way
an ASE calculator gives energies and forces: PySCF DFT (:class:`~sapis.dft.labeller.PySCFLabeller`),
the reference oracle (:class:`~sapis.dft.reference.ReferenceOracle`), and any level added
later implement it.
"""

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ase import Atoms

from sapis.labels import LabelResult


@runtime_checkable
class Labeller(Protocol):
    """Labels structures at one level of theory.

    ``level`` names the level in the store. ``cores`` is what one label occupies, and
    ``seconds_per_label`` the wall time of one label assumed before any is measured, so
    that ``cores × seconds`` estimates the core-seconds of a label. ``remote`` says
    whether labels are worth sending to workers (Parsl, a batch queue) instead of being
    computed in this process.
    """

    level: str
    cores: int
    remote: bool
    seconds_per_label: float

    def check(self, atoms: Atoms, where: str) -> None:
        """Raise :class:`~sapis.errors.InputError` naming the problem if ``atoms`` cannot
        be labelled; called for every structure before any label starts."""
        ...

    def label(self, images: Sequence[Atoms]) -> list[LabelResult]:
        """One result per structure, in order; a structure that cannot be labelled gives
        a failed result with its reason, never an exception that loses the others."""
        ...

    def pool(self) -> list[Atoms] | None:
        """The structures this labeller can label, when it can label only those (a
        labelled reference pool), without their labels; None when it labels anything."""
        ...
