"""Ensembles of NequIP models: batched prediction with uncertainty, and loading from disk.

An ensemble folder holds ``ensemble.json`` (members, size, calibration) and one folder per
member (``member-0/best.ckpt`` …). Prediction builds each structure's graph once and runs
every member on whole batches of structures.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from sapis.errors import InputError
from sapis.surrogate.calibration import Calibration
from sapis.surrogate.checkpoints import vet_checkpoint
from sapis.surrogate.manifest import EnsembleManifest
from sapis.surrogate.model import input_graphs, input_transforms


@dataclass
class Prediction:
    """Member predictions for S structures: ``energies`` (K, S) in eV and ``forces[i]``
    (K, N_i, 3) in eV/Å, with the statistics a campaign reads."""

    energies: np.ndarray
    forces: list[np.ndarray]
    calibration: Calibration
    features: np.ndarray | None = None  # (S, K·T·F) last-layer features, when asked for

    @property
    def energy_mean(self) -> np.ndarray:
        return self.energies.mean(axis=0)

    @property
    def energy_std(self) -> np.ndarray:
        return self.energies.std(axis=0)

    def force_mean(self, i: int) -> np.ndarray:
        return self.forces[i].mean(axis=0)

    def force_std(self, i: int) -> np.ndarray:
        """Per-atom spread: norm over x, y, z of the per-component std across members."""
        return np.sqrt(self.forces[i].var(axis=0).sum(axis=-1))

    @property
    def max_force_dev(self) -> np.ndarray:
        """DP-GEN's max atomic force deviation per structure (eV/Å)."""
        return np.array([self.force_std(i).max() for i in range(len(self.forces))])

    @property
    def max_force_dev_calibrated(self) -> np.ndarray:
        return np.array(
            [self.calibration.forces(self.force_std(i)).max() for i in range(len(self.forces))]
        )

    def annotate(self, images: Sequence[Atoms]) -> None:
        """Write the results onto ``images``: mean energy and forces as a single-point
        calculator, uncertainties in ``info`` (per structure) and ``arrays`` (per atom)."""
        for i, atoms in enumerate(images):
            atoms.calc = SinglePointCalculator(
                atoms, energy=float(self.energy_mean[i]), forces=self.force_mean(i)
            )
            std = self.force_std(i)
            atoms.info.update(
                energy_std=float(self.energy_std[i]),
                energy_uncertainty=float(self.calibration.energy(self.energy_std[i])),
                max_force_dev=float(std.max()),
                max_force_dev_calibrated=float(self.calibration.forces(std).max()),
            )
            atoms.arrays["force_std"] = std
            atoms.arrays["force_std_calibrated"] = self.calibration.forces(std)


class Ensemble:
    """K trained NequIP models that predict together."""

    def __init__(self, models: list, manifest: EnsembleManifest, folder: Path, device: str) -> None:
        self.models = models
        self.manifest = manifest
        self.folder = folder
        self.device = device
        self.type_names: list[str] = manifest.type_names
        self.r_max: float = manifest.r_max
        self.calibration = Calibration.from_dict(manifest.calibration or {})
        self.transforms = input_transforms(self.type_names, self.r_max)

    @classmethod
    def load(cls, folder: str | Path, device: str | None = None) -> "Ensemble":
        """Load every member of the ensemble in ``folder`` (checkpoints, EMA weights),
        each vetted first (:func:`~sapis.surrogate.checkpoints.vet_checkpoint`)."""
        import warnings

        from nequip.model.saved_models.load_utils import load_saved_model
        from nequip.utils.global_state import set_global_state

        from sapis.surrogate.training import pick_device

        folder = Path(folder).resolve()
        manifest = EnsembleManifest.read(folder)
        device = device or pick_device()
        set_global_state(allow_tf32=False)
        models = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for path in manifest.checkpoints(folder):
                if not path.is_file():
                    raise InputError(f"{folder}: member checkpoint {path} is missing")
                vet_checkpoint(path)  # before nequip unpickles it
                models.append(load_saved_model(str(path)).eval().to(device))
        return cls(models, manifest, folder, device)

    @property
    def member_count(self) -> int:
        """K, the number of members."""
        return len(self.models)

    def check(self, images: Sequence[Atoms], lone_atoms: bool = True) -> None:
        """Refuse structures with elements the models were not trained on; with
        ``lone_atoms`` False also those with an atom that has no neighbour within
        ``r_max`` (the models see it alone, so their spread on it means nothing)."""
        known = set(self.type_names)
        for i, atoms in enumerate(images):
            unknown = set(atoms.get_chemical_symbols()) - known
            if unknown:
                raise InputError(
                    f"structure {i} has elements {sorted(unknown)} the ensemble was not trained "
                    f"on (it knows {', '.join(self.type_names)})"
                )
            if not lone_atoms:
                self._check_neighbours(atoms, f"structure {i}")

    def _check_neighbours(self, atoms: Atoms, where: str) -> None:
        from ase.neighborlist import neighbor_list

        alone = np.setdiff1d(np.arange(len(atoms)), neighbor_list("i", atoms, self.r_max))
        if len(alone):
            k = int(alone[0])
            raise InputError(
                f"{where}: atom {k} ({atoms[k].symbol}) has no neighbour within the "
                f"ensemble's cutoff r_max = {self.r_max} Å: the models see it alone, so "
                "their prediction and uncertainty for it mean nothing"
            )

    def graphs(self, images: Sequence[Atoms]) -> list[dict]:
        """nequip input dicts (types mapped, neighbour list built) for ``images``."""
        return input_graphs(images, self.transforms)

    def predict(
        self, images: Sequence[Atoms], batch_size: int = 64, features: bool = False
    ) -> Prediction:
        """Every member on every structure, ``batch_size`` structures per model call.

        With ``features``, also each structure's last-layer features: per member and
        element, the sum over that element's atoms of the invariant features the energy
        readout acts on (the model's energy is linear in them), concatenated into one
        row per structure; comparable across structures of different sizes and orders.
        """
        from nequip.data import AtomicDataDict

        images = list(images)
        self.check(images)
        if not images:
            return Prediction(np.zeros((self.member_count, 0)), [], self.calibration)
        energies = np.zeros((self.member_count, len(images)))
        forces = [np.zeros((self.member_count, len(a), 3)) for a in images]
        blocks: list[list[np.ndarray]] = [[] for _ in self.models]
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            batch = AtomicDataDict.batched_from_list(self.graphs(chunk))
            batch = AtomicDataDict.to_(batch, self.device)
            bounds = np.cumsum([0] + [len(a) for a in chunk])
            for k, model in enumerate(self.models):
                out = model(dict(batch))
                e = out[AtomicDataDict.TOTAL_ENERGY_KEY].detach().cpu().numpy().reshape(-1)
                f = out[AtomicDataDict.FORCE_KEY].detach().cpu().numpy()
                energies[k, start : start + len(chunk)] = e
                for j in range(len(chunk)):
                    forces[start + j][k] = f[bounds[j] : bounds[j + 1]]
                if features:
                    blocks[k].append(self._pooled(out, len(chunk)))
        pooled = np.hstack([np.vstack(b) for b in blocks]) if features else None
        return Prediction(energies, forces, self.calibration, pooled)

    def _pooled(self, out: dict, structures: int) -> np.ndarray:
        """(structures, T·F): node features summed per structure and atom type."""
        from nequip.data import AtomicDataDict

        h = out[AtomicDataDict.NODE_FEATURES_KEY].detach()
        types = out[AtomicDataDict.ATOM_TYPE_KEY].reshape(-1)
        batch = out[AtomicDataDict.BATCH_KEY].reshape(-1)
        t, f = len(self.type_names), h.shape[1]
        sums = h.new_zeros((structures * t, f)).index_add_(0, batch * t + types, h)
        return sums.reshape(structures, t * f).cpu().numpy().astype(float)
