"""NequIP model configuration from a named size and the training data.

The model itself is built by nequip's ``NequIPGNNModel`` builder; here we only choose its
arguments: the size ladder, per-type energy shifts (isolated-atom energies or a fit of
per-atom energies), an energy scale from the force RMS, and ``avg_num_neighbors``.
"""

from collections.abc import Sequence

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers
from ase.neighborlist import neighbor_list

from sapis.errors import InputError
from sapis.surrogate.settings import TrainingConfig
from sapis.surrogate.sizes import SIZES

BUILDER = "nequip.model.NequIPGNNModel"


def type_names_of(images: Sequence[Atoms]) -> list[str]:
    """Element symbols present in ``images``, in order of atomic number."""
    symbols = {s for atoms in images for s in atoms.get_chemical_symbols()}
    return sorted(symbols, key=atomic_numbers.__getitem__)


def energy_shifts(
    images: Sequence[Atoms],
    type_names: list[str],
    isolated: dict[str, float] | None = None,
    energies: Sequence[float] | None = None,
) -> dict[str, float]:
    """Per-type energy shifts in eV, by type name.

    With ``isolated`` (isolated-atom energies by element) those are used. Otherwise the
    shifts are the least-squares fit of total energies (``energies``, default the images'
    own) to element counts; directions the compositions do not determine (one molecule:
    all frames have the same counts) are pinned to the mean energy per atom, so every
    type gets a sensible value.
    """
    if isolated is not None:
        missing = [t for t in type_names if t not in isolated]
        if missing:
            raise InputError(f"isolated_atom_energies lacks {', '.join(missing)}")
        return {t: float(isolated[t]) for t in type_names}
    counts = np.array([[a.get_chemical_symbols().count(t) for t in type_names] for a in images])
    if energies is None:
        energies = [a.get_potential_energy() for a in images]
    energies = np.asarray(energies, dtype=float)
    mean = np.full(len(type_names), np.mean(energies / counts.sum(axis=1)))
    # minimum-norm correction to the mean: zero along directions the data leave free
    shifts = mean + np.linalg.lstsq(counts, energies - counts @ mean, rcond=None)[0]
    return {t: float(v) for t, v in zip(type_names, shifts)}


def force_rms(images: Sequence[Atoms]) -> float:
    """Root mean square of all force components (eV/Å): the model's energy scale."""
    forces = np.concatenate([a.get_forces().ravel() for a in images])
    rms = float(np.sqrt(np.mean(forces**2)))
    return rms if rms > 1e-8 else 1.0


def average_neighbors(images: Sequence[Atoms], r_max: float) -> float:
    """Mean number of neighbours within ``r_max`` per atom (normalises NequIP's edge sums)."""
    pairs = sum(len(neighbor_list("i", a, r_max)) for a in images)
    return max(pairs / sum(len(a) for a in images), 1.0)


def model_config(
    training: TrainingConfig, images: Sequence[Atoms], seed: int, size: str | None = None
) -> dict:
    """The ``NequIPGNNModel`` arguments (a hydra-style dict) for ``images``."""
    spec = SIZES[size or training.size]
    type_names = type_names_of(images)
    return {
        "_target_": BUILDER,
        "seed": seed,
        "model_dtype": training.dtype,
        "type_names": type_names,
        "r_max": training.r_max,
        "num_layers": spec.layers,
        "l_max": spec.l_max,
        "parity": False,
        "num_features": spec.features,
        "radial_mlp_depth": 1,
        "radial_mlp_width": spec.radial_width,
        "num_bessels": 8,
        "avg_num_neighbors": average_neighbors(images, training.r_max),
        "per_type_energy_shifts": energy_shifts(
            images, type_names, training.isolated_atom_energies
        ),
        "per_type_energy_scales": force_rms(images),
    }


def build_model(config: dict):
    """Build the NequIP model a config describes (nequip's builder, global state set)."""
    from hydra.utils import get_method
    from nequip.utils.global_state import set_global_state

    set_global_state(allow_tf32=False)
    config = dict(config)
    return get_method(config.pop("_target_"))(**config)


def parameter_count(model) -> int:
    """Trainable parameters of a model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def input_transforms(type_names: list[str], r_max: float) -> list:
    """nequip's input transforms for a model of ``type_names`` (element symbols) and
    cutoff ``r_max``: types mapped, neighbour list built."""
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform

    return [
        ChemicalSpeciesToAtomTypeMapper(
            model_type_names=type_names,
            chemical_species_to_atom_type_map={t: t for t in type_names},
        ),
        NeighborListTransform(r_max=r_max),
    ]


def input_graphs(images: Sequence[Atoms], transforms: list) -> list[dict]:
    """nequip input dicts of ``images`` (structure only) through ``transforms``."""
    from nequip.data import from_ase

    out = []
    for atoms in images:
        data = from_ase(Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc))
        for transform in transforms:
            data = transform(data)
        out.append(data)
    return out
