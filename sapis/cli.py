"""The ``sapis`` command line."""

import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from sapis.config import CampaignConfig, format_validation_error, is_url, load_config
from sapis.errors import InputError

app = typer.Typer(
    help="SAPIS-MD: machine-learned potentials from as few DFT labels as possible.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Inspect and fill the dataset store.", no_args_is_help=True)
app.add_typer(db_app, name="db")
# in a pipe or log file, wide enough that tables keep whole headers (a terminal: its width)
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, soft_wrap=True)

DbOption = Annotated[
    str, typer.Option("--db", envvar="SAPIS_DB", help="SQLite path or postgresql:// URL.")
]


def _fail(err: Exception) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {err}", highlight=False)
    return typer.Exit(code=2)


def _read_checked(path: Path, check) -> list:
    """Read ``path`` and run ``check(atoms, where)`` on every structure before anything
    is stored."""
    from sapis.io import read_structures

    images = read_structures(path)
    for k, atoms in enumerate(images):
        check(atoms, f"{path} structure {k}")
    return images


def _run_dir(config: CampaignConfig, database: str) -> Path:
    if config.executor.run_dir is not None:
        return config.executor.run_dir
    return (Path(".") if is_url(database) else Path(database).parent) / "runinfo"


@app.command()
def label(
    input: Annotated[
        Path | None,
        typer.Argument(
            help="Structures to label (any ASE format, rMD17 npz); default: system.structures."
        ),
    ] = None,
    config_path: Annotated[Path, typer.Option("--config", "-c", help="Campaign YAML.")] = Path(
        "sapis.yaml"
    ),
    db: Annotated[str | None, typer.Option("--db", help="Overrides the config's database.")] = None,
    split: Annotated[
        str | None, typer.Option(help="train | val | test for all (default: by hash).")
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option(help="Set failed rows back to pending and label them again.")
    ] = False,
) -> None:
    """Import every structure in INPUT and label every row still pending with PySCF DFT.

    Structures already stored are skipped (never paid for twice); labels are written as
    each one finishes, so a rerun after a crash labels only what is missing."""
    from sapis.dft import check_for_dft
    from sapis.dft.batch import label_pending
    from sapis.store import DatasetStore, check_split

    try:
        check_split(split)
        config = load_config(config_path)
        system, dft = config.system, config.dft
        input = input or system.structures
        if input is None:
            raise InputError("no structures: give INPUT or system.structures in the config")
        images = _read_checked(
            input,
            lambda atoms, where: check_for_dft(
                atoms, system.charge, system.multiplicity, dft.basis, where
            ),
        )
        database = db or config.database
        store = DatasetStore(database)
        other = store.levels() - {dft.level_of_theory}
        if other:
            raise InputError(
                f"{database} holds labels at {', '.join(sorted(other))}; this config "
                f"labels at {dft.level_of_theory}: use another database"
            )
        report = store.add(images, split=split, fractions=config.split)
        if retry_failed:
            console.print(f"{store.reset_failed()} failed rows set back to pending")
    except InputError as err:
        raise _fail(err) from None
    pending = store.count(status="pending")
    console.print(
        f"{len(images)} structures read: {len(report.added)} new, "
        f"{report.duplicates} already stored; {pending} to label at "
        f"{dft.level_of_theory} on '{config.executor.profile}'"
    )
    try:
        with Progress(
            TextColumn("[bold]labelling"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            console=console,
        ) as progress:
            task = progress.add_task("", total=pending)

            def advance(row_id: int, result) -> None:
                if result is not None and not result.converged:
                    progress.console.print(f"row {row_id} failed: {result.reason}", highlight=False)
                progress.update(task, advance=1, description=f"row {row_id}")

            summary = label_pending(
                store,
                dft,
                config.executor,
                system.charge,
                system.multiplicity,
                run_dir=_run_dir(config, database),
                on_result=advance,
            )
    except InputError as err:  # a stored pending row that cannot be labelled
        raise _fail(err) from None
    table = Table(title=f"label run {summary.run}", show_header=False)
    for name, value in [
        ("labelled", summary.labelled),
        ("failed", summary.failed),
        ("skipped (already stored)", report.duplicates),
        ("left pending (errors)", len(summary.errors)),
        ("wall time", f"{summary.seconds:.1f} s"),
        ("DFT time", f"{summary.label_seconds:.1f} s"),
    ]:
        table.add_row(name, str(value))
    console.print(table)
    for row_id, error in summary.errors.items():
        err_console.print(f"row {row_id} left pending: {error}", highlight=False)
    if summary.errors:
        raise typer.Exit(code=1)


@db_app.command("import")
def db_import(
    file: Annotated[Path, typer.Argument(help="extxyz (with energy/forces) or rMD17 npz.")],
    db: DbOption,
    split: Annotated[
        str | None, typer.Option(help="train | val | test (default: by hash).")
    ] = None,
    level: Annotated[
        str | None,
        typer.Option(
            help="Level of theory of the labels in FILE (default: each structure's own "
            "'level', as 'sapis db export' writes it; PBE/def2-svp for rMD17 npz)."
        ),
    ] = None,
) -> None:
    """Store structures with the labels they already carry; no DFT."""
    from sapis.store import DatasetStore
    from sapis.structures import check_structure

    try:
        images = _read_checked(file, check_structure)
        level = level or ("PBE/def2-svp" if file.suffix == ".npz" else None)
        unknown = [
            k for k, a in enumerate(images) if a.calc is not None and not a.info.get("level")
        ]
        if level is None and unknown:
            raise InputError(
                f"{file} structure {unknown[0]} carries labels of unknown level of theory: "
                "say it with --level"
            )
        report = DatasetStore(db).add(images, split=split, level=level)
    except InputError as err:
        raise _fail(err) from None
    console.print(f"{file}: {len(report.added)} stored, {report.duplicates} already stored")


@db_app.command("stats")
def db_stats(
    db: DbOption,
    plot: Annotated[
        Path | None, typer.Option(help="Also draw distributions and counts to this PNG.")
    ] = None,
) -> None:
    """Counts by status, split, round, level and source; failure reasons; label ranges."""
    from sapis.store import DatasetStore

    try:
        store = DatasetStore(db)
        rows = store.summary_rows()  # read once, for the table and the plot
    except InputError as err:
        raise _fail(err) from None
    stats = store.stats(rows)
    if plot is not None:
        from sapis.report import plot_dataset

        plot_dataset(rows, plot, title=db)
        console.print(f"plots written to {plot}")
    table = Table(title=f"{db}: {stats['rows']} rows")
    table.add_column("by")
    table.add_column("counts")
    for key in ("status", "split", "round", "level", "source"):
        table.add_row(key, ", ".join(f"{k}: {v}" for k, v in sorted(stats[key].items())))
    console.print(table)
    if "energy_per_atom" in stats:
        lo, hi = stats["energy_per_atom"]
        flo, fhi = stats["max_force"]
        console.print(
            f"energy per atom {lo:.3f} … {hi:.3f} eV; largest force per structure "
            f"{flo:.3f} … {fhi:.3f} eV/Å"
        )
        if stats["label_seconds"]:
            console.print(f"mean DFT time per label {stats['label_seconds']:.1f} s")
    for reason, n in stats["reasons"].most_common():
        console.print(f"failed ×{n}: {reason}", highlight=False)


@db_app.command("export")
def db_export(
    db: DbOption,
    out: Annotated[Path, typer.Argument(help="Output extxyz file.")],
    split: Annotated[str | None, typer.Option(help="Only this split.")] = None,
) -> None:
    """Write labelled rows (energy in eV, forces in eV/Å) to an extended XYZ file."""
    from sapis.store import DatasetStore

    try:
        n = DatasetStore(db).export(out, split=split)
    except InputError as err:
        raise _fail(err) from None
    console.print(f"{n} labelled structures written to {out}")


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
    max_minutes: Annotated[
        float | None, typer.Option(help="Wall-time budget per member, minutes.")
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
    from sapis.surrogate.ensemble_training import mpi_world, train_ensemble

    world = mpi_world()
    lead = world is None or world[1] == 0
    try:
        cfg = load_config(config) if config else None
        training = cfg.training if cfg else CampaignConfig(database=db).training
        overrides = {"size": size, "members": members, "max_minutes": max_minutes}
        training = training.model_validate(
            training.model_dump() | {k: v for k, v in overrides.items() if v is not None}
        )
        if (out / "ensemble.json").exists():
            raise InputError(f"{out} already holds an ensemble; choose a new --out folder")
        if parent is not None and parent.resolve() == out.resolve():
            raise InputError("--from and --out must be different folders")
        train_set, val_set = _training_data(db, level)
        parsl_config = None
        if parsl:
            if cfg is None:
                raise InputError("--parsl needs --config for its executor section")
            from sapis.dft.executors import parsl_config as build_parsl_config

            parsl_config = build_parsl_config(cfg.executor, 1, out.resolve() / "runinfo")
    except ValidationError as err:
        raise _fail(InputError(format_validation_error(err, "training"))) from None
    except InputError as err:
        raise _fail(err) from None
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
        raise _fail(err) from None
    if manifest is None:
        return
    if package:
        from sapis.surrogate.export import package_members

        package_members(out)
    _print_ensemble(manifest, out)


def _training_data(db: str, level: str | None) -> tuple[list, list]:
    """The store's labelled train and val splits, at one level of theory."""
    from sapis.store import DatasetStore

    store = DatasetStore(db)
    levels = store.levels()
    if level is None and len(levels) > 1:
        raise InputError(f"{db} mixes levels of theory {sorted(levels)}: choose one with --level")
    if level is not None and level not in levels:
        raise InputError(f"{db} has no labels at level {level!r} (it has {sorted(levels)})")
    sets = []
    for split in ("train", "val"):
        images = store.labelled(split)
        sets.append([a for a in images if level is None or a.info.get("level") == level])
    return sets[0], sets[1]


def _print_ensemble(manifest: dict, out: Path) -> None:
    table = Table(title=f"{out}: {len(manifest['members'])} × {manifest['size']}")
    for col in ("member", "parameters", "steps", "seconds", "val E MAE meV", "val F MAE meV/Å"):
        table.add_column(col, justify="right")
    for k, m in enumerate(manifest["members"]):
        table.add_row(
            str(k),
            f"{m['parameters']:,}",
            str(m["steps"]),
            f"{m['wall_seconds']:.0f}",
            f"{1000 * m['val_energy_mae']:.1f}",
            f"{1000 * m['val_force_mae']:.1f}",
        )
    console.print(table)
    cal = manifest["calibration"]
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

    from sapis.io import read_structures
    from sapis.surrogate.ensemble import Ensemble

    try:
        if out.exists() and out.resolve() == input.resolve():
            raise InputError("OUT must differ from INPUT")
        images = read_structures(input)
        ensemble = Ensemble.load(model)
        ensemble.check(images)
    except InputError as err:
        raise _fail(err) from None
    pred = ensemble.predict(images, batch_size=batch_size)
    pred.annotate(images)
    ase.io.write(out, images, format="extxyz")
    dev = pred.max_force_dev_calibrated
    console.print(
        f"{len(images)} structures → {out}; calibrated max force deviation median "
        f"{np.median(dev):.3f}, max {dev.max():.3f} eV/Å"
    )


# --- the generator ------------------------------------------------------------------------


@app.command("train-generator")
def train_generator_command(
    db: DbOption,
    out: Annotated[Path, typer.Option(help="Generator folder (trained further if it exists).")],
    max_minutes: Annotated[
        float | None, typer.Option(help="Wall-time budget of the training, minutes.")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Campaign YAML (its generator: section)."),
    ] = None,
    prior_weight: Annotated[
        float | None, typer.Option(help="λ of the feasibility prior (0: no prior).")
    ] = None,
    check: Annotated[int, typer.Option(help="Samples drawn afterwards to check it.")] = 500,
) -> None:
    """Train the diffusion generator on the store's structures (labelled and not; failed
    labels left out), then sample it and compare its bond lengths with the data."""
    from sapis.campaign_generator import training_frames
    from sapis.generator.model import molecule_frames
    from sapis.generator.quality import assess, plot_bond_lengths
    from sapis.generator.training import train_generator
    from sapis.store import DatasetStore

    try:
        settings = (
            load_config(config).generator if config else CampaignConfig(database=db).generator
        )
        overrides = {"max_minutes": max_minutes, "prior_weight": prior_weight}
        settings = settings.model_validate(
            settings.model_dump() | {k: v for k, v in overrides.items() if v is not None}
        )
        frames = training_frames(DatasetStore(db), [])
        reference, positions, skipped = molecule_frames(frames)
    except ValidationError as err:
        raise _fail(InputError(format_validation_error(err, "generator"))) from None
    except InputError as err:
        raise _fail(err) from None
    console.print(
        f"training the generator of {reference.get_chemical_formula()} on {len(positions)} "
        f"structures for {settings.max_minutes:g} min"
        + (f" (left out: {skipped})" if skipped else ""),
        highlight=False,
    )
    try:
        gen, record = train_generator(frames, out, settings, reference=reference, progress=True)
    except InputError as err:
        raise _fail(err) from None
    table = Table(title=f"{out}: generator of {reference.get_chemical_formula()}")
    for col in ("frames", "parameters", "steps", "seconds", "loss", "w·‖R(x̂0)‖² Å²", "warm start"):
        table.add_column(col, justify="right")
    table.add_row(
        str(record.frames),
        f"{record.parameters:,}",
        str(record.steps),
        f"{record.seconds:.0f}",
        f"{record.loss:.3f}",
        f"{record.penalty:.3g}",
        "yes" if record.warm_start else "no",
    )
    console.print(table)
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
) -> None:
    """Sample structures from a trained generator; the validity filter (distances, bond
    graph, mirror images of chiral molecules) drops unphysical ones unless asked not to."""
    import time

    import ase.io

    from sapis.generator.model import Generator
    from sapis.validity import ValidityFilter

    try:
        gen = Generator.load(model)
        steer = None
        if guide is not None:
            from sapis.surrogate.ensemble import Ensemble
            from sapis.surrogate.guidance import disagreement_guide

            ensemble = Ensemble.load(guide)
            steer = disagreement_guide(ensemble, gen.numbers)
            gen.meta["config"]["guidance"] = guidance
    except InputError as err:
        raise _fail(err) from None
    start = time.perf_counter()
    samples = gen.sample(n, seed=seed, guide=steer)
    seconds = time.perf_counter() - start
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


# --- campaigns (Prefect flows) ------------------------------------------------------------


def _prefect_environment() -> None:
    """Offline defaults for Prefect: no analytics; a temporary local server (SQLite)
    unless PREFECT_API_URL names one."""
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # nequip logs every model load at INFO, which Prefect's console handler would show
    os.environ.setdefault("_NEQUIP_LOG_LEVEL", "WARNING")


def _ui_hint() -> str:
    import os

    url = os.environ.get("PREFECT_API_URL")
    if url:
        return f"Prefect UI: {url.removesuffix('/api')} (flow runs, artifacts)"
    return (
        "Prefect UI: this run used a temporary server; to watch runs live, start "
        "`prefect server start` and export PREFECT_API_URL=http://127.0.0.1:4200/api first"
    )


_SHORT = {
    "round": "round",
    "labels": "labels",
    "new labels": "new",
    "failed labels": "failed",
    "explored": "explored",
    "accurate %": "acc %",
    "candidate %": "cand %",
    "failed %": "fail %",
    "selected": "selected",
    "max dev median (eV/Å)": "dev med",
    "max dev p95 (eV/Å)": "dev p95",
    "test force MAE (meV/Å)": "F MAE meV/Å",
    "test energy MAE (meV)": "E MAE meV",
    "model size": "size",
    "DFT s": "DFT s",
}


def _print_rounds(folder) -> None:
    """The round table in the terminal (short headers; the stop reason below it)."""
    from sapis.campaign_report import round_table

    records = folder.records()
    if not records:
        console.print(f"{folder.root}: no round finished yet")
        return
    table = Table(title=f"{folder.root}")
    for short in _SHORT.values():
        table.add_column(short, justify="right")
    for row in round_table(records):
        table.add_row(*(str(row[c]) for c in _SHORT))
    console.print(table)
    if records[-1].stop_reason:
        console.print(f"stop rule met after round {records[-1].round}: {records[-1].stop_reason}")


@app.command()
def campaign(
    config: Annotated[Path, typer.Argument(help="Campaign YAML (or a campaign folder).")],
    max_rounds: Annotated[int | None, typer.Option(help="Override stop.max_rounds.")] = None,
    policy: Annotated[
        str | None, typer.Option(help="Override selection.policy: uncertainty | random.")
    ] = None,
) -> None:
    """Run a whole active-learning campaign as a Prefect flow: pretrain, then rounds until
    a stop rule holds. Rerun the same command to resume a killed campaign."""
    from sapis.campaign import start_folder

    overrides: dict = {}
    if max_rounds is not None:
        overrides["stop"] = {"max_rounds": max_rounds}
    if policy is not None:
        overrides["selection"] = {"policy": policy}
    try:
        _, folder = start_folder(config, overrides)  # every check before Prefect starts
    except InputError as err:
        raise _fail(err) from None
    _prefect_environment()
    from sapis.flows.campaign import campaign as campaign_flow
    from sapis.flows.parameters import CampaignParameters

    params = {"config": str(config.resolve())}
    if max_rounds is not None:
        params["max_rounds"] = max_rounds
    if policy is not None:
        params["policy"] = policy
    result = campaign_flow(CampaignParameters(**params))
    _print_rounds(folder)
    console.print(
        f"stopped: {result['stop_reason']}\n"
        f"final test errors: forces {1000 * result['test_force_mae']:.1f} meV/Å, energies "
        f"{1000 * result['test_energy_mae']:.1f} meV ({result['labels']} labels)\n"
        f"report: {result['report']}\n{_ui_hint()}",
        highlight=False,
    )


@app.command("round")
def refinement_round(
    folder: Annotated[Path, typer.Argument(help="Campaign folder.")],
    labels: Annotated[int | None, typer.Option(help="DFT labels this round.")] = None,
    temperature: Annotated[
        list[float] | None, typer.Option(help="MD temperature in K (repeat for several).")
    ] = None,
) -> None:
    """Run one more refinement round of a campaign now, e.g. `--labels 50 --temperature 600`."""
    from sapis.campaign import CampaignFolder

    try:
        cf = CampaignFolder(folder)
        cf.config()
        if cf.next_round() == 0:
            raise InputError(f"{folder}: not pretrained yet; run `sapis campaign` first")
        if labels is not None and labels < 0:
            raise InputError(f"--labels must be >= 0, got {labels}")
        if temperature and any(t <= 0 for t in temperature):
            raise InputError(f"--temperature must be positive kelvin, got {temperature}")
    except InputError as err:
        raise _fail(err) from None
    _prefect_environment()
    from sapis.flows.campaign import refinement_round as round_flow
    from sapis.flows.parameters import RoundOverrides, RoundParameters

    record = round_flow(
        RoundParameters(
            folder=str(cf.root), round=RoundOverrides(labels=labels, temperatures=temperature)
        )
    )
    _print_rounds(cf)
    console.print(f"round {record.round} done; report: {cf.root / 'report.md'}")


@app.command()
def status(folder: Annotated[Path, typer.Argument(help="Campaign folder.")]) -> None:
    """Print a campaign's round table (labels, errors, accurate/candidate/failed ratios)."""
    from sapis.campaign import CampaignFolder

    cf = CampaignFolder(folder)
    try:
        cf.config()
    except InputError as err:
        raise _fail(err) from None
    _print_rounds(cf)
    report = cf.root / "report.md"
    if report.is_file():
        console.print(f"report: {report}")


@app.command()
def serve(
    config: Annotated[Path, typer.Argument(help="Campaign YAML (or a campaign folder).")],
    cron: Annotated[
        str | None,
        typer.Option(help="Schedule of the refinement round, e.g. '0 2 * * *' (nightly)."),
    ] = None,
) -> None:
    """Serve the `campaign` and `refinement-round` deployments from this process (no work
    pool needed): trigger them from the Prefect UI; with --cron the round runs on that
    schedule."""
    from sapis.campaign import start_folder

    try:
        _, folder = start_folder(config)
    except InputError as err:
        raise _fail(err) from None
    _prefect_environment()
    from prefect import serve as prefect_serve

    from sapis.flows.deployments import served_deployments

    console.print(f"serving {folder.root.name}-campaign and {folder.root.name}-round; {_ui_hint()}")
    prefect_serve(*served_deployments(folder, cron))


@app.command()
def scaling(
    folder: Annotated[Path, typer.Argument(help="Campaign folder.")],
    out: Annotated[
        Path | None, typer.Option(help="Plot file (default FOLDER/plots/scaling.png).")
    ] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for intervals.")] = 200,
) -> None:
    """Fit the scaling laws to every training of a campaign and print them with 95 %
    intervals (validation force MAE against data N, parameters P, compute C, and the joint
    L(N, P)); write the plot; show the latest decision."""
    from sapis.campaign import CampaignFolder
    from sapis.campaign_scaling import scaling_dir
    from sapis.scaling.fits import PowerLawFit
    from sapis.scaling.records import fit_points, load_points, plot_fits

    cf = CampaignFolder(folder)
    try:
        cf.config()
    except InputError as err:
        raise _fail(err) from None
    points = load_points(scaling_dir(cf))
    if not points:
        raise _fail(InputError(f"{folder}: no training recorded for scaling yet"))
    table = Table(title=f"{len(points)} trainings")
    for col in ("source", "size", "N", "parameters", "FLOPs", "wall s", "val F MAE meV/Å"):
        table.add_column(col, justify="right")
    for p in points:
        table.add_row(
            p.source,
            p.size,
            str(p.n),
            f"{p.parameters:,}",
            f"{p.flops:.2e}",
            f"{p.wall_seconds:.0f}",
            f"{1000 * p.val_force_mae:.1f}",
        )
    console.print(table)
    fits = fit_points(points, bootstrap)
    for form, law in fits.items():
        if isinstance(law, PowerLawFit):
            console.print(f"{law.describe()}  (rms log residual {law.rmse_log:.3f})")
        else:
            console.print(f"{form}: not fitted — {law}", highlight=False)
    path = plot_fits(points, fits, out or cf.root / "plots" / "scaling.png")
    console.print(f"plot: {path}")
    records = cf.records()
    if records and records[-1].decision:
        console.print(
            f"latest decision (round {records[-1].round}): {records[-1].decision['reason']}"
        )
