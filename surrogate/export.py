"""Package ensemble members with nequip's own packager (``nequip-package build``).

A ``.nequip.zip`` package loads without this code base: through
``nequip.model.saved_models.load_utils.load_saved_model``, ``nequip-compile`` (for
LAMMPS' ``pair_nequip`` or the ``NequIPCalculator``), or as a model builder in a nequip
training config.

``nequip-compile --mode aotinductor`` traces the model on the example frame stored in the
package and checks the compiled model against it on every output of its target, the
``ase`` target's ``stress`` included. nequip gives a frame without a cell a padded box
for that example, but ASE molecules carry a zero cell, which nequip keeps: their stress
is NaN and the check fails. So packages are built with nequip's
``NonPeriodicCellTransform`` in the data config that makes the example frame: the
molecule in a box (periodic frames are left alone); what the model computes is unchanged.
"""

import contextlib
import io
import logging
import tempfile
from pathlib import Path

from sapis.surrogate.manifest import EnsembleManifest

CELL_TRANSFORM = "nequip.data.transforms.NonPeriodicCellTransform"


def package_members(folder: str | Path) -> list[Path]:
    """Write ``member-k/model.nequip.zip`` for every member; record them in the manifest."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from nequip.scripts.package import main as nequip_package

    # importing nequip's packager configures the root logger (hydra: INFO to stdout),
    # which would echo every library's INFO records: put it back as it was
    root.handlers[:] = handlers
    root.setLevel(level)

    folder = Path(folder).resolve()
    manifest = EnsembleManifest.read(folder)
    written = []
    for member, checkpoint in zip(manifest.members, manifest.checkpoints(folder)):
        target = checkpoint.parent / "model.nequip.zip"
        logging.disable(logging.INFO)  # nequip logs every loading step at INFO
        try:
            with (
                tempfile.TemporaryDirectory() as scratch,
                contextlib.redirect_stdout(io.StringIO()),
            ):
                source = with_example_cell(checkpoint, Path(scratch))
                nequip_package(["build", str(source), str(target)])
        finally:
            logging.disable(logging.NOTSET)
        member.package = str(target.relative_to(folder))
        written.append(target)
    manifest.write(folder)
    return written


def with_example_cell(checkpoint: Path, scratch: Path) -> Path:
    """``checkpoint`` itself if its data config already boxes non-periodic frames, else a
    copy in ``scratch`` whose data transforms start with ``NonPeriodicCellTransform``
    (``nequip-package`` draws the package's example frame through them). Read with
    ``weights_only=True``: nothing in the file is built."""
    import torch

    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    transforms = saved["hyper_parameters"]["info_dict"]["data"].setdefault("transforms", [])
    if any(t.get("_target_") == CELL_TRANSFORM for t in transforms):
        return checkpoint
    # before the neighbour list (the transform moves the atoms into the box)
    transforms.insert(0, {"_target_": CELL_TRANSFORM, "padding": 10.0, "override_cell": True})
    copy = scratch / checkpoint.name
    torch.save(saved, copy)
    return copy
