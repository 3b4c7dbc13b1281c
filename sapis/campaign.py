"""A campaign's folder and the stages of its rounds, free of any workflow engine.

The campaign's state is its store plus this folder::

    FOLDER/campaign.yaml           the configuration the campaign runs with
    FOLDER/round-000/ensemble/     pretraining: the first ensemble
    FOLDER/round-001/explored.extxyz   candidates with their uncertainty
    FOLDER/round-001/explore.json      what exploration did, counts per source
    FOLDER/round-001/generator/        the generator, trained further this round
    FOLDER/round-001/selected.extxyz   what was chosen for DFT (stored as pending)
    FOLDER/round-001/ensemble/     the ensemble fine-tuned on the grown data
    FOLDER/round-001/round.json    the round's record: written last, marks it finished

Every stage writes its output atomically and is skipped when its output exists, so a
killed campaign resumes in the round and stage it was in. Labels are written to the store
as they finish and the store never holds a structure twice, so no label is lost or paid
for twice.
"""

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import ase.io
import numpy as np
import yaml
from ase import Atoms

from sapis.config import CampaignConfig, load_config, parse_config
from sapis.errors import InputError
from sapis.io import read_structures
from sapis.rounds import RoundRecord
from sapis.selection import Selection, select
from sapis.store import DatasetStore, new_run_id

CONFIG_NAME = "campaign.yaml"


class CampaignFolder:
    """Paths and finished work of a campaign folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def round_dir(self, r: int) -> Path:
        return self.root / f"round-{r:03d}"

    def ensemble_dir(self, r: int) -> Path:
        return self.round_dir(r) / "ensemble"

    def record_path(self, r: int) -> Path:
        return self.round_dir(r) / "round.json"

    def is_trained(self, r: int) -> bool:
        """Whether round ``r``'s ensemble finished (trained and calibrated)."""
        manifest = self.ensemble_dir(r) / "ensemble.json"
        return manifest.is_file() and json.loads(manifest.read_text())["calibration"] is not None

    def records(self) -> list[RoundRecord]:
        """Records of the finished rounds, in order."""
        out = []
        r = 0
        while self.record_path(r).is_file():
            out.append(RoundRecord.load(self.record_path(r)))
            r += 1
        return out

    def next_round(self) -> int:
        """The first round without a record (0 until pretraining has finished)."""
        return len(self.records())

    def hours(self) -> float:
        """Wall time since the campaign first started, in hours."""
        started = self.root / "started_at"
        return (time.time() - float(started.read_text())) / 3600 if started.is_file() else 0.0

    def config(self) -> CampaignConfig:
        path = self.root / CONFIG_NAME
        if not path.is_file():
            raise InputError(f"{self.root}: not a campaign folder (no {CONFIG_NAME})")
        return load_config(path)


def start_folder(
    config_path: str | Path, overrides: dict | None = None
) -> tuple[CampaignConfig, CampaignFolder]:
    """Validate the configuration and its inputs, then create or reopen its folder.

    ``config_path`` is a campaign YAML file or a campaign folder; ``overrides`` (nested
    sections, e.g. ``{"selection": {"policy": "random"}}``) replace fields of the file.
    Everything that can be checked cheaply is checked here, before any work: the file, the
    seed structures (or oracle / imported / test files), and that an existing folder was
    started from the same settings. The configuration is copied to ``campaign.yaml`` with
    absolute paths, so the folder alone reopens the campaign.
    """
    config_path = Path(config_path)
    if config_path.is_dir():
        config_path = config_path / CONFIG_NAME
    config = load_config(config_path)
    if overrides:
        data = config.model_dump(mode="json")
        for section, fields in overrides.items():
            data[section] = {**data[section], **fields} if isinstance(fields, dict) else fields
        config = parse_config(data, source=f"{config_path} with overrides {overrides}")
    check_inputs(config)
    folder = CampaignFolder(config.folder)
    copy = folder.root / CONFIG_NAME
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    if copy.is_file() and Path(config_path).resolve() != copy.resolve():
        old = load_config(copy).model_dump(mode="json", exclude={"stop", "approval"})
        new = config.model_dump(mode="json", exclude={"stop", "approval"})
        if old != new:
            changed = sorted(k for k in new if new[k] != old.get(k))
            raise InputError(
                f"{folder.root} holds a campaign started with other settings "
                f"({', '.join(changed)} differ); use a new folder, or run it from "
                f"{copy} (only stop: and approval: may change)"
            )
    folder.root.mkdir(parents=True, exist_ok=True)
    copy.write_text(text)
    started = folder.root / "started_at"
    if not started.is_file():
        started.write_text(f"{time.time():.0f}\n")
    return config, folder


def check_inputs(config: CampaignConfig) -> None:
    """Read every input file the campaign needs; raise :class:`InputError` naming the
    first problem."""
    from sapis.dft.checks import check_for_dft

    if config.oracle is None and config.system.structures is None:
        raise InputError("system.structures: seed structures are needed (or an oracle file)")
    if config.system.structures is not None:
        seeds = read_structures(config.system.structures)
        if config.oracle is None:
            for k, atoms in enumerate(seeds):
                check_for_dft(
                    atoms,
                    config.system.charge,
                    config.system.multiplicity,
                    config.dft.basis,
                    f"{config.system.structures} structure {k}",
                )
    for name, path in (
        ("oracle", config.oracle),
        ("test_file", config.test_file),
        ("pretrain.labelled", config.pretrain.labelled),
    ):
        if path is not None:
            images = read_structures(path)
            if not _carries_labels(images[0]):
                raise InputError(f"{name}: {path} carries no energies and forces")
    if config.generator.share > 0:
        if config.oracle is not None:
            raise InputError(
                "generator.share: an oracle labels only its own pool, not generated "
                "structures; set generator.share to 0 or drop the oracle"
            )
        formulas = {tuple(a.numbers) for a in seeds}
        if len(formulas) > 1:
            raise InputError(
                f"generator.share: the generator models one molecule, but "
                f"{config.system.structures} holds {len(formulas)} different atom sequences"
            )
    if config.oracle is None and not config.pretrain.displaced and not config.pretrain.labelled:
        raise InputError("pretrain: give a labelled file or displaced > 0 to start from")


def _carries_labels(atoms: Atoms) -> bool:
    return atoms.calc is not None and {"energy", "forces"} <= set(atoms.calc.results)


def level_of(config: CampaignConfig) -> str:
    """The level of theory this campaign's labels are at."""
    if config.oracle is not None:
        from sapis.dft.reference import ReferenceOracle

        return ReferenceOracle.level_for(config.oracle)
    return config.dft.level_of_theory


# --- stages --------------------------------------------------------------------------------


def pretraining_structures(config: CampaignConfig) -> tuple[list[Atoms], list[Atoms]]:
    """(labelled structures to import, unlabelled structures to label) for round 0.

    Displaced copies are drawn from ``pretrain.seed``: the same every time, so a rerun
    stores nothing twice.
    """
    labelled: list[Atoms] = []
    if config.pretrain.labelled is not None:
        labelled = read_structures(config.pretrain.labelled)
        for atoms in labelled:
            atoms.info.update(source="import", round=0)
    to_label: list[Atoms] = []
    if config.pretrain.displaced:
        if config.system.structures is not None:
            seeds = read_structures(config.system.structures)
        else:  # an oracle campaign starts from pool structures, which the oracle can label
            from sapis.dft.reference import ReferenceOracle

            pool = ReferenceOracle(config.oracle).candidates()
            rng = np.random.default_rng(config.pretrain.seed)
            picks = rng.choice(len(pool), min(config.pretrain.displaced, len(pool)), False)
            return labelled, [_tag(pool[int(i)], "seed", 0) for i in picks]
        rng = np.random.default_rng(config.pretrain.seed)
        for atoms in seeds:
            for _ in range(config.pretrain.displaced):
                copy = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
                copy.positions += rng.normal(0.0, config.pretrain.rattle, copy.positions.shape)
                to_label.append(_tag(copy, "seed", 0))
    return labelled, to_label


def _tag(atoms: Atoms, source: str, r: int) -> Atoms:
    atoms.info.update(source=source, round=r)
    return atoms


def label_with_oracle(store: DatasetStore, oracle_path: Path, on_result=None) -> dict:
    """Label every pending row from the reference file; returns counts and seconds."""
    from sapis.dft.reference import ReferenceOracle

    oracle = ReferenceOracle(oracle_path)
    run = new_run_id()
    done = 0
    started = time.monotonic()
    for row_id, atoms in store.pending():
        store.record(row_id, oracle.label(atoms), run)
        done += 1
        if on_result is not None:
            on_result(row_id, None)
    return {"labelled": done, "failed": 0, "seconds": time.monotonic() - started}


def training_sets(store: DatasetStore, level: str) -> tuple[list[Atoms], list[Atoms]]:
    """Labelled train and val structures at ``level``; a clear error if either is empty."""
    train, val = (
        [a for a in store.labelled(split) if a.info.get("level") == level]
        for split in ("train", "val")
    )
    if len(train) < 2 or not val:
        raise InputError(
            f"{store.url}: {len(train)} train and {len(val)} val structures labelled at "
            f"{level}: need ≥ 2 and ≥ 1 (add data, or raise split.val)"
        )
    return train, val


def train_round(
    config: CampaignConfig,
    folder: CampaignFolder,
    store: DatasetStore,
    r: int,
    parent: Path | None,
    size: str | None = None,
) -> Path:
    """Train (fine-tune from ``parent``) round ``r``'s ensemble unless it is done."""
    from sapis.surrogate.ensemble_training import train_ensemble
    from sapis.surrogate.export import package_members

    out = folder.ensemble_dir(r)
    if folder.is_trained(r):
        return out
    if out.exists():  # a killed training: its members start over
        shutil.rmtree(out)
    parent_size = _ensemble_size(parent) if parent is not None else None
    if (
        parent is not None
        and size in (None, parent_size)
        and not store.count(round=r, status="labelled")
    ):
        shutil.copytree(parent, out)  # nothing new to learn from: keep the parent
        return out
    train, val = training_sets(store, level_of(config))
    train_ensemble(train, val, out, config.training, parent=parent, size=size, progress=False)
    package_members(out)
    return out


def _ensemble_size(folder: Path) -> str:
    return json.loads((folder / "ensemble.json").read_text())["size"]


def explore_round(
    config: CampaignConfig,
    folder: CampaignFolder,
    ensemble_dir: Path,
    r: int,
    temperatures: Sequence[float] | None = None,
) -> tuple[Path, dict]:
    """Candidates of round ``r`` with their uncertainty, in ``explored.extxyz``.

    Surrogate MD from the seed structures at ``explore.temperatures`` (or
    ``temperatures``); with an oracle, the pool structures not yet stored, predicted in
    batches. Returns the file and a small summary (frames, trajectories' stop reasons).
    """
    from sapis.surrogate.ensemble import Ensemble

    path = folder.round_dir(r) / "explored.extxyz"
    summary_path = folder.round_dir(r) / "explore.json"
    if path.is_file():
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        return path, {**summary, "frames": len(read_frames(path)), "resumed": True}
    ensemble = Ensemble.load(ensemble_dir)
    summary: dict = {}
    if config.oracle is not None:
        from sapis.dft.reference import ReferenceOracle

        oracle = ReferenceOracle(config.oracle)
        stored = DatasetStore(config.database).hashes()
        frames = []
        for atoms, h in zip(oracle.candidates(), oracle.hashes):
            if h not in stored:
                atoms.info["hash"] = h
                frames.append(_tag(atoms, "reference", r))
        ensemble.predict(frames).annotate(frames)
        for a in frames:
            a.calc = None
    else:
        from sapis.surrogate.md import explore

        settings = config.explore
        if temperatures:
            settings = settings.model_copy(update={"temperatures": list(temperatures)})
        seeds = read_structures(config.system.structures)
        result = explore(ensemble, seeds, settings, round_=r, progress=False)
        frames = result.candidates
        stops: dict[str, int] = {}
        for t in result.trajectories:
            key = t.stopped_by.split(":")[0]
            stops[key] = stops.get(key, 0) + 1
        summary.update(trajectories=len(result.trajectories), stopped_by=stops, steps=result.steps)
        summary["by_source"] = {
            "md": {"proposed": len(frames) + stops.get("unphysical", 0), "valid": len(frames)}
        }
        frames += _generator_candidates(config, folder, ensemble, r, frames, summary)
    summary["frames"] = len(frames)
    _write_atomically(path, frames)
    tmp = summary_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(summary_path)
    return path, summary


def _generator_candidates(
    config: CampaignConfig,
    folder: CampaignFolder,
    ensemble,
    r: int,
    md_frames: list[Atoms],
    summary: dict,
) -> list[Atoms]:
    """The generator's valid proposals of round ``r`` with their uncertainty (none when
    ``generator.share`` is 0), after training it on the store and all MD frames so far;
    records its counts and training in ``summary``."""
    from sapis.campaign_generator import (
        explored_md_frames,
        generated_count,
        propose,
        train_round_generator,
        training_frames,
    )
    from sapis.surrogate.guidance import disagreement_guide

    n = generated_count(config, len(md_frames))
    if not n:
        return []
    earlier = [folder.round_dir(k) for k in range(r)]
    explored = explored_md_frames(earlier) + list(md_frames)
    frames = training_frames(DatasetStore(config.database), explored)
    gen, training = train_round_generator(config, folder.round_dir(r), earlier, frames)
    guide = disagreement_guide(ensemble, gen.numbers) if config.generator.guidance > 0 else None
    valid, counts, rejected = propose(config, gen, n, r, guide)
    ensemble.predict(valid).annotate(valid)
    for atoms in valid:
        atoms.calc = None
    summary["by_source"]["generator"] = counts
    summary["generator_rejected"] = rejected
    summary["generator_training"] = asdict(training) if training else "resumed"
    return valid


def select_round(
    config: CampaignConfig,
    folder: CampaignFolder,
    store: DatasetStore,
    explored: Path,
    r: int,
    labels: int | None = None,
) -> Selection:
    """Choose round ``r``'s structures for DFT and store them ``pending``.

    The choice is written to ``selected.extxyz`` before anything is stored, so a rerun
    after a kill stores the same structures (the store skips those it has) instead of
    choosing again.
    """
    frames = read_frames(explored)
    sel_cfg = config.selection
    chosen_path = folder.round_dir(r) / "selected.extxyz"
    if chosen_path.is_file():
        chosen = read_frames(chosen_path)
        already = {a.info["hash"] for a in chosen}
        sel = select(frames, 0, sel_cfg.lo, sel_cfg.hi, sel_cfg.policy, seed=sel_cfg.seed + r)
        sel.chosen = chosen
        for a in frames:
            if a.info["hash"] in already:
                counts = sel.by_source.setdefault(str(a.info.get("source", "?")), {})
                counts["selected"] = counts.get("selected", 0) + 1
    else:
        budget = labels if labels is not None else sel_cfg.labels_per_round
        if config.stop.max_labels is not None:
            budget = min(budget, max(config.stop.max_labels - store.count(status="labelled"), 0))
        sel = select(
            frames,
            budget,
            sel_cfg.lo,
            sel_cfg.hi,
            sel_cfg.policy,
            stored=store.hashes(),
            seed=sel_cfg.seed + r,
        )
        for a in sel.chosen:
            a.info["round"] = r
        _write_atomically(chosen_path, sel.chosen)
    store.add(sel.chosen, fractions=config.split)
    return sel


def round_labels(store: DatasetStore, r: int, threads: int) -> tuple[int, int, float]:
    """(labelled, failed, DFT core-seconds) of the rows round ``r`` added to the store."""
    rows = [x for x in store.summary_rows() if x["round"] == r]
    labelled = sum(x["status"] == "labelled" for x in rows)
    failed = sum(x["status"] == "failed" for x in rows)
    seconds = sum(x["label_seconds"] or 0.0 for x in rows)
    return labelled, failed, seconds * threads


def estimated_core_seconds(store: DatasetStore, n: int, threads: int) -> float:
    """DFT cost of ``n`` more labels: mean label seconds so far × ``threads`` × n
    (30 s per label before any label is known)."""
    secs = [r["label_seconds"] for r in store.summary_rows() if r["label_seconds"] is not None]
    return n * threads * (float(np.mean(secs)) if secs else 30.0)


def evaluation_set(config: CampaignConfig, store: DatasetStore) -> list[Atoms]:
    """Structures the errors are measured on: ``test_file`` or the store's test split."""
    if config.test_file is not None:
        return read_structures(config.test_file)
    level = level_of(config)
    return [a for a in store.labelled("test") if a.info.get("level") == level]


def evaluate(ensemble_dir: Path, test: Sequence[Atoms]) -> dict:
    """Ensemble-mean errors on ``test``: force MAE (eV/Å), energy MAE (eV), and the
    reference and predicted values for a parity plot."""
    from sapis.surrogate.ensemble import Ensemble

    if not test:
        return {"force_mae": float("nan"), "energy_mae": float("nan"), "n": 0}
    pred = Ensemble.load(ensemble_dir).predict(test)
    ref_f = np.concatenate([a.get_forces().ravel() for a in test])
    pred_f = np.concatenate([pred.force_mean(i).ravel() for i in range(len(test))])
    n_atoms = np.array([len(a) for a in test])
    ref_e = np.array([a.get_potential_energy() for a in test])
    return {
        "force_mae": float(np.mean(np.abs(ref_f - pred_f))),
        "energy_mae": float(np.mean(np.abs(ref_e - pred.energy_mean))),
        "n": len(test),
        "parity": (ref_e / n_atoms, pred.energy_mean / n_atoms, ref_f, pred_f),
    }


def uncertainty_stats(explored: Path) -> tuple[float, float]:
    """Median and 95th percentile of the calibrated max force deviation (eV/Å)."""
    frames = read_frames(explored)
    u = [a.info["max_force_dev_calibrated"] for a in frames]
    if not u:
        return float("nan"), float("nan")
    return float(np.median(u)), float(np.percentile(u, 95))


def read_frames(path: Path) -> list[Atoms]:
    """The frames of a file :func:`_write_atomically` wrote (empty file: none)."""
    return ase.io.read(path, ":") if path.stat().st_size else []


def _write_atomically(path: Path, images: list[Atoms]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    if images:
        ase.io.write(tmp, images, format="extxyz")
    else:
        tmp.write_text("")
    tmp.replace(path)
