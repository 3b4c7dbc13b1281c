"""``sapis train-dynamics`` and ``generate-dynamics``: a tiny model trained on real MD
(ASE's EMT, velocity Verlet) of water, dynamics generated beyond its window, and bad
input refused in one ``error:`` line (exit 2) before any training or sampling."""

import ase.io
import numpy as np
import pytest
from ase import units
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from conftest import REPO
from typer.testing import CliRunner

from sapis.cli import app
from sapis.generator.dynamics.data import Trajectories, from_frames, to_frames

runner = CliRunner()
TINY = ["--frames", "3", "--steps", "20", "--hidden", "16", "--layers", "1", "--batch-size", "8"]
TIMESTEP_FS = 2.5  # between saved frames: 5 velocity Verlet steps of 0.5 fs


def md(name: str, frames: int, seed: int) -> list:
    """``frames`` frames of EMT NVE MD of ``name`` at 300 K, with momenta and energies."""
    atoms = molecule(name)
    atoms.calc = EMT()
    thermalize_momenta(atoms, 300, rng=np.random.default_rng(seed))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, 0.5 * units.fs)
    out = []
    for t in range(frames):
        if t:
            dyn.run(5)
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy())
        out.append(frame)
    return out


def labelled(images: list, nan: bool = False) -> list:
    """Copies of ``images`` with an energy each; frame 2's positions NaN if asked."""
    out = [a.copy() for a in images]
    for a in out:
        a.calc = SinglePointCalculator(a, energy=-1.0)
    if nan:
        out[2].positions[0, 0] = np.nan
    return out


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def refused(*args, message: str) -> str:
    """Run ``sapis args``; assert exit 2 and one ``error:`` line naming ``message``."""
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def water(tmp_path_factory):
    """Three water MD files (12 frames each), a start frame with velocities, and a tiny
    model trained on them."""
    here = tmp_path_factory.mktemp("dynamics")
    files = []
    for k in range(3):
        files.append(here / f"water-{k}.extxyz")
        ase.io.write(files[-1], md("H2O", 12, seed=k))
    start = md("H2O", 1, seed=7)[0]
    start.calc = None
    ase.io.write(here / "start.extxyz", start)
    model = here / "model"
    result = run("train-dynamics", *files, "--out", model, "--timestep", TIMESTEP_FS, *TINY)
    assert result.exit_code == 0, result.output
    return here, files, model, result.output


def test_frames_convert_to_trajectories_and_back(water):
    files = water[1]
    images = [ase.io.read(f, ":") for f in files]
    traj = from_frames(images, TIMESTEP_FS)
    assert traj.shape == (3, 12, 3, 3) and traj.system == "molecule"
    assert traj.dt == pytest.approx(TIMESTEP_FS * units.fs)
    np.testing.assert_allclose(traj.velocities[1, 4], images[1][4].get_velocities())
    assert traj.potential[2, 5] == images[2][5].get_potential_energy()
    assert traj.couplings[0].sum() == 4  # two O–H bonds, both ways
    back = to_frames(traj, 1)
    np.testing.assert_allclose(back[4].get_velocities(), images[1][4].get_velocities())
    assert back[4].info["time_fs"] == pytest.approx(4 * TIMESTEP_FS)
    assert from_frames([images[0], images[1][:7]], TIMESTEP_FS).shape[1] == 7  # the shortest
    for frames, message in (
        ([images[0], ase.io.read(files[0], ":")[:3] + md("NH3", 3, 0)], "frame 3 is H3N"),
        ([[a.copy() for a in images[0]]], "has no potential energy"),
        ([labelled(images[0], nan=True)], "frame 2: positions or velocities hold NaN"),
    ):
        with pytest.raises(Exception, match=message):
            from_frames(frames, TIMESTEP_FS)
    still = labelled(images[0])
    for a in still:
        a.set_momenta(np.zeros((3, 3)))
    with pytest.raises(Exception, match="has no velocities"):
        from_frames(still, TIMESTEP_FS)
    particles = Trajectories.load(REPO / "data" / "dynamics" / "five-spring-val.npz")
    with pytest.raises(Exception, match=r"write them to an \.npz"):
        to_frames(particles, 0)


def test_train_and_generate_beyond_the_window(water):
    here, files, model, trained = water
    assert "on 3 trajectories × 12 frames (2.5 fs apart)" in trained
    assert "priors momentum-project, 20 steps" in trained and "last 100 steps: denoise" in trained
    out = here / "gen.extxyz"
    result = run("generate-dynamics", model, here / "start.extxyz", out, "--frames", 7,
                 "--copies", 2, "--seed", 3)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 trajectories (1 starts × 2) of 7 frames, 17.5 fs each: 3 windows" in result.output
    assert "35 fs simulated" in result.output and "temperature" in result.output
    frames = ase.io.read(out, ":")
    assert len(frames) == 2 * (7 + 1)
    start = ase.io.read(here / "start.extxyz")
    for copy in range(2):
        first = frames[8 * copy]
        assert (first.info["copy"], first.info["frame"]) == (copy, 0)
        np.testing.assert_allclose(first.positions, start.positions, atol=1e-12)
        np.testing.assert_allclose(first.get_velocities(), start.get_velocities(), atol=1e-12)
    assert all(a.info["source"] == "dynamics" and a.info["model"] == str(model) for a in frames)
    assert [a.info["frame"] for a in frames[:8]] == list(range(8))
    assert frames[7].info["time_fs"] == pytest.approx(7 * TIMESTEP_FS)
    later = np.array([a.get_velocities() for a in frames[1:8]])
    assert np.isfinite(later).all() and np.abs(later).max() > 0
    assert not np.allclose(frames[5].positions, frames[13].positions)  # copies differ
    momentum = np.array([a.get_momenta().sum(0) for a in frames])
    assert np.abs(momentum - momentum[0]).max() < 1e-5  # projected: P stays the start's

    npz = here / "gen.npz"
    result = run("generate-dynamics", model, here / "start.extxyz", npz, "--frames", 2,
                 "--temperature", 300)  # fmt: skip
    assert result.exit_code == 0, result.output
    traj = Trajectories.load(npz)
    assert traj.shape == (1, 3, 3, 3) and traj.info["source"] == "dynamics"
    assert np.abs(traj.momentum()[0, 0]).max() < 1e-9  # drawn without drift
    assert not np.allclose(traj.velocities[0, 0], start.get_velocities())

    again = run("train-dynamics", *files, "--out", model, "--timestep", TIMESTEP_FS, *TINY)
    assert again.exit_code == 0 and "training further" in again.output
    assert "warm start" in again.output


def test_bad_input_is_refused_before_any_work(water, tmp_path):
    here, files, model, _ = water
    start = here / "start.extxyz"
    out = tmp_path / "out.extxyz"
    ammonia = md("NH3", 1, seed=0)[0]
    ase.io.write(tmp_path / "nh3.extxyz", ammonia)
    refused("generate-dynamics", model, tmp_path / "nh3.extxyz", out, "--frames", 2,
            message="structure 0 is H3N (4 atoms); this model is of H2O")  # fmt: skip
    bad = ase.io.read(start)
    bad.positions[1, 0] = np.nan
    ase.io.write(tmp_path / "nan.extxyz", bad)
    refused("generate-dynamics", model, tmp_path / "nan.extxyz", out, "--frames", 2,
            message="positions or velocities hold NaN")  # fmt: skip
    ase.io.write(tmp_path / "still.xyz", molecule("H2O"))
    refused("generate-dynamics", model, tmp_path / "still.xyz", out, "--frames", 2,
            message="has no velocities (no momenta)")  # fmt: skip
    refused("generate-dynamics", tmp_path / "nothing", start, out, "--frames", 2,
            message="no dynamics model here")  # fmt: skip
    refused("generate-dynamics", model, start, out, "--frames", 0,
            message="--frames must be at least 1")  # fmt: skip
    particles = REPO / "data" / "dynamics" / "five-spring-val.npz"
    refused("generate-dynamics", model, particles, tmp_path / "p.npz", "--frames", 2,
            message="five-spring (5 particles) trajectories; this model is of H2O")  # fmt: skip
    refused("generate-dynamics", model, start, start, "--frames", 2,
            message="OUT must differ from START")  # fmt: skip
    refused("generate-dynamics", model, start, tmp_path / "no" / "o.xyz", "--frames", 2,
            message="no such folder")  # fmt: skip
    assert not out.exists() and not (tmp_path / "p.npz").exists()

    ase.io.write(tmp_path / "nh3-md.extxyz", md("NH3", 12, seed=1))
    fresh = tmp_path / "fresh"
    train = ("train-dynamics", files[0], "--timestep", TIMESTEP_FS, *TINY)
    refused(*train, tmp_path / "nh3-md.extxyz", "--out", fresh,
            message="nh3-md.extxyz frame 0 is H3N")  # fmt: skip
    refused(*train, "--out", fresh, "--val", particles,
            message="five-spring (5 particles), the training data H2O")  # fmt: skip
    refused("train-dynamics", files[0], "--out", fresh, message="need --timestep")
    refused(*train, "--out", fresh, "--frames", 12, message="needs at least 13")
    refused(*train, "--out", fresh, "--hidden", 2, message="hidden")
    refused(
        *train, "--out", fresh, "--energy", "naive", message="--energy naive needs the potential"
    )
    refused(*train, "--out", model, "--layers", 2, message="holds a dynamics model of another")
    assert not fresh.exists()


def test_particle_systems_train_and_generate_as_npz(tmp_path):
    data = REPO / "data" / "dynamics"
    model = tmp_path / "springs"
    result = run("train-dynamics", data / "five-spring-val.npz", "--out", model, *TINY)
    assert result.exit_code == 0, result.output
    assert "five-spring (5 particles) on 40 trajectories × 50 frames (0.1 time units" in (
        result.output
    )
    truth = Trajectories.load(data / "five-spring-test.npz").subset(slice(0, 3))
    starts, out = truth.save(tmp_path / "starts.npz"), tmp_path / "gen.npz"
    result = run("generate-dynamics", model, starts, out, "--frames", 4)
    assert result.exit_code == 0, result.output
    assert "max |E − E₀|" in result.output
    traj = Trajectories.load(out)
    assert traj.shape == (3, 5, 5, 3) and traj.system == "five-spring"
    np.testing.assert_array_equal(traj.positions[:, 0], truth.positions[:, 0])
    np.testing.assert_array_equal(traj.couplings, truth.couplings)  # each start's springs
    refused("generate-dynamics", model, starts, tmp_path / "g.extxyz",
            "--frames", 2, message="generates particles, not atoms: give an .npz OUT")  # fmt: skip
    ase.io.write(tmp_path / "w.xyz", molecule("H2O"))
    refused("generate-dynamics", model, tmp_path / "w.xyz", out, "--frames", 2,
            message="a five-spring model starts from a trajectory .npz")  # fmt: skip
    refused("train-dynamics", data / "five-spring-val.npz", data / "three-body-val.npz",
            "--out", tmp_path / "m", *TINY, message="three-body (3 particles)")  # fmt: skip
