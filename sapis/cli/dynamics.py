"""Verbs on dynamics models: ``sapis train-dynamics`` and ``generate-dynamics``."""

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from sapis.cli.app import app, check_output, console, fail, writes_to
from sapis.errors import InputError

#: Window and priors the command line trains with unless told otherwise: the exact
#: momentum projection costs nothing and makes the momentum error zero; the kinematic and
#: energy priors stay opt-in until the benchmark has measured them over seeds.
FRAMES, MOMENTUM = 20, "project"


@app.command("train-dynamics")
def train_dynamics_command(
    data: Annotated[
        list[Path],
        typer.Argument(
            help="Trajectories: .npz files (sapis' own, e.g. data/dynamics/*.npz) or ASE "
            "trajectory files (extxyz, .traj) of one molecule's MD with velocities and "
            "energies, each file one trajectory (with --timestep).",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option(help="Model folder (trained further if it exists).")],
    val: Annotated[
        list[Path] | None,
        typer.Option(help="Validation trajectories, as DATA (may be given several times)."),
    ] = None,
    timestep: Annotated[
        float | None,
        typer.Option(help="Time between saved frames of ASE trajectory files, fs."),
    ] = None,
    frames: Annotated[int, typer.Option(help="Frames generated after the given one.")] = FRAMES,
    steps: Annotated[int, typer.Option(help="Optimiser steps of the training.")] = 3000,
    hidden: Annotated[int, typer.Option(help="Features of the network.")] = 64,
    layers: Annotated[int, typer.Option(help="Blocks of the network.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Windows per optimiser step.")] = 64,
    momentum: Annotated[
        Literal["none", "project", "penalty"],
        typer.Option(help="Zero total momentum: exact projection, a penalty, or none."),
    ] = MOMENTUM,
    kinematic: Annotated[
        float, typer.Option(help="λ of the kinematic prior (positions follow velocities; 0 off).")
    ] = 0.0,
    energy: Annotated[
        Literal["none", "naive", "reduced"],
        typer.Option(help="Energy conservation prior (naive needs a closed-form potential)."),
    ] = "none",
    energy_weight: Annotated[float, typer.Option(help="λ of the energy prior.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train a diffusion model of the next --frames frames (positions and velocities)
    given one frame, on windows of MD trajectories; all input is checked first."""
    from sapis.config import validate
    from sapis.generator.dynamics.model import META, DynamicsModel
    from sapis.generator.dynamics.settings import DynamicsConfig
    from sapis.generator.dynamics.systems import SYSTEMS
    from sapis.generator.dynamics.training import train_dynamics

    try:
        config = validate(
            DynamicsConfig,
            {
                "frames": frames,
                "train_steps": steps,
                "hidden": hidden,
                "layers": layers,
                "batch_size": batch_size,
                "momentum": momentum,
                "kinematic_weight": kinematic,
                "energy": energy,
                "energy_weight": energy_weight,
                "seed": seed,
            },
            "train-dynamics",
        )
        if out.is_file():
            raise InputError(f"--out {out} is a file; give a folder for the model")
        if not out.parent.is_dir():
            raise InputError(f"{out.parent}: no such folder for --out (create it first)")
        writes_to(out)
        train = read_trajectories(data, timestep, frames + 1)
        if config.energy == "naive" and train.system not in SYSTEMS:
            raise InputError(
                f"--energy naive needs the potential in closed form; {train.system} has none "
                "(use --energy reduced, which learns it from the recorded energies)"
            )
        valid = read_trajectories(val, timestep, frames + 1, like=train) if val else None
        warm = (out / META).is_file()
        if warm:
            old = DynamicsModel.load(out)
            if not old.matches(train, config):
                raise InputError(
                    f"{out} holds a dynamics model of another system, window or size "
                    f"({_describe(old.system, old.numbers)}, frames {old.config.frames}, "
                    f"hidden {old.config.hidden}, layers {old.config.layers}); choose a new "
                    "--out folder"
                )
    except InputError as err:
        raise fail(err) from None
    s, t = train.shape[:2]
    console.print(
        f"{'training further' if warm else 'training'} the dynamics of "
        f"{_describe(train.system, train.numbers)} on {s} trajectories × {t} frames "
        f"({_time(train.dt, train.system)} apart"
        + (f"; validation {valid.shape[0]} × {valid.shape[1]}" if valid else "")
        + f"): windows of {frames} frames after the first, priors "
        f"{', '.join(config.prior_names()) or 'none'}, {steps} steps",
        highlight=False,
    )
    try:
        _, record = train_dynamics(train, out, config, val=valid, progress=True)
    except InputError as err:
        raise fail(err) from None
    table = Table(title=f"{out}: dynamics of {_describe(train.system, train.numbers)}")
    for col in ("windows", "parameters", "steps", "seconds", "warm start"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{record.windows:,}",
        f"{record.parameters:,}",
        str(record.steps),
        f"{record.seconds:.0f}",
        "yes" if record.warm_start else "no",
    )
    console.print(table)
    console.print(f"last 100 steps: {_losses(record.losses)}", highlight=False)
    if record.validation:
        console.print(f"validation: {_losses(record.validation)}", highlight=False)


@app.command("generate-dynamics")
def generate_dynamics_command(
    model: Annotated[Path, typer.Argument(help="Dynamics model folder (from train-dynamics).")],
    start: Annotated[
        Path,
        typer.Argument(
            help="Start frames: an .xyz/.extxyz (any ASE file) of the model's molecule with "
            "velocities (momenta), or a trajectory .npz (its first frames)."
        ),
    ],
    out: Annotated[Path, typer.Argument(help="Output: extended XYZ, or .npz trajectories.")],
    frames: Annotated[
        int, typer.Option(help="Frames to generate after each start (windows are chained).")
    ],
    copies: Annotated[int, typer.Option(help="Trajectories generated from each start.")] = 1,
    temperature: Annotated[
        float | None,
        typer.Option(
            help="Draw start velocities at this temperature, K (no centre-of-mass motion)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Generate dynamics: the next --frames frames after every start frame, chaining the
    model's windows; frame 0 of each trajectory is its start."""
    import time
    from dataclasses import replace

    import numpy as np

    from sapis.generator.dynamics.model import DynamicsModel

    try:
        if frames < 1:
            raise InputError(f"--frames must be at least 1, got {frames}")
        if copies < 1:
            raise InputError(f"--copies must be at least 1, got {copies}")
        if temperature is not None and not (np.isfinite(temperature) and temperature >= 0):
            raise InputError(f"--temperature must be a temperature in K, got {temperature}")
        check_output(out)
        if out.exists() and out.resolve() == start.resolve():
            raise InputError("OUT must differ from START")
        dyn = DynamicsModel.load(model)
        atoms = (dyn.numbers > 0).all() and dyn.meta["dim"] == 3
        if out.suffix != ".npz" and not atoms:
            raise InputError(
                f"a {dyn.system} model generates particles, not atoms: give an .npz OUT"
            )
        x0, v0, couplings = read_start(dyn, start, temperature, seed)
        writes_to(out)
    except InputError as err:
        raise fail(err) from None
    x0, v0, couplings = (np.repeat(a, copies, axis=0) for a in (x0, v0, couplings))
    window = dyn.config.frames
    windows = -(-frames // window)
    console.print(
        f"generating {len(x0)} trajectories ({len(x0) // copies} starts × {copies}) of "
        f"{frames} frames, {_time(frames * dyn.meta['dt'], dyn.system)} each: {windows} "
        f"window{'s' if windows > 1 else ''} of {window} frames",
        highlight=False,
    )
    began = time.perf_counter()
    traj = dyn.rollout(x0, v0, windows, couplings, seed=seed)  # finite: x̂0 is bounded
    seconds = time.perf_counter() - began
    keep = slice(0, frames + 1)
    traj = replace(
        traj,
        positions=traj.positions[:, keep],
        velocities=traj.velocities[:, keep],
        potential=traj.potential[:, keep],
        info={**traj.info, "model": str(model), "copies": copies},
    )
    if out.suffix == ".npz":
        traj.save(out)
    else:
        _write_frames(traj, out, copies, model)
    console.print(_summary(traj, seconds, out), highlight=False)


def read_trajectories(paths: list[Path], timestep: float | None, need: int, like=None):
    """The trajectories in ``paths`` (sapis .npz files, or ASE files of one trajectory
    each) as one set, each of at least ``need`` frames and, given ``like``, of its system."""
    from dataclasses import replace

    import numpy as np
    from ase import units

    from sapis.generator.dynamics.data import Trajectories, from_frames
    from sapis.io import read_structures

    if timestep is not None and not (np.isfinite(timestep) and timestep > 0):
        raise InputError(f"--timestep must be a positive time in fs, got {timestep}")
    sets = [(str(p), Trajectories.load(p)) for p in paths if p.suffix == ".npz"]
    others = [p for p in paths if p.suffix != ".npz"]
    if others:
        if timestep is None:
            raise InputError(
                f"{others[0]}: ASE trajectory files need --timestep (the time between "
                "saved frames, fs)"
            )
        frames = [read_structures(p) for p in others]
        names = [str(p) for p in others]
        sets.append((names[0], from_frames(frames, timestep, names=names)))
    reference = ("the training data", like) if like is not None else sets[0]
    for name, traj in sets:
        problem = _differs(name, traj, *reference)
        if problem:
            raise InputError(problem)
        if timestep is not None and not np.isclose(traj.dt, timestep * units.fs):
            raise InputError(
                f"{name}: frames {_time(traj.dt, traj.system)} apart, not --timestep {timestep} fs"
            )
        if traj.shape[1] < need:
            raise InputError(
                f"{name}: trajectories of {traj.shape[1]} frames; a window of {need - 1} "
                f"frames after the first needs at least {need} (lower --frames)"
            )
    if len(sets) == 1:
        return sets[0][1]
    length = min(t.shape[1] for _, t in sets)
    parts = [t for _, t in sets]
    return replace(
        parts[0],
        positions=np.concatenate([t.positions[:, :length] for t in parts]),
        velocities=np.concatenate([t.velocities[:, :length] for t in parts]),
        couplings=np.concatenate([t.couplings for t in parts]),
        potential=np.concatenate([t.potential[:, :length] for t in parts]),
        info={"files": [name for name, _ in sets]},
    )


def _differs(name: str, traj, ref_name: str, ref) -> str | None:
    """Why ``traj`` (from ``name``) is not of the system of ``ref`` (None: it is)."""
    import numpy as np

    if traj.system != ref.system or traj.numbers.tolist() != ref.numbers.tolist():
        return (
            f"{name} holds {_describe(traj.system, traj.numbers)}, {ref_name} "
            f"{_describe(ref.system, ref.numbers)}: give trajectories of one system"
        )
    if traj.dim != ref.dim or not np.allclose(traj.masses, ref.masses):
        return f"{name}: other dimensions or masses than {ref_name}"
    if not np.isclose(traj.dt, ref.dt):
        return (
            f"{name}: frames {_time(traj.dt, traj.system)} apart, {ref_name}'s "
            f"{_time(ref.dt, ref.system)}"
        )
    return None


def read_start(dyn, path: Path, temperature: float | None, seed: int):
    """Start positions, velocities and couplings ``[S, N, D]``, ``[S, N, N]`` for ``dyn``
    from ``path``: its first frames (.npz trajectories) or its structures (ASE files)."""
    import numpy as np

    from sapis.generator.dynamics.data import Trajectories, bond_matrix
    from sapis.io import read_structures

    if path.suffix == ".npz":
        traj = Trajectories.load(path)
        if (traj.system, traj.numbers.tolist(), traj.dim) != (
            dyn.system,
            dyn.numbers.tolist(),
            dyn.meta["dim"],
        ):
            raise InputError(
                f"{path} holds {_describe(traj.system, traj.numbers)} trajectories; this model "
                f"is of {_describe(dyn.system, dyn.numbers)}"
            )
        if temperature is not None:
            raise InputError("--temperature draws velocities for structures, not .npz starts")
        x0, v0, couplings = traj.positions[:, 0], traj.velocities[:, 0], traj.couplings
    else:
        if not ((dyn.numbers > 0).all() and dyn.meta["dim"] == 3):
            raise InputError(
                f"a {dyn.system} model starts from a trajectory .npz, not from {path.name}"
            )
        images = read_structures(path)
        x0, v0, couplings = [], [], []
        for k, atoms in enumerate(images):
            where = f"{path} structure {k}"
            if atoms.numbers.tolist() != dyn.numbers.tolist():
                raise InputError(
                    f"{where} is {atoms.get_chemical_formula()} ({len(atoms)} atoms); this "
                    f"model is of {_describe(dyn.system, dyn.numbers)}, atoms in its order"
                )
            if atoms.pbc.any():
                raise InputError(f"{where} is periodic; dynamics are for molecules without a cell")
            if not np.isfinite(atoms.positions).all() or not np.isfinite(atoms.get_momenta()).all():
                raise InputError(f"{where}: positions or velocities hold NaN or inf")
            graph = bond_matrix(atoms)
            if dyn.meta["fixed_couplings"] and not (graph == np.array(dyn.meta["couplings"])).all():
                raise InputError(
                    f"{where} has another bond graph than the molecule this model was trained on"
                )
            if temperature is not None:
                _thermalize(atoms, temperature, np.random.default_rng([seed, k]))
            elif not atoms.get_momenta().any():
                raise InputError(
                    f"{where} has no velocities (no momenta): give MD frames, or draw them "
                    "with --temperature"
                )
            x0.append(atoms.positions)
            v0.append(atoms.get_velocities())
            couplings.append(graph)
        x0, v0, couplings = np.array(x0), np.array(v0), np.array(couplings)
    dyn.check_start(x0, v0, couplings)
    return x0, v0, couplings


def _thermalize(atoms, temperature: float, rng) -> None:
    """Maxwell–Boltzmann velocities at ``temperature`` K, without centre-of-mass motion."""
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    thermalize_momenta(atoms, temperature, rng=rng)
    Stationary(atoms, preserve_temperature=False)


def _write_frames(traj, out: Path, copies: int, model: Path) -> None:
    import ase.io

    from sapis.generator.dynamics.data import to_frames

    images = []
    for k in range(traj.shape[0]):
        for atoms in to_frames(traj, k):
            atoms.info.update(start=k // copies, copy=k % copies, model=str(model))
            images.append(atoms)
    ase.io.write(out, images, format="extxyz")


def _summary(traj, seconds: float, out: Path) -> str:
    """Simulated time, wall time, and how far the generated frames drift from frame 0."""
    import numpy as np
    from ase import units

    s, t = traj.shape[:2]
    simulated = s * (t - 1) * traj.dt
    drift = np.linalg.norm(traj.momentum() - traj.momentum()[:, :1], axis=-1).max()
    molecule = (traj.numbers > 0).all()
    line = (
        f"{s} × {t} frames ({_time(simulated, traj.system)} simulated) in {seconds:.1f} s "
        f"({simulated / seconds / (units.fs if molecule else 1):.3g} "
        f"{'fs' if molecule else 'time units'} per second); max |P − P₀| "
    )
    if molecule:
        kelvin = 2 * traj.kinetic() / (3 * len(traj.numbers) * units.kB)
        line += (
            f"{drift * units.fs:.2g} amu·Å/fs; temperature {kelvin[:, 0].mean():.0f} K at "
            f"the start, {kelvin[:, 1:].mean():.0f} K generated"
        )
    else:
        energy = np.abs(traj.energy() - traj.energy()[:, :1]).max()
        line += f"{drift:.2g}, max |E − E₀| {energy:.2g}"
    return f"{line} → {out}"


def _describe(system: str, numbers) -> str:
    """A molecule's formula, or the particle system's name and size."""
    import numpy as np
    from ase import Atoms

    numbers = np.asarray(numbers)
    if (numbers > 0).all():
        return Atoms(numbers).get_chemical_formula()
    return f"{system} ({len(numbers)} particles)"


def _time(dt: float, system: str) -> str:
    from ase import units

    return f"{dt / units.fs:.3g} fs" if system == "molecule" else f"{dt:.3g} time units"


def _losses(values: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in values.items())
