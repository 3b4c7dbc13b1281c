"""Shared fixtures: tiny molecules, cheap DFT settings, and real PostgreSQL / Slurm."""

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

sys.path.insert(0, str(Path(__file__).parent / "services"))

from sapis.dft.settings import DFTSettings

# Prefect: a home of this test session's own (its database, its profile), no analytics.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="sapis-prefect-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
# a temporary server started by a `sapis` subprocess may take long on a busy machine
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
os.environ.pop("PREFECT_API_URL", None)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "rmd17"
IN_CI = bool(os.environ.get("CI"))


def jiggled(name: str, n: int, amplitude: float = 0.05, seed: int = 0) -> list[Atoms]:
    """``n`` copies of molecule ``name`` with random displacements up to ``amplitude`` Å."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        atoms = molecule(name)
        atoms.positions += rng.uniform(-amplitude, amplitude, atoms.positions.shape)
        images.append(atoms)
    return images


@pytest.fixture
def cheap() -> DFTSettings:
    """PBE/STO-3G without density fitting: a water label in a fraction of a second."""
    return DFTSettings(basis="sto-3g", density_fit=False)


@pytest.fixture(scope="session")
def postgres_server():
    from postgres import start_postgres

    try:
        server = start_postgres()
    except Exception as err:  # in CI the server must come up; elsewhere say why we skip
        if IN_CI:
            raise
        pytest.skip(f"PostgreSQL not available: {err}")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A fresh empty database of each kind."""
    if request.param == "sqlite":
        yield str(tmp_path / "data.db")
        return
    server = request.getfixturevalue("postgres_server")
    url = server.create_database()
    yield url
    server.drop_database(url)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    from slurm_cluster import start_slurm

    try:
        cluster = start_slurm(tmp_path_factory.mktemp("slurm"))
    except Exception as err:
        if IN_CI:
            raise
        pytest.skip(f"Slurm not available: {err}")
    yield cluster
    cluster.stop()


# --- surrogate: rMD17 frames and ensembles trained once per session --------------------


@pytest.fixture(scope="session")
def malonaldehyde():
    """rMD17 malonaldehyde: (train split frames, test split frames), energies in eV."""
    from sapis.io import read_rmd17

    return (
        read_rmd17(DATA / "rmd17_malonaldehyde_train_01.npz"),
        read_rmd17(DATA / "rmd17_malonaldehyde_test_01.npz"),
    )


@pytest.fixture(scope="session")
def tiny_ensemble(tmp_path_factory, malonaldehyde):
    """Two float64 members of the smallest size after two epochs on 10 frames: enough for
    symmetry, batching, export and MD plumbing (any weights must be equivariant)."""
    from sapis.surrogate.ensemble_training import train_ensemble
    from sapis.surrogate.settings import TrainingConfig

    train, _ = malonaldehyde
    folder = tmp_path_factory.mktemp("tiny") / "ensemble"
    training = TrainingConfig(size="xs", members=2, dtype="float64", max_epochs=2)
    train_ensemble(train[:10], train[500:505], folder, training, progress=False)
    return folder


@pytest.fixture(scope="session")
def trained_ensemble(tmp_path_factory, malonaldehyde):
    """Three members of the smallest size, each trained for 50 epochs (about a minute on 2
    cores, the same on a busy machine) on its bootstrap of 100 frames, validated on 30
    others: the accuracy and uncertainty tests share it."""
    from sapis.surrogate.ensemble_training import train_ensemble
    from sapis.surrogate.settings import TrainingConfig

    train, _ = malonaldehyde
    folder = tmp_path_factory.mktemp("trained") / "ensemble"
    training = TrainingConfig(size="xs", members=3, max_epochs=50)
    manifest = train_ensemble(train[:100], train[500:530], folder, training, progress=False)
    return folder, manifest
