"""Verbs on campaigns (Prefect flows): ``sapis campaign``, ``round``, ``status``,
``serve`` and ``scaling``."""

import contextlib
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sapis.cli.app import app, console, fail, writes_to
from sapis.errors import InputError

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


def _prefect_environment() -> None:
    """Offline defaults for Prefect: no analytics; nequip's model loads not logged."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # nequip logs every model load at INFO, which Prefect's console handler would show
    os.environ.setdefault("_NEQUIP_LOG_LEVEL", "WARNING")


def _prefect_server(
    stack: contextlib.ExitStack, folder: Path, host: str = "127.0.0.1", port: int = 0
):
    """The Prefect server this command uses: the one PREFECT_API_URL names, or one started
    now for as long as ``stack`` lasts (its log in ``folder``); prints the UI address.
    Call before importing Prefect."""
    _prefect_environment()
    from sapis.flows.server import prefect_server

    try:
        server = stack.enter_context(prefect_server(host, port, folder / "prefect-server.log"))
    except InputError as err:
        raise fail(err) from None
    if server.started:
        console.print(
            f"Prefect UI: {server.ui_url} (this command's server: it stops when the command "
            "ends; its runs stay in PREFECT_HOME, where `prefect server start` shows them)",
            highlight=False,
        )
    else:
        console.print(f"Prefect UI: {server.ui_url} (PREFECT_API_URL)", highlight=False)
    return server


def _open_folder(folder: Path):
    """The campaign folder ``folder``; exits with a clear error if it is none."""
    from sapis.campaign.folder import CampaignFolder

    cf = CampaignFolder(folder)
    try:
        cf.check()
    except InputError as err:
        raise fail(err) from None
    return cf


def _print_rounds(folder) -> None:
    """The round table in the terminal (short headers; the stop reason below it)."""
    from sapis.campaign.report import round_table

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
    from pydantic import ValidationError

    from sapis.campaign.campaign import Campaign
    from sapis.config import format_validation_error
    from sapis.flows.parameters import CampaignParameters
    from sapis.tasks.session import campaign_session

    try:
        params = CampaignParameters(
            config=str(config.resolve()), max_rounds=max_rounds, policy=policy
        )
        started = Campaign.start(params.config, params.overrides())  # every check first
    except ValidationError as err:
        raise fail(InputError(format_validation_error(err, "options"))) from None
    except InputError as err:
        raise fail(err) from None
    writes_to(started.folder.root, started.config.database)
    with contextlib.ExitStack() as stack:
        _prefect_server(stack, started.folder.root)
        from sapis.flows.campaign import campaign as campaign_flow

        with campaign_session(started):  # the flow run takes this session over
            result = campaign_flow(params)
    _print_rounds(started.folder)
    console.print(
        f"stopped: {result['stop_reason']}\n"
        f"final test errors: forces {1000 * result['test_force_mae']:.1f} meV/Å, energies "
        f"{1000 * result['test_energy_mae']:.1f} meV ({result['labels']} labels)\n"
        f"report: {result['report']}",
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
    cf = _open_folder(folder)
    try:
        if cf.next_round() == 0:
            raise InputError(f"{folder}: not pretrained yet; run `sapis campaign` first")
        if labels is not None and labels < 0:
            raise InputError(f"--labels must be >= 0, got {labels}")
        if temperature and any(t <= 0 for t in temperature):
            raise InputError(f"--temperature must be positive kelvin, got {temperature}")
        from sapis.campaign.campaign import Campaign

        opened = Campaign.open(cf.root)  # its store reached, its inputs checked: before Prefect
    except InputError as err:
        raise fail(err) from None
    writes_to(cf.root, opened.config.database)
    with contextlib.ExitStack() as stack:
        _prefect_server(stack, cf.root)
        from sapis.flows.campaign import refinement_round as round_flow
        from sapis.flows.parameters import RoundOverrides, RoundParameters
        from sapis.tasks.session import campaign_session

        with campaign_session(opened):  # the flow run takes this session over
            record = round_flow(
                RoundParameters(
                    folder=str(cf.root),
                    round=RoundOverrides(labels=labels, temperatures=temperature),
                )
            )
    _print_rounds(cf)
    console.print(f"round {record.round} done; report: {cf.root / 'report.md'}")


@app.command()
def status(folder: Annotated[Path, typer.Argument(help="Campaign folder.")]) -> None:
    """Print a campaign's round table (labels, errors, accurate/candidate/failed ratios)."""
    cf = _open_folder(folder)
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
    host: Annotated[
        str,
        typer.Option(
            help="Address the Prefect server started here listens on (when PREFECT_API_URL "
            "names none); 0.0.0.0 opens it to the network: put authentication in front."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Its port (0: a free one).", min=0, max=65535)] = 0,
) -> None:
    """Serve the `campaign` and `refinement-round` deployments from this process (no work
    pool needed): trigger them from the Prefect UI; with --cron the round runs on that
    schedule. Without PREFECT_API_URL a Prefect server (API and UI) runs as long as this
    command, on 127.0.0.1 unless --host says otherwise."""
    from sapis.campaign.campaign import Campaign

    try:
        folder = Campaign.start(config).folder
    except InputError as err:
        raise fail(err) from None
    with contextlib.ExitStack() as stack:
        _prefect_server(stack, folder.root, host, port)
        from prefect import serve as prefect_serve

        from sapis.flows.deployments import served_deployments

        console.print(f"serving {folder.root.name}-campaign and {folder.root.name}-round")
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
    from sapis.scaling.fits import PowerLawFit
    from sapis.scaling.records import fit_points, load_points, plot_fits

    cf = _open_folder(folder)
    points = load_points(cf.scaling_dir)
    if not points:
        raise fail(InputError(f"{folder}: no training recorded for scaling yet"))
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
    path = plot_fits(points, fits, out or cf.plots_dir / "scaling.png")
    console.print(f"plot: {path}")
    records = cf.records()
    if records and records[-1].decision:
        console.print(
            f"latest decision (round {records[-1].round}): {records[-1].decision['reason']}"
        )
