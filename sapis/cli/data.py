"""Verbs on data: ``sapis label`` and ``sapis db import | stats | export``."""

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from sapis.cli.app import DbOption, app, console, db_app, err_console, fail, read_checked
from sapis.errors import InputError


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
    """Import every structure in INPUT and label every row still pending with PySCF DFT
    (or the config's labeller).

    Structures already stored are skipped (never paid for twice); labels are written as
    each one finishes, so a rerun after a crash labels only what is missing."""
    from sapis.campaign.campaign import make_labeller
    from sapis.campaign.config import load_config
    from sapis.dft.batch import label_pending
    from sapis.store import DatasetStore, check_split

    try:
        check_split(split)
        config = load_config(config_path)
        labeller = make_labeller(config)
        input = input or config.system.structures
        if input is None:
            raise InputError("no structures: give INPUT or system.structures in the config")
        images = read_checked(input, labeller.check)
        database = db or config.database
        store = DatasetStore(database)
        other = store.levels() - {labeller.level}
        if other:
            raise InputError(
                f"{database} holds labels at {', '.join(sorted(other))}; this config "
                f"labels at {labeller.level}: use another database"
            )
        report = store.add(images, split=split, fractions=config.split)
        if retry_failed:
            console.print(f"{store.reset_failed()} failed rows set back to pending")
    except InputError as err:
        raise fail(err) from None
    pending = store.count(status="pending")
    console.print(
        f"{len(images)} structures read: {len(report.added)} new, "
        f"{report.duplicates} already stored; {pending} to label at "
        f"{labeller.level} on '{config.executor.profile}'"
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

            summary = label_pending(store, labeller, config.executor, on_result=advance)
    except InputError as err:  # a stored pending row that cannot be labelled
        raise fail(err) from None
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
        images = read_checked(file, check_structure)
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
        raise fail(err) from None
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
        raise fail(err) from None
    stats = store.stats(rows)
    if plot is not None:
        from sapis.cli.dataset_plot import plot_dataset

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
        raise fail(err) from None
    console.print(f"{n} labelled structures written to {out}")
