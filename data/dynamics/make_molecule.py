"""Reference dynamics of malonaldehyde: GFN2-xTB NVE MD from rMD17 frames, split by trajectory.

Each trajectory starts from its own frame of the in-repo rMD17 sample, with Maxwell–Boltzmann
momenta at 300 K (no centre-of-mass motion, no rotation), settles for 50 fs of NVE and then
runs ASE's velocity Verlet at 0.5 fs, saving positions, velocities and the potential energy
every 10 steps (5 fs). A trajectory whose bond graph ever differs from its first frame's is
dropped (and counted). Units are ASE's: Å, eV, amu, velocities in Å·sqrt(eV/amu).

    OMP_NUM_THREADS=1 .venv/bin/python data/dynamics/make_molecule.py [--trajectories 40]

Writes ``malonaldehyde-xtb-{train,val,test}.npz`` beside this script (about 2.5 min on one
core); the same seed gives the same arrays, bit for bit (same machine and libraries).
"""

import argparse
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from tblite.ase import TBLite  # loaded before threadpool_limits, so its OpenMP obeys it
from threadpoolctl import threadpool_limits

from sapis.generator.dynamics.data import Trajectories
from sapis.io import read_rmd17
from sapis.validity import bond_graph

HERE = Path(__file__).parent
SOURCE = HERE.parent / "rmd17" / "rmd17_malonaldehyde_train_01.npz"
METHOD = "GFN2-xTB"
#: tblite's accuracy factor: 0.01 (a tighter SCF than the default 1.0) lowers the fitted NVE
#: energy drift from ~0.9 to ~0.3 meV/ps (the rest is the fit's noise from velocity Verlet's
#: ~1 meV fluctuation over 0.8 ps) for ~30 % more time per step.
ACCURACY = 0.01
TEMPERATURE = 300.0  # K
TIMESTEP_FS = 0.5
SAVE_EVERY = 10  # steps: a frame every 5 fs
SETTLE_STEPS = 100  # unsaved NVE steps after drawing the momenta (50 fs)
SPLITS = {"train": 24, "val": 8, "test": 8}


def calculator(accuracy: float = ACCURACY):
    """tblite's GFN2-xTB ASE calculator, silent."""
    return TBLite(method=METHOD, accuracy=accuracy, verbosity=0)


def source_order(n_source: int, seed: int) -> np.ndarray:
    """The rMD17 frame each trajectory starts from: a seeded permutation, so trajectory
    ``k`` starts from the same frame however many trajectories are built."""
    return np.random.default_rng(seed).permutation(n_source)


def run_one(
    start: Atoms, k: int, frames: int, seed: int, accuracy: float = ACCURACY
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trajectory ``k``: positions (Å) and velocities ``[frames, N, 3]``, potential energy
    (eV) ``[frames]``; its momenta drawn from ``default_rng([seed, k])``."""
    atoms = Atoms(start.numbers, start.positions)
    atoms.calc = calculator(accuracy)  # a fresh one: tblite reuses its last wavefunction
    thermalize_momenta(atoms, TEMPERATURE, rng=np.random.default_rng([seed, k]))
    Stationary(atoms)
    ZeroRotation(atoms)
    dyn = VelocityVerlet(atoms, TIMESTEP_FS * units.fs)
    dyn.run(SETTLE_STEPS)
    n = len(atoms)
    pos, vel, pot = np.empty((frames, n, 3)), np.empty((frames, n, 3)), np.empty(frames)
    for t in range(frames):
        if t:
            dyn.run(SAVE_EVERY)
        pos[t], vel[t] = atoms.get_positions(), atoms.get_velocities()
        pot[t] = atoms.get_potential_energy()
    return pos, vel, pot


def bonds_matrix(numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The symmetric 0/1 ``[N, N]`` bond graph of one frame (:func:`sapis.validity.bond_graph`)."""
    out = np.zeros((len(numbers), len(numbers)))
    for i, j in bond_graph(Atoms(numbers, positions)):
        out[i, j] = out[j, i] = 1.0
    return out


def build(
    count: int,
    frames: int,
    seed: int = 0,
    first: int = 0,
    accuracy: float = ACCURACY,
    source: Path = SOURCE,
) -> Trajectories:
    """Trajectories ``first … first + count - 1`` of ``frames`` frames each, those whose
    bond graph never changed; ``info`` says how they were made and how many were dropped."""
    images = read_rmd17(source)
    order = source_order(len(images), seed)
    numbers = images[0].numbers.copy()
    kept, dropped = [], []
    with threadpool_limits(limits=1):
        for k in range(first, first + count):
            pos, vel, pot = run_one(images[order[k]], k, frames, seed, accuracy)
            graph = bonds_matrix(numbers, pos[0])
            if all((bonds_matrix(numbers, p) == graph).all() for p in pos[1:]):
                kept.append((k, pos, vel, pot, graph))
            else:
                dropped.append(k)
    info = {
        "method": METHOD,
        "program": f"tblite {version('tblite')}",
        "ase": version("ase"),
        "accuracy": accuracy,
        "ensemble": "NVE, velocity Verlet",
        "temperature_K": TEMPERATURE,
        "timestep_fs": TIMESTEP_FS,
        "save_every": SAVE_EVERY,
        "frame_interval_fs": TIMESTEP_FS * SAVE_EVERY,
        "settle_steps": SETTLE_STEPS,
        "seed": seed,
        "source": f"data/rmd17/{source.name}",
        "trajectory": [k for k, *_ in kept],
        "source_frames": [int(order[k]) for k, *_ in kept],
        "dropped_bond_change": dropped,
    }
    return Trajectories(
        system="molecule",
        positions=np.array([x[1] for x in kept]),
        velocities=np.array([x[2] for x in kept]),
        masses=images[0].get_masses(),
        couplings=np.array([x[4] for x in kept]),
        numbers=numbers,
        potential=np.array([x[3] for x in kept]),
        dt=TIMESTEP_FS * SAVE_EVERY * units.fs,
        info=info,
    )


def conservation(traj: Trajectories) -> dict:
    """Energy drift (slope of a line fit, eV/ps), its spread about the line (eV), the largest
    ``|E(t) - E(0)|`` (eV) and the largest ``|P|`` (amu·Å/ASE time), over all trajectories."""
    energy = traj.energy()
    t_ps = np.arange(energy.shape[1]) * traj.dt / (1000 * units.fs)
    fits = [np.polyfit(t_ps, e, 1) for e in energy]
    slopes = np.array([f[0] for f in fits])
    spread = np.array([np.std(e - np.polyval(f, t_ps)) for e, f in zip(energy, fits)])
    return {
        "drift_eV_per_ps_mean_abs": float(np.abs(slopes).mean()),
        "drift_eV_per_ps_max_abs": float(np.abs(slopes).max()),
        "fluctuation_eV_mean": float(spread.mean()),
        "max_abs_dE_eV": float(np.abs(energy - energy[:, :1]).max()),
        "max_abs_momentum": float(np.abs(traj.momentum()).max()),
        "mean_temperature_K": float(
            (2 * traj.kinetic() / (3 * len(traj.masses) * units.kB)).mean()
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trajectories", type=int, default=sum(SPLITS.values()))
    parser.add_argument("--frames", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    cpu, wall = time.process_time(), time.perf_counter()
    traj = build(args.trajectories, args.frames, args.seed)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(
        f"{traj.shape[0]} trajectories × {traj.shape[1]} frames in {wall:.0f} s ({cpu:.0f} s CPU)"
    )
    print(f"dropped for a bond change: {traj.info['dropped_bond_change']}")
    print(conservation(traj))
    sizes = [round(share * traj.shape[0] / args.trajectories) for share in SPLITS.values()]
    sizes[-1] = traj.shape[0] - sum(sizes[:-1])  # a dropped trajectory shortens the test set
    start = 0
    for name, size in zip(SPLITS, sizes):
        part = traj.subset(slice(start, start + size))
        for key in ("trajectory", "source_frames"):
            part.info[key] = traj.info[key][start : start + size]
        part.info.update(split=name, build_seconds_cpu=round(cpu, 1))
        path = part.save(args.out / f"malonaldehyde-xtb-{name}.npz")
        print(f"{path}: {part.shape}, {path.stat().st_size / 1e6:.2f} MB")
        start += size


if __name__ == "__main__":
    main()
