"""How far generated dynamics are from the true ones and from the laws they should keep.

Every figure compares windows of ``T = L + 1`` frames that share frame 0 (the condition);
frames ``1..L`` are generated. Norms are Euclidean over the ``D`` coordinates. Energies use
the system's potential (particle sets) or energies computed for the generated frames
(molecules, e.g. xTB); the kinetic energy is ``½ Σ_i m_i |v_i|²`` either way.
"""

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from sapis.errors import InputError

from .data import Trajectories
from .systems import ParticleSystem

FIGURES = ("trajectory", "velocity", "energy", "momentum", "dynamic")


@dataclass
class DynamicsErrors:
    """The errors of ``S`` generated windows against the true ones (means over samples).

    With ``x``/``v`` positions/velocities ``[S, T, N, D]``, ``l = 1..L`` the generated
    frames and ``i`` the particles, per sample:

    - ``trajectory`` = mean_{l≥1, i} ``|x_gen[l, i] - x_true[l, i]|``
    - ``velocity`` = mean_{l≥1, i} ``|v_gen[l, i] - v_true[l, i]|``
    - ``energy`` = mean_{l≥1} ``|E_l - E_0|`` of the generated window,
      ``E_l = ½ Σ_i m_i |v_l,i|² + U(x_l)``
    - ``momentum`` = mean_{l≥1} ``|P_l - P_0|``, ``P_l = Σ_i m_i v_l,i``, generated window
    - ``dynamic`` = mean_{l=0..L-1, i} of
      ``|(v_{l+1,i} - v_{l,i})/dt - ½(F_i(x_l) + F_i(x_{l+1}))/m_i|`` over the generated
      window (the trapezoidal residual of Newton's law; NaN without a system's forces)

    ``per_sample`` holds each figure's ``[S]`` values (for tails and seeds);
    ``truth_floor`` the ``energy``, ``momentum`` and ``dynamic`` figures of the true
    windows (mean over samples): what the integrator and the finite difference over ``dt``
    leave, i.e. what a perfect model scores.
    """

    trajectory: float
    velocity: float
    energy: float
    momentum: float
    dynamic: float
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)
    truth_floor: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The means and the truth floor as plain floats (for JSON)."""
        out = {k: float(v) for k, v in asdict(self).items() if k in FIGURES}
        out["truth_floor"] = {k: float(v) for k, v in self.truth_floor.items()}
        return out


def _torch(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def _potential(traj: Trajectories, system: ParticleSystem) -> np.ndarray:
    """The system's potential of every frame ``[S, T]``."""
    with torch.no_grad():
        u = system.potential(_torch(traj.positions), _torch(traj.couplings)[:, None], traj.masses)
    return u.numpy()


def _energy(
    traj: Trajectories, system: ParticleSystem | None, potential: np.ndarray | None
) -> np.ndarray | None:
    """Total energy ``[S, T]``, the potential from ``system``, else from ``potential``."""
    if system is not None:
        u = _potential(traj, system)
    elif potential is not None:
        u = np.asarray(potential, dtype=np.float64)
        if u.shape != traj.shape[:2]:
            raise InputError(
                f"the potential has shape {u.shape}, expected {traj.shape[:2]} (samples, frames)"
            )
        if not np.isfinite(u).all():
            raise InputError("the potential holds NaN or inf")
    else:
        return None
    return traj.kinetic() + u


def _energy_error(energy: np.ndarray | None, s: int) -> np.ndarray:
    """mean_{l≥1} ``|E_l - E_0|`` per sample ``[S]`` (NaN when there is no energy)."""
    if energy is None:
        return np.full(s, np.nan)
    return np.abs(energy[:, 1:] - energy[:, :1]).mean(1)


def _momentum_error(traj: Trajectories) -> np.ndarray:
    """mean_{l≥1} ``|P_l - P_0|`` per sample ``[S]``."""
    p = traj.momentum()
    return np.linalg.norm(p[:, 1:] - p[:, :1], axis=-1).mean(1)


def _dynamic_error(traj: Trajectories, system: ParticleSystem | None) -> np.ndarray:
    """mean_{l, i} ``|Δv/dt - ½(F(x_l) + F(x_{l+1}))/m|`` per sample ``[S]``."""
    if system is None:
        return np.full(traj.shape[0], np.nan)
    with torch.no_grad():
        f = system.forces(_torch(traj.positions), _torch(traj.couplings)[:, None], traj.masses)
    a = f.numpy() / traj.masses[:, None]
    residual = np.diff(traj.velocities, axis=1) / traj.dt - 0.5 * (a[:, 1:] + a[:, :-1])
    return np.linalg.norm(residual, axis=-1).mean((1, 2))


def _check(generated: Trajectories, truth: Trajectories, system: ParticleSystem | None) -> None:
    if generated.shape != truth.shape:
        raise InputError(f"generated windows {generated.shape} and true ones {truth.shape} differ")
    if generated.shape[1] < 2:
        raise InputError("a window needs frame 0 and at least one generated frame")
    if not np.array_equal(generated.masses, truth.masses):
        raise InputError("generated and true windows have different masses")
    if not np.isclose(generated.dt, truth.dt, rtol=1e-9):
        raise InputError(f"generated frames are {generated.dt} apart, true ones {truth.dt}")
    for name in ("positions", "velocities"):
        a, b = getattr(generated, name)[:, 0], getattr(truth, name)[:, 0]
        if not np.allclose(a, b, rtol=1e-6, atol=1e-8):
            raise InputError(
                f"generated and true windows start from different {name} (frame 0 is the "
                f"condition both share; largest difference {np.abs(a - b).max():.3g})"
            )
    if system is not None:
        for traj in (generated, truth):
            if traj.system != system.name or traj.dim != system.dim:
                raise InputError(
                    f"{traj.system} trajectories in {traj.dim}D are not {system.name} "
                    f"({system.dim}D)"
                )


def dynamics_errors(
    generated: Trajectories,
    truth: Trajectories,
    system: ParticleSystem | None = None,
    generated_potential: np.ndarray | None = None,
) -> DynamicsErrors:
    """The :class:`DynamicsErrors` of ``generated`` windows against ``truth`` (same shape,
    same frame 0).

    Energies come from ``system``'s potential when it is given, else from
    ``generated_potential`` ``[S, T]`` for the generated windows and ``truth.potential``
    for the true ones; with neither, ``energy`` is NaN. ``dynamic`` needs ``system``.
    """
    _check(generated, truth, system)
    s = generated.shape[0]
    diff_x = np.linalg.norm(generated.positions[:, 1:] - truth.positions[:, 1:], axis=-1)
    diff_v = np.linalg.norm(generated.velocities[:, 1:] - truth.velocities[:, 1:], axis=-1)
    true_potential = None if system is not None else truth.potential
    per_sample = {
        "trajectory": diff_x.mean((1, 2)),
        "velocity": diff_v.mean((1, 2)),
        "energy": _energy_error(_energy(generated, system, generated_potential), s),
        "momentum": _momentum_error(generated),
        "dynamic": _dynamic_error(generated, system),
    }
    floor = {
        "energy": _energy_error(_energy(truth, system, true_potential), s).mean(),
        "momentum": _momentum_error(truth).mean(),
        "dynamic": _dynamic_error(truth, system).mean(),
    }
    means = {k: float(v.mean()) for k, v in per_sample.items()}
    return DynamicsErrors(
        **means, per_sample=per_sample, truth_floor={k: float(v) for k, v in floor.items()}
    )


def conservation_curves(
    traj: Trajectories,
    system: ParticleSystem | None = None,
    potential: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Conservation over a window, frame by frame (the paper's plot).

    Returns ``time`` ``[T]`` (``l·dt``), ``energy`` ``[T]`` = mean over samples of
    ``|E_l - E_0|`` (potential from ``system``, else ``potential`` ``[S, T]``, else NaN)
    and ``momentum`` ``[T]`` = mean over samples of ``|P_l - P_0|``."""
    if system is not None and (traj.system != system.name or traj.dim != system.dim):
        raise InputError(f"{traj.system} trajectories are not {system.name}")
    energy = _energy(traj, system, potential)
    p = traj.momentum()
    t = traj.shape[1]
    return {
        "time": traj.dt * np.arange(t),
        "energy": np.full(t, np.nan) if energy is None else np.abs(energy - energy[:, :1]).mean(0),
        "momentum": np.linalg.norm(p - p[:, :1], axis=-1).mean(0),
    }
