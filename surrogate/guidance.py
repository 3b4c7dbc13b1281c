"""The gradient of ensemble disagreement, for steering generator samples toward where
the surrogate is unsure.

The energy variance across members, σ²_E = mean_k (E_k - Ē)², has the gradient
∂σ²_E/∂x = -2 mean_k (E_k - Ē)(F_k - F̄): the members' energies and forces are all it
needs, with no second derivatives through the network.
"""

from collections.abc import Callable

import numpy as np
from ase import Atoms

from sapis.surrogate.ensemble import Ensemble


def energy_variance_gradient(energies: np.ndarray, forces: np.ndarray) -> np.ndarray:
    """∂σ²_E/∂x ``[frames, atoms, 3]`` (eV²/Å) from member energies ``[K, frames]`` (eV)
    and forces ``[K, frames, atoms, 3]`` (eV/Å)."""
    de = energies - energies.mean(axis=0)
    df = forces - forces.mean(axis=0)
    return -2.0 * (de[..., None, None] * df).mean(axis=0)


def disagreement_guide(
    ensemble: Ensemble, numbers: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """A guide for :meth:`sapis.generator.diffusion.Diffusion.sample`: positions
    ``[frames, atoms, 3]`` in Å of the molecule ``numbers`` to ∂σ²_E/∂x."""

    def guide(positions: np.ndarray) -> np.ndarray:
        prediction = ensemble.predict([Atoms(numbers, p) for p in positions])
        return energy_variance_gradient(prediction.energies, np.stack(prediction.forces, axis=1))

    return guide
