"""The ``sapis`` Typer application, its consoles, and what every verb group shares.

Verbs import what they need inside their function, so ``sapis --help`` and a bad
argument answer without importing torch, PySCF or Prefect.
"""

import logging
import sys
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

from sapis.config import redact, validate
from sapis.errors import InputError, StoreUnavailable, no_space

#: Folders and files the running verb writes to (see :func:`writes_to`).
_WRITES: list[Path] = []


def writes_to(*paths: str | Path | None) -> None:
    """Say where the running verb writes (a campaign folder, a SQLite store), so that a
    failure there for want of disk space ends in a clear error instead of a traceback."""
    _WRITES.extend(Path(p) for p in paths if p and "://" not in str(p))


class _Command(typer.Typer):
    """The ``sapis`` command: SIGTERM unwinds like Ctrl-C (exit status 143), no process
    it started outlives it, even after SIGKILL (:mod:`sapis.processes`), and a full disk
    or a database server that did not come back ends in one clear error (exit status 1)."""

    def __call__(self, *args, **kwargs):
        from sapis.processes import Terminated, guard_children, stop_on_sigterm

        guard_children()
        logging.raiseExceptions = False  # a log file on a full disk must not add tracebacks
        try:
            with stop_on_sigterm():
                return super().__call__(*args, **kwargs)
        except Terminated:
            err_console.print("stopped by SIGTERM", highlight=False)
            raise
        except StoreUnavailable as err:
            err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
            sys.exit(1)
        except Exception as err:
            message = no_space(err, _WRITES or [Path.cwd()])
            if message is None:
                raise
            err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
            sys.exit(1)


app = _Command(
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

Settings = TypeVar("Settings", bound=BaseModel)


def fail(err: Exception) -> typer.Exit:
    """Print ``err`` as a one-line error (its lines joined with "; ", taken literally,
    never as markup, passwords of URLs in it hidden); the exit to raise (status 2)."""
    lines = [" ".join(line.split()) for line in redact(str(err)).splitlines()]
    err_console.print(
        f"[bold red]error:[/] {escape('; '.join(x for x in lines if x))}", highlight=False
    )
    return typer.Exit(code=2)


def check_output(path: Path, what: str = "output file") -> None:
    """Raise :class:`InputError` unless ``path`` can be written as a new or replaced file:
    its folder must exist (a mistyped path never grows a tree of folders), and it must not
    be a folder itself."""
    if path.is_dir():
        raise InputError(f"{path} is a directory; give the {what}'s file name")
    if not path.parent.is_dir():
        raise InputError(f"{path.parent}: no such folder for the {what} (create it first)")


def with_options(settings: Settings, source: str, **options) -> Settings:
    """``settings`` with the options a user gave on the command line (None: not given),
    validated again."""
    given = {k: v for k, v in options.items() if v is not None}
    return validate(type(settings), settings.model_dump() | given, source)


def read_checked(path, check) -> list:
    """Read ``path`` and run ``check(atoms, where)`` on every structure before anything
    is stored."""
    from sapis.io import read_structures

    images = read_structures(path)
    for k, atoms in enumerate(images):
        check(atoms, f"{path} structure {k}")
    return images
