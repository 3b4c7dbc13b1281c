"""Score-based diffusion over the coordinates of one molecule, in the zero-centre-of-mass
subspace, with a variance-preserving cosine schedule.

Forward process: ``x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε`` with ε Gaussian in the
subspace ``Σ m_i x_i = 0``. The network predicts ε; the score is ``-ε̂ / sqrt(1 - ᾱ_t)``
and the Tweedie estimate ``x̂0 = E[x0 | xt] = (x_t - sqrt(1 - ᾱ_t) ε̂) / sqrt(ᾱ_t)``.
Coordinates are divided by ``scale`` (Å) inside, so the data has unit variance.
"""

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from sapis.generator.egnn import ScoreNetwork
from sapis.generator.priors import PairRanges

#: Smallest diffusion time used in training and sampling.
T_MIN = 1e-3

#: ``guide(x0_hat [batch, atoms, 3] in Å) -> gradient [batch, atoms, 3]`` to climb.
Guide = Callable[[np.ndarray], np.ndarray]


def alpha_bar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal, 2021): signal fraction ᾱ at time t ∈ [0, 1]."""
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    return (f / f0).clamp(1e-5, 1.0)


def prior_weight(ab: torch.Tensor) -> torch.Tensor:
    """w(t) = ᾱ_t²: near 1 at low noise, near 0 at high noise where x̂0 is a blur."""
    return ab**2


class Diffusion(nn.Module):
    """The noise model of one molecule type, with its conditioning and prior.

    ``species`` indexes ``elements`` per atom; ``bonded`` is the reference bond graph
    ``[atoms, atoms]``; ``masses`` (amu) define the centre of mass; ``ranges`` the
    feasibility prior (weight ``prior_weight``; 0 turns it off).
    """

    def __init__(
        self,
        net: ScoreNetwork,
        species: torch.Tensor,
        bonded: torch.Tensor,
        masses: torch.Tensor,
        scale: float,
        ranges: PairRanges,
        prior_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("species", species.long())
        self.register_buffer("bonded", bonded.float())
        self.register_buffer("masses", masses.double())  # exact: the output's CoM is 0
        self.scale = float(scale)
        self.ranges = ranges
        self.prior_weight = float(prior_weight)

    @property
    def n_atoms(self) -> int:
        return len(self.species)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Orthogonal projection of ``[batch, atoms, 3]`` onto ``Σ m_i x_i = 0``."""
        m = self.masses.to(x.dtype)
        return x - m[:, None] * (m[None, :, None] * x).sum(1, keepdim=True) / (m @ m)

    def eps(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise ε̂(x_t, t), in the subspace."""
        return self.project(self.net(xt, t, self.species, self.bonded))

    def tweedie(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x̂0 = E[x0 | xt] from the predicted noise (model units)."""
        ab = alpha_bar(t)[:, None, None].to(xt.dtype)
        return (xt - torch.sqrt(1 - ab) * eps) / torch.sqrt(ab)

    def losses(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """Denoising loss, w(t)-weighted feasibility penalty (Å², before λ) and their sum
        for clean coordinates ``x0`` in Å."""
        x0 = self.project(x0 / self.scale)
        t = T_MIN + (1 - T_MIN) * torch.rand(len(x0), generator=generator, dtype=x0.dtype)
        noise = self.project(torch.randn(x0.shape, generator=generator, dtype=x0.dtype))
        ab = alpha_bar(t)[:, None, None].to(x0.dtype)
        xt = torch.sqrt(ab) * x0 + torch.sqrt(1 - ab) * noise
        eps = self.eps(xt, t)
        denoise = ((eps - noise) ** 2).sum((1, 2)) / (3 * (self.n_atoms - 1))
        penalty = self.ranges.penalty(self.tweedie(xt, t, eps) * self.scale)
        weighted = prior_weight(alpha_bar(t)) * penalty
        total = denoise.mean() + self.prior_weight * weighted.mean()
        return {"loss": total, "denoise": denoise.mean(), "penalty": weighted.mean()}

    def sample(
        self,
        n: int,
        steps: int = 50,
        seed: int = 0,
        batch_size: int = 256,
        guide: Guide | None = None,
        guide_scale: float = 0.0,
        guide_from: float = 0.3,
        feasibility_steps: int = 0,
    ) -> np.ndarray:
        """``n`` structures ``[n, atoms, 3]`` in Å, centre of mass at the origin.

        Ancestral sampling on ``steps`` evenly spaced times. Over the last ``guide_from``
        of the times the Tweedie estimate is moved by ``guide_scale`` Å along the
        (normalised) gradient of ``guide``, if given, then pulled into the feasible ranges
        by ``feasibility_steps`` gradient steps on ‖R(x̂0)‖² (the physical prior at
        sampling time; 0 turns it off).
        """
        rng = torch.Generator().manual_seed(seed)
        out = []
        for start in range(0, n, batch_size):
            size = min(batch_size, n - start)
            out.append(
                self._sample_batch(
                    size, steps, rng, guide, guide_scale, guide_from, feasibility_steps
                )
            )
        return np.concatenate(out) if out else np.zeros((0, self.n_atoms, 3))

    @torch.no_grad()
    def _sample_batch(
        self,
        n: int,
        steps: int,
        rng: torch.Generator,
        guide: Guide | None,
        guide_scale: float,
        guide_from: float,
        feasibility_steps: int,
    ) -> np.ndarray:
        dtype = next(self.net.parameters()).dtype
        times = torch.linspace(1.0, 0.0, steps + 1, dtype=dtype).clamp(min=T_MIN)
        x = self.project(torch.randn((n, self.n_atoms, 3), generator=rng, dtype=dtype))
        for k in range(steps):
            t, s = times[k], times[k + 1]
            tt = t.expand(n)
            x0 = self.tweedie(x, tt, self.eps(x, tt))
            if t <= guide_from:
                x0 = self._steer(x0, guide, guide_scale, feasibility_steps)
            if k == steps - 1:
                x = x0
                break
            ab_t, ab_s = alpha_bar(t), alpha_bar(s)
            beta = 1 - ab_t / ab_s
            mean = (torch.sqrt(ab_s) * beta * x0 + torch.sqrt(ab_t / ab_s) * (1 - ab_s) * x) / (
                1 - ab_t
            )
            var = beta * (1 - ab_s) / (1 - ab_t)
            noise = self.project(torch.randn(x.shape, generator=rng, dtype=dtype))
            x = mean + torch.sqrt(var) * noise
        return self.project(x.double() * self.scale).numpy()

    def _steer(
        self, x0: torch.Tensor, guide: Guide | None, guide_scale: float, feasibility_steps: int
    ) -> torch.Tensor:
        """Move x̂0 up the guide's gradient (if any), then back into the feasible ranges."""
        if guide is not None and guide_scale > 0:
            with torch.enable_grad():  # a surrogate's forces are autograd derivatives
                g = torch.as_tensor(guide(x0.double().numpy() * self.scale), dtype=x0.dtype)
            g = self.project(g)
            norm = torch.sqrt((g**2).mean((1, 2), keepdim=True)) + 1e-12
            x0 = x0 + guide_scale / self.scale * g / norm
        for _ in range(feasibility_steps):
            with torch.enable_grad():
                y = x0.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self.ranges.penalty(y * self.scale).sum(), y)
            x0 = self.project(x0 - 0.25 * g / self.scale**2)
        return x0
