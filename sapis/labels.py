"""Label records shared by every labeller and the dataset store.

A labeller (PySCF, the reference oracle, any later level) turns a structure into a
:class:`LabelResult`: energy in eV and forces in eV/Å when it converged, otherwise a
reason and nothing that could be mistaken for data, with every attempt it made and the
provenance the store keeps beside the label.
"""

import os
import platform
from dataclasses import asdict, dataclass, field

import numpy as np

#: Provenance keys every labeller records (each may add its own settings beside them).
PROVENANCE_KEYS = ("program", "version", "level", "host", "batch_job")


def base_provenance(program: str, version: str, level: str) -> dict:
    """The provenance every label carries: what made it, at which level, on which host
    and (under Slurm or PBS) in which batch job."""
    return {
        "program": program,
        "version": version,
        "level": level,
        "host": platform.node(),
        "batch_job": os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID"),
    }


@dataclass
class Attempt:
    """One try (an SCF rung, a lookup): cycles, energy (eV, None on error), wall time (s)."""

    rung: str
    converged: bool
    cycles: int | None
    energy: float | None
    seconds: float
    error: str | None = None


@dataclass
class LabelResult:
    """Outcome of one label. ``energy`` in eV, ``forces`` in eV/Å (both None on failure)."""

    converged: bool
    energy: float | None
    forces: np.ndarray | None
    rung: str | None
    attempts: list[Attempt]
    seconds: float
    reason: str | None
    provenance: dict = field(default_factory=dict)

    def attempts_as_dicts(self) -> list[dict]:
        return [asdict(a) for a in self.attempts]

    @property
    def program(self) -> str:
        """``program-version`` of what produced the label, e.g. ``pyscf-2.14.0``."""
        return f"{self.provenance.get('program', '?')}-{self.provenance.get('version', '?')}"
