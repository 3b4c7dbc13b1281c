"""An E(3)-equivariant augmented coupling flow over the coordinates of one molecule.

After Midgley et al., "SE(3) equivariant augmented coupling flows" (NeurIPS 2023). Each
atom carries its position ``x_i`` and an augmented position ``a_i``; the base draws ``x``
from a harmonic prior on the bond graph in the zero-centre-of-mass subspace and
``a | x ~ N(x, η² I)``. A coupling
layer moves one set (the target) given the other (the condition): an equivariant graph
network on the condition gives each atom an origin ``o_i`` and an orthonormal frame
``F_i`` (Gram–Schmidt of three equivariant vectors, so reflections act on it too) and
invariant features; the target's coordinates in that frame, ``F_iᵀ(t_i − o_i) / η``, go
through monotonic rational-quadratic splines (zuko) whose knots the features set, and
back out of the frame. Rotations, reflections and permutations of the atoms commute with
every layer; the spline derivatives give the exact log-determinant.

Centre of mass: a layer that moves ``x`` changes its centre of mass; the layer then
translates ``x`` and ``a`` together to put it back at the origin. Every layer commutes
with joint translations, so this map on the quotient by translations has the same
Jacobian determinant as the layer itself (the translation block is the identity), and is
inverted by undoing the spline from the shifted condition and re-centring.

The flow's exact density is the joint ``q(x, a)``; the density of ``x`` alone is the
importance-sampling estimate ``log mean_k q(x, a_k) / π(a_k | x)`` with ``a_k ~ π(·|x) =
N(x, η²)`` — consistent as the number of draws grows, a lower bound in expectation.
Coordinates are in model units (Å divided by the molecule's scale) inside.
"""

import math

import torch
from torch import nn
from zuko.transforms import MonotonicRQSTransform

from sapis.generator.egnn import EquivariantLayer, radial_basis

#: Largest log-stretch of a coupling before its spline (e³ per layer).
STRETCH = 3.0


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, n_out))


def gram_schmidt(v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Orthonormal frames ``[..., 3 (axis), 3]`` from three vectors ``[..., 3, 3]``.

    Every step is built from dot products and the vectors themselves (no cross product),
    so for any orthogonal Q, frames of ``v Qᵀ`` are the frames of ``v`` times ``Qᵀ``.
    """
    axes = []
    for k in range(3):
        u = v[..., k, :]
        for e in axes:
            u = u - (u * e).sum(-1, keepdim=True) * e
        axes.append(u / torch.linalg.vector_norm(u, dim=-1, keepdim=True).clamp_min(eps))
    return torch.stack(axes, dim=-2)


class GuardedSpline(MonotonicRQSTransform):
    """zuko's monotonic rational-quadratic spline whose inverse keeps the quadratic's
    discriminant above zero: rounded below it, the square root gave NaN, and a NaN sample
    in a batch poisons the gradient of every other (0 · NaN in the backward pass)."""

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        k = self.searchsorted(self.vertical, y) - 1
        inside, x0, x1, y0, y1, d0, d1, s = self.bin(k)
        dy = inside * (y - y0)
        bend = d0 + d1 - 2 * s
        qa = (y1 - y0) * (s - d0) + dy * bend
        qb = (y1 - y0) * d0 - dy * bend
        qc = -s * dy
        root = torch.sqrt(torch.clamp(qb**2 - 4 * qa * qc, min=1e-20))
        z = 2 * qc / (-qb - root)
        return torch.where(inside, x0 + z * (x1 - x0), y)


class FrameConditioner(nn.Module):
    """Invariant features and equivariant origins and frames of every atom, from the
    condition's coordinates ``y`` ``[batch, atoms, 3]``, the atom types and bond graph.

    An E(n)-equivariant graph network (the diffusion model's layers) on the complete
    graph refines ``y`` layer by layer, as a denoiser would: the refined positions are
    the origins, so a target atom is placed relative to where the condition says it
    belongs. Three equivariant vectors per atom, sums of refined difference vectors
    weighted by invariant pair weights, span the frame.
    """

    def __init__(
        self, n_elements: int, hidden: int, layers: int, n_rbf: int = 8, cutoff: float = 4.0
    ) -> None:
        super().__init__()
        self.n_elements, self.n_rbf, self.cutoff = n_elements, n_rbf, cutoff
        self.embed = _mlp(n_elements, hidden, hidden)
        edge_features = 2 + n_rbf  # bonded flag, squared distance, radial basis
        self.layers = nn.ModuleList(EquivariantLayer(hidden, edge_features) for _ in range(layers))
        self.vectors = _mlp(2 * hidden + edge_features, hidden, 3)

    def _edges(
        self, y: torch.Tensor, bond: torch.Tensor, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        diff = y[:, :, None] - y[:, None]
        dist = torch.sqrt((diff**2).sum(-1) + 1e-12)
        d = dist * scale  # in Å
        edges = torch.cat(
            [
                bond[..., None],
                (d[..., None] / self.cutoff) ** 2,
                radial_basis(d, self.n_rbf, self.cutoff),
            ],
            dim=-1,
        )
        return diff, dist, edges

    def forward(
        self, y: torch.Tensor, species: torch.Tensor, bonded: torch.Tensor, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features ``[batch, atoms, hidden]``, origins ``[batch, atoms, 3]`` and frames
        ``[batch, atoms, 3, 3]`` (rows are the axes)."""
        batch, n = y.shape[:2]
        bond = bonded.to(y.dtype).expand(batch, n, n)
        pairs = 1.0 - torch.eye(n, dtype=y.dtype, device=y.device)
        onehot = nn.functional.one_hot(species, self.n_elements).to(y.dtype)
        h = self.embed(onehot).expand(batch, n, -1)
        origin = y
        for layer in self.layers:
            diff, dist, edges = self._edges(origin, bond, scale)
            h, step = layer(h, diff, dist, edges, pairs)
            origin = origin + step
        diff, dist, edges = self._edges(origin, bond, scale)
        w = self.vectors(torch.cat([_pairs_i(h), _pairs_j(h), edges], dim=-1))
        w = w * pairs[..., None]
        v = torch.einsum("bijk,bijc->bikc", w, diff / (dist[..., None] + 1.0))
        return h, origin, gram_schmidt(v)


def _pairs_i(h: torch.Tensor) -> torch.Tensor:
    n = h.shape[1]
    return h[:, :, None].expand(-1, -1, n, -1)


def _pairs_j(h: torch.Tensor) -> torch.Tensor:
    n = h.shape[1]
    return h[:, None].expand(-1, n, -1, -1)


class FrameSplineCoupling(nn.Module):
    """Moves a target set of positions by invariant splines in frames of the condition."""

    def __init__(
        self, n_elements: int, hidden: int, layers: int, bins: int, width: float, bound: float
    ) -> None:
        super().__init__()
        self.bins, self.width, self.bound = bins, width, bound
        self.conditioner = FrameConditioner(n_elements, hidden, layers)
        self.knots = nn.Linear(hidden, 3 * (3 * bins - 1) + 3)
        nn.init.zeros_(self.knots.weight)  # starts as the identity
        nn.init.zeros_(self.knots.bias)

    def _spline(
        self, condition: torch.Tensor, species: torch.Tensor, bonded: torch.Tensor, scale: float
    ) -> tuple[GuardedSpline, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The spline, origins, frames, and log-scales ``[batch, atoms, 3]`` applied
        before the spline (an unbounded stretch; the spline's range is bounded)."""
        h, origin, frame = self.conditioner(condition, species, bonded, scale)
        out = self.knots(h)
        p = out[..., 3:].unflatten(-1, (3, 3 * self.bins - 1))
        k = self.bins
        spline = GuardedSpline(p[..., :k], p[..., k : 2 * k], p[..., 2 * k :], bound=self.bound)
        log_scale = STRETCH * torch.tanh(out[..., :3] / STRETCH)
        return spline, origin, frame, log_scale

    def forward(
        self,
        target: torch.Tensor,
        condition: torch.Tensor,
        species: torch.Tensor,
        bonded: torch.Tensor,
        scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The moved target and the log-determinant ``[batch]`` (towards the base)."""
        spline, origin, frame, log_scale = self._spline(condition, species, bonded, scale)
        local = torch.einsum("bnkc,bnc->bnk", frame, target - origin) / self.width
        moved, ladj = spline.call_and_ladj(local * torch.exp(log_scale))
        logdet = (ladj + log_scale).sum((1, 2))
        return origin + torch.einsum("bnkc,bnk->bnc", frame, moved) * self.width, logdet

    def inverse(
        self,
        target: torch.Tensor,
        condition: torch.Tensor,
        species: torch.Tensor,
        bonded: torch.Tensor,
        scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The target before the layer and the layer's log-determinant ``[batch]``
        (of the forward direction, at that point)."""
        spline, origin, frame, log_scale = self._spline(condition, species, bonded, scale)
        local = torch.einsum("bnkc,bnc->bnk", frame, target - origin) / self.width
        stretched = spline.inv(local)
        _, ladj = spline.call_and_ladj(stretched)
        before = stretched * torch.exp(-log_scale)
        logdet = (ladj + log_scale).sum((1, 2))
        return origin + torch.einsum("bnkc,bnk->bnc", frame, before) * self.width, logdet


class HarmonicPrior(nn.Module):
    """A Gaussian over the centre-of-mass-free coordinates whose precision is the bond
    graph's Laplacian: p(x) ∝ exp(−½ (k Σ_bonds |x_i − x_j|² + ε |x|²)).

    Bonded atoms start a bond apart (k is set from the data's bond lengths: a tree bond's
    mean square length is 3/k), so the flow refines a molecule-shaped blob instead of
    building bonds from white noise (the harmonic prior of Jing et al., 2023, and Stärk
    et al., 2023). It depends on distances and the graph only, so it is E(3)- and
    permutation-invariant; its normaliser is exact (a Cholesky factor on the subspace).
    """

    def __init__(
        self, bonded: torch.Tensor, masses: torch.Tensor, stiffness: float, confine: float = 0.1
    ) -> None:
        super().__init__()
        a = bonded.double()
        laplacian = torch.diag(a.sum(1)) - a
        n, m = len(a), masses.double()
        q, _ = torch.linalg.qr(torch.cat([m[:, None], torch.eye(n, dtype=torch.float64)], 1))
        basis = q[:, 1:n]  # orthonormal basis of {u : m · u = 0}
        precision = stiffness * laplacian + confine * torch.eye(n, dtype=torch.float64)
        chol = torch.linalg.cholesky(basis.T @ precision @ basis)
        self.register_buffer("precision", precision)
        self.register_buffer("basis", basis)
        self.register_buffer("chol", chol)
        self.norm = float(3 * torch.log(torch.diagonal(chol)).sum()) - 1.5 * (n - 1) * math.log(
            2 * math.pi
        )

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) ``[batch]`` for ``x`` ``[batch, atoms, 3]`` in the subspace."""
        quadratic = torch.einsum("bic,ij,bjc->b", x, self.precision.to(x.dtype), x)
        return self.norm - 0.5 * quadratic

    def sample(self, n: int, generator: torch.Generator | None, dtype: torch.dtype) -> torch.Tensor:
        """``n`` draws ``[n, atoms, 3]``."""
        white = torch.randn((n, len(self.chol), 3), generator=generator, dtype=self.chol.dtype)
        u = torch.linalg.solve_triangular(self.chol.T, white, upper=True)
        return (self.basis @ u).to(dtype)


class AugmentedFlow(nn.Module):
    """The flow of one molecule type: ``blocks`` pairs of couplings (``x`` given ``a``,
    then ``a`` given ``x``) between data ``(x, a)`` and the Gaussian base.

    ``species`` indexes the element list per atom; ``bonded`` is the 0/1 bond matrix;
    ``masses`` (amu) define the centre of mass; ``scale`` (Å) the model unit; ``augment``
    is η, the spread of the augmented coordinates around the atoms (model units).
    """

    def __init__(
        self,
        species: torch.Tensor,
        bonded: torch.Tensor,
        masses: torch.Tensor,
        scale: float,
        n_elements: int,
        hidden: int = 32,
        layers: int = 2,
        blocks: int = 4,
        bins: int = 8,
        augment: float = 0.2,
        bound: float = 4.0,
        stiffness: float = 1.0,
    ) -> None:
        super().__init__()
        self.register_buffer("species", species.long())
        self.register_buffer("bonded", bonded.float())
        self.register_buffer("masses", masses.double())
        self.scale, self.augment = float(scale), float(augment)
        self.prior = HarmonicPrior(bonded, masses, stiffness)
        self.couplings = nn.ModuleList(
            FrameSplineCoupling(n_elements, hidden, layers, bins, augment, bound)
            for _ in range(2 * blocks)
        )

    @property
    def n_atoms(self) -> int:
        return len(self.species)

    @property
    def dof(self) -> int:
        """Dimension of the space of ``x`` (centre of mass removed)."""
        return 3 * self.n_atoms - 3

    def centre(self, x: torch.Tensor) -> torch.Tensor:
        """Centre of mass ``[batch, 1, 3]``."""
        m = self.masses.to(x.dtype)
        return (m[None, :, None] * x).sum(1, keepdim=True) / m.sum()

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Orthogonal projection of ``[batch, atoms, 3]`` onto ``Σ m_i x_i = 0``."""
        m = self.masses.to(x.dtype)
        return x - m[:, None] * (m[None, :, None] * x).sum(1, keepdim=True) / (m @ m)

    def to_base(
        self, x: torch.Tensor, a: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x, a)`` (x centred) to the base, with the log-determinant ``[batch]``."""
        logdet = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        args = (self.species, self.bonded, self.scale)
        for k, coupling in enumerate(self.couplings):
            if k % 2 == 0:
                x, ladj = coupling(x, a, *args)
                shift = self.centre(x)
                x, a = x - shift, a - shift
            else:
                a, ladj = coupling(a, x, *args)
            logdet = logdet + ladj
        return x, a, logdet

    def from_base(
        self, x: torch.Tensor, a: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The base point ``(x, a)`` to data, with the log-determinant of :meth:`to_base`
        at the result."""
        logdet = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        args = (self.species, self.bonded, self.scale)
        for k in reversed(range(len(self.couplings))):
            coupling = self.couplings[k]
            if k % 2 == 0:
                x, ladj = coupling.inverse(x, a, *args)
                shift = -self.centre(x)
                x, a = x + shift, a + shift
            else:
                a, ladj = coupling.inverse(a, x, *args)
            logdet = logdet + ladj
        return x, a, logdet

    def base_log_prob(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """log of the harmonic prior of ``x`` + log N(a; x, η² I), ``[batch]``."""
        return self.prior.log_prob(x) + self.augment_log_prob(x, a)

    def augment_log_prob(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """log π(a | x) = log N(a; x, η² I), the augmented target, ``[batch]``."""
        n3, eta = 3 * self.n_atoms, self.augment
        return -0.5 * ((a - x) ** 2).sum((1, 2)) / eta**2 - 0.5 * n3 * math.log(
            2 * math.pi * eta**2
        )

    def joint_log_prob(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Exact log q(x, a) ``[batch]`` in model units; ``x`` is centred first (the
        density of its centre-of-mass-free part), ``a`` moves with it."""
        shift = self.centre(x)
        zx, za, logdet = self.to_base(x - shift, a - shift)
        return self.base_log_prob(zx, za) + logdet

    def log_prob(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Importance-sampling estimate of log q(x) ``[batch]`` from ``noise``
        ``[draws, batch, atoms, 3]`` (standard normal): ``a_k = x + η noise_k``."""
        draws = len(noise)
        x = x - self.centre(x)
        xs = x.expand(draws, *x.shape).reshape(-1, *x.shape[1:])
        a = xs + self.augment * noise.reshape(xs.shape)
        ratio = self.joint_log_prob(xs, a) - self.augment_log_prob(xs, a)
        return torch.logsumexp(ratio.reshape(draws, -1), 0) - math.log(draws)

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` draws ``(x, a)`` in model units and their exact log q(x, a)."""
        dtype = dtype or next(self.parameters()).dtype
        shape = (n, self.n_atoms, 3)
        zx = self.prior.sample(n, generator, dtype)
        za = zx + self.augment * torch.randn(shape, generator=generator, dtype=dtype)
        x, a, logdet = self.from_base(zx, za)
        return x, a, self.base_log_prob(zx, za) + logdet

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
