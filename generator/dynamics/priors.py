"""Physical priors of a window of frames, as residuals that vanish on true dynamics.

After "Generating Physical Dynamics under Priors" (Zhou, Wang, Yu, ICLR 2025), training
adds ``λ · w(t) · ‖R(x̂0)‖²`` on the Tweedie estimate x̂0 = E[x0 | xt]. How well that
works depends on R's type:

- linear R (centre of mass and momentum, kinematic consistency): R(E[x0|xt]) =
  E[R(x0)|xt] = 0, so the penalty asks exactly what the true posterior mean satisfies;
  a linear *homogeneous* R can even be projected out exactly;
- nonlinear R (energy): E(E[x0|xt]) ≠ E[E(x0)|xt] (the Jensen gap), so a naive penalty
  pulls x̂0 away from the posterior mean. The reduction routes the nonlinear part
  through predicted terms ĥ ≈ E[h(x0)|xt], in which the energy is linear, and keeps
  only the convex kinetic energy on x̂0 (see :mod:`.diffusion`).

All functions are batched over leading dimensions and differentiable.
"""

from functools import cache

import torch


@cache
def pair_index(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (i, j) of the pairs i < j of ``n`` particles, row by row."""
    i, j = torch.triu_indices(n, n, offset=1)
    return i, j


def kinetic(v: torch.Tensor, masses: torch.Tensor) -> torch.Tensor:
    """½ Σ m v² of ``v`` [..., N, D]."""
    return 0.5 * (masses.to(v.dtype)[:, None] * v**2).sum((-1, -2))


def momentum_residual(x: torch.Tensor, v: torch.Tensor, masses: torch.Tensor) -> torch.Tensor:
    """Centre of mass and centre-of-mass velocity [..., 2, D] of frames ``x``/``v``
    [..., N, D] given in the first frame's centre-of-mass frame: zero when momentum is
    conserved."""
    m = masses.to(x.dtype)[:, None]
    total = masses.sum().to(x.dtype)
    return torch.stack([(m * x).sum(-2) / total, (m * v).sum(-2) / total], dim=-2)


def kinematic_residual(x: torch.Tensor, v: torch.Tensor, dt: float) -> torch.Tensor:
    """(x_{l+1} − x_l)/Δt − (v_l + v_{l+1})/2 of frames [..., F, N, D]: [..., F-1, N, D].

    The trapezoid rule: zero for motion at constant acceleration, O(Δt²·jerk)
    otherwise, so real data has a floor (measured by the benchmark)."""
    return (x[..., 1:, :, :] - x[..., :-1, :, :]) / dt - 0.5 * (
        v[..., 1:, :, :] + v[..., :-1, :, :]
    )
