"""The two particle systems of the dynamics benchmark, their physics and their simulators.

``five-spring`` is the EGNN/NRI ``SpringSim`` set (5 particles in 3D joined at random by
springs) and ``three-body`` the Hamiltonian Neural Networks set (3 equal masses in 2D under
gravity on perturbed circular orbits). Each system gives its potential, pair by pair, and
its forces as batched, differentiable torch functions (the model's priors use them) and
simulates trajectories with numpy/scipy (the datasets). Units are dimensionless.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import solve_ivp

from sapis.errors import InputError

from .data import Trajectories


def pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays ``(i, j)`` of every pair ``i < j`` of ``n`` particles, row by row:
    (0, 1), (0, 2), …, (0, n-1), (1, 2), …"""
    return np.triu_indices(n, k=1)


def kinetic(v: torch.Tensor, masses) -> torch.Tensor:
    """``½ Σ_i m_i |v_i|²`` of velocities ``[..., N, D]``: ``[...]``."""
    m = torch.as_tensor(masses, dtype=v.dtype, device=v.device)
    return 0.5 * (m[:, None] * v**2).sum((-1, -2))


def _pair_vectors(x: torch.Tensor) -> torch.Tensor:
    """``x_i - x_j`` for every pair ``i < j``: ``[..., P, D]``."""
    i, j = pairs(x.shape[-2])
    return x[..., i, :] - x[..., j, :]


@dataclass(frozen=True)
class ParticleSystem(ABC):
    """A system of ``N`` particles in ``dim`` dimensions whose potential is a sum of pair
    terms; ``dt`` is the time between the frames :meth:`simulate` saves."""

    name: str
    dim: int
    dt: float

    @abstractmethod
    def potential_terms(self, x: torch.Tensor, couplings, masses) -> torch.Tensor:
        """The potential of every pair ``i < j`` (:func:`pairs` order) of positions
        ``[..., N, D]`` with ``couplings`` ``[..., N, N]`` and ``masses`` ``[N]``:
        ``[..., P]``; their sum is the potential."""

    def potential(self, x: torch.Tensor, couplings, masses) -> torch.Tensor:
        """The potential energy of positions ``[..., N, D]``: ``[...]``."""
        return self.potential_terms(x, couplings, masses).sum(-1)

    @abstractmethod
    def forces(self, x: torch.Tensor, couplings, masses) -> torch.Tensor:
        """``-∂U/∂x`` at positions ``[..., N, D]`` (analytic): ``[..., N, D]``."""

    @abstractmethod
    def simulate(self, n_trajectories: int, n_frames: int, seed: int) -> Trajectories:
        """``n_trajectories`` trajectories of ``n_frames`` frames ``dt`` apart, drawn from
        ``seed`` (the same seed gives the same arrays, and the first ``k`` trajectories of
        a larger set are those of a set of ``k``)."""

    @staticmethod
    def _check_sizes(n_trajectories: int, n_frames: int) -> None:
        if n_trajectories < 1 or n_frames < 1:
            raise InputError(
                f"need at least one trajectory of one frame, got {n_trajectories} of {n_frames}"
            )


def _tensor(a, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(a, dtype=like.dtype, device=like.device)


@dataclass(frozen=True)
class FiveSpring(ParticleSystem):
    """EGNN's ``SpringSim`` set (Satorras et al. 2021, after Kipf et al.'s NRI).

    5 unit masses in 3D; each pair joined with probability ½ by a spring of stiffness
    ``kappa`` and zero rest length, ``U = Σ_springs ½ κ |x_i - x_j|²``; positions drawn
    from N(0, ``loc_std``²) per coordinate; each initial velocity of random direction and
    norm ``speed``; velocity Verlet (leapfrog) with step ``step`` and a frame saved every
    ``steps_per_frame`` steps. No box: EGNN disables NRI's wall reflections in its loop.
    """

    name: str = "five-spring"
    dim: int = 3
    dt: float = 0.1
    n_particles: int = 5
    kappa: float = 0.1
    spring_probability: float = 0.5
    loc_std: float = 0.5
    speed: float = 0.5
    step: float = 0.001
    steps_per_frame: int = 100

    def potential_terms(self, x, couplings, masses):
        i, j = pairs(x.shape[-2])
        c = _tensor(couplings, x)[..., i, j]
        return 0.5 * self.kappa * c * (_pair_vectors(x) ** 2).sum(-1)

    def forces(self, x, couplings, masses):
        c = _tensor(couplings, x)
        diff = x[..., :, None, :] - x[..., None, :, :]
        return -self.kappa * (c[..., None] * diff).sum(-2)

    def _forces_np(self, x: np.ndarray, c: np.ndarray) -> np.ndarray:
        diff = x[..., :, None, :] - x[..., None, :, :]
        return -self.kappa * (c[..., None] * diff).sum(-2)

    def simulate(self, n_trajectories: int, n_frames: int, seed: int) -> Trajectories:
        self._check_sizes(n_trajectories, n_frames)
        rng = np.random.default_rng(seed)
        n = self.n_particles
        c = np.zeros((n_trajectories, n, n))
        x = np.zeros((n_trajectories, n, self.dim))
        v = np.zeros((n_trajectories, n, self.dim))
        iu = pairs(n)
        for k in range(n_trajectories):  # one trajectory at a time: prefixes reproduce
            c[k][iu] = rng.random(len(iu[0])) < self.spring_probability
            c[k] = c[k] + c[k].T
            x[k] = rng.normal(0.0, self.loc_std, (n, self.dim))
            direction = rng.normal(size=(n, self.dim))
            v[k] = self.speed * direction / np.linalg.norm(direction, axis=-1, keepdims=True)
        masses = np.ones(n)
        pos = np.empty((n_trajectories, n_frames, n, self.dim))
        vel = np.empty_like(pos)
        pos[:, 0], vel[:, 0] = x, v
        h = self.step
        a = self._forces_np(x, c) / masses[:, None]
        for frame in range(1, n_frames):
            for _ in range(self.steps_per_frame):
                v = v + 0.5 * h * a
                x = x + h * v
                a = self._forces_np(x, c) / masses[:, None]
                v = v + 0.5 * h * a
            pos[:, frame], vel[:, frame] = x, v
        potential = self.potential(torch.from_numpy(pos), torch.from_numpy(c)[:, None], masses)
        info = {
            "recipe": "EGNN SpringSim (vgsatorras/egnn n_body_system/dataset/synthetic_sim.py)",
            "seed": seed,
            "n_particles": n,
            "kappa": self.kappa,
            "spring_probability": self.spring_probability,
            "loc_std": self.loc_std,
            "speed": self.speed,
            "integrator": "velocity Verlet (leapfrog)",
            "step": h,
            "steps_per_frame": self.steps_per_frame,
            "box": None,
        }
        return Trajectories(
            self.name,
            pos,
            vel,
            masses,
            c,
            np.zeros(n, dtype=int),
            potential.numpy(),
            self.dt,
            info,
        )


def _rotate(p: np.ndarray, theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([c * p[0] - s * p[1], s * p[0] + c * p[1]])


def _three_body_rhs(t: float, y: np.ndarray) -> np.ndarray:
    """``d(x, v)/dt`` of 3 unit masses in 2D under gravity with G = 1 (``y`` = x then v)."""
    x = y[:6].reshape(3, 2)
    d01, d02, d12 = x[1] - x[0], x[2] - x[0], x[2] - x[1]
    a01 = d01 / (d01 @ d01) ** 1.5
    a02 = d02 / (d02 @ d02) ** 1.5
    a12 = d12 / (d12 @ d12) ** 1.5
    return np.concatenate([y[6:], a01 + a02, a12 - a01, -a02 - a12])


@dataclass(frozen=True)
class ThreeBody(ParticleSystem):
    """The Hamiltonian Neural Networks three-body set (Greydanus et al. 2019).

    3 unit masses in 2D, ``U = -Σ_{i<j} G m_i m_j / |x_i - x_j|`` with G = 1. HNN's
    ``random_config``: body 1 at a uniform direction and radius in [``min_radius``,
    ``max_radius``], bodies 2 and 3 at 120° and 240°; velocities of the circular orbit,
    each component scaled by ``1 + orbit_noise·U(-1, 1)``. Integrated by
    ``scipy.integrate.solve_ivp`` (DOP853, rtol = atol = ``tolerance``); frames ``dt``
    apart read from its dense output. An orbit whose energy at any frame departs from the
    first by more than ``max_energy_drift`` (relative), or whose closest approach (over
    the integrator's steps) is below ``min_distance``, is dropped and another drawn;
    ``info`` counts them.
    """

    name: str = "three-body"
    dim: int = 2
    dt: float = 0.1
    n_particles: int = 3
    gravity: float = 1.0
    min_radius: float = 0.9
    max_radius: float = 1.2
    orbit_noise: float = 0.2
    tolerance: float = 1e-12
    max_energy_drift: float = 1e-6
    min_distance: float = 0.1

    def potential_terms(self, x, couplings, masses):
        i, j = pairs(x.shape[-2])
        m = _tensor(masses, x)
        r = (_pair_vectors(x) ** 2).sum(-1).sqrt()
        return -self.gravity * m[i] * m[j] / r

    def forces(self, x, couplings, masses):
        m = _tensor(masses, x)
        n = x.shape[-2]
        diff = x[..., :, None, :] - x[..., None, :, :]
        eye = torch.eye(n, dtype=x.dtype, device=x.device)
        r2 = (diff**2).sum(-1) + eye  # 1 on the diagonal: no 0/0, no NaN gradient
        scale = self.gravity * m[:, None] * m[None, :] * (1 - eye) / r2**1.5
        return -(scale[..., None] * diff).sum(-2)

    def _initial_state(self, rng: np.random.Generator) -> np.ndarray:
        """HNN's ``random_config`` (experiment-3body/data.py), as positions then velocities."""
        p1 = 2 * rng.random(2) - 1
        r = rng.random() * (self.max_radius - self.min_radius) + self.min_radius
        p1 *= r / np.sqrt((p1**2).sum())
        p2 = _rotate(p1, 2 * np.pi / 3)
        p3 = _rotate(p2, 2 * np.pi / 3)
        v1 = _rotate(p1, np.pi / 2) / r**1.5
        v1 = v1 * np.sqrt(np.sin(np.pi / 3) / (2 * np.cos(np.pi / 6) ** 2))
        v2 = _rotate(v1, 2 * np.pi / 3)
        v3 = _rotate(v2, 2 * np.pi / 3)
        vs = [v * (1 + self.orbit_noise * (2 * rng.random(2) - 1)) for v in (v1, v2, v3)]
        return np.concatenate([p1, p2, p3, *vs])

    def _energy_np(self, y: np.ndarray) -> np.ndarray:
        """Total energy of states ``[12, T]`` (unit masses)."""
        x = y[:6].reshape(3, 2, -1)
        u = sum(-1 / np.linalg.norm(x[i] - x[j], axis=0) for i, j in zip(*pairs(3)))
        return 0.5 * (y[6:] ** 2).sum(0) + self.gravity * u

    def simulate(self, n_trajectories: int, n_frames: int, seed: int) -> Trajectories:
        if self.gravity != 1.0:
            raise InputError("three-body simulates G = 1 only (HNN's set)")
        self._check_sizes(n_trajectories, n_frames)
        rng = np.random.default_rng(seed)
        times = self.dt * np.arange(n_frames)
        kept: list[np.ndarray] = []
        dropped = {"energy": 0, "approach": 0}
        closest: list[float] = []
        drift: list[float] = []
        while len(kept) < n_trajectories:
            if sum(dropped.values()) > 10 * n_trajectories + 100:
                raise InputError(
                    f"three-body: {dropped['energy']} orbits broke the energy bound and "
                    f"{dropped['approach']} came closer than {self.min_distance} before "
                    f"{n_trajectories} passed; loosen them or tighten the tolerance"
                )
            y0 = self._initial_state(rng)
            if n_frames == 1:
                kept.append(y0[:, None])
                continue
            sol = solve_ivp(
                _three_body_rhs,
                (0.0, times[-1]),
                y0,
                method="DOP853",
                rtol=self.tolerance,
                atol=self.tolerance,
                dense_output=True,
            )
            if not sol.success:
                raise RuntimeError(f"three-body integration failed: {sol.message}")
            y = sol.sol(times)
            y[:, 0] = y0
            steps = sol.y[:6].reshape(3, 2, -1)
            r_min = min(
                np.linalg.norm(steps[i] - steps[j], axis=0).min()
                for i, j in ((0, 1), (0, 2), (1, 2))
            )
            energy = self._energy_np(y)
            rel = float(np.abs(energy - energy[0]).max() / abs(energy[0]))
            if rel > self.max_energy_drift:
                dropped["energy"] += 1
            elif r_min < self.min_distance:
                dropped["approach"] += 1
            else:
                kept.append(y)
                closest.append(float(r_min))
                drift.append(rel)
        y = np.stack(kept)  # [S, 12, T]
        pos = y[:, :6].reshape(n_trajectories, 3, 2, n_frames).transpose(0, 3, 1, 2)
        vel = y[:, 6:].reshape(n_trajectories, 3, 2, n_frames).transpose(0, 3, 1, 2)
        pos, vel = np.ascontiguousarray(pos), np.ascontiguousarray(vel)
        masses = np.ones(3)
        couplings = np.zeros((n_trajectories, 3, 3))
        potential = self.potential(torch.from_numpy(pos), None, masses).numpy()
        info = {
            "recipe": "HNN three-body (greydanus/hamiltonian-nn experiment-3body/data.py)",
            "seed": seed,
            "gravity": self.gravity,
            "min_radius": self.min_radius,
            "max_radius": self.max_radius,
            "orbit_noise": self.orbit_noise,
            "integrator": "scipy solve_ivp DOP853, dense output",
            "rtol": self.tolerance,
            "atol": self.tolerance,
            "max_energy_drift": self.max_energy_drift,
            "min_distance": self.min_distance,
            "drawn": n_trajectories + sum(dropped.values()),
            "dropped_energy": dropped["energy"],
            "dropped_approach": dropped["approach"],
            "closest_approach": min(closest) if closest else None,
            "worst_energy_drift": max(drift) if drift else None,
        }
        return Trajectories(
            self.name,
            pos,
            vel,
            masses,
            couplings,
            np.zeros(3, dtype=int),
            potential,
            self.dt,
            info,
        )


SYSTEMS: dict[str, ParticleSystem] = {"five-spring": FiveSpring(), "three-body": ThreeBody()}


def particle_system(name: str) -> ParticleSystem:
    """The particle system called ``name`` (a key of :data:`SYSTEMS`)."""
    try:
        return SYSTEMS[name]
    except KeyError:
        known = ", ".join(sorted(SYSTEMS))
        raise InputError(f"unknown particle system {name!r} (known: {known})") from None
