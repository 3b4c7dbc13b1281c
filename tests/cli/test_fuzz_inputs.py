"""Bad input, fuzzed: several hundred malformed inputs through the CLI, each refused with
exit code 2 and one ``error:`` line naming the problem, no traceback, and the store
byte-identical to before.

The inputs are generated deterministically (seeded) in four categories:

- ``structures``: empty, binary, gzipped and truncated files, coordinates in the wrong
  unit (×1000, pm, nm), NaN and inf, duplicated atoms, unknown elements, malformed rMD17
  npz files, labels that are not finite, degenerate cells; through ``label``,
  ``db import``, ``predict`` and ``campaign`` (as ``system.structures``); elements a
  basis set or GFN-xTB does not cover and a 5000-atom molecule through ``label`` and
  ``campaign``;
- ``config``: for every field of every section of the campaign file (walked from the
  pydantic models), a wrong type, a list or mapping instead of a scalar, NaN and inf,
  values just past each declared bound and far past it, an empty string, a nonsense
  name; through ``label``, ``campaign``, ``train`` and ``train-generator``;
- ``database``: missing, JSON, text, directory, empty, binary and truncated stores,
  other URL schemes, unwritable places; through every verb that opens a store;
- ``options``: command-line values out of range.

The verbs run in-process (typer's CliRunner), with tripwires on labelling, training,
model loading and the Prefect server: reaching one fails the case, so every refusal
is proven to come before any expensive work. A few cases run through a real ``sapis``
process to prove the exit code.
"""

import gzip
import hashlib
import io
import itertools
import subprocess
import sys
import types
import typing
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml
from annotated_types import Ge, Gt, Le, Lt
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from pydantic import BaseModel
from typer.testing import CliRunner

from sapis.campaign.config import CampaignConfig, parse_config
from sapis.cli import app
from sapis.store import DatasetStore

SEED = 15
runner = CliRunner()
LEVEL = "PBE/sto-3g"
MOLECULES = ("H2O", "NH3", "CH4", "CH3CH2OH", "C6H6")


@dataclass(frozen=True)
class World:
    """What every case reads: a store with labelled and pending rows, a good water file,
    a folder for the case's own files."""

    store: Path
    water: Path
    here: Path


@dataclass(frozen=True)
class Case:
    """One malformed input: ``build(world)`` writes it and returns the CLI arguments;
    the error line must contain every string in ``expect``."""

    id: str
    category: str
    build: Callable[[World], list]
    expect: tuple[str, ...]
    usage: bool = False  # a command-line parse error (click's own usage message)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def base_config(world: World, **changes) -> dict:
    """A valid campaign file (checked by test_the_base_inputs_are_valid)."""
    config = {
        "system": {"structures": str(world.water), "charge": 0, "multiplicity": 1},
        "dft": {"xc": "PBE", "basis": "sto-3g", "density_fit": False},
        "executor": {"profile": "threads", "workers": 1},
        "database": str(world.store),
        "folder": str(world.here / "campaign"),
        "training": {"size": "xs", "members": 2, "max_epochs": 2},
        "pretrain": {"displaced": 2},
    }
    for key, value in changes.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    return config


def write_yaml(world: World, config: dict, name: str = "case.yaml") -> Path:
    path = world.here / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --- structure files ------------------------------------------------------------------------


def xyz_text(images: list[Atoms]) -> str:
    text = io.StringIO()
    ase.io.write(text, images, format="xyz")
    return text.getvalue()


def labelled(atoms: Atoms, energy=-2000.0, forces=None) -> Atoms:
    atoms = atoms.copy()
    f = 0.01 * atoms.positions if forces is None else forces
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=f)
    return atoms


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def rmd17(frames: int = 3, **changes) -> bytes:
    """An rMD17-style npz of jiggled waters (kcal/mol), with ``changes`` to its arrays."""
    rng = np.random.default_rng(SEED)
    water = molecule("H2O")
    arrays = {
        "nuclear_charges": water.numbers,
        "coords": water.positions + rng.normal(0, 0.02, (frames, 3, 3)),
        "energies": -47000.0 + rng.normal(0, 1, frames),
        "forces": rng.normal(0, 5, (frames, 3, 3)),
    }
    arrays.update(changes)
    return npz_bytes(**{k: v for k, v in arrays.items() if v is not None})


def scaled(name: str, factor: float) -> Atoms:
    atoms = molecule(name)
    atoms.positions *= factor
    return atoms


def structure_files() -> list[tuple[str, str, Callable[[], bytes], tuple[str, ...]]]:
    """(name, suffix, content, expected words) of every malformed structure file that
    every reader must refuse: the generic kinds."""
    rng = np.random.default_rng(SEED)
    files: list = []

    def add(name, suffix, content, *expect):
        files.append((name, suffix, content, expect))

    for suffix in (".xyz", ".extxyz", ".npz", ".pdb", ".cif", ".traj"):
        add("empty", suffix, lambda: b"", "")
    add("blank", ".xyz", lambda: b"\n  \n\n", "")
    for suffix in (".xyz", ".extxyz", ".npz", ".pdb", ".cif", ".traj", ".json", ".xyz.gz"):
        for k in range(3):
            noise = rng.integers(0, 256, int(rng.integers(20, 3000)), dtype=np.uint8).tobytes()
            add(f"binary-{k}", suffix, lambda noise=noise: noise, "")
    good = xyz_text([molecule("H2O")] * 3)
    add("gzip-named-xyz", ".xyz", lambda: gzip.compress(good.encode()), "")
    lines = good.splitlines(keepends=True)
    for keep in (11, 12, 13, 14):  # the last frame keeps its count line and 0-2 atoms
        add(f"truncated-{keep}", ".xyz", lambda keep=keep: "".join(lines[:keep]).encode(), "")
    add("count-word", ".xyz", lambda: good.replace("3\n", "three\n", 1).encode(), "")
    add("count-negative", ".xyz", lambda: good.replace("3\n", "-3\n", 1).encode(), "")
    add("count-zero", ".xyz", lambda: b"0\n\n", "")
    npz = rmd17()
    for k, cut in enumerate(sorted(rng.integers(30, len(npz) - 1, 4))):
        add(f"truncated-npz-{k}", ".npz", lambda cut=cut: npz[:cut], "cannot read npz")
    for name in MOLECULES:
        add(
            f"{name}-x1000",
            ".xyz",
            lambda n=name: xyz_text([scaled(n, 1000)]).encode(),
            "falls apart",
            "coordinates in Å?",
        )
        add(f"{name}-pm", ".xyz", lambda n=name: xyz_text([scaled(n, 100)]).encode(), "falls apart")
        add(
            f"{name}-nm",
            ".xyz",
            lambda n=name: xyz_text([scaled(n, 0.1)]).encode(),
            "closer than 0.5 Å",
        )
        add(
            f"{name}-bohr-x1000",
            ".xyz",
            lambda n=name: xyz_text([scaled(n, 1889.7)]).encode(),
            "falls apart",
        )
        k = int(rng.integers(len(molecule(name))))
        add(
            f"{name}-duplicated-atom-{k}",
            ".xyz",
            lambda n=name, k=k: xyz_text([molecule(n) + molecule(n)[[k]]]).encode(),
            "Å apart, closer than 0.5 Å",
        )
        add(
            f"{name}-x1000-npz",
            ".npz",
            lambda n=name: npz_bytes(
                nuclear_charges=molecule(n).numbers, coords=scaled(n, 1000).positions[None]
            ),
            "falls apart",
        )
    add("H2-1000A", ".xyz", lambda: b"2\n\nH 0 0 0\nH 0 0 1000\n", "falls apart", "1000.0 Å")
    dimer = molecule("H2O") + scaled("H2O", 1.0)
    dimer.positions[3:] += [0, 0, 50.0]
    add("water-dimer-50A", ".xyz", lambda: xyz_text([dimer]).encode(), "falls apart")
    for word in ("nan", "inf", "-inf", "NaN"):
        row, col = int(rng.integers(3)), int(rng.integers(3))
        values = [["0.0", "0.0", "0.119"], ["0.0", "0.763", "-0.477"], ["0.0", "-0.763", "-0.477"]]
        values[row][col] = word
        body = "".join(f"{s} {' '.join(v)}\n" for s, v in zip("OHH", values))
        add(
            f"coordinate-{word}",
            ".xyz",
            lambda body=body: f"3\n\n{body}".encode(),
            f"on atom {row}",
        )
    for word in ("nan", "inf"):
        coords = rmd17_coords()
        coords[1, 2, 0] = float(word)
        add(
            f"npz-coordinate-{word}",
            ".npz",
            lambda c=coords: rmd17(coords=c),
            "NaN or infinite coordinates",
        )
    for symbol in ("Xx", "Q", "Hh", "12"):
        add(
            f"element-{symbol}",
            ".xyz",
            lambda s=symbol: f"3\n\nO 0 0 0.119\n{s} 0 0.763 -0.477\nH 0 -0.763 -0.477\n".encode(),
            "",
        )
    for z in (0, 119, -1, 1000):
        add(f"npz-charge-{z}", ".npz", lambda z=z: rmd17(nuclear_charges=np.array([8, z, 1])), "")
    add("npz-missing-keys", ".npz", lambda: npz_bytes(a=np.zeros(3)), "not an rMD17 npz")
    add("npz-nothing", ".npz", lambda: npz_bytes(), "not an rMD17 npz")
    add("npz-coords-2d", ".npz", lambda: rmd17(coords=np.zeros((3, 3))), "coords have shape")
    add("npz-coords-natoms", ".npz", lambda: rmd17(coords=np.ones((3, 4, 3))), "coords have")
    add("npz-fewer-energies", ".npz", lambda: rmd17(energies=np.zeros(2)), "3 frames but 2")
    add("npz-forces-shape", ".npz", lambda: rmd17(forces=np.zeros((3, 2, 3))), "forces have")
    add(
        "npz-no-frames",
        ".npz",
        lambda: rmd17(coords=np.zeros((0, 3, 3)), energies=np.zeros(0), forces=np.zeros((0, 3, 3))),
        "no structures",
    )
    add(
        "npz-objects",
        ".npz",
        lambda: npz_bytes(nuclear_charges=np.array([object()] * 3), coords=np.zeros((1, 3, 3))),
        "cannot read npz",
    )
    add(
        "npz-energy-nan",
        ".npz",
        lambda: rmd17(energies=np.array([1.0, np.nan, 2.0])),
        "frame 1",
        "energy",
    )
    add(
        "npz-forces-inf",
        ".npz",
        lambda: rmd17(forces=np.where(np.eye(3)[None] > 0, np.inf, 0.0) * np.ones((3, 3, 3))),
        "frame 0",
        "forces",
    )
    add("zip-not-npz", ".npz", lambda: zipped({"readme.txt": b"hello"}), "")
    add(
        "extxyz-energy-nan",
        ".extxyz",
        lambda: extxyz([labelled(molecule("H2O"), np.nan)]),
        "energy",
    )
    add(
        "extxyz-forces-inf",
        ".extxyz",
        lambda: extxyz([labelled(molecule("H2O"), -1.0, np.full((3, 3), np.inf))]),
        "forces",
    )
    text = extxyz([labelled(molecule("H2O"))] * 2).decode().splitlines(keepends=True)
    add("extxyz-truncated", ".extxyz", lambda: "".join(text[:-1]).encode(), "")
    add(
        "extxyz-no-cell",
        ".extxyz",
        lambda: (
            b'3\nLattice="0 0 0 0 0 0 0 0 0" pbc="T T T"\nO 0 0 0.119\nH 0 0.763 -0.477\n'
            b"H 0 -0.763 -0.477\n"
        ),
        "",
    )
    return files


def rmd17_coords() -> np.ndarray:
    rng = np.random.default_rng(SEED)
    return molecule("H2O").positions + rng.normal(0, 0.02, (3, 3, 3))


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, content in members.items():
            z.writestr(name, content)
    return buffer.getvalue()


def extxyz(images: list[Atoms]) -> bytes:
    text = io.StringIO()
    ase.io.write(text, images, format="extxyz")
    return text.getvalue().encode()


def lattice(n_side: int = 17) -> Atoms:
    """A cube of n_side³ carbon atoms 1.5 Å apart: one piece, nothing too close."""
    grid = np.stack(np.meshgrid(*[np.arange(float(n_side))] * 3), axis=-1).reshape(-1, 3)
    return Atoms(f"C{len(grid)}", positions=1.5 * grid)


def structure_cases() -> list[Case]:
    cases = []
    for name, suffix, content, expect in structure_files():

        def write(world: World, name=name, suffix=suffix, content=content) -> Path:
            path = world.here / f"{name}{suffix}"
            path.write_bytes(content())
            return path

        words = tuple(w for w in expect if w)
        verbs = {
            "label": lambda w, f=write: ["label", f(w), "-c", write_yaml(w, base_config(w))],
            "import": lambda w, f=write: ["db", "import", f(w), "--db", w.store, "--level", LEVEL],
            "predict": lambda w, f=write: ["predict", w.here / "model", f(w), w.here / "out.xyz"],
            "campaign": lambda w, f=write: [
                "campaign",
                write_yaml(w, base_config(w, system={"structures": str(f(w))})),
            ],
        }
        for verb, build in verbs.items():
            cases.append(
                Case(
                    f"structures:{verb}:{name}{suffix}",
                    "structures",
                    build,
                    (f"{name}{suffix}", *words),
                )
            )
    specific = [  # refused for a level of theory, not for every reader
        ("U-sto-3g", "U 0 0 0\nO 0 0 1.8\nO 0 0 -1.8\n", {}, "basis 'sto-3g' has no functions"),
        ("Og-xtb", "Og 0 0 0\nH 0 0 1.8\nH 0 0 -1.8\n", {"program": "xtb"}, "no parameters"),
        ("U-xtb", "U 0 0 0\nO 0 0 1.8\nO 0 0 -1.8\n", {"program": "xtb"}, "no parameters for U"),
        ("Fr-xtb", "Fr 0 0 0\nH 0 0 2.5\nH 0 0 -2.5\n", {"program": "xtb"}, "elements up to Rn"),
    ]
    for name, body, dft, expect in specific:

        def write(world: World, name=name, body=body) -> Path:
            path = world.here / f"{name}.xyz"
            path.write_text(f"3\n\n{body}")
            return path

        for verb in ("label", "campaign"):
            cases.append(
                Case(
                    f"structures:{verb}:{name}",
                    "structures",
                    lambda w, f=write, v=verb, d=dft: level_args(w, v, f(w), dft=d),
                    (f"{name}.xyz", expect),
                )
            )

    def huge(world: World) -> Path:
        path = world.here / "huge.xyz"
        ase.io.write(path, lattice())
        return path

    for verb in ("label", "campaign"):
        cases.append(
            Case(
                f"structures:{verb}:huge-5000-atoms-def2-svp",
                "structures",
                lambda w, v=verb: level_args(w, v, huge(w), dft={"basis": "def2-svp"}),
                ("huge.xyz", "basis functions", "max_basis_functions"),
            )
        )
    return cases


def level_args(world: World, verb: str, path: Path, **changes) -> list:
    config = base_config(world, **changes)
    if verb == "label":
        return ["label", path, "-c", write_yaml(world, config)]
    config["system"]["structures"] = str(path)
    return ["campaign", write_yaml(world, config)]


# --- configuration, walked from the pydantic models -----------------------------------------

#: Numeric fields that may hold any value of their type (everything else needs bounds).
UNBOUNDED = {"system.charge", "training.isolated_atom_energies"}
#: Text fields that name something from a fixed or known set (a free text, a shell line
#: or a folder name is no nonsense).
NAMES = {"xc", "basis", "auxbasis", "size", "walltime", "name", "queue", "account"}


def _core(annotation) -> tuple[object, bool]:
    """(the annotation without None, whether None is allowed)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else annotation), True
    return annotation, False


def _bounds(metadata) -> tuple[list, list]:
    lower = [m for m in metadata if isinstance(m, Ge | Gt)]
    upper = [m for m in metadata if isinstance(m, Le | Lt)]
    return lower, upper


def _numbers(kind: type, metadata) -> list[tuple[str, object]]:
    """Values of a number field past its bounds (just past, far past), NaN and inf."""
    lower, upper = _bounds(metadata)
    values: list[tuple[str, object]] = []
    for b in lower:
        edge = b.gt if isinstance(b, Gt) else b.ge - 1
        values += [("below", edge), ("far-below", -(10**30) if kind is int else -1e300)]
    for b in upper:
        edge = b.lt if isinstance(b, Lt) else b.le + 1
        values += [("above", edge), ("far-above", 10**30 if kind is int else 1e300)]
    if kind is float:
        values += [("nan", float("nan")), ("inf", float("inf")), ("-inf", float("-inf"))]
    else:
        values += [("nan", float("nan")), ("fraction", 1.5)]
    return values


def bad_values(model: type[BaseModel], name: str, path: str) -> list[tuple[str, object]]:
    """Values field ``name`` of ``model`` must refuse (no nested models: see walk)."""
    info = model.model_fields[name]
    kind, _ = _core(info.annotation)
    origin = typing.get_origin(kind)
    wrong = [("text", "not-a-value"), ("list", [1, 2]), ("mapping", {"a": 1})]
    if kind in (int, float):
        return wrong + _numbers(kind, info.metadata)
    if kind is bool:
        return [("text", "maybe"), ("number", 2), ("list", [True])]
    if origin is typing.Literal:
        return [("unknown", "no-such-choice"), ("number", 7), ("list", list(typing.get_args(kind)))]
    if kind is str or kind is Path:
        values: list = [("number", 7), ("list", ["a", "b"]), ("mapping", {"a": 1})]
        if info.default != "":
            values.append(("empty", ""))
        if name in NAMES:
            values.append(("nonsense", "no such thing!"))
        return values
    if origin is list:
        (item,) = typing.get_args(kind)
        values = [("scalar", 5), ("text", "300 600"), ("mapping", {"a": 1})]
        if any(getattr(m, "min_length", 0) for m in info.metadata):
            values.append(("empty-list", []))
        if item is float:
            values += [
                ("item-text", ["hot"]),
                ("item-nan", [float("nan")]),
                ("item-inf", [float("inf")]),
            ]
        return values
    if origin is dict:
        return [
            ("text", "H: 1"),
            ("list", [1.0]),
            ("value-text", {"H": "low"}),
            ("value-nan", {"H": float("nan")}),
            ("value-inf", {"H": float("inf")}),
        ]
    raise AssertionError(f"{path}: no bad values for {kind}")


def _is_model(kind) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)


def walk(model: type[BaseModel], path: tuple = ()) -> list[tuple[tuple, str, object]]:
    """(field path, what, bad value) for every field of ``model`` and its sections."""
    out = [((*path, "no_such_field"), "unknown-field", 1)] if path else []
    for name, info in model.model_fields.items():
        kind, _ = _core(info.annotation)
        here = (*path, name)
        if _is_model(kind):
            out += [(here, "text", "abc"), (here, "number", 7), (here, "list", [1])]
            out += walk(kind, here)
            continue
        item = typing.get_args(kind)[0] if typing.get_origin(kind) is list else None
        if _is_model(item):  # the SCF ladder: a list of rungs
            out += [(here, "scalar", 5), (here, "empty-list", []), (here, "text", "default")]
            out += walk(item, (*here, 0))
            continue
        dotted = ".".join(map(str, here))
        out += [(here, what, value) for what, value in bad_values(model, name, dotted)]
    return out


def numeric_fields(model: type[BaseModel], path: tuple = ()) -> list[tuple[str, list]]:
    """(dotted path, metadata) of every int or float field (dict values too)."""
    out = []
    for name, info in model.model_fields.items():
        kind, _ = _core(info.annotation)
        here = (*path, name)
        if _is_model(kind):
            out += numeric_fields(kind, here)
        elif kind in (int, float) or typing.get_origin(kind) is dict:
            out.append((".".join(map(str, here)), info.metadata))
    return out


def place(config: dict, path: tuple, value) -> dict:
    """``config`` with ``value`` at ``path`` (an int step: the first rung of a list)."""
    node = config
    for step, following in itertools.pairwise(path):
        if isinstance(step, int):
            continue
        if isinstance(following, int):
            node[step] = [{"name": "rung0"}]
            node = node[step][0]
            continue
        child = node.get(step)
        if not isinstance(child, dict):
            child = node[step] = {}
        node = child
    node[path[-1]] = value
    return config


CONFIG_VERBS = ("label", "campaign", "train", "train-generator")


def config_cases() -> list[Case]:
    cases = []
    for k, (path, what, value) in enumerate(walk(CampaignConfig)):
        verb = CONFIG_VERBS[k % len(CONFIG_VERBS)]
        dotted = ".".join(map(str, path))

        def build(world: World, path=path, value=value, verb=verb) -> list:
            config = place(base_config(world), path, value)
            file = write_yaml(world, config)
            return {
                "label": ["label", world.water, "-c", file],
                "campaign": ["campaign", file],
                "train": ["train", "--db", world.store, "--out", world.here / "ens", "-c", file],
                "train-generator": [
                    "train-generator",
                    "--db",
                    world.store,
                    "--out",
                    world.here / "gen",
                    "-c",
                    file,
                ],
            }[verb]

        expect = "unknown field" if what == "unknown-field" else dotted
        cases.append(Case(f"config:{verb}:{dotted}={what}", "config", build, (expect,)))
    return cases


# --- databases --------------------------------------------------------------------------------


def database_cases() -> list[Case]:
    rng = np.random.default_rng(SEED + 1)
    noise = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()

    def make(kind: str, world: World) -> str:
        here = world.here
        if kind == "missing":
            return str(here / "typo.db")
        if kind == "json":
            return str(here / "y.json")
        if kind == "text-suffix":
            return str(here / "x.txt")
        if kind == "no-suffix":
            return str(here / "data")
        if kind == "directory":
            (here / "dir.db").mkdir(exist_ok=True)
            return str(here / "dir.db")
        if kind == "text-file":
            (here / "notes.db").write_text("rows: none\n")
            return str(here / "notes.db")
        if kind == "binary":
            (here / "noise.db").write_bytes(noise)
            return str(here / "noise.db")
        if kind == "truncated":
            data = world.store.read_bytes()
            (here / "half.db").write_bytes(data[: len(data) // 2])
            return str(here / "half.db")
        if kind == "header-only":
            data = world.store.read_bytes()
            (here / "head.db").write_bytes(data[:100])
            return str(here / "head.db")
        if kind == "proc":
            return "/proc/sapis-nowhere/data.db"
        if kind == "mysql":
            return "mysql://user@localhost/sapis"
        if kind == "empty-string":
            return ""
        raise AssertionError(kind)

    expect = {
        "missing": "no such database",
        "json": "neither a SQLite file",
        "text-suffix": "neither a SQLite file",
        "no-suffix": "neither a SQLite file",
        "directory": "is a directory",
        "text-file": "not a SQLite database",
        "binary": "not a SQLite database",
        "truncated": "half.db",
        "header-only": "head.db",
        "proc": "/proc/sapis-nowhere",
        "mysql": "only postgresql:// URLs",
        "empty-string": "no database given",
    }
    verbs: dict[str, Callable[[World, str], list]] = {
        "stats": lambda w, db: ["db", "stats", "--db", db],
        "export": lambda w, db: ["db", "export", "--db", db, w.here / "out.xyz"],
        "train": lambda w, db: ["train", "--db", db, "--out", w.here / "ens"],
        "train-generator": lambda w, db: ["train-generator", "--db", db, "--out", w.here / "g"],
        "import": lambda w, db: ["db", "import", w.water, "--db", db],
        "label": lambda w, db: ["label", w.water, "-c", write_yaml(w, base_config(w)), "--db", db],
    }
    writers = {"import", "label"}
    cases = []
    for kind, words in expect.items():
        for verb, args in verbs.items():
            if kind == "missing" and verb in writers:
                continue  # writers create a new store: that is no error
            cases.append(
                Case(
                    f"database:{verb}:{kind}",
                    "database",
                    lambda w, k=kind, a=args: a(w, make(k, w)),
                    (words,),
                )
            )
    return cases


# --- command-line options ---------------------------------------------------------------------


def option_cases() -> list[Case]:
    def train(*extra):
        return lambda w: ["train", "--db", w.store, "--out", w.here / "ens", *extra]

    def generator(*extra):
        return lambda w: ["train-generator", "--db", w.store, "--out", w.here / "g", *extra]

    def predict(*extra, out="out.xyz"):
        return lambda w: ["predict", w.here / "model", w.water, w.here / out, *extra]

    specs = [
        ("predict-batch-0", predict("--batch-size", "0"), "--batch-size must be at least 1"),
        ("predict-batch-negative", predict("--batch-size", "-5"), "--batch-size"),
        ("predict-out-missing-folder", predict(out="no/such/out.xyz"), "no such folder"),
        ("predict-out-is-folder", predict(out="."), "is a directory"),
        ("train-members-0", train("--members", "0"), "training: invalid", "members"),
        ("train-epochs-0", train("--max-epochs", "0"), "max_epochs"),
        ("train-minutes-negative", train("--max-minutes", "-1"), "max_minutes"),
        ("train-minutes-nan", train("--max-minutes", "nan"), "max_minutes"),
        ("train-minutes-inf", train("--max-minutes", "inf"), "max_minutes"),
        ("train-size", train("--size", "xxl"), "unknown model size"),
        ("train-level", train("--level", "HF/nothing"), "no labels at level"),
        ("train-from-missing", train("--from", "/nonexistent/ens"), "/nonexistent/ens"),
        ("generator-steps-0", generator("--train-steps", "0"), "train_steps"),
        ("generator-minutes-nan", generator("--max-minutes", "nan"), "max_minutes"),
        ("generator-prior-negative", generator("--prior-weight", "-1"), "prior_weight"),
        (
            "export-split",
            lambda w: ["db", "export", "--db", w.store, w.here / "o.xyz", "--split", "training"],
            "unknown split",
        ),
        (
            "export-level",
            lambda w: ["db", "export", "--db", w.store, w.here / "o.xyz", "--level", "HF/x"],
            "HF/x",
        ),
        ("stats-level", lambda w: ["db", "stats", "--db", w.store, "--level", "HF/x"], "HF/x"),
        (
            "import-split",
            lambda w: ["db", "import", w.water, "--db", w.store, "--split", "all"],
            "unknown split",
        ),
        (
            "label-split",
            lambda w: ["label", w.water, "-c", write_yaml(w, base_config(w)), "--split", "dev"],
            "unknown split",
        ),
        (
            "campaign-rounds-negative",
            lambda w: ["campaign", write_yaml(w, base_config(w)), "--max-rounds", "-1"],
            "max_rounds",
        ),
        (
            "campaign-policy",
            lambda w: ["campaign", write_yaml(w, base_config(w)), "--policy", "best"],
            "policy",
        ),
        ("campaign-missing", lambda w: ["campaign", w.here / "nope.yaml"], "nope.yaml"),
        ("campaign-folder-without-config", lambda w: ["campaign", w.here], "campaign.yaml"),
        (
            "label-config-missing",
            lambda w: ["label", w.water, "-c", w.here / "no.yaml"],
            "no such config file",
        ),
        (
            "label-input-missing",
            lambda w: ["label", w.here / "no.xyz", "-c", write_yaml(w, base_config(w))],
            "no such file",
        ),
        (
            "label-input-folder",
            lambda w: ["label", w.here, "-c", write_yaml(w, base_config(w))],
            "no such file",
        ),
    ]
    cases = [
        Case(f"options:{name}", "options", build, tuple(expect)) for name, build, *expect in specs
    ]
    usage = [  # click parses these itself: exit 2 and its usage message naming the option
        ("predict-batch-text", predict("--batch-size", "many"), "--batch-size"),
        ("train-members-text", train("--members", "two"), "--members"),
        ("generate-n-0", lambda w: ["generate", w.here, w.here / "s.xyz", "--n", "0"], "--n"),
    ]
    cases += [
        Case(f"options:{name}", "options", build, (word,), usage=True)
        for name, build, word in usage
    ]
    return cases


CASES = structure_cases() + config_cases() + database_cases() + option_cases()


# --- the test ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A store with three labelled waters and a pending ammonia, made once."""
    folder = tmp_path_factory.mktemp("fuzz-store")
    rng = np.random.default_rng(SEED)
    waters = []
    for _ in range(3):
        atoms = molecule("H2O")
        atoms.positions += rng.normal(0, 0.03, atoms.positions.shape)
        waters.append(labelled(atoms, energy=-2070.0 + rng.normal()))
    store = DatasetStore(folder / "data.db")
    store.add(waters, level=LEVEL)
    store.add([molecule("NH3")], level=LEVEL)
    return folder / "data.db"


@pytest.fixture(scope="module")
def shared(template, tmp_path_factory) -> World:
    """The store and water file every case reads (each case checks the store's bytes)."""
    folder = tmp_path_factory.mktemp("fuzz")
    store = folder / "data.db"
    store.write_bytes(template.read_bytes())
    water = folder / "water.xyz"
    ase.io.write(water, molecule("H2O"))
    return World(store=store, water=water, here=folder)


@pytest.fixture(scope="module")
def tripwires():
    """Tripwires on all expensive work: a case that reaches one fails."""

    def tripwire(what):
        def reached(*args, **kwargs):
            raise AssertionError(f"bad input reached {what}")

        return reached

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sapis.dft.batch.label_pending", tripwire("labelling"))
        patch.setattr("sapis.surrogate.ensemble_training.train_ensemble", tripwire("training"))
        patch.setattr("sapis.generator.training.train_generator", tripwire("generator"))
        patch.setattr("sapis.surrogate.ensemble.Ensemble.load", tripwire("model loading"))
        patch.setattr("sapis.cli.campaign._prefect_environment", tripwire("Prefect"))
        yield


@pytest.fixture
def world(shared, tripwires, request) -> World:
    """The shared store, and a fresh folder for the case's own files."""
    here = shared.here / f"case-{CASES.index(request.node.callspec.params['case'])}"
    here.mkdir()
    return World(store=shared.store, water=shared.water, here=here)


def refusal(result, usage: bool = False) -> str:
    """The error of a refused command: exit 2, no traceback, one ``error:`` line."""
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output[-2000:]}"
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if usage:
        return result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output[-2000:]
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_with_the_store_untouched(case: Case, world: World):
    before = digest(world.store)
    args = [str(a) for a in case.build(world)]
    line = refusal(runner.invoke(app, args), case.usage)
    for word in case.expect:
        assert word in line, f"{word!r} not in {line!r}"
    assert digest(world.store) == before


def test_the_fuzz_covers_every_category_and_field():
    counts = {
        c: sum(case.category == c for case in CASES)
        for c in ("structures", "config", "database", "options")
    }
    assert counts["structures"] >= 300 and counts["config"] >= 400, counts
    assert counts["database"] >= 60 and counts["options"] >= 25, counts
    fields = {".".join(map(str, p)) for p, _, _ in walk(CampaignConfig)}
    assert {
        "dft.threads",
        "executor.workers",
        "pretrain.cheap.temperatures",
        "dft.ladder.0.damp",
        "training.r_max",
        "database",
    } <= fields


def test_every_number_in_the_config_is_bounded_below():
    """A new numeric field without a lower bound must be a deliberate choice."""
    loose = [
        path
        for path, metadata in numeric_fields(CampaignConfig)
        if not _bounds(metadata)[0] and path not in UNBOUNDED
    ]
    assert loose == []


def test_the_base_inputs_are_valid(shared):
    """The cases differ from valid input only in what they break."""
    world = shared
    config = parse_config(base_config(world))
    assert config.dft.basis == "sto-3g" and config.database == str(world.store)
    from sapis.structures import check_structure

    check_structure(ase.io.read(world.water))
    check_structure(lattice())


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("binary-config", ["label", "{water}", "-c", "{here}/bin.yaml"], "not valid YAML"),
        ("typo-store", ["db", "stats", "--db", "{here}/typo.db"], "no such database"),
        ("threads", ["label", "{water}", "-c", "{here}/threads.yaml"], "dft.threads"),
        ("units", ["db", "import", "{here}/pm.xyz", "--db", "{store}"], "falls apart"),
    ],
)
def test_a_real_process_exits_with_code_2(shared, tmp_path, name, args, message):
    world = World(shared.store, shared.water, tmp_path)
    (tmp_path / "bin.yaml").write_bytes(np.random.default_rng(SEED).bytes(500))
    write_yaml(world, base_config(world, dft={"threads": 100000}), "threads.yaml")
    ase.io.write(tmp_path / "pm.xyz", scaled("H2O", 100))
    before = digest(world.store)
    sapis = Path(sys.executable).parent / "sapis"
    fill = {"water": world.water, "here": tmp_path, "store": world.store}
    out = subprocess.run(
        [sapis, *(a.format(**fill) for a in args)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr + out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert digest(world.store) == before
