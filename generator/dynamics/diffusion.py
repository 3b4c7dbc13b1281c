"""Diffusion over a window of frames conditioned on its first frame, with priors on x̂0.

The window's frames 1..L are written relative to frame 0 in frame 0's centre-of-mass
frame (positions shifted by the centre of mass, and by its drift l·Δt·V_cm, velocities
by V_cm: a Galilean change of frame, undone on output), as residuals
``zx_l = (x_l − x_0) / (a·sx_l)`` and ``zv_l = (v_l − v_0) / (b·sv_l)`` scaled to unit
variance per frame. On those the VP cosine schedule of the configuration generator
(:func:`sapis.generator.diffusion.alpha_bar`) runs with ε-prediction; the Tweedie
estimate ``ẑ0 = (z_t − sqrt(1 − ᾱ) ε̂) / sqrt(ᾱ)`` is mapped back to positions and
velocities, where the priors of :mod:`sapis.generator.dynamics.priors` act.

Conserved total momentum makes every frame's centre of mass and momentum zero in this
frame: a linear subspace of the residuals, ``Σ_i m_i z_{l,i} = 0``. With
``momentum: project`` noise, network output and therefore samples stay in it exactly.
"""

import torch
from torch import nn

from sapis.generator.diffusion import T_MIN, alpha_bar, prior_weight
from sapis.generator.dynamics import priors
from sapis.generator.dynamics.network import DynamicsNetwork
from sapis.generator.dynamics.settings import DynamicsConfig


class DynamicsDiffusion(nn.Module):
    """The noise model of one system's windows, its scales and its priors.

    ``nodes`` [N, A] particle features; ``masses`` [N]; ``dt`` the time between frames;
    ``length``/``speed`` global position/velocity units and ``sx``/``sv`` [L] each
    frame's residual scale in them; ``energy_scale`` the unit of energy penalties and
    ``pair_offset`` [P] the mean of each potential term; ``potential_terms`` the
    system's potential as pair terms ``(x [..., N, D], couplings [..., N, N]) -> [..., P]``
    when it is known in closed form (particle systems), else None (molecules).
    """

    def __init__(
        self,
        net: DynamicsNetwork,
        config: DynamicsConfig,
        nodes: torch.Tensor,
        masses: torch.Tensor,
        dt: float,
        scales: dict,
        potential_terms=None,
    ) -> None:
        super().__init__()
        self.net = net
        self.config = config
        self.register_buffer("nodes", nodes.double())
        self.register_buffer("masses", masses.double())
        self.dt = float(dt)
        self.length = float(scales["length"])
        self.speed = float(scales["speed"])
        self.register_buffer("sx", torch.as_tensor(scales["sx"], dtype=torch.float64))
        self.register_buffer("sv", torch.as_tensor(scales["sv"], dtype=torch.float64))
        self.energy_scale = float(scales["energy"])
        self.register_buffer(
            "pair_offset", torch.as_tensor(scales["pair_offset"], dtype=torch.float64)
        )
        self.potential_terms = potential_terms
        self.limit = float(scales["clip"])

    @property
    def frames(self) -> int:
        return len(self.sx)

    @property
    def n(self) -> int:
        return len(self.masses)

    # --- frames and residuals -------------------------------------------------------

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """Orthogonal projection of ``[..., N, D]`` onto ``Σ_i m_i z_i = 0``."""
        m = self.masses.to(z.dtype)
        return z - m[:, None] * (m[:, None] * z).sum(-2, keepdim=True) / (m @ m)

    def centre(self, x0: torch.Tensor, v0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame 0's centre of mass [B, 1, D] and its velocity [B, 1, D]."""
        m = self.masses.to(x0.dtype)[:, None]
        total = self.masses.sum().to(x0.dtype)
        return (m * x0).sum(-2, keepdim=True) / total, (m * v0).sum(-2, keepdim=True) / total

    def drift(self, u: torch.Tensor, frames: int) -> torch.Tensor:
        """The centre-of-mass displacement l·Δt·u of frames 0..frames-1, [B, F, 1, D]."""
        steps = torch.arange(frames, dtype=u.dtype) * self.dt
        return steps[None, :, None, None] * u[:, None]

    def residuals(
        self, positions: torch.Tensor, velocities: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``zx``, ``zv`` [B, L, N, D] of windows [B, L+1, N, D] (in the input frame)."""
        c, u = self.centre(positions[:, 0], velocities[:, 0])
        x = positions - c[:, None] - self.drift(u, positions.shape[1])
        v = velocities - u[:, None]
        zx = (x[:, 1:] - x[:, :1]) / (self.length * self.sx[None, :, None, None])
        zv = (v[:, 1:] - v[:, :1]) / (self.speed * self.sv[None, :, None, None])
        return zx.to(positions.dtype), zv.to(positions.dtype)

    def frames_of(
        self, zx: torch.Tensor, zv: torch.Tensor, x0: torch.Tensor, v0: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions and velocities [B, L+1, N, D] in frame 0's centre-of-mass frame from
        residuals and the first frame (given in any frame)."""
        c, u = self.centre(x0, v0)
        x0, v0 = x0 - c, v0 - u
        sx = (self.length * self.sx).to(zx.dtype)[None, :, None, None]
        sv = (self.speed * self.sv).to(zv.dtype)[None, :, None, None]
        x = torch.cat([x0[:, None], x0[:, None] + sx * zx], 1)
        v = torch.cat([v0[:, None], v0[:, None] + sv * zv], 1)
        return x, v

    def to_input_frame(
        self, x: torch.Tensor, v: torch.Tensor, x0: torch.Tensor, v0: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Undo :meth:`frames_of`'s change of frame."""
        c, u = self.centre(x0, v0)
        return x + c[:, None] + self.drift(u, x.shape[1]), v + u[:, None]

    # --- the network and the Tweedie estimate ---------------------------------------

    def eps(
        self,
        zx: torch.Tensor,
        zv: torch.Tensor,
        t: torch.Tensor,
        x0: torch.Tensor,
        v0: torch.Tensor,
        couplings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ε̂ for ``zx``, ``zv`` (projected under ``momentum: project``) and the pair
        terms [B, L, N, N] (in units of ``energy_scale``)."""
        x, v = self.frames_of(zx, zv, x0, v0)
        ex, ev, terms = self.net(zx, zv, x / self.length, v / self.speed, t, self.nodes, couplings)
        if self.config.momentum == "project":
            ex, ev = self.project(ex), self.project(ev)
        return ex, ev, terms

    def tweedie(self, z: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        ab = alpha_bar(t)[:, None, None, None].to(z.dtype)
        return (z - torch.sqrt(1 - ab) * eps) / torch.sqrt(ab)

    def clip(self, z: torch.Tensor) -> torch.Tensor:
        """ẑ0 with every particle's vector shortened to at most ``clip`` (twice the
        longest residual in the training data), so that a poor estimate at high noise
        cannot run away over the sampling steps; rotation-equivariant (it scales whole
        vectors), and re-projected under ``momentum: project``."""
        # an overflowing network output (inf, or NaN from inf − inf) would turn the
        # limit's scaling into NaN: such components fall back to the limit and zero
        z = torch.nan_to_num(z, nan=0.0, posinf=self.limit, neginf=-self.limit)
        norm = torch.sqrt((z**2).sum(-1, keepdim=True) + 1e-30)
        z = z * torch.clamp(self.limit / norm, max=1.0)
        return self.project(z) if self.config.momentum == "project" else z

    def noise(self, shape: tuple, generator: torch.Generator | None, dtype) -> torch.Tensor:
        z = torch.randn(shape, generator=generator, dtype=dtype)
        return self.project(z) if self.config.momentum == "project" else z

    # --- training --------------------------------------------------------------------

    def losses(
        self,
        positions: torch.Tensor,
        velocities: torch.Tensor,
        couplings: torch.Tensor,
        potential: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Denoising loss, each prior's w(t)-weighted residual (before λ), the potential
        terms' regression (reduced energy prior) and the total, for windows
        ``positions``/``velocities`` [B, L+1, N, D] with ``potential`` [B, L+1]."""
        dtype = positions.dtype
        zx0, zv0 = self.residuals(positions, velocities)
        b = len(positions)
        t = T_MIN + (1 - T_MIN) * torch.rand(b, generator=generator, dtype=dtype)
        ab = alpha_bar(t)[:, None, None, None].to(dtype)
        nx = self.noise(zx0.shape, generator, dtype)
        nv = self.noise(zv0.shape, generator, dtype)
        zx = torch.sqrt(ab) * zx0 + torch.sqrt(1 - ab) * nx
        zv = torch.sqrt(ab) * zv0 + torch.sqrt(1 - ab) * nv
        x0, v0 = positions[:, 0], velocities[:, 0]
        ex, ev, terms = self.eps(zx, zv, t, x0, v0, couplings)
        out = {"denoise": ((ex - nx) ** 2).mean() + ((ev - nv) ** 2).mean()}
        x_hat, v_hat = self.frames_of(self.tweedie(zx, t, ex), self.tweedie(zv, t, ev), x0, v0)
        x, v = self.frames_of(zx0, zv0, x0, v0)  # the truth, in the same frame
        w = prior_weight(alpha_bar(t)).to(dtype)
        residual = self.prior_residuals(x_hat, v_hat, x, v, terms, potential, couplings)
        total = out["denoise"]
        for name, (r, weight) in residual.items():
            out[name] = (w * r).mean()
            total = total + weight * out[name]
        if self.config.energy == "reduced":
            target = self.term_targets(x, couplings, potential)
            out["terms"] = ((self.pairs_of(terms) - target) ** 2).mean()
            total = total + out["terms"]
        out["loss"] = total
        return out

    def pairs_of(self, terms: torch.Tensor) -> torch.Tensor:
        """The pair terms [B, L, N, N] as [B, L, P] in i < j order."""
        i, j = priors.pair_index(self.n)
        return terms[..., i, j]

    def potential_of(self, terms: torch.Tensor) -> torch.Tensor:
        """Predicted potential energy [B, L] from pair terms in ``energy_scale`` units."""
        return (self.energy_scale * self.pairs_of(terms) + self.pair_offset).sum(-1)

    def term_targets(
        self, x: torch.Tensor, couplings: torch.Tensor, potential: torch.Tensor
    ) -> torch.Tensor:
        """What the pair head learns, in ``energy_scale`` units [B, L, P]: each term of
        the potential where it is known in closed form, else the recorded potential
        spread evenly over the pairs (only the sum is then known)."""
        if self.potential_terms is not None:
            u = self.potential_terms(x[:, 1:], couplings[:, None])
        else:
            p = len(self.pair_offset)
            u = (potential[:, 1:, None] / p).expand(-1, -1, p)
        return (u - self.pair_offset) / self.energy_scale

    def prior_residuals(self, x_hat, v_hat, x, v, terms, potential, couplings) -> dict:
        """Each active prior's mean squared residual per window [B] and its λ."""
        cfg, m = self.config, self.masses
        out = {}
        if cfg.momentum == "penalty":  # in residual units: what the projection removes
            r = priors.momentum_residual(x_hat[:, 1:], v_hat[:, 1:], m)
            scale = torch.stack([self.length * self.sx, self.speed * self.sv], -1)
            r = r / scale.to(r.dtype)[None, :, :, None]
            out["momentum"] = (r**2).mean((1, 2, 3)), cfg.momentum_weight
        if cfg.kinematic_weight > 0:
            r = priors.kinematic_residual(x_hat, v_hat, self.dt) / self.speed
            out["kinematic"] = (r**2).mean((1, 2, 3)), cfg.kinematic_weight
        if cfg.energy != "none":
            e0 = (
                priors.kinetic(v[:, 0], m)
                + self.reference_potential(x[:, :1], potential, couplings)[:, 0]
            )
            if cfg.energy == "naive":
                u_hat = self.potential_terms(x_hat[:, 1:], couplings[:, None]).sum(-1)
                r = (priors.kinetic(v_hat[:, 1:], m) + u_hat - e0[:, None]) / self.energy_scale
                out["energy"] = (r**2).mean(1), cfg.energy_weight
            else:
                u_hat = self.potential_of(terms)
                r = (priors.kinetic(v_hat[:, 1:], m) + u_hat - e0[:, None]) / self.energy_scale
                tie = torch.zeros_like(r)
                if self.potential_terms is not None:  # each term of x̂0 against its estimate
                    own = self.potential_terms(x_hat[:, 1:], couplings[:, None])
                    scaled = (own - self.pair_offset) / self.energy_scale
                    tie = ((scaled - self.pairs_of(terms).detach()) ** 2).mean(-1)
                out["energy"] = (r**2 + tie).mean(1), cfg.energy_weight
        return out

    def reference_potential(
        self, x: torch.Tensor, potential: torch.Tensor, couplings: torch.Tensor
    ) -> torch.Tensor:
        """The potential [B, F] of true frames ``x``: closed form where known, else the
        recorded labels."""
        if self.potential_terms is not None:
            return self.potential_terms(x, couplings[:, None]).sum(-1)
        return potential[:, : x.shape[1]]

    # --- sampling --------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        x0: torch.Tensor,
        v0: torch.Tensor,
        couplings: torch.Tensor,
        steps: int,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows [B, L+1, N, D] (frame 0 the given one) in the input frame, by ancestral
        sampling on ``steps`` evenly spaced diffusion times."""
        dtype = next(self.net.parameters()).dtype
        x0, v0, couplings = x0.to(dtype), v0.to(dtype), couplings.to(dtype)
        shape = (len(x0), self.frames, self.n, x0.shape[-1])
        times = torch.linspace(1.0, 0.0, steps + 1, dtype=dtype).clamp(min=T_MIN)
        zx, zv = self.noise(shape, generator, dtype), self.noise(shape, generator, dtype)
        for k in range(steps):
            t, s = times[k], times[k + 1]
            tt = t.expand(len(x0))
            ex, ev, _ = self.eps(zx, zv, tt, x0, v0, couplings)
            hx, hv = self.clip(self.tweedie(zx, tt, ex)), self.clip(self.tweedie(zv, tt, ev))
            if k == steps - 1:
                zx, zv = hx, hv
                break
            ab_t, ab_s = alpha_bar(t), alpha_bar(s)
            zx = self._ancestral(zx, hx, ab_t, ab_s, generator)
            zv = self._ancestral(zv, hv, ab_t, ab_s, generator)
        if self.config.momentum == "project":  # exact to float64 rounding
            zx, zv = self.project(zx.double()), self.project(zv.double())
        x, v = self.frames_of(zx.double(), zv.double(), x0.double(), v0.double())
        return self.to_input_frame(x, v, x0.double(), v0.double())

    def _ancestral(self, z, z0, ab_t, ab_s, generator) -> torch.Tensor:
        """One ancestral step from time t to s < t given the Tweedie estimate ``z0``."""
        beta = 1 - ab_t / ab_s
        var = beta * (1 - ab_s) / (1 - ab_t)
        mean = (torch.sqrt(ab_s) * beta * z0 + torch.sqrt(ab_t / ab_s) * (1 - ab_s) * z) / (
            1 - ab_t
        )
        return mean + torch.sqrt(var) * self.noise(z.shape, generator, z.dtype)
