"""A trained dynamics model of one system: network, scales, priors, and its folder.

The folder holds ``dynamics.pt`` (weights and their moving average) and
``dynamics.json`` (the system, its particles, the scales, the settings and one line per
training). Given frames with velocities, it samples the next ``frames`` frames;
:meth:`DynamicsModel.rollout` chains windows into long trajectories.
"""

import json
from pathlib import Path

import numpy as np
import torch

from sapis.errors import InputError
from sapis.generator.dynamics.data import Trajectories
from sapis.generator.dynamics.diffusion import DynamicsDiffusion
from sapis.generator.dynamics.network import DynamicsNetwork
from sapis.generator.dynamics.priors import pair_index
from sapis.generator.dynamics.settings import DynamicsConfig
from sapis.generator.dynamics.systems import SYSTEMS
from sapis.generator.weights import average_of, averaged, save_weights, update_average
from sapis.io import write_text_atomically

WEIGHTS, META = "dynamics.pt", "dynamics.json"


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt((a**2).mean()))


def boosted(windows: Trajectories) -> tuple[np.ndarray, np.ndarray]:
    """Positions and velocities of ``windows`` in each first frame's centre-of-mass frame
    (moving with it)."""
    m = windows.masses[:, None]
    c = (m * windows.positions[:, :1]).sum(-2, keepdims=True) / m.sum()
    u = (m * windows.velocities[:, :1]).sum(-2, keepdims=True) / m.sum()
    steps = np.arange(windows.shape[1])[None, :, None, None] * windows.dt
    return windows.positions - c - steps * u, windows.velocities - u


def observe_scales(windows: Trajectories, potential_terms) -> dict:
    """Units the model works in, measured on training ``windows`` [S, L+1, N, D]."""
    x, v = boosted(windows)
    length, speed = _rms(x[:, 0]), _rms(v[:, 0])
    sx = [max(_rms(x[:, k] - x[:, 0]) / length, 1e-6) for k in range(1, x.shape[1])]
    sv = [max(_rms(v[:, k] - v[:, 0]) / speed, 1e-6) for k in range(1, x.shape[1])]
    n = windows.shape[2]
    if potential_terms is not None:
        with torch.no_grad():
            terms = potential_terms(
                torch.as_tensor(windows.positions), torch.as_tensor(windows.couplings)[:, None]
            ).numpy()
        offset = terms.reshape(-1, terms.shape[-1]).mean(0)
    else:
        offset = np.full(len(pair_index(n)[0]), windows.potential.mean() / len(pair_index(n)[0]))
    energy = float(windows.potential.std()) or float(windows.kinetic().std()) or 1.0
    # the longest residual vector seen, in residual units: samples are kept within 2×
    longest = max(
        float((np.linalg.norm(x[:, k] - x[:, 0], axis=-1) / (length * sx[k - 1])).max())
        for k in range(1, x.shape[1])
    )
    longest = max(
        longest,
        *(
            float((np.linalg.norm(v[:, k] - v[:, 0], axis=-1) / (speed * sv[k - 1])).max())
            for k in range(1, x.shape[1])
        ),
    )
    return {
        "length": length,
        "speed": speed,
        "sx": sx,
        "sv": sv,
        "energy": energy,
        "pair_offset": offset.tolist(),
        "clip": 2.0 * longest,
    }


class DynamicsModel:
    """The diffusion model of one system's windows with the metadata to save and sample."""

    def __init__(self, meta: dict) -> None:
        self.meta = meta
        self.diffusion = self._diffusion(meta)
        self.ema = average_of(self.diffusion.net)

    @classmethod
    def new(cls, train: Trajectories, config: DynamicsConfig) -> "DynamicsModel":
        """An untrained model of ``train``'s system, its units measured on ``train``."""
        if config.frames + 1 > train.shape[1]:
            raise InputError(
                f"a window of {config.frames} frames after the first needs trajectories of "
                f"at least {config.frames + 1} frames; these have {train.shape[1]}"
            )
        system = SYSTEMS.get(train.system)
        if config.energy == "naive" and system is None:
            raise InputError(
                f"energy: naive needs the potential in closed form; {train.system} has "
                "none here (use energy: reduced, which learns it from the recorded energies)"
            )
        terms = _terms(train.system, train.masses)
        windows = train.windows(config.frames + 1, stride=max(1, config.frames // 2))
        elements = sorted(set(int(z) for z in train.numbers))
        meta = {
            "system": train.system,
            "dim": train.dim,
            "dt": train.dt,
            "masses": train.masses.tolist(),
            "numbers": train.numbers.tolist(),
            "elements": elements,
            "couplings": train.couplings[0].tolist(),
            "fixed_couplings": bool((train.couplings == train.couplings[:1]).all()),
            "scales": observe_scales(windows, terms),
            "config": config.model_dump(),
            "trainings": [],
        }
        return cls(meta)

    @staticmethod
    def _diffusion(meta: dict) -> DynamicsDiffusion:
        config = DynamicsConfig(**meta["config"])
        masses = torch.tensor(meta["masses"], dtype=torch.float64)
        onehot = torch.nn.functional.one_hot(
            torch.tensor([meta["elements"].index(z) for z in meta["numbers"]]),
            len(meta["elements"]),
        ).double()
        nodes = torch.cat([(masses / masses.mean())[:, None], onehot], dim=-1)
        net = DynamicsNetwork(nodes.shape[1], config.frames, config.hidden, config.layers)
        net = net.float()  # whatever default dtype another library (nequip) has set
        return DynamicsDiffusion(
            net,
            config,
            nodes,
            masses,
            meta["dt"],
            meta["scales"],
            _terms(meta["system"], np.array(meta["masses"])),
        )

    @property
    def config(self) -> DynamicsConfig:
        return DynamicsConfig(**self.meta["config"])

    @property
    def system(self) -> str:
        return self.meta["system"]

    @property
    def numbers(self) -> np.ndarray:
        return np.array(self.meta["numbers"])

    @property
    def masses(self) -> np.ndarray:
        return np.array(self.meta["masses"])

    def matches(self, train: Trajectories, config: DynamicsConfig) -> bool:
        """Whether this model can be trained further on ``train`` with ``config``."""
        old = self.config
        return (
            self.system == train.system
            and self.meta["numbers"] == train.numbers.tolist()
            and np.allclose(self.masses, train.masses)
            and np.isclose(self.meta["dt"], train.dt)
            and (old.frames, old.hidden, old.layers)
            == (config.frames, config.hidden, config.layers)
        )

    def check_start(self, x0: np.ndarray, v0: np.ndarray, couplings: np.ndarray) -> None:
        """Refuse start frames this model cannot continue, naming the problem."""
        n, d = len(self.meta["numbers"]), self.meta["dim"]
        for name, a in (("positions", x0), ("velocities", v0)):
            if a.ndim != 3 or a.shape[1:] != (n, d):
                raise InputError(
                    f"start {name} have shape {a.shape[1:] if a.ndim == 3 else a.shape}; "
                    f"this {self.system} model needs {n} particles in {d} dimensions"
                )
            if not np.isfinite(a).all():
                raise InputError(f"start {name} hold NaN or inf")
        if couplings.shape != (len(x0), n, n):
            raise InputError(f"couplings have shape {couplings.shape}, expected {(len(x0), n, n)}")
        if (
            self.meta["fixed_couplings"]
            and not (couplings == np.array(self.meta["couplings"])).all()
        ):
            raise InputError(
                f"the start frame's bond graph differs from the {self.system} this model "
                "was trained on"
            )

    def update_ema(self, decay: float) -> None:
        update_average(self.diffusion.net, self.ema, decay)

    def save(self, folder: str | Path) -> Path:
        """Write weights and metadata atomically into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_weights(folder / WEIGHTS, self.diffusion.net, self.ema)
        write_text_atomically(folder / META, json.dumps(self.meta, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "DynamicsModel":
        folder = Path(folder)
        if not (folder / META).is_file() or not (folder / WEIGHTS).is_file():
            raise InputError(f"{folder}: no dynamics model here (needs {WEIGHTS} and {META})")
        try:
            meta = json.loads((folder / META).read_text())
            model = cls(meta)
            state = torch.load(folder / WEIGHTS, weights_only=True)
            model.diffusion.net.load_state_dict(state["weights"])
        except (KeyError, ValueError, RuntimeError, TypeError) as err:
            raise InputError(f"{folder}: a damaged dynamics model ({err})") from None
        model.ema = state["ema"]
        return model

    def sample(
        self,
        x0: np.ndarray,
        v0: np.ndarray,
        couplings: np.ndarray | None = None,
        seed: int = 0,
        batch_size: int = 256,
    ) -> Trajectories:
        """The next ``frames`` frames after each start frame ``x0``/``v0`` [S, N, D]
        (``couplings`` [S, N, N]: the molecule's own when omitted), as windows of
        ``frames + 1`` frames (frame 0 the start), from the averaged weights."""
        x0, v0 = np.asarray(x0, dtype=float), np.asarray(v0, dtype=float)
        if couplings is None:
            n = len(self.numbers)
            couplings = np.broadcast_to(np.array(self.meta["couplings"]), (len(x0), n, n))
        couplings = np.array(couplings, dtype=float)
        self.check_start(x0, v0, couplings)
        rng = torch.Generator().manual_seed(seed)
        xs, vs = [], []
        with averaged(self.diffusion.net, self.ema) as net:
            net.eval()
            for a in range(0, len(x0), batch_size):
                x, v = self.diffusion.sample(
                    torch.as_tensor(x0[a : a + batch_size]),
                    torch.as_tensor(v0[a : a + batch_size]),
                    torch.as_tensor(couplings[a : a + batch_size]),
                    self.config.steps,
                    rng,
                )
                xs.append(x.numpy())
                vs.append(v.numpy())
        return self._trajectories(np.concatenate(xs), np.concatenate(vs), couplings, seed)

    def rollout(
        self, x0: np.ndarray, v0: np.ndarray, windows: int, couplings=None, seed: int = 0
    ) -> Trajectories:
        """``windows`` windows chained: each starts from the last frame of the one before;
        trajectories of ``windows · frames + 1`` frames."""
        xs, vs = [np.asarray(x0, dtype=float)[:, None]], [np.asarray(v0, dtype=float)[:, None]]
        for k in range(windows):
            w = self.sample(xs[-1][:, -1], vs[-1][:, -1], couplings, seed=seed + k)
            xs.append(w.positions[:, 1:])
            vs.append(w.velocities[:, 1:])
        c = couplings if couplings is not None else w.couplings
        return self._trajectories(np.concatenate(xs, 1), np.concatenate(vs, 1), c, seed)

    def _trajectories(self, x, v, couplings, seed) -> Trajectories:
        terms = _terms(self.system, self.masses)
        potential = np.zeros(x.shape[:2])
        if terms is not None:
            with torch.no_grad():
                potential = terms(torch.as_tensor(x), torch.as_tensor(couplings)[:, None])
            potential = potential.sum(-1).numpy()
        return Trajectories(
            self.system,
            x,
            v,
            self.masses,
            np.asarray(couplings, dtype=float),
            self.numbers,
            potential,
            self.meta["dt"],
            {
                "source": "dynamics",
                "seed": seed,
                "potential": "closed form" if terms is not None else "not computed",
            },
        )


def _terms(system: str, masses: np.ndarray):
    """The system's potential as pair terms of (positions, couplings), or None."""
    known = SYSTEMS.get(system)
    if known is None:
        return None
    m = torch.as_tensor(masses, dtype=torch.float64)
    return lambda x, couplings: known.potential_terms(x, couplings, m.to(x.dtype))
