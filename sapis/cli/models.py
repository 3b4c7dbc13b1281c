"""Verbs on models: ``sapis train``, ``predict``, ``train-generator`` and ``generate``."""

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sapis.cli.app import (
    DbOption,
    app,
    check_output,
    console,
    fail,
    read_checked,
    with_options,
    writes_to,
)
from sapis.errors import InputError


@app.command()
def train(
    db: DbOption,
    out: Annotated[Path, typer.Option(help="Folder for the new ensemble.")],
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Campaign YAML (its training: and executor:)."),
    ] = None,
    size: Annotated[str | None, typer.Option(help="Model size: xs | s | m | l.")] = None,
    members: Annotated[int | None, typer.Option(help="Ensemble size K.")] = None,
    max_epochs: Annotated[
        int | None, typer.Option(help="Epoch budget per member (it stops earlier if converged).")
    ] = None,
    max_minutes: Annotated[
        float | None, typer.Option(help="Wall-time cap per member, minutes (none by default).")
    ] = None,
    parent: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Fine-tune this ensemble's members on the store's data (same size), or, "
            "with a different --size, train that size from scratch.",
        ),
    ] = None,
    level: Annotated[
        str | None, typer.Option(help="Level of theory to train on (if the store mixes).")
    ] = None,
    parsl: Annotated[
        bool, typer.Option("--parsl", help="Train members as Parsl apps (config's executor).")
    ] = False,
    package: Annotated[
        bool, typer.Option(help="Also write each member as a nequip package.")
    ] = True,
) -> None:
    """Train (or fine-tune) an ensemble on the store's train split, stopping early on its
    val split; calibrate its uncertainty. Under ``mpiexec -n K`` each rank trains members."""
    from sapis.campaign.config import load_config
    from sapis.surrogate.ensemble_training import mpi_world, train_ensemble
    from sapis.surrogate.manifest import EnsembleManifest
    from sapis.surrogate.settings import TrainingConfig

    world = mpi_world()
    lead = world is None or world[1] == 0
    try:
        cfg = load_config(config) if config else None
        training = with_options(
            cfg.training if cfg else TrainingConfig(),
            "training",
            size=size,
            members=members,
            max_epochs=max_epochs,
            max_minutes=max_minutes,
        )
        if EnsembleManifest.exists(out):
            raise InputError(f"{out} already holds an ensemble; choose a new --out folder")
        writes_to(out)
        if parent is not None and parent.resolve() == out.resolve():
            raise InputError("--from and --out must be different folders")
        if parent is not None:
            EnsembleManifest.read(parent)  # an InputError unless it holds an ensemble
        train_set, val_set = _training_data(db, level)
        parsl_config = None
        if parsl:
            if cfg is None:
                raise InputError("--parsl needs --config for its executor section")
            from sapis.dft.executors import parsl_config as build_parsl_config

            parsl_config = build_parsl_config(cfg.executor, 1, cfg.executor.run_dir)
    except InputError as err:
        raise fail(err) from None
    if lead:
        what = f"fine-tuning {parent}" if parent and not size else f"size {training.size}"
        console.print(
            f"training {training.members} members ({what}) on {len(train_set)} train / "
            f"{len(val_set)} val structures"
        )

    def done(record) -> None:
        if lead:
            console.print(
                f"member {record.member}: {record.epochs} epochs, {record.wall_seconds:.0f} s, "
                f"val force MAE {1000 * record.val_force_mae:.1f} meV/Å ({record.stopped_by})"
            )

    try:
        manifest = train_ensemble(
            train_set,
            val_set,
            out,
            training,
            parent=parent,
            size=size,
            parsl_config=parsl_config,
            progress=lead,
            on_member=done,
        )
    except InputError as err:
        raise fail(err) from None
    if manifest is None:
        return
    if package:
        from sapis.surrogate.export import package_members

        package_members(out)
    _print_ensemble(manifest, out)


def _training_data(db: str, level: str | None) -> tuple[list, list]:
    """The store's labelled train and val splits, at one level of theory."""
    from sapis.store import DatasetStore

    store = DatasetStore(db, create=False)
    levels = store.levels()
    if level is None and len(levels) > 1:
        raise InputError(
            f"{store.safe_url} mixes levels of theory {sorted(levels)}: choose one with --level"
        )
    if level is not None and level not in levels:
        raise InputError(
            f"{store.safe_url} has no labels at level {level!r} (it has {sorted(levels)})"
        )
    return store.labelled("train", level=level), store.labelled("val", level=level)


def _print_ensemble(manifest, out: Path) -> None:
    table = Table(title=f"{out}: {len(manifest.members)} × {manifest.size}")
    for col in ("member", "parameters", "steps", "seconds", "val E MAE meV", "val F MAE meV/Å"):
        table.add_column(col, justify="right")
    for k, m in enumerate(manifest.members):
        table.add_row(
            str(k),
            f"{m.parameters:,}",
            str(m.steps),
            f"{m.wall_seconds:.0f}",
            f"{1000 * m.val_energy_mae:.1f}",
            f"{1000 * m.val_force_mae:.1f}",
        )
    console.print(table)
    cal = manifest.calibration
    if not cal["n_structures"]:
        console.print("a single model has no ensemble spread: uncertainty not calibrated")
        return
    console.print(
        f"calibration on {cal['n_structures']} val structures: spread → error "
        f"{cal['force_scale']:.3g}·u^{cal['force_power']:.2f}; miscalibration area "
        f"{cal['miscalibration_area_raw']:.3f} raw → {cal['miscalibration_area']:.3f}; "
        f"Spearman (max force dev vs max error) {cal['spearman_structures']:.2f}",
        highlight=False,
    )
    console.print(f"plot: {out / 'calibration.png'}")


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="Ensemble folder (from sapis train).")],
    input: Annotated[Path, typer.Argument(help="Structures: any ASE-readable file.")],
    out: Annotated[Path, typer.Argument(help="Output extended XYZ file.")],
    batch_size: Annotated[int, typer.Option(help="Structures per model call.")] = 64,
) -> None:
    """Ensemble-mean energy and forces for every structure in INPUT, with the per-structure
    uncertainty in info (energy_std, max_force_dev[_calibrated]) and per-atom force
    spread in arrays (force_std[_calibrated])."""
    import ase.io
    import numpy as np

    from sapis.structures import check_structure
    from sapis.surrogate.ensemble import Ensemble

    try:
        if batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {batch_size}")
        check_output(out)
        if out.exists() and out.resolve() == input.resolve():
            raise InputError("OUT must differ from INPUT")
        images = read_checked(input, check_structure)
        ensemble = Ensemble.load(model)
        ensemble.check(images, lone_atoms=False)
    except InputError as err:
        raise fail(err) from None
    pred = ensemble.predict(images, batch_size=batch_size)
    pred.annotate(images)
    ase.io.write(out, images, format="extxyz")
    dev = pred.max_force_dev_calibrated
    console.print(
        f"{len(images)} structures → {out}; calibrated max force deviation median "
        f"{np.median(dev):.3f}, max {dev.max():.3f} eV/Å"
    )


@app.command("train-generator")
def train_generator_command(
    db: DbOption,
    out: Annotated[Path, typer.Option(help="Generator folder (trained further if it exists).")],
    kind: Annotated[
        str | None,
        typer.Option(
            help="diffusion | flow (default: the config's generator.kind, else diffusion)."
        ),
    ] = None,
    train_steps: Annotated[
        int | None, typer.Option(help="Optimiser steps of the training (the budget).")
    ] = None,
    max_minutes: Annotated[
        float | None, typer.Option(help="Wall-time cap of the training, minutes.")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Campaign YAML (its generator: section)."),
    ] = None,
    prior_weight: Annotated[
        float | None,
        typer.Option(help="λ of the diffusion model's feasibility prior (0: no prior)."),
    ] = None,
    energy_weight: Annotated[
        float | None,
        typer.Option(help="λ (1/eV) of the flow's force-field energy penalty (0: none)."),
    ] = None,
    check: Annotated[int, typer.Option(help="Samples drawn afterwards to check it.")] = 500,
) -> None:
    """Train a configuration generator (the diffusion model, or the normalizing flow with
    --kind flow) on the store's structures (labelled and not; failed labels left out),
    then sample it and compare its bond lengths with the data."""
    from sapis.campaign.config import load_config
    from sapis.generator.model import molecule_frames
    from sapis.generator.quality import assess, plot_bond_lengths
    from sapis.generator.settings import GeneratorConfig
    from sapis.generator.training import train_generator
    from sapis.store import DatasetStore

    try:
        base = load_config(config).generator if config else GeneratorConfig()
        settings = with_options(
            base,
            "generator",
            kind=kind,
            train_steps=train_steps,
            max_minutes=max_minutes,
            prior_weight=prior_weight,
        )
        if settings.kind == "diffusion" and energy_weight is not None:
            raise InputError(
                "--energy-weight is the flow's force-field penalty; the diffusion model has "
                "--prior-weight (or use --kind flow)"
            )
        if settings.kind == "flow" and prior_weight is not None:
            raise InputError(
                "--prior-weight is the diffusion model's feasibility prior; the flow has "
                "--energy-weight (or use --kind diffusion)"
            )
        if energy_weight is not None:
            flow = {**settings.flow.model_dump(), "energy_weight": energy_weight}
            settings = with_options(settings, "generator", flow=flow)
        frames = DatasetStore(db, create=False).structures()
        reference, positions, skipped = molecule_frames(frames)
    except InputError as err:
        raise fail(err) from None
    console.print(
        f"training the {settings.kind} generator of {reference.get_chemical_formula()} on "
        f"{len(positions)} structures for {settings.train_steps} steps"
        + (f" (left out: {skipped})" if skipped else ""),
        highlight=False,
    )
    try:
        gen, record = train_generator(frames, out, settings, reference=reference, progress=True)
    except InputError as err:
        raise fail(err) from None
    console.print(_training_table(out, reference.get_chemical_formula(), record))
    if check:
        quality, samples = assess(gen, positions, n=check)
        plot = plot_bond_lengths(
            samples, positions, gen.numbers, gen.bonds, out / "bond_lengths.png"
        )
        console.print(
            f"{check} samples: {100 * quality.valid_fraction:.1f} % valid "
            f"(rejected: {quality.rejected or 'none'}), {quality.ms_per_sample:.2f} ms per "
            f"sample, bond-length W1 mean {quality.bond_w1_mean:.3f} Å, max "
            f"{quality.bond_w1_max:.3f} Å; plot: {plot}",
            highlight=False,
        )


def _training_table(out: Path, formula: str, record) -> Table:
    """One row of a generator training: its kind's own losses (the diffusion model's
    prior penalty, the flow's negative log-likelihood and sample energy)."""
    import math

    columns = ["frames", "parameters", "steps", "seconds", "loss"]
    row = [
        str(record.frames),
        f"{record.parameters:,}",
        str(record.steps),
        f"{record.seconds:.0f}",
        f"{record.loss:.3f}",
    ]
    if record.kind == "flow":
        columns += ["NLL per dof", "E(samples) eV"]
        energy = f"{record.energy:.3g}" if math.isfinite(record.energy) else "–"
        row += [f"{record.nll:.3f}", energy]
    else:
        columns += ["w·‖R(x̂0)‖² Å²"]
        row += [f"{record.penalty:.3g}"]
    table = Table(title=f"{out}: {record.kind} generator of {formula}")
    for col in [*columns, "warm start"]:
        table.add_column(col, justify="right")
    table.add_row(*row, "yes" if record.warm_start else "no")
    return table


@app.command()
def generate(
    model: Annotated[Path, typer.Argument(help="Generator folder (from sapis train-generator).")],
    out: Annotated[Path, typer.Argument(help="Output extended XYZ file.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Structures to sample.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    keep_invalid: Annotated[
        bool, typer.Option(help="Also write rejected samples, with the reason in info.")
    ] = False,
    guide: Annotated[
        Path | None,
        typer.Option(help="Ensemble folder whose disagreement steers the samples."),
    ] = None,
    guidance: Annotated[
        float, typer.Option(help="Steering step in Å per sampling step (with --guide).")
    ] = 0.05,
    log_density: Annotated[
        bool,
        typer.Option(
            "--log-density",
            help="Write each sample's log q(x) per Å^(3N−3) into its info (flow only).",
        ),
    ] = False,
) -> None:
    """Sample structures from a trained generator (diffusion model or flow); the validity
    filter (distances, bond graph, mirror images of chiral molecules) drops unphysical
    ones unless asked not to. A flow's samples can carry their log-density."""
    import time

    import ase.io
    import numpy as np

    from sapis.generator.kinds import load_generator
    from sapis.validity import ValidityFilter

    try:
        check_output(out)
        gen = load_generator(model)
        if log_density and gen.kind != "flow":
            raise InputError(
                f"--log-density: {model} holds a {gen.kind} generator, which has no "
                "tractable density (train one with --kind flow)"
            )
        if guide is not None and gen.kind != "diffusion":
            raise InputError(
                f"--guide: {model} holds a {gen.kind} generator, which samples in one pass "
                "and cannot be steered (guidance is for the diffusion kind)"
            )
        steer = None
        if guide is not None:
            from sapis.surrogate.ensemble import Ensemble
            from sapis.surrogate.guidance import disagreement_guide

            ensemble = Ensemble.load(guide)
            steer = disagreement_guide(ensemble, gen.numbers)
            gen.meta["config"]["guidance"] = guidance
    except InputError as err:
        raise fail(err) from None
    start = time.perf_counter()
    samples = gen.sample(n, seed=seed, guide=steer)
    seconds = time.perf_counter() - start
    if log_density:  # the estimate sample(density=True) gives, timed apart
        logq = gen.log_density(np.array([a.positions for a in samples]), seed=seed)
        for atoms, ell in zip(samples, logq):
            atoms.info["log_density"] = float(ell)
    check = ValidityFilter.from_reference(gen.reference())
    valid, rejected = check.split(samples)
    if keep_invalid:
        kept = {id(a) for a in valid}
        for atoms in samples:
            atoms.info["invalid"] = "" if id(atoms) in kept else check.reason(atoms)
    ase.io.write(out, samples if keep_invalid else valid, format="extxyz")
    console.print(
        f"{n} samples in {seconds:.1f} s ({1000 * seconds / n:.2f} ms each): {len(valid)} valid "
        f"({100 * len(valid) / n:.1f} %), rejected {rejected or 'none'} → {out}",
        highlight=False,
    )
