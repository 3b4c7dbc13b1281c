"""DFT labelling with PySCF: energies and forces in eV and eV/Å, an SCF fallback
ladder, structure checks before any DFT, and Parsl execution on local workers or
Slurm/PBS clusters."""

from sapis.dft.checks import check_for_dft
from sapis.dft.labeller import Attempt, LabelResult, label

__all__ = ["Attempt", "LabelResult", "check_for_dft", "label"]
