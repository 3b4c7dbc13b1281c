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
