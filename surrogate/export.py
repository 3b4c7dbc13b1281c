"""Package ensemble members with nequip's own packager (``nequip-package build``).

A ``.nequip.zip`` package loads without this code base: through
``nequip.model.saved_models.load_utils.load_saved_model``, ``nequip-compile`` (for
LAMMPS or the ``NequIPCalculator``), or as a model builder in a nequip training config.
"""

import contextlib
import io
import logging
from pathlib import Path

from sapis.surrogate.manifest import EnsembleManifest


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
            with contextlib.redirect_stdout(io.StringIO()):
                nequip_package(["build", str(checkpoint), str(target)])
        finally:
            logging.disable(logging.NOTSET)
        member.package = str(target.relative_to(folder))
        written.append(target)
    manifest.write(folder)
    return written
