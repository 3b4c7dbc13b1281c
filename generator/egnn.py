"""An E(n)-equivariant graph network (Satorras et al., 2021) that predicts diffusion noise.

Every pair of atoms of the molecule is an edge (molecules here have tens of atoms), so
the network works on dense ``[batch, atoms, atoms]`` tensors. Atoms carry their element
(one-hot) and the noise level; edges carry whether the two atoms are bonded in the
reference molecule, and the current distance. Messages depend on distances only, and
positions move along inter-atomic difference vectors, so the output rotates, reflects
and permutes with the input and ignores translations.
"""

import math

import torch
from torch import nn


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, n_out))


def radial_basis(d: torch.Tensor, n: int, cutoff: float) -> torch.Tensor:
    """Gaussians of the distance ``d`` (any shape) on ``n`` centres in [0, cutoff]."""
    centres = torch.linspace(0.0, cutoff, n, dtype=d.dtype, device=d.device)
    width = cutoff / n
    return torch.exp(-(((d[..., None] - centres) / width) ** 2))


class EquivariantLayer(nn.Module):
    """One message-passing step that updates atom features and positions."""

    def __init__(self, hidden: int, edge_features: int) -> None:
        super().__init__()
        # The first linear map of the message MLP, split by input so the per-atom parts
        # are computed once per atom instead of once per pair.
        self.from_i = nn.Linear(hidden, hidden)
        self.from_j = nn.Linear(hidden, hidden, bias=False)
        self.from_edge = nn.Linear(edge_features, hidden, bias=False)
        self.message = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.update = _mlp(2 * hidden, hidden, hidden)
        self.step = _mlp(hidden, hidden, 1)
        nn.init.zeros_(self.step[-1].weight)
        nn.init.zeros_(self.step[-1].bias)

    def forward(
        self,
        h: torch.Tensor,
        diff: torch.Tensor,
        dist: torch.Tensor,
        edges: torch.Tensor,
        pairs: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """New atom features, and the position update along ``diff`` (x_i - x_j)."""
        m = self.from_i(h)[:, :, None] + self.from_j(h)[:, None, :] + self.from_edge(edges)
        m = self.message(m) * pairs[..., None]
        h = h + self.update(torch.cat([h, m.sum(2)], dim=-1))
        weights = self.step(m) * pairs[..., None]
        return h, (diff / (dist[..., None] + 1.0) * weights).sum(2)


class ScoreNetwork(nn.Module):
    """Predicts the noise in noisy coordinates of one molecule type.

    ``species``: the atom types, as indices into the model's element list, ``[atoms]``;
    ``bonded``: the reference molecule's bond graph as a 0/1 ``[atoms, atoms]`` matrix.
    ``forward(x, t)`` takes coordinates ``[batch, atoms, 3]`` (model units) and the
    diffusion time ``[batch]`` in [0, 1], and returns a ``[batch, atoms, 3]`` vector field
    (not yet projected to the centre-of-mass subspace).
    """

    def __init__(
        self,
        n_elements: int,
        hidden: int = 48,
        layers: int = 4,
        n_rbf: int = 8,
        cutoff: float = 4.0,
    ) -> None:
        super().__init__()
        self.n_elements, self.hidden, self.n_layers = n_elements, hidden, layers
        self.n_rbf, self.cutoff = n_rbf, cutoff
        self.embed = _mlp(n_elements + 2, hidden, hidden)
        edge_features = 2 + n_rbf  # bonded flag, squared distance, radial basis
        self.layers = nn.ModuleList(EquivariantLayer(hidden, edge_features) for _ in range(layers))

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, species: torch.Tensor, bonded: torch.Tensor
    ) -> torch.Tensor:
        batch, n = x.shape[:2]
        onehot = nn.functional.one_hot(species, self.n_elements).to(x.dtype)
        time = torch.stack([t, torch.sin(math.pi * t)], dim=-1).to(x.dtype)
        h = torch.cat([onehot.expand(batch, n, -1), time[:, None, :].expand(batch, n, 2)], dim=-1)
        h = self.embed(h)
        pairs = 1.0 - torch.eye(n, dtype=x.dtype, device=x.device)
        bond = bonded.to(x.dtype).expand(batch, n, n)
        shift = torch.zeros_like(x)
        for layer in self.layers:
            y = x + shift
            diff = y[:, :, None] - y[:, None]
            dist = torch.sqrt((diff**2).sum(-1) + 1e-12)
            edges = torch.cat(
                [
                    bond[..., None],
                    dist[..., None] ** 2 / self.cutoff**2,
                    radial_basis(dist, self.n_rbf, self.cutoff),
                ],
                dim=-1,
            )
            h, step = layer(h, diff, dist, edges, pairs)
            shift = shift + step
        return shift

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
