"""Plots, tables and a markdown report of an active-learning campaign from its
:class:`~sapis.campaign.rounds.RoundRecord` list (PNG via matplotlib without a screen),
and the campaign folder's ``report.md`` with its ``plots/``."""

import base64
import math
import shutil
from pathlib import Path

import numpy as np

from sapis.campaign.campaign import Campaign
from sapis.campaign.rounds import RoundRecord
from sapis.config import redact

STAGES = ("cheap", "explore", "select", "label", "train", "evaluate", "compare", "scaling")
CLASS_COLOURS = {"accurate": "tab:green", "candidate": "tab:orange", "failed": "tab:red"}
Row = dict[str, str | int | float]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finite(x: float) -> bool:
    return x is not None and not math.isnan(x)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_rounds(
    rounds: list[RoundRecord],
    folder: str | Path,
    accurate_target: float | None = None,
    window: tuple[float, float] | None = None,
    level: str | None = None,
) -> dict[str, Path]:
    """Write the campaign's per-round plots into ``folder`` (created) and return them.

    ``learning_curve``: test force MAE (meV/Å, log) against labels in the store at the
    campaign's ``level``, with round 0's error without cheap pretraining as a cross when
    it was measured;
    ``ratios``: accurate / candidate / failed fractions of explored frames per round, with
    ``accurate_target`` (fraction) dashed; ``uncertainty``: median and 95th percentile of
    the calibrated max force deviation (eV/Å) of explored frames, with the trust window
    ``window`` (lo, hi in eV/Å) dotted. A plot with no data is not written.
    """
    plt = _pyplot()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}

    curve = [r for r in rounds if _finite(r.test_force_mae) and r.test_force_mae > 0]
    if curve:
        fig, ax = plt.subplots(figsize=(6, 4.2), layout="constrained")
        fixed = (rounds[0].cheap.get("test_frames") or 0) if rounds else 0
        x = [r.labels - fixed for r in curve]  # a fixed test set's labels buy no training
        y = [1000 * r.test_force_mae for r in curve]
        ax.semilogy(x, y, "o-", label="campaign")
        for r, xi, yi in zip(curve, x, y):
            ax.annotate(str(r.round), (xi, yi), textcoords="offset points", xytext=(4, 4))
        without = rounds[0].cheap.get("test_force_mae_without") if rounds else None
        if _finite(without):
            ax.semilogy(
                [rounds[0].labels - fixed],
                [1000 * without],
                "x",
                ms=9,
                label="round 0 without cheap",
            )
            ax.legend()
        xlabel = f"training labels at {level}" if level else "labelled structures"
        if fixed:
            xlabel += f" (besides {fixed} test labels)"
        ax.set(xlabel=xlabel, ylabel="test force MAE (meV/Å)")
        ax.set_title("learning curve (numbers: round)")
        plots["learning_curve"] = _save(fig, folder / "learning_curve.png")

    explored = [r for r in rounds if r.round >= 1 and r.explored > 0]
    if explored:
        fig, ax = plt.subplots(figsize=(6, 4.2), layout="constrained")
        x = np.arange(len(explored))
        bottom = np.zeros(len(explored))
        for cls, colour in CLASS_COLOURS.items():
            frac = np.array([getattr(r, cls) / r.explored for r in explored])
            ax.bar(x, frac, bottom=bottom, color=colour, label=cls, width=0.6)
            bottom += frac
        ax.set_xticks(x, [str(r.round) for r in explored])
        if accurate_target is not None:
            ax.axhline(accurate_target, color="k", ls="--", lw=1, label="accurate target")
        ax.set(xlabel="round", ylabel="fraction of explored frames", ylim=(0, 1.05))
        fig.legend(fontsize=8, loc="outside right upper")
        plots["ratios"] = _save(fig, folder / "ratios.png")

    spread = [r for r in rounds if _finite(r.max_force_dev_median) or _finite(r.max_force_dev_p95)]
    if spread:
        fig, ax = plt.subplots(figsize=(6, 4.2), layout="constrained")
        x = [r.round for r in spread]
        ax.plot(x, [r.max_force_dev_median for r in spread], "o-", label="median")
        ax.plot(x, [r.max_force_dev_p95 for r in spread], "s-", label="95th percentile")
        if window is not None:
            for bound, ls in zip(window, (":", "--")):
                ax.axhline(bound, color="gray", ls=ls, lw=1, label=f"trust {bound:g} eV/Å")
        ax.set(xlabel="round", ylabel="calibrated max force deviation (eV/Å)")
        ax.set_xticks(x)
        fig.legend(fontsize=8, loc="outside right upper")
        plots["uncertainty"] = _save(fig, folder / "uncertainty.png")
    return plots


def plot_parity(
    reference_energies: np.ndarray,
    predicted_energies: np.ndarray,
    reference_forces: np.ndarray,
    predicted_forces: np.ndarray,
    path: str | Path,
    title: str = "",
) -> Path:
    """Energy (per atom, eV) and force-component (eV/Å) parity panels with y = x.

    Energies are already per atom; forces may have any shape and are flattened. Each
    panel's title gives the MAE (meV/atom, meV/Å).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), layout="constrained")
    panels = [
        (reference_energies, predicted_energies, "energy per atom (eV)", "meV/atom"),
        (reference_forces, predicted_forces, "force component (eV/Å)", "meV/Å"),
    ]
    for ax, (ref, pred, label, unit) in zip(axes, panels):
        ref = np.ravel(np.asarray(ref, dtype=float))
        pred = np.ravel(np.asarray(pred, dtype=float))
        if ref.size:
            ax.plot(ref, pred, ".", alpha=0.5, ms=3)
            lo, hi = min(ref.min(), pred.min()), max(ref.max(), pred.max())
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_title(f"MAE {1000 * np.mean(np.abs(pred - ref)):.1f} {unit} ({ref.size})")
        else:
            ax.set_title("no data")
        ax.set(xlabel=f"reference {label}", ylabel=f"predicted {label}")
    if title:
        fig.suptitle(title)
    return _save(fig, Path(path))


def _pct(count: int, total: int) -> str:
    return f"{100 * count / total:.1f}" if total else "-"


def _mev(value: float) -> str | float:
    return round(1000 * value, 1) if _finite(value) else "-"


def _round3(value: float) -> str | float:
    return round(value, 3) if _finite(value) else "-"


def round_table(rounds: list[RoundRecord]) -> list[Row]:
    """One row per round: counts, class percentages of explored frames, median and 95th
    percentile of their calibrated max force deviation (eV/Å), test MAEs in
    meV/Å and meV (1 decimal), DFT and per-stage seconds ("-" where missing or NaN)
    summed over the round's attempts (more than 1: the round was resumed)."""
    rows: list[Row] = []
    sources = sorted({src for r in rounds for src in r.by_source})
    for r in rounds:
        row: Row = {
            "round": r.round,
            "labels": r.labels,
            "new labels": r.new_labels,
            "failed labels": r.failed_labels,
            "explored": r.explored,
            "accurate %": _pct(r.accurate, r.explored),
            "candidate %": _pct(r.candidate, r.explored),
            "failed %": _pct(r.failed, r.explored),
            "selected": r.selected,
            "max dev median (eV/Å)": _round3(r.max_force_dev_median),
            "max dev p95 (eV/Å)": _round3(r.max_force_dev_p95),
            "window (eV/Å)": f"{_round3(r.window_lo)}–{_round3(r.window_hi)}",
            "test force MAE (meV/Å)": _mev(r.test_force_mae),
            "test energy MAE (meV)": _mev(r.test_energy_mae),
            "model size": r.size,
            "parameters": r.parameters,
            "converged": f"{r.converged}/{r.members}" if r.members else "-",
            "DFT s": round(r.dft_seconds, 1),
        }
        for src in sources:
            row[f"{src} valid/in window/selected"] = _source_cell(r.by_source.get(src))
        for stage in STAGES:
            s = r.seconds.get(stage)
            row[f"{stage} s"] = round(s, 1) if s is not None else "-"
        row["attempts"] = r.attempts
        row["stop"] = r.stop_reason or ""
        rows.append(row)
    return rows


def source_counts(counts: dict[str, int]) -> dict[str, int]:
    """A source's proposed / valid / in-window (candidate) / selected counts; valid
    defaults to the frames scored, proposed to valid."""
    scored = sum(counts.get(c, 0) for c in ("accurate", "candidate", "failed"))
    valid = counts.get("valid", scored)
    return {
        "proposed": counts.get("proposed", valid),
        "valid": valid,
        "in window": counts.get("candidate", 0),
        "selected": counts.get("selected", 0),
    }


def _source_cell(counts: dict[str, int] | None) -> str:
    if counts is None:
        return "-"
    c = source_counts(counts)
    return f"{c['valid']}/{c['in window']}/{c['selected']}"


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> list[str]:
    """Lines of a markdown table of ``rows`` (``columns`` default: the first row's keys),
    with any ``|`` in a header or cell escaped."""
    if not rows:
        return []
    cols = columns or list(rows[0])

    def cell(v: object) -> str:
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(row[c]) for c in cols) + " |" for row in rows]
    return lines


def _decision_sentence(decision: dict) -> str:
    """The scaling decision in one sentence."""
    action = decision.get("action")
    if action is None:
        return f"No decision: {decision['reason']}."
    what = {"data": "buy more labels", "model": "grow the model", "stop": "stop"}[action]
    return f"**{what.capitalize()}**: {decision['reason']}."


def _cheap_sentence(first: RoundRecord) -> str:
    """What cheap pretraining gave and cost, from round 0's record ('' without it)."""
    cheap = first.cheap
    if not cheap:
        return ""
    text = (
        f"\n\n**Cheap pretraining** at {cheap['level']}: {cheap['frames']} frames from "
        f"{cheap['trajectories']} MD trajectories in {cheap['core_seconds']:.0f} core-s"
    )
    if cheap.get("test_frames"):
        text += f"; {cheap['test_frames']} frames of separate ones are the fixed test set"
    without = cheap.get("test_force_mae_without")
    if _finite(without) and _finite(first.test_force_mae):
        text += (
            f". Round 0's test force MAE: {1000 * first.test_force_mae:.1f} meV/Å with it, "
            f"{1000 * without:.1f} meV/Å without it (the same "
            f"{first.labels - (cheap.get('test_frames') or 0)} expensive training labels)"
        )
    stopped = cheap.get("stopped_early") or {}
    if stopped:
        text += f"; {len(stopped)} trajectories ended early ({next(iter(stopped.values()))})"
    return text + "."


def levels_table(levels: dict[str, dict]) -> list[str]:
    """Markdown lines: labels and core-seconds per level of theory (from
    :meth:`Campaign.levels_used`)."""
    rows: list[Row] = [
        {
            "level": level,
            "role": "expensive (refined)" if v["expensive"] else "cheap (pretraining)",
            "labels": v["labels"],
            "core-seconds": round(v["core_seconds"], 1),
            "core-seconds per label": round(v["core_seconds"] / v["labels"], 3)
            if v["labels"]
            else "-",
        }
        for level, v in levels.items()
    ]
    return markdown_table(rows)


def markdown_report(
    rounds: list[RoundRecord],
    plots: dict[str, Path],
    title: str,
    extra: str = "",
    embed: bool = False,
) -> str:
    """Markdown summary of a campaign: a paragraph, the round table, the last round's
    classes per exploration source, and the plots, linked as ``<folder>/<file>`` relative
    to the report (the plots' folder sits beside it) or, with ``embed``, inlined as
    base64 PNG data URIs. ``extra`` is appended verbatim."""
    lines = [f"# {title}", ""]
    if rounds:
        last = rounds[-1]
        measured = [r for r in rounds if _finite(r.test_force_mae)]
        summary = (
            f"{len(rounds)} round(s) done (last: round {last.round}), "
            f"{last.labels} labelled structures in the store. "
        )
        if measured:
            m = measured[-1]
            summary += f"Test force MAE {1000 * m.test_force_mae:.1f} meV/Å after round {m.round}."
        else:
            summary += "No test force MAE measured yet."
        if last.stop_reason:
            summary += f" Stopped: {last.stop_reason}."
        summary += _cheap_sentence(rounds[0])
        limited = [r.round for r in rounds if r.members and r.converged < r.members]
        if limited:
            summary += (
                f"\n\n**Compute-limited:** in round(s) {', '.join(map(str, limited))} some "
                "members stopped on their epoch budget or wall-time cap before their "
                "validation error plateaued (column *converged*): more data may not lower "
                "the error until training.max_epochs (or max_minutes) is raised."
            )
        lines += [summary, "", "## Rounds", "", *markdown_table(round_table(rounds)), ""]
        if last.by_source:
            cols = ("accurate", "candidate", "failed")
            rows: list[Row] = [
                {
                    "source": src,
                    **source_counts(counts),
                    **{c: counts.get(c, 0) for c in cols},
                }
                for src, counts in sorted(last.by_source.items())
            ]
            lines += [f"## Sources in round {last.round}", "", *markdown_table(rows), ""]
        if last.decision:
            lines += [f"## Scaling decision after round {last.round}", ""]
            lines += [_decision_sentence(last.decision), ""]
            lines += [f"- {text}" for text in last.decision.get("fits", {}).values()] + [""]
    else:
        lines += ["No rounds finished yet.", ""]
    if plots:
        lines += ["## Plots", ""]
        for name, path in plots.items():
            path = Path(path)
            if embed:
                data = base64.b64encode(path.read_bytes()).decode("ascii")
                target = f"data:image/png;base64,{data}"
            else:
                target = f"{path.parent.name}/{path.name}"
            lines += [f"![{name}]({target})", ""]
    return "\n".join(lines) + extra


def campaign_plots(campaign: Campaign, rounds: list[RoundRecord]) -> dict[str, Path]:
    """Every plot of a campaign in ``FOLDER/plots/``: the per-round plots, the scaling
    fit, and the last round's parity and calibration plots (copied there)."""
    folder, config = campaign.folder, campaign.config
    window = (config.selection.lo, config.selection.hi)
    plots = plot_rounds(
        rounds,
        folder.plots_dir,
        accurate_target=config.stop.accurate_fraction,
        window=window,
        level=campaign.level,
    )
    if (folder.plots_dir / "scaling.png").is_file():
        plots["scaling"] = folder.plots_dir / "scaling.png"
    last = rounds[-1].round
    for name, source in (
        ("parity", folder.round_dir(last) / "parity.png"),
        ("calibration", folder.ensemble_dir(last) / "calibration.png"),
    ):
        if source.is_file():
            plots[name] = folder.plots_dir / f"{name}.png"
            shutil.copy(source, plots[name])
    return plots


def write_report(campaign: Campaign, plots: dict[str, Path] | None = None) -> Path:
    """``FOLDER/report.md`` with its PNG plots (drawn here unless ``plots`` from
    :func:`campaign_plots` are given); returns its path."""
    folder = campaign.folder
    rounds = folder.records()
    if plots is None:
        plots = campaign_plots(campaign, rounds) if rounds else {}
    extra = ""
    if rounds:
        ensemble = folder.ensemble_dir(rounds[-1].round)
        extra = (
            f"\nModels: `{ensemble}` (members as nequip packages `member-k/model.nequip.zip`). "
            f"Dataset: `{redact(campaign.config.database)}`. Level of theory: {campaign.level}.\n"
        )
        levels = campaign.levels_used()
        if len(levels) > 1:
            extra += "\n## Levels of theory\n\n" + "\n".join(levels_table(levels)) + "\n"
    text = markdown_report(rounds, plots, f"Campaign {folder.root.name}", extra=extra)
    path = folder.root / "report.md"
    path.write_text(text)
    return path
