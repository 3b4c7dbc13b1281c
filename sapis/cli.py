"""The ``sapis`` command line."""

from pathlib import Path
from typing import Annotated

import typer
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

from sapis.config import CampaignConfig, is_url, load_config
from sapis.errors import InputError

app = typer.Typer(
    help="SAPIS-MD: machine-learned potentials from as few DFT labels as possible.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Inspect and fill the dataset store.", no_args_is_help=True)
app.add_typer(db_app, name="db")
console = Console(soft_wrap=True)
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
