"""Verbs on data: ``sapis label`` and ``sapis db import | stats | export``."""

from collections import Counter
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

from sapis.cli.app import (
    DbOption,
    app,
    check_output,
    console,
    db_app,
    err_console,
    fail,
    read_checked,
    writes_to,
)
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
    each one finishes, so a rerun after a crash labels only what is missing. Rows another
    running `sapis label` or campaign is labelling are left to it (each row is claimed
    by the run that labels it)."""
    import time

    from sapis.campaign.campaign import make_labeller
    from sapis.campaign.config import load_config
    from sapis.claims import lease_seconds
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
        lease_seconds()  # a bad $SAPIS_CLAIM_LEASE is refused before anything is stored
        database = config.database if db is None else db
        store = DatasetStore(database)
        writes_to(database)
        other = store.levels() - {labeller.level}
        if other:  # allowed (a structure may carry several levels), but never silent
            console.print(
                f"{store.safe_url} also holds labels at {', '.join(sorted(other))}; these are "
                f"stored beside them at {labeller.level}"
            )
        report = store.add(images, split=split, fractions=config.split, level=labeller.level)
        if retry_failed:
            reset = store.reset_failed(labeller.level)
            console.print(f"{reset} failed rows set back to pending")
    except InputError as err:
        raise fail(err) from None
    pending = len(store.pending(labeller.level))
    now = time.time()
    others = [c for c in store.claims(labeller.level) if not c.lapsed(now)]
    console.print(
        f"{len(images)} structures read: {len(report.added)} new, "
        f"{report.duplicates} already stored; {pending} to label at "
        f"{labeller.level} on '{config.executor.profile}'"
    )
    if others:
        runs = ", ".join(sorted({c.owner for c in others}))
        console.print(f"{len(others)} rows are being labelled by another run ({runs}): skipped")
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
                store, labeller, config.executor, on_result=advance, wait_for_others=False
            )
    except InputError as err:  # a stored pending row that cannot be labelled
        raise fail(err) from None
    table = Table(title=f"label run {summary.run}", show_header=False)
    for name, value in [
        ("labelled", summary.labelled),
        ("failed", summary.failed),
        ("skipped (already stored)", report.duplicates),
        ("skipped (another run labels them)", summary.busy),
        ("labelled by another run meanwhile", summary.elsewhere),
        ("taken over from a stopped run", summary.taken_over),
        ("dropped (another run took them over)", summary.lost),
        ("left pending (errors)", len(summary.errors)),
        ("wall time", f"{summary.seconds:.1f} s"),
        ("DFT time", f"{summary.label_seconds:.1f} s"),
    ]:
        if value != 0 or "run" not in name:  # lines on other runs only when they count
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
    level: Annotated[
        str | None,
        typer.Option(
            help="Only rows at this level of theory (needed to read label ranges "
            "when the store holds several levels)."
        ),
    ] = None,
) -> None:
    """Counts by status, split, round, level and source; failure reasons; label ranges.

    A store with labels at several levels shows a line per level; its energy ranges are
    shown only for one level (``--level``), since levels differ in absolute energy."""
    from sapis.store import DatasetStore

    try:
        if plot is not None:
            check_output(plot, "plot")
        store = DatasetStore(db, create=False)
        if level is not None:
            store.pick_level(level)
        rows = store.summary_rows()  # read once, for the table and the plot
    except InputError as err:
        raise fail(err) from None
    levels = sorted({str(r["level"]) for r in rows if r["status"] == "labelled"})
    if level is not None:
        rows = [r for r in rows if r["level"] == level]
    stats = store.stats(rows)
    if plot is not None:
        from sapis.cli.dataset_plot import plot_dataset

        plot_dataset(rows, plot, title=store.safe_url)
        console.print(f"plots written to {plot}")
    table = Table(title=f"{store.safe_url}: {stats['rows']} rows")
    table.add_column("by")
    table.add_column("counts")
    for key in ("status", "split", "round", "level", "source"):
        table.add_row(key, ", ".join(f"{k}: {v}" for k, v in sorted(stats[key].items())))
    console.print(table)
    if level is None and len(levels) > 1:
        by_level = Table(title="by level of theory")
        for column in ("level", "labelled", "pending", "running", "failed", "label seconds"):
            by_level.add_column(column)
        for name in levels:
            at = [r for r in rows if r["level"] == name]
            seconds = sum(r["label_seconds"] or 0.0 for r in at)
            counts = Counter(r["status"] for r in at)
            by_level.add_row(
                name,
                *(str(counts[k]) for k in ("labelled", "pending", "running", "failed")),
                f"{seconds:.1f}",
            )
        console.print(by_level)
        console.print(f"{len(levels)} levels: pick one with --level for label ranges")
        stats.pop("energy_per_atom", None)
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
    level: Annotated[
        str | None,
        typer.Option(help="The level of theory to write (needed when the store holds several)."),
    ] = None,
) -> None:
    """Write labelled rows of one level (energy in eV, forces in eV/Å, each frame's
    'level' kept) to an extended XYZ file."""
    from sapis.store import DatasetStore, check_split

    try:
        check_output(out)
        check_split(split)
        store = DatasetStore(db, create=False)
        level = store.pick_level(level)
        n = store.export(out, split=split, level=level)
    except InputError as err:
        raise fail(err) from None
    console.print(f"{n} labelled structures at {level} written to {out}")
