"""The manifest of an ensemble folder, ``ensemble.json``: one typed reader and writer.

The folder holds the manifest and one folder per member (``member-0/best.ckpt``,
``record.json`` and, once packaged, ``model.nequip.zip``).
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sapis.errors import InputError
from sapis.io import write_text_atomically

MANIFEST = "ensemble.json"


@dataclass
class Member:
    """One member: its checkpoint (relative to the folder), seed, parent checkpoint,
    parameters, validation errors (force eV/Å, energy eV), training time and compute,
    and why its training stopped (``converged``, ``epoch budget`` or ``wall-time cap``)."""

    checkpoint: str
    seed: int
    parent: str | None
    parameters: int
    val_force_mae: float
    val_energy_mae: float
    wall_seconds: float
    steps: int
    flops: float
    package: str | None = None
    epochs: int = 0
    stopped_by: str = ""


@dataclass
class EnsembleManifest:
    """What an ensemble folder holds: size name, elements, cutoff r_max (Å), members,
    the data it saw, the training settings, its parent and the spread calibration (None
    until calibrated: a folder without it is an unfinished training)."""

    size: str
    type_names: list[str]
    r_max: float
    dtype: str
    members: list[Member]
    n_train: int
    n_val: int
    training: dict
    parent: str | None
    created: str
    wall_seconds: float
    calibration: dict | None = None
    extra: dict = field(default_factory=dict)

    @staticmethod
    def exists(folder: str | Path) -> bool:
        return (Path(folder) / MANIFEST).is_file()

    @classmethod
    def finished(cls, folder: str | Path) -> bool:
        """Whether ``folder`` holds a finished ensemble (trained and calibrated)."""
        return cls.exists(folder) and cls.read(folder).calibrated

    @classmethod
    def read(cls, folder: str | Path) -> "EnsembleManifest":
        """The manifest of ``folder``; an :class:`InputError` if there is none."""
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise InputError(f"{Path(folder)}: not an ensemble folder (no {MANIFEST})")
        try:
            data = json.loads(path.read_text())
            members = [Member(**m) for m in data.pop("members")]
            known = set(cls.__dataclass_fields__) - {"members", "extra"}
            extra = {k: data.pop(k) for k in list(data) if k not in known}
            return cls(members=members, extra=extra, **data)
        except (ValueError, TypeError, KeyError) as err:
            raise InputError(f"{path}: not a readable ensemble manifest ({err})") from None

    def write(self, folder: str | Path) -> Path:
        """Write ``ensemble.json`` into ``folder`` atomically."""
        data = asdict(self)
        data.update(data.pop("extra"))
        return write_text_atomically(Path(folder) / MANIFEST, json.dumps(data, indent=1))

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None

    @property
    def parameters(self) -> int:
        return self.members[0].parameters

    @property
    def best_val_force_mae(self) -> float:
        """The lowest member validation force MAE (eV/Å)."""
        return min(m.val_force_mae for m in self.members)

    @property
    def converged_members(self) -> int:
        """Members whose training stopped on a validation plateau, not on a budget."""
        return sum(m.stopped_by == "converged" for m in self.members)

    def checkpoints(self, folder: str | Path) -> list[Path]:
        """The members' checkpoint files, in member order; an :class:`InputError` for one
        that is not a ``.ckpt`` file inside ``folder`` (a crafted manifest could point
        anywhere, or at a ``.nequip.zip`` package, which runs code when loaded)."""
        root = Path(folder).resolve()
        paths = []
        for k, m in enumerate(self.members):
            path = (root / m.checkpoint).resolve()
            if not path.is_relative_to(root) or path.suffix != ".ckpt":
                raise InputError(
                    f"{root / MANIFEST}: member {k}'s checkpoint {m.checkpoint!r} is not a "
                    f".ckpt file inside the ensemble folder; refused"
                )
            paths.append(path)
        return paths
