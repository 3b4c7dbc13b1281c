"""Langevin dynamics as every trajectory in SAPIS-MD starts it (ASE's integrator)."""

import numpy as np
from ase import Atoms, units
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
from ase.parallel import DummyMPI

SOLO = DummyMPI()  # each trajectory is one process's own, even under mpiexec


def langevin(
    atoms: Atoms, temperature: float, timestep: float, friction: float, rng: np.random.Generator
) -> Langevin:
    """Momenta drawn at ``temperature`` K from ``rng`` without centre-of-mass motion or
    rotation, the centre of mass fixed, and a Langevin integrator (``timestep`` in fs,
    ``friction`` in 1/fs) on ``atoms`` drawing its noise from ``rng``."""
    thermalize_momenta(atoms, temperature, comm=SOLO, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    atoms.set_constraint(FixCom())
    return Langevin(
        atoms,
        timestep * units.fs,
        temperature_K=temperature,
        friction=friction / units.fs,
        fixcm=False,
        rng=rng,
        comm=SOLO,
    )
