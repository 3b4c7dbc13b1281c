"""Trajectories of one system, as the dynamics model trains on them and a file holds them.

Units are the system's own: dimensionless for the particle systems (G = m = κ = 1 …),
ASE's for molecules (Å, eV, amu, velocities in Å·sqrt(eV/amu), times in ASE time units),
so that the kinetic energy is ``½ Σ m v²`` in the energy unit either way.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sapis.errors import InputError

ARRAYS = ("positions", "velocities", "masses", "couplings", "numbers", "potential")


@dataclass
class Trajectories:
    """``S`` trajectories of ``T`` frames of ``N`` particles in ``D`` dimensions.

    ``positions``/``velocities`` ``[S, T, N, D]``; ``masses`` ``[N]``; ``couplings``
    ``[S, N, N]`` a symmetric 0/1 pair attribute (the springs of five-spring, a molecule's
    bond graph, zeros where every pair interacts alike); ``numbers`` ``[N]`` atomic
    numbers (0 for abstract particles); ``potential`` ``[S, T]`` the potential energy of
    each frame; ``dt`` the time between frames; ``system`` names the physics
    (``five-spring``, ``three-body``, ``molecule``); ``info`` how the set was made.
    """

    system: str
    positions: np.ndarray
    velocities: np.ndarray
    masses: np.ndarray
    couplings: np.ndarray
    numbers: np.ndarray
    potential: np.ndarray
    dt: float
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        s, t, n, d = self.positions.shape
        expected = {
            "velocities": (s, t, n, d),
            "masses": (n,),
            "couplings": (s, n, n),
            "numbers": (n,),
            "potential": (s, t),
        }
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise InputError(
                    f"{self.system} trajectories: {name} has shape "
                    f"{getattr(self, name).shape}, expected {shape}"
                )
        for name in ARRAYS:
            if not np.isfinite(getattr(self, name)).all():
                raise InputError(f"{self.system} trajectories: {name} holds NaN or inf")
        if not self.dt > 0:
            raise InputError(f"{self.system} trajectories: dt must be positive, got {self.dt}")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(trajectories, frames, particles, dimensions)."""
        return self.positions.shape

    @property
    def dim(self) -> int:
        return self.positions.shape[-1]

    def kinetic(self) -> np.ndarray:
        """``½ Σ m v²`` of every frame ``[S, T]``."""
        return 0.5 * (self.masses[:, None] * self.velocities**2).sum((-1, -2))

    def energy(self) -> np.ndarray:
        """Total energy of every frame ``[S, T]``."""
        return self.kinetic() + self.potential

    def momentum(self) -> np.ndarray:
        """Total momentum of every frame ``[S, T, D]``."""
        return (self.masses[:, None] * self.velocities).sum(-2)

    def subset(self, index) -> "Trajectories":
        """The trajectories ``index`` selects (a slice, mask or index array)."""
        return Trajectories(
            self.system,
            self.positions[index],
            self.velocities[index],
            self.masses,
            self.couplings[index],
            self.numbers,
            self.potential[index],
            self.dt,
            dict(self.info),
        )

    def windows(self, length: int, stride: int = 1) -> "Trajectories":
        """Every window of ``length`` frames (the first frame and ``length - 1`` after it)
        starting every ``stride`` frames, as trajectories of their own."""
        s, t = self.shape[:2]
        if not 2 <= length <= t:
            raise InputError(f"a window of {length} frames does not fit {t}-frame trajectories")
        starts = range(0, t - length + 1, stride)
        cut = [(k, a) for k in range(s) for a in starts]
        pick = np.array([k for k, _ in cut])
        frames = np.array([np.arange(a, a + length) for _, a in cut])
        return Trajectories(
            self.system,
            self.positions[pick[:, None], frames],
            self.velocities[pick[:, None], frames],
            self.masses,
            self.couplings[pick],
            self.numbers,
            self.potential[pick[:, None], frames],
            self.dt,
            {**self.info, "window": length, "stride": stride},
        )

    def save(self, path: str | Path) -> Path:
        """Write an ``.npz`` (arrays, ``system``, ``dt`` and ``info`` as JSON)."""
        import json

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(
            tmp,
            **{k: getattr(self, k) for k in ARRAYS},
            system=self.system,
            dt=self.dt,
            info=json.dumps(self.info),
        )
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Trajectories":
        import json

        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such trajectory file")
        try:
            with np.load(path, allow_pickle=False) as f:
                missing = [k for k in (*ARRAYS, "system", "dt") if k not in f.files]
                if missing:
                    raise InputError(f"{path}: not a trajectory file (no {', '.join(missing)})")
                arrays = {k: np.array(f[k]) for k in ARRAYS}
                system, dt = str(f["system"]), float(f["dt"])
                info = json.loads(str(f["info"])) if "info" in f.files else {}
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: cannot read it as a trajectory file ({err})") from None
        return cls(system=system, dt=dt, info=info, **arrays)


def bond_matrix(atoms) -> np.ndarray:
    """The symmetric 0/1 ``[N, N]`` bond graph of one frame (:func:`sapis.validity.bond_graph`)."""
    from sapis.validity import bond_graph

    out = np.zeros((len(atoms), len(atoms)))
    for i, j in bond_graph(atoms):
        out[i, j] = out[j, i] = 1.0
    return out


def from_frames(
    frames: list, timestep_fs: float, system: str = "molecule", names: list[str] | None = None
) -> Trajectories:
    """MD of one molecule as :class:`Trajectories`: ``frames`` is one trajectory (a list
    of ASE ``Atoms``) or several (a list of lists), ``timestep_fs`` the time between saved
    frames in fs. Velocities come from the frames' momenta, the potential from each
    frame's calculator energy, the couplings from the bond graph of each first frame;
    trajectories of different lengths are cut to the shortest (``info["cut_to"]``).
    ``names`` label the trajectories in errors (e.g. their files). Refuses mixed
    molecules or atom orders, periodic cells, frames without velocities or energy, NaN."""
    from ase import Atoms, units

    if frames and isinstance(frames[0], Atoms):
        frames = [frames]
    names = names or [f"trajectory {k}" for k in range(len(frames))]
    if not frames or not all(frames):
        raise InputError("no frames to make trajectories of")
    if not (np.isfinite(timestep_fs) and timestep_fs > 0):
        raise InputError(f"the time between frames must be positive, got {timestep_fs} fs")
    first = frames[0][0]
    positions, velocities, potential, couplings = [], [], [], []
    for name, images in zip(names, frames):
        energies = []
        for t, atoms in enumerate(images):
            where = f"{name} frame {t}"
            if atoms.numbers.tolist() != first.numbers.tolist():
                raise InputError(
                    f"{where} is {atoms.get_chemical_formula()} ({len(atoms)} atoms in its "
                    f"order), not the {first.get_chemical_formula()} of {names[0]} frame 0: "
                    "give one molecule, its atoms always in the same order"
                )
            if not np.allclose(atoms.get_masses(), first.get_masses()):
                raise InputError(f"{where}: its masses differ from {names[0]} frame 0's")
            if atoms.pbc.any():
                raise InputError(f"{where} is periodic; dynamics are for molecules without a cell")
            if not (np.isfinite(atoms.positions).all() and np.isfinite(atoms.get_momenta()).all()):
                raise InputError(f"{where}: positions or velocities hold NaN or inf")
            energies.append(_energy(atoms, where))
        if not any(atoms.get_momenta().any() for atoms in images):
            raise InputError(
                f"{name} has no velocities (its frames carry no momenta): MD frames are needed"
            )
        graph = bond_matrix(images[0])
        if couplings and not (graph == couplings[0]).all():
            raise InputError(
                f"{name} frame 0 has another bond graph than {names[0]} frame 0: "
                "not the same molecule"
            )
        couplings.append(graph)
        positions.append(np.array([a.positions for a in images]))
        velocities.append(np.array([a.get_velocities() for a in images]))
        potential.append(np.array(energies))
    length = min(len(images) for images in frames)
    return Trajectories(
        system=system,
        positions=np.array([x[:length] for x in positions]),
        velocities=np.array([v[:length] for v in velocities]),
        masses=first.get_masses(),
        couplings=np.array(couplings),
        numbers=first.numbers.copy(),
        potential=np.array([u[:length] for u in potential]),
        dt=timestep_fs * units.fs,
        info={
            "source": "frames",
            "timestep_fs": timestep_fs,
            "trajectories": list(names),
            **({"cut_to": length} if any(len(f) > length for f in frames) else {}),
        },
    )


def _energy(atoms, where: str) -> float:
    """The potential energy a frame's calculator holds (eV), refused when absent or not finite."""
    if atoms.calc is None or "energy" not in atoms.calc.results:
        raise InputError(f"{where} has no potential energy (no calculator results)")
    energy = float(atoms.calc.results["energy"])
    if not np.isfinite(energy):
        raise InputError(f"{where}: its potential energy is not finite")
    return energy


def to_frames(traj: Trajectories, k: int) -> list:
    """Trajectory ``k`` of a molecule's ``traj`` as ASE ``Atoms``: positions, velocities
    (as momenta), ``info`` ``source="dynamics"``, ``frame`` and ``time_fs``. Particle
    systems have no elements: refused (save them as ``.npz``)."""
    from ase import Atoms, units
    from ase.data import atomic_masses

    if (traj.numbers == 0).any() or traj.dim != 3:
        raise InputError(
            f"{traj.system} trajectories are not of atoms; write them to an .npz file instead"
        )
    own_masses = not np.allclose(traj.masses, atomic_masses[traj.numbers])
    images = []
    for t in range(traj.shape[1]):
        atoms = Atoms(traj.numbers, traj.positions[k, t])
        if own_masses:
            atoms.set_masses(traj.masses)
        atoms.set_velocities(traj.velocities[k, t])
        atoms.info.update(source="dynamics", frame=t, time_fs=t * traj.dt / units.fs)
        images.append(atoms)
    return images
