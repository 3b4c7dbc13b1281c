"""A trained generator for one molecule: network, conditioning, prior, and its folder.

The folder holds ``generator.pt`` (weights and their moving average) and
``generator.json`` (the molecule, the observed pair ranges, the settings and one line
per training). Samples are ASE ``Atoms`` with ``info["source"] = "generator"``.
"""

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_masses

from sapis.errors import InputError
from sapis.generator.diffusion import Diffusion, Guide
from sapis.generator.egnn import ScoreNetwork
from sapis.generator.priors import PairRanges
from sapis.generator.settings import GeneratorConfig
from sapis.generator.weights import average_of, averaged, save_weights, update_average
from sapis.io import write_text_atomically
from sapis.validity import bond_graph

WEIGHTS, META = "generator.pt", "generator.json"


def molecule_frames(
    images: Sequence[Atoms], reference: Atoms | None = None
) -> tuple[Atoms, np.ndarray, dict[str, int]]:
    """The reference molecule and the positions ``[frames, atoms, 3]`` of its frames.

    Without ``reference``, the most common atom sequence in ``images`` is the molecule and
    its first frame the reference. Frames of another composition or atom order, or whose
    bond graph differs from the reference's, are left out and counted by reason.
    """
    images = list(images)
    if reference is None:
        if not images:
            raise InputError("no structures to train the generator on")
        common, _ = Counter(tuple(a.numbers) for a in images).most_common(1)[0]
        reference = next(a for a in images if tuple(a.numbers) == common)
    bonds = bond_graph(reference)
    kept, skipped = [], Counter()
    for atoms in images:
        if not np.array_equal(atoms.numbers, reference.numbers):
            skipped["other molecule"] += 1
        elif bond_graph(atoms) != bonds:
            skipped["bond graph differs"] += 1
        else:
            kept.append(atoms.positions - atoms.get_center_of_mass())
    if not kept:
        raise InputError(
            f"none of the {len(images)} structures is the molecule "
            f"{reference.get_chemical_formula()} with its bond graph ({dict(skipped)})"
        )
    return reference, np.array(kept), dict(skipped)


class MoleculeMeta:
    """What both generator kinds read from their ``meta``: settings and the molecule."""

    meta: dict

    @property
    def config(self) -> GeneratorConfig:
        return GeneratorConfig(**self.meta["config"])

    @property
    def numbers(self) -> np.ndarray:
        return np.array(self.meta["numbers"])

    @property
    def bonds(self) -> list[tuple[int, int]]:
        return [tuple(b) for b in self.meta["bonds"]]

    def reference(self) -> Atoms:
        return Atoms(self.numbers, np.array(self.meta["reference"]))


class Generator(MoleculeMeta):
    """The diffusion model of one molecule with the metadata to save and sample it."""

    kind = "diffusion"

    def __init__(self, diffusion: Diffusion, meta: dict) -> None:
        self.diffusion = diffusion
        self.meta = meta
        self.ema = average_of(diffusion.net)

    @property
    def net(self) -> torch.nn.Module:
        """The trained network."""
        return self.diffusion.net

    def losses(self, batch: torch.Tensor, generator: torch.Generator) -> dict:
        """Training losses on ``batch`` ``[frames, atoms, 3]`` (Å); ``loss`` is minimised."""
        return self.diffusion.losses(batch, generator=generator)

    def prepare(self, config: GeneratorConfig) -> None:
        """Take ``config``'s training settings for a warm start."""
        self.meta["config"] = config.model_dump()
        self.diffusion.prior_weight = config.prior_weight

    @classmethod
    def new(cls, reference: Atoms, positions: np.ndarray, config: GeneratorConfig) -> "Generator":
        """An untrained generator for ``reference``'s molecule, scaled to ``positions``."""
        elements = sorted(set(int(z) for z in reference.numbers))
        bonds = sorted(bond_graph(reference))
        meta = {
            "kind": cls.kind,
            "numbers": [int(z) for z in reference.numbers],
            "elements": elements,
            "bonds": [list(b) for b in bonds],
            "reference": (reference.positions - reference.get_center_of_mass()).tolist(),
            "scale": float(np.sqrt((positions**2).mean())),
            "ranges": PairRanges.observe(positions, bonds).to_dict(),
            "config": config.model_dump(),
            "trainings": [],
        }
        return cls(cls._diffusion(meta, config), meta)

    @staticmethod
    def _diffusion(meta: dict, config: GeneratorConfig) -> Diffusion:
        numbers = np.array(meta["numbers"])
        n = len(numbers)
        bonded = torch.zeros((n, n))
        for i, j in meta["bonds"]:
            bonded[i, j] = bonded[j, i] = 1.0
        species = torch.tensor([meta["elements"].index(z) for z in numbers])
        net = ScoreNetwork(len(meta["elements"]), hidden=config.hidden, layers=config.layers)
        net = net.float()  # whatever default dtype another library (nequip) has set
        return Diffusion(
            net,
            species,
            bonded,
            torch.tensor(atomic_masses[numbers], dtype=torch.float64),
            meta["scale"],
            PairRanges.from_dict(meta["ranges"]),
            config.prior_weight,
        )

    def matches(self, reference: Atoms, config: GeneratorConfig) -> bool:
        """Whether this generator can be warm-started for ``reference`` and ``config``."""
        old = self.config
        return (
            config.kind == self.kind
            and self.meta["numbers"] == [int(z) for z in reference.numbers]
            and self.bonds == sorted(bond_graph(reference))
            and (old.hidden, old.layers) == (config.hidden, config.layers)
        )

    def observe(self, positions: np.ndarray) -> None:
        """Widen the prior's pair ranges with newly seen frames."""
        ranges = PairRanges.from_dict(self.meta["ranges"]).widen(
            PairRanges.observe(positions, self.bonds)
        )
        self.meta["ranges"] = ranges.to_dict()
        self.diffusion.ranges = ranges

    def update_ema(self, decay: float) -> None:
        update_average(self.diffusion.net, self.ema, decay)

    def save(self, folder: str | Path) -> Path:
        """Write weights and metadata atomically into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_weights(folder / WEIGHTS, self.diffusion.net, self.ema)
        write_text_atomically(folder / META, json.dumps(self.meta, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Generator":
        folder = Path(folder)
        if not (folder / META).is_file() or not (folder / WEIGHTS).is_file():
            raise InputError(f"{folder}: no generator here (needs {WEIGHTS} and {META})")
        meta = json.loads((folder / META).read_text())
        state = torch.load(folder / WEIGHTS, weights_only=True)
        gen = cls(cls._diffusion(meta, GeneratorConfig(**meta["config"])), meta)
        gen.diffusion.net.load_state_dict(state["weights"])
        gen.ema = state["ema"]
        return gen

    def sample_positions(self, n: int, seed: int = 0, guide: Guide | None = None) -> np.ndarray:
        """``n`` coordinate sets ``[n, atoms, 3]`` in Å from the averaged weights."""
        config = self.config
        with averaged(self.diffusion.net, self.ema):
            return self.diffusion.sample(
                n,
                steps=config.steps,
                seed=seed,
                guide=guide,
                guide_scale=config.guidance,
                guide_from=config.guide_from,
                feasibility_steps=config.feasibility_steps,
            )

    def sample(
        self, n: int, seed: int = 0, guide: Guide | None = None, round_: int | None = None
    ) -> list[Atoms]:
        """``n`` structures tagged ``source=generator`` (and ``round`` when given)."""
        images = []
        for k, positions in enumerate(self.sample_positions(n, seed, guide)):
            atoms = Atoms(self.numbers, positions)
            atoms.info.update(source="generator", sample=k, seed=seed)
            if round_ is not None:
                atoms.info["round"] = round_
            images.append(atoms)
        return images
