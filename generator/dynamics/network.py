"""An E(n)-equivariant network over a window of frames: the generator's EGNN layer inside
each frame, and mixing across frames.

Every (frame, particle) carries invariant features ``h`` and ``C`` vector channels ``V``
(starting as the noisy position and velocity residuals, the frame's velocity and its
position). A block

1. runs :class:`~sapis.generator.egnn.EquivariantLayer` inside each frame (messages from
   distances, pair couplings and ``h``; a vector step along x_i − x_j, added to every
   channel with its own learned weight);
2. mixes the channels of each (frame, particle) with weights computed from ``h``;
3. mixes frames: ``h`` and each vector channel through learned ``[frames, frames]`` maps;
4. feeds the channels' Gram matrix (inner products: invariants) back into ``h``.

Vectors are only ever multiplied by invariant scalars and summed, so the output rotates
and reflects with the input, permutes with the particles and, since positions enter
only as differences or relative to the first frame's centre of mass, ignores
translations. A pair head gives one invariant per frame and pair (the potential's
terms for the reduced energy prior).
"""

import math

import torch
from torch import nn

from sapis.generator.egnn import EquivariantLayer, _mlp, radial_basis

#: Vector channels: noisy position residual, noisy velocity residual, velocity, position.
CHANNELS = 4


class DynamicsBlock(nn.Module):
    """One block: EGNN in each frame, channel mixing, frame mixing, Gram feedback."""

    def __init__(self, hidden: int, edge_features: int, frames: int, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.spatial = EquivariantLayer(hidden, edge_features)
        self.to_channels = nn.Parameter(torch.ones(channels))
        self.gates = _mlp(hidden, hidden, channels * channels)
        nn.init.zeros_(self.gates[-1].weight)
        nn.init.zeros_(self.gates[-1].bias)
        self.frame_h = nn.Parameter(torch.zeros(frames, frames))
        self.frame_update = _mlp(hidden, hidden, hidden)
        self.frame_v = nn.Parameter(torch.zeros(channels, frames, frames))
        n_gram = channels * (channels + 1) // 2
        self.gram = _mlp(n_gram, hidden, hidden)
        self.register_buffer("upper", torch.triu_indices(channels, channels), persistent=False)

    def forward(
        self,
        h: torch.Tensor,
        v: torch.Tensor,
        positions: torch.Tensor,
        edges: torch.Tensor,
        pairs: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``h`` [B, F, N, H], ``v`` [B, F, N, C, D], ``positions`` [B, F, N, D] (the
        frame's current estimate), ``edges`` [B, F, N, N, E]; returns new ``h`` and ``v``."""
        b, f, n, hidden = h.shape
        diff = positions[:, :, :, None] - positions[:, :, None]
        dist = torch.sqrt((diff**2).sum(-1) + 1e-12)
        flat = (b * f, n)
        h2, step = self.spatial(
            h.reshape(*flat, hidden),
            diff.reshape(*flat, n, -1),
            dist.reshape(*flat, n),
            edges.reshape(*flat, n, edges.shape[-1]),
            pairs,
        )
        h = h2.reshape(b, f, n, hidden)
        v = v + step.reshape(b, f, n, 1, -1) * self.to_channels[:, None]
        gates = self.gates(h).reshape(b, f, n, self.channels, self.channels)
        v = v + torch.einsum("bfnkc,bfncd->bfnkd", gates, v)
        h = h + self.frame_update(torch.einsum("gf,bfnh->bgnh", self.frame_h, h))
        v = v + torch.einsum("cgf,bfncd->bgncd", self.frame_v, v)
        gram = torch.einsum("bfncd,bfnkd->bfnck", v, v)[..., self.upper[0], self.upper[1]]
        h = h + self.gram(gram / (1.0 + gram.abs()))
        return h, v


class DynamicsNetwork(nn.Module):
    """Predicts the noise in a window's position and velocity residuals.

    ``node_features`` [N, A] describe the particles (masses, elements); ``frames`` is the
    window length L (the first frame, the condition, comes on top).
    """

    def __init__(
        self,
        node_features: int,
        frames: int,
        hidden: int = 64,
        layers: int = 4,
        n_rbf: int = 8,
        cutoff: float = 4.0,
    ) -> None:
        super().__init__()
        self.frames, self.hidden, self.n_layers = frames, hidden, layers
        self.n_rbf, self.cutoff = n_rbf, cutoff
        # node features, diffusion time (2), frame position (2), whether it is the condition
        self.embed = _mlp(node_features + 5, hidden, hidden)
        edge_features = 3 + n_rbf  # coupling, squared distance, distance in frame 0, rbf
        self.blocks = nn.ModuleList(
            DynamicsBlock(hidden, edge_features, frames + 1, CHANNELS) for _ in range(layers)
        )
        self.readout = nn.Parameter(torch.zeros(2, CHANNELS))
        with torch.no_grad():  # start as "the noise is the noisy residual"
            self.readout[0, 0] = self.readout[1, 1] = 1.0
        self.pair_head = _mlp(hidden + n_rbf + 1, hidden, 1)  # h_i + h_j, rbf, coupling

    def forward(
        self,
        zx: torch.Tensor,
        zv: torch.Tensor,
        x: torch.Tensor,
        v: torch.Tensor,
        t: torch.Tensor,
        nodes: torch.Tensor,
        couplings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Noise estimates for ``zx``/``zv`` [B, L, N, D] and pair terms [B, L, N, N].

        ``x``/``v`` [B, L+1, N, D]: every frame's current position and velocity estimate
        in model units (frame 0 the condition); ``t`` [B] the diffusion time; ``nodes``
        [N, A]; ``couplings`` [B, N, N].
        """
        b, f, n, _ = x.shape
        dtype = x.dtype
        time = torch.stack([t, torch.sin(math.pi * t)], dim=-1).to(dtype)
        where = torch.linspace(0.0, 1.0, f, dtype=dtype)
        frame = torch.stack([where, torch.sin(math.pi * where), (where == 0).to(dtype)], -1)
        h = torch.cat(
            [
                nodes.to(dtype).expand(b, f, n, -1),
                time[:, None, None, :].expand(b, f, n, 2),
                frame[None, :, None, :].expand(b, f, n, 3),
            ],
            dim=-1,
        )
        h = self.embed(h)
        zero = torch.zeros_like(x[:, :1])
        vectors = torch.stack(
            [torch.cat([zero, zx], 1), torch.cat([zero, zv], 1), v, x], dim=-2
        )  # [B, F, N, C, D]
        pairs = 1.0 - torch.eye(n, dtype=dtype)
        d0 = torch.sqrt(((x[:, 0, :, None] - x[:, 0, None]) ** 2).sum(-1) + 1e-12)
        base = torch.stack([couplings.to(dtype), d0**2 / self.cutoff**2], -1)  # [B, N, N, 2]
        dist = torch.sqrt(((x[:, :, :, None] - x[:, :, None]) ** 2).sum(-1) + 1e-12)
        edges = torch.cat(
            [
                base[:, None].expand(b, f, n, n, 2),
                (dist**2 / self.cutoff**2)[..., None],
                radial_basis(dist, self.n_rbf, self.cutoff),
            ],
            dim=-1,
        )
        for block in self.blocks:
            h, vectors = block(h, vectors, x, edges, pairs)
        out = torch.einsum("oc,bfncd->bofnd", self.readout, vectors[:, 1:])
        pair = torch.cat(
            [
                h[:, 1:, :, None] + h[:, 1:, None],  # symmetric in i, j
                edges[:, 1:, ..., 3:],
                edges[:, 1:, ..., :1],
            ],
            dim=-1,
        )
        terms = self.pair_head(pair)[..., 0]
        return out[:, 0], out[:, 1], terms

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
