"""Reading and writing structures: anything ASE reads, plus rMD17-style ``.npz``.

Labels that a file carries (energy, forces) come back on a ``SinglePointCalculator`` in
eV and eV/Å; rMD17's kcal/mol are converted here, once. What SAPIS-MD writes itself
(candidates, records, manifests) is written atomically: a reader, or a resumed run, never
sees half a file.
"""

import io
import os
from collections.abc import Sequence
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from sapis.errors import InputError
from sapis.units import kcal_per_mol_to_ev

RMD17_KEYS = ("nuclear_charges", "coords")


def carries_labels(atoms: Atoms) -> bool:
    """Whether ``atoms`` carries both an energy and forces (on its calculator)."""
    calc = atoms.calc
    return calc is not None and {"energy", "forces"} <= set(calc.results)


def write_text_atomically(path: str | Path, text: str, mode: int | None = None) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename; with ``mode``
    (e.g. ``0o600`` for a file holding a password) the file has that mode from its
    creation on, never readable by others in between."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if mode is None:
        tmp.write_text(text)
    else:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), mode)  # whatever the umask
            f.write(text)
    tmp.replace(path)
    return path


def write_frames(path: str | Path, images: Sequence[Atoms]) -> Path:
    """Write ``images`` to an extended XYZ file atomically (none: an empty file)."""
    text = io.StringIO()
    if images:
        ase.io.write(text, list(images), format="extxyz")
    return write_text_atomically(path, text.getvalue())


def read_frames(path: str | Path) -> list[Atoms]:
    """The frames of a file :func:`write_frames` wrote (an empty file: none)."""
    path = Path(path)
    return ase.io.read(path, ":") if path.stat().st_size else []


def label_problem(atoms: Atoms) -> str | None:
    """What is wrong with the energy and forces ``atoms`` carries (None when they are a
    finite energy and an (atoms, 3) array of finite forces)."""
    results = atoms.calc.results
    energy = np.asarray(results["energy"], dtype=float)
    forces = np.asarray(results["forces"], dtype=float)
    if energy.size != 1 or not np.isfinite(energy).all():
        shown = energy.item() if energy.size == 1 else energy.tolist()
        return f"energy {shown!r} is not one finite number"
    if forces.shape != (len(atoms), 3):
        return f"forces have shape {forces.shape}, expected ({len(atoms)}, 3)"
    if not np.isfinite(forces).all():
        bad = sorted(set(np.where(~np.isfinite(forces))[0].tolist()))
        return f"forces of atoms {bad} are not finite"
    return None


def read_structures(path: str | Path) -> list[Atoms]:
    """Read every structure in ``path``.

    ``.npz`` files are read as rMD17 (``nuclear_charges``, ``coords`` in Å, optional
    ``energies`` and ``forces`` in kcal/mol and kcal/mol/Å); anything else through
    ``ase.io.read``. Labels a file carries must be finite and of the right shape.
    Raises :class:`InputError` naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.suffix == ".npz":
        return read_rmd17(path)
    try:
        images = ase.io.read(path, index=":", parallel=False)
    except KeyError as err:  # ASE raises KeyError for an element symbol it does not know
        raise InputError(f"{path}: unknown element {err}") from None
    except Exception as err:
        raise InputError(f"{path}: cannot read structures ({type(err).__name__}: {err})") from None
    if isinstance(images, Atoms):
        images = [images]
    if not images:
        raise InputError(f"{path}: no structures in file")
    for k, atoms in enumerate(images):
        problem = label_problem(atoms) if carries_labels(atoms) else None
        if problem:
            raise InputError(f"{path} structure {k}: {problem}")
    return list(images)


def read_rmd17(path: str | Path) -> list[Atoms]:
    """Read an rMD17-style ``.npz`` file; energies and forces are converted to eV, eV/Å."""
    path = Path(path)
    try:
        data = np.load(path)
        missing = [k for k in RMD17_KEYS if k not in data.files]
        if missing:
            raise InputError(f"{path}: not an rMD17 npz file (missing keys {missing})")
        numbers = np.asarray(data["nuclear_charges"], dtype=int)
        coords = np.asarray(data["coords"], dtype=float)
        energies = data["energies"] if "energies" in data.files else None
        forces = data["forces"] if "forces" in data.files else None
        indices = data["old_indices"] if "old_indices" in data.files else None
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"{path}: cannot read npz ({type(err).__name__}: {err})") from None
    if coords.ndim != 3 or coords.shape[1:] != (len(numbers), 3):
        raise InputError(
            f"{path}: coords have shape {coords.shape}, expected (frames, {len(numbers)}, 3)"
        )
    if len(coords) == 0:
        raise InputError(f"{path}: no structures in file (coords hold 0 frames)")
    labelled = energies is not None and forces is not None
    if labelled and not (len(energies) == len(forces) == len(coords)):
        raise InputError(
            f"{path}: {len(coords)} frames but {len(energies)} energies and {len(forces)} forces"
        )
    images = []
    for k, positions in enumerate(coords):
        atoms = Atoms(numbers=numbers, positions=positions)
        atoms.info.update(source="import", frame=k)
        if indices is not None:
            atoms.info["rmd17_index"] = int(indices[k])
        if labelled:
            energy = kcal_per_mol_to_ev(np.asarray(energies[k], dtype=float))
            atoms.calc = SinglePointCalculator(
                atoms,
                energy=float(energy) if energy.size == 1 else energy,
                forces=kcal_per_mol_to_ev(np.asarray(forces[k], dtype=float)),
            )
            problem = label_problem(atoms)
            if problem:
                raise InputError(f"{path}: frame {k}: {problem}")
        images.append(atoms)
    return images
