"""The generator's part of a round: retrain it (warm-started) on what the campaign has
seen, sample, keep the valid samples, and score them with the ensemble.

Each round's generator is kept in ``round-NNN/generator/``, trained on top of the
previous round's copy, so the campaign folder holds every checkpoint. The samples go to
``round-NNN/generated.extxyz`` and what happened to ``generated.json``; a rerun reads
both back.
"""

import math
import shutil
from dataclasses import asdict
from pathlib import Path

from ase import Atoms

from sapis.campaign.campaign import Campaign
from sapis.campaign.exploration import save_candidates, saved_candidates, score
from sapis.generator.model import META, Generator
from sapis.generator.settings import GeneratorConfig
from sapis.generator.training import GeneratorTraining, train_generator
from sapis.io import read_frames
from sapis.structures import structure_hash
from sapis.surrogate.ensemble import Ensemble
from sapis.surrogate.guidance import disagreement_guide
from sapis.validity import ValidityFilter


def generated_count(settings: GeneratorConfig, md_frames: int) -> int:
    """How many structures the generator proposes next to ``md_frames`` MD frames: so
    that they are ``share`` of the round's proposals, and at least ``min_samples``."""
    if settings.share <= 0:
        return 0
    return max(math.ceil(settings.share / (1.0 - settings.share) * md_frames), settings.min_samples)


def explored_frames(campaign: Campaign, rounds: range) -> list[Atoms]:
    """The MD frames explored in ``rounds`` (not the generator's own samples)."""
    frames: list[Atoms] = []
    for k in rounds:
        path = campaign.folder.explored_path(k)
        if path.is_file():
            frames += read_frames(path)
    return frames


def train_round_generator(
    campaign: Campaign, r: int, frames: list[Atoms]
) -> tuple[Generator, GeneratorTraining | None]:
    """Round ``r``'s generator: the latest earlier round's, trained further on ``frames``
    for ``generator.train_steps`` (from scratch in the first round that uses it); one
    trained before a kill is kept as it is (no training record then)."""
    folder = campaign.folder
    out = folder.generator_dir(r)
    if (out / META).is_file():
        done = Generator.load(out)
        if done.meta.get("round") == out.parent.name:
            return done, None
    earlier = [folder.generator_dir(k) for k in range(r - 1, -1, -1)]
    previous = next((d for d in earlier if d.is_dir()), None)
    if out.exists():
        shutil.rmtree(out)
    if previous is not None:
        shutil.copytree(previous, out)
    reference = campaign.seeds[0]
    gen, record = train_generator(frames, out, campaign.config.generator, reference=reference)
    gen.meta["round"] = out.parent.name
    gen.save(out)
    return gen, record


def generate_round(
    campaign: Campaign, ensemble_dir: Path, r: int, md_frames: list[Atoms]
) -> tuple[list[Atoms], dict]:
    """The generator's valid proposals of round ``r`` with their uncertainty, and what it
    did (none, and an empty summary, when ``generator.share`` is 0)."""
    path = campaign.folder.generated_path(r)
    summary_path = path.with_name("generated.json")
    if (saved := saved_candidates(path, summary_path)) is not None:
        return saved
    settings = campaign.config.generator
    n = generated_count(settings, len(md_frames))
    if not n:
        return [], {}
    seen = explored_frames(campaign, range(r)) + list(md_frames)
    gen, training = train_round_generator(campaign, r, campaign.store.structures() + seen)
    ensemble = Ensemble.load(ensemble_dir)
    guide = disagreement_guide(ensemble, gen.numbers) if settings.guidance > 0 else None
    check = ValidityFilter.from_reference(
        campaign.seeds[0], min_dist=campaign.config.explore.min_distance
    )
    samples = gen.sample(n, seed=settings.seed + r, guide=guide, round_=r)
    valid, rejected = check.split(samples)
    for atoms in valid:
        atoms.info["hash"] = structure_hash(atoms)
    frames = score(ensemble, valid)
    summary = {
        "by_source": {"generator": {"proposed": n, "valid": len(valid)}},
        "rejected": rejected,
        "training": asdict(training) if training else "resumed",
    }
    return save_candidates(path, summary_path, frames, summary), summary
