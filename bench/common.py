"""What the benchmark scripts share: where the rMD17 sample data and the results live,
appending result rows to ``bench/results/<name>.jsonl`` and reading them back, the
latest row per key, and writing a result's markdown page (often a table of those rows) and
PNG figure.

The scripts run as ``python bench/SCRIPT.py``, so ``bench/`` is on ``sys.path`` and they
``import common`` (as ``md_speed.py`` imports ``ensemble_inference``). It imports nothing
heavy at module level (matplotlib only inside :func:`subplots`), so ``--help`` stays quick.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

HERE = Path(__file__).parent
DATA = HERE.parent / "data" / "rmd17"
TRAIN = DATA / "rmd17_malonaldehyde_train_01.npz"
TEST = DATA / "rmd17_malonaldehyde_test_01.npz"
RESULTS = HERE / "results"


def result_path(filename: str) -> Path:
    """``bench/results/<filename>``, creating the results folder if it is missing."""
    RESULTS.mkdir(exist_ok=True)
    return RESULTS / filename


def timestamp() -> str:
    """The current UTC time, to the second, as the scripts record it (ISO 8601)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def record(name: str, row: dict[str, Any]) -> Path:
    """Append ``row`` as one JSON line to ``results/<name>.jsonl``; that file's path."""
    path = result_path(f"{name}.jsonl")
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return path


def read_records(name: str) -> list[dict[str, Any]]:
    """Every row recorded in ``results/<name>.jsonl``, oldest first (blank lines skipped)."""
    text = (RESULTS / f"{name}.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def latest(rows: Iterable[dict[str, Any]], *fields: str) -> dict[Any, dict[str, Any]]:
    """The last of ``rows`` for each value of ``fields``, keyed by that value (a tuple when
    there are several fields), in the order each key first appears."""
    out: dict[Any, dict[str, Any]] = {}
    for row in rows:
        key = tuple(row[f] for f in fields)
        out[key if len(fields) > 1 else key[0]] = row
    return out


def write_markdown(name: str, lines: Iterable[str]) -> Path:
    """Write ``lines`` (newline-terminated) to ``results/<name>.md``; that file's path."""
    path = result_path(f"{name}.md")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_table(
    name: str, intro: list[str], columns: list[str] | None = None
) -> list[dict[str, Any]]:
    """Rewrite ``results/<name>.md`` as ``intro`` and then a markdown table (``columns``, by
    default the first row's keys) of every row in ``results/<name>.jsonl``; those rows."""
    from sapis.campaign.report import markdown_table

    rows = read_records(name)
    write_markdown(name, [*intro, *markdown_table(rows, columns)])
    return rows


def subplots(**kwargs: Any) -> tuple[Figure, Axes]:
    """A figure with one set of axes (``plt.subplots(**kwargs)``) on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(**kwargs)


def save_figure(fig: Figure, name: str) -> Path:
    """Save ``fig`` as ``results/<name>.png`` at 110 dpi and close it; the file's path.

    The figure gets a tight layout first unless it was made with a layout engine of its
    own (``layout="constrained"``), which then lays it out instead.
    """
    import matplotlib.pyplot as plt

    if fig.get_layout_engine() is None:
        fig.tight_layout()
    path = result_path(f"{name}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
