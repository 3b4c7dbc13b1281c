"""The generator's part of a round's exploration: retrain it (warm-started) on what the
campaign has seen, sample, filter, and score the valid samples with the ensemble.

Each round's generator is kept in ``round-NNN/generator/``, trained on top of the
previous round's copy, so the campaign folder holds every checkpoint.
"""

import math
import shutil
from collections.abc import Sequence
from pathlib import Path

from ase import Atoms

from sapis.config import CampaignConfig
from sapis.io import read_structures
from sapis.store import DatasetStore
from sapis.structures import structure_hash
from sapis.validity import ValidityFilter

GENERATOR_DIR = "generator"


def generated_count(config: CampaignConfig, md_frames: int) -> int:
    """How many structures the generator proposes next to ``md_frames`` MD frames: so
    that they are ``generator.share`` of the round's proposals, and at least
    ``generator.min_samples``."""
    share = config.generator.share
    if share <= 0:
        return 0
    return max(math.ceil(share / (1.0 - share) * md_frames), config.generator.min_samples)


def training_frames(store: DatasetStore, explored: Sequence[Atoms]) -> list[Atoms]:
    """Every structure in the store that is not a failed label, and ``explored``."""
    stored = [row.toatoms() for row in store.db.select() if row.get("status") != "failed"]
    return stored + list(explored)


def explored_md_frames(round_dirs: Sequence[Path]) -> list[Atoms]:
    """The MD frames explored in ``round_dirs`` (not the generator's own samples)."""
    from sapis.campaign import read_frames

    frames = []
    for d in round_dirs:
        path = d / "explored.extxyz"
        if path.is_file():
            frames += [a for a in read_frames(path) if a.info.get("source") == "md"]
    return frames


def _previous_generator(round_dirs: Sequence[Path]) -> Path | None:
    for d in sorted(round_dirs, reverse=True):
        if (d / GENERATOR_DIR).is_dir():
            return d / GENERATOR_DIR
    return None


def train_round_generator(
    config: CampaignConfig, round_dir: Path, earlier_rounds: Sequence[Path], frames: list[Atoms]
):
    """The generator of this round: the previous round's, trained further on ``frames``
    for ``generator.max_minutes`` (from scratch in the first round that uses it)."""
    from sapis.generator.model import META, Generator
    from sapis.generator.training import train_generator

    out = round_dir / GENERATOR_DIR
    if (out / META).is_file():
        done = Generator.load(out)
        if done.meta.get("round") == round_dir.name:
            return done, None  # trained before a kill: keep it
    previous = _previous_generator(earlier_rounds)
    if out.exists():
        shutil.rmtree(out)
    if previous is not None:
        shutil.copytree(previous, out)
    reference = read_structures(config.system.structures)[0]
    gen, record = train_generator(frames, out, config.generator, reference=reference)
    gen.meta["round"] = round_dir.name
    gen.save(out)
    return gen, record


def propose(
    config: CampaignConfig,
    generator,
    n: int,
    r: int,
    guide=None,
) -> tuple[list[Atoms], dict[str, int], dict[str, int]]:
    """The valid ones of ``n`` samples of round ``r``, their counts (proposed, valid),
    and the rejected ones counted by kind."""
    reference = read_structures(config.system.structures)[0]
    check = ValidityFilter.from_reference(reference, min_dist=config.explore.min_distance)
    samples = generator.sample(n, seed=config.generator.seed + r, guide=guide, round_=r)
    valid, rejected = check.split(samples)
    for atoms in valid:
        atoms.info["hash"] = structure_hash(atoms)
    return valid, {"proposed": n, "valid": len(valid)}, rejected
