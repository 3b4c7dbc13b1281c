"""Write the five-spring and three-body train/val/test sets into this folder.

Run from the repository root: ``.venv/bin/python data/dynamics/make_particles.py``. Every
split has its own seed, so the files come out the same on every run (and the first ``k``
trajectories of a split are what ``build(system, split, k)`` draws).
"""

import sys
from pathlib import Path

from sapis.generator.dynamics.data import Trajectories
from sapis.generator.dynamics.systems import particle_system

HERE = Path(__file__).resolve().parent

#: frames per trajectory, for every split
FRAMES = {"five-spring": 50, "three-body": 50}

#: (trajectories, seed) of every split
SPLITS = {
    "five-spring": {"train": (160, 1601), "val": (40, 1602), "test": (100, 1603)},
    "three-body": {"train": (360, 1611), "val": (90, 1612), "test": (100, 1613)},
}


def build(system: str, split: str, n_trajectories: int | None = None) -> Trajectories:
    """The ``split`` of ``system`` (its first ``n_trajectories`` trajectories if given)."""
    size, seed = SPLITS[system][split]
    traj = particle_system(system).simulate(n_trajectories or size, FRAMES[system], seed)
    traj.info["split"] = split
    return traj


def path(system: str, split: str, folder: Path = HERE) -> Path:
    return folder / f"{system}-{split}.npz"


def main(folder: Path = HERE) -> None:
    for system, splits in SPLITS.items():
        for split in splits:
            out = build(system, split).save(path(system, split, folder))
            print(f"{out}: {out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
