"""A trained flow for one molecule: the augmented coupling flow, its force field and folder.

The folder is laid out like the diffusion generator's (``generator.pt`` with the weights
and their moving average, ``generator.json`` with ``kind: flow``, the molecule, the
force field, the settings and one line per training); samples are ASE ``Atoms`` with
``info["source"] = "generator"`` and, when asked, ``info["log_density"]``: the estimate
of log q(x) of the centre-of-mass-free coordinates, per Å^(3N−3).
"""

import json
import math
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_masses

from sapis.errors import InputError
from sapis.generator.flow import AugmentedFlow
from sapis.generator.forcefield import LightForceField
from sapis.generator.model import META, WEIGHTS, MoleculeMeta
from sapis.generator.settings import GeneratorConfig
from sapis.generator.weights import average_of, averaged, save_weights, update_average
from sapis.io import write_text_atomically
from sapis.validity import bond_graph

#: Structures per batch when sampling or evaluating densities.
BATCH = 256


def soften(energy: torch.Tensor, high: float = 1.0) -> torch.Tensor:
    """The energy up to ``high`` eV, logarithmic above (a clash's r⁻¹² would otherwise
    swamp every gradient; after Noé et al.'s Boltzmann generators)."""
    excess = torch.clamp(energy - high, min=0.0)
    return torch.where(energy > high, high + torch.log1p(excess), energy)


def _stiffness(positions: np.ndarray, bonds: list[tuple[int, int]]) -> float:
    """k of the harmonic prior such that a tree bond's mean square length (3/k) is the
    data's (model units)."""
    if not bonds:
        return 1.0
    pairs = np.array(bonds)
    d2 = ((positions[:, pairs[:, 0]] - positions[:, pairs[:, 1]]) ** 2).sum(-1)
    return float(3.0 / d2.mean())


class FlowGenerator(MoleculeMeta):
    """The normalizing flow of one molecule with the metadata to save and sample it."""

    kind = "flow"

    def __init__(self, flow: AugmentedFlow, meta: dict) -> None:
        self.flow = flow
        self.meta = meta
        self.forcefield = LightForceField.from_dict(meta["forcefield"])
        self.ema = average_of(flow)

    @classmethod
    def new(
        cls, reference: Atoms, positions: np.ndarray, config: GeneratorConfig
    ) -> "FlowGenerator":
        """An untrained flow for ``reference``'s molecule, scaled to ``positions``."""
        bonds = sorted(bond_graph(reference))
        try:
            forcefield = LightForceField.from_data(reference.numbers, bonds, positions)
        except ValueError as err:
            raise InputError(f"the flow's force field: {err}") from None
        scale = float(np.sqrt((positions**2).mean()))
        meta = {
            "kind": cls.kind,
            "numbers": [int(z) for z in reference.numbers],
            "elements": sorted(set(int(z) for z in reference.numbers)),
            "bonds": [list(b) for b in bonds],
            "reference": (reference.positions - reference.get_center_of_mass()).tolist(),
            "scale": scale,
            "stiffness": _stiffness(positions / scale, bonds),
            "forcefield": forcefield.to_dict(),
            "config": config.model_dump(),
            "trainings": [],
        }
        return cls(cls._flow(meta, config), meta)

    @staticmethod
    def _flow(meta: dict, config: GeneratorConfig) -> AugmentedFlow:
        numbers = np.array(meta["numbers"])
        n = len(numbers)
        bonded = torch.zeros((n, n))
        for i, j in meta["bonds"]:
            bonded[i, j] = bonded[j, i] = 1.0
        species = torch.tensor([meta["elements"].index(z) for z in numbers])
        settings = config.flow
        flow = AugmentedFlow(
            species,
            bonded,
            torch.tensor(atomic_masses[numbers], dtype=torch.float64),
            meta["scale"],
            len(meta["elements"]),
            hidden=settings.hidden,
            layers=settings.layers,
            blocks=settings.blocks,
            bins=settings.bins,
            augment=settings.augment,
            stiffness=meta["stiffness"],
        )
        return flow.float()  # whatever default dtype another library (nequip) has set

    @property
    def net(self) -> torch.nn.Module:
        """The trained network."""
        return self.flow

    def matches(self, reference: Atoms, config: GeneratorConfig) -> bool:
        """Whether this flow can be warm-started for ``reference`` and ``config``."""
        old, new = self.config.flow, config.flow
        shape = ("blocks", "hidden", "layers", "bins", "augment")
        return (
            config.kind == self.kind
            and self.meta["numbers"] == [int(z) for z in reference.numbers]
            and self.bonds == sorted(bond_graph(reference))
            and all(getattr(old, k) == getattr(new, k) for k in shape)
        )

    def prepare(self, config: GeneratorConfig) -> None:
        """Take ``config``'s training settings for a warm start."""
        self.meta["config"] = config.model_dump()

    def observe(self, positions: np.ndarray) -> None:
        """Nothing to widen: the force field keeps the first data's reference geometry."""

    def check_molecule(self, numbers: np.ndarray, bonds: list[tuple[int, int]]) -> None:
        """Refuse a molecule this flow was not trained on (composition, order, bonds)."""
        if [int(z) for z in numbers] != self.meta["numbers"]:
            raise InputError(
                f"this flow models {self.reference().get_chemical_formula()} in its atom order; "
                f"got {Atoms(numbers).get_chemical_formula()} "
                f"({len(numbers)} atoms in another order or of other elements)"
            )
        if sorted(tuple(sorted(b)) for b in bonds) != self.bonds:
            raise InputError("the structure's bond graph differs from the flow's molecule")

    def losses(self, batch: torch.Tensor, generator: torch.Generator) -> dict:
        """−log q(x, a) + log π(a|x) per degree of freedom on ``batch`` (Å) with fresh
        augmented draws, plus λ·E(x) on the flow's own samples (per degree of freedom)."""
        flow, settings = self.flow, self.config.flow
        x = batch / flow.scale
        x = x - flow.centre(x)
        a = x + flow.augment * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        nll = -(flow.joint_log_prob(x, a) - flow.augment_log_prob(x, a)).mean() / flow.dof
        out = {"nll": nll}
        if settings.energy_weight > 0:
            samples, _, _ = flow.sample(settings.energy_samples, generator, dtype=x.dtype)
            energy = self.forcefield.energy(samples * flow.scale)
            out["energy"] = energy.mean()
            out["loss"] = nll + settings.energy_weight * soften(energy).mean() / flow.dof
        else:
            out["loss"] = nll
        return out

    def update_ema(self, decay: float) -> None:
        update_average(self.flow, self.ema, decay)

    def save(self, folder: str | Path) -> Path:
        """Write weights and metadata atomically into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_weights(folder / WEIGHTS, self.flow, self.ema)
        write_text_atomically(folder / META, json.dumps(self.meta, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "FlowGenerator":
        folder = Path(folder)
        if not (folder / META).is_file() or not (folder / WEIGHTS).is_file():
            raise InputError(f"{folder}: no generator here (needs {WEIGHTS} and {META})")
        meta = json.loads((folder / META).read_text())
        if meta.get("kind") != cls.kind:
            raise InputError(f"{folder}: holds a {meta.get('kind', 'diffusion')} generator")
        state = torch.load(folder / WEIGHTS, weights_only=True)
        gen = cls(cls._flow(meta, GeneratorConfig(**meta["config"])), meta)
        gen.flow.load_state_dict(state["weights"])
        gen.ema = state["ema"]
        return gen

    @torch.no_grad()
    def sample_positions(self, n: int, seed: int = 0, guide=None) -> np.ndarray:
        """``n`` coordinate sets ``[n, atoms, 3]`` in Å from the averaged weights, in one
        pass each (``guide`` is refused: the flow has no steps to steer)."""
        return self.sample_with_density(n, seed, density=False, guide=guide)[0]

    @torch.no_grad()
    def sample_with_density(
        self, n: int, seed: int = 0, density: bool = True, guide=None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``n`` samples (Å) and, with ``density``, their log q(x) per Å^(3N−3)."""
        if guide is not None:
            raise InputError("the flow cannot be guided (guidance is for the diffusion kind)")
        rng = torch.Generator().manual_seed(seed)
        flow = self.flow
        out = []
        with averaged(flow, self.ema):
            for start in range(0, n, BATCH):
                x, _, _ = flow.sample(min(BATCH, n - start), rng)
                out.append(x.double() * flow.scale)
        positions = torch.cat(out).numpy() if out else np.zeros((0, flow.n_atoms, 3))
        logp = self.log_density(positions, seed=seed) if density else None
        return positions, logp

    @torch.no_grad()
    def log_density(self, positions: np.ndarray, seed: int = 0) -> np.ndarray:
        """log q(x) ``[frames]`` per Å^(3N−3) of ``positions`` ``[frames, atoms, 3]`` (Å):
        the importance-sampling estimate over ``flow.density_draws`` augmented draws."""
        positions = np.asarray(positions, dtype=float)
        if positions.ndim != 3 or positions.shape[1:] != (self.flow.n_atoms, 3):
            raise InputError(
                f"positions of shape {positions.shape}: this flow's molecule has "
                f"{self.flow.n_atoms} atoms ([frames, {self.flow.n_atoms}, 3] expected)"
            )
        flow = self.flow
        draws = self.config.flow.density_draws
        rng = torch.Generator().manual_seed(seed)
        dtype = next(flow.parameters()).dtype
        out = []
        with averaged(flow, self.ema):
            for start in range(0, len(positions), BATCH):
                x = torch.as_tensor(positions[start : start + BATCH], dtype=dtype) / flow.scale
                noise = torch.randn((draws, *x.shape), generator=rng, dtype=dtype)
                out.append(flow.log_prob(x, noise).double())
        logq = torch.cat(out).numpy() if out else np.zeros(0)
        return logq - flow.dof * math.log(flow.scale)

    def density_of(self, images: list[Atoms], seed: int = 0) -> np.ndarray:
        """log q(x) per Å^(3N−3) of structures of this flow's molecule (others refused)."""
        for atoms in images:
            self.check_molecule(atoms.numbers, sorted(bond_graph(atoms)))
        if not images:
            return np.zeros(0)
        return self.log_density(np.array([a.positions for a in images]), seed=seed)

    def sample(
        self,
        n: int,
        seed: int = 0,
        guide=None,
        round_: int | None = None,
        density: bool = False,
    ) -> list[Atoms]:
        """``n`` structures tagged ``source=generator`` (and ``round``, and
        ``log_density`` with ``density``)."""
        positions, logp = self.sample_with_density(n, seed, density=density, guide=guide)
        images = []
        for k, x in enumerate(positions):
            atoms = Atoms(self.numbers, x)
            atoms.info.update(source="generator", sample=k, seed=seed)
            if logp is not None:
                atoms.info["log_density"] = float(logp[k])
            if round_ is not None:
                atoms.info["round"] = round_
            images.append(atoms)
        return images
