"""Labelling structures: PySCF DFT with an SCF fallback ladder, GFN-xTB through tblite and
a reference oracle behind one :class:`~sapis.dft.protocol.Labeller` interface, structure
checks before any work, and Parsl execution on local workers or Slurm/PBS clusters."""

from sapis.dft.checks import check_for_dft
from sapis.dft.labeller import PySCFLabeller, label
from sapis.dft.protocol import Labeller
from sapis.dft.reference import ReferenceOracle
from sapis.dft.settings import DFTSettings, Rung
from sapis.dft.xtb import XTBLabeller

__all__ = [
    "DFTSettings",
    "Labeller",
    "PySCFLabeller",
    "ReferenceOracle",
    "Rung",
    "XTBLabeller",
    "check_for_dft",
    "label",
]
