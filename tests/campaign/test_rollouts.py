"""The dynamics model as a campaign source: rollouts from a round's MD frames become
scored, valid candidates (``source: dynamics``) that the selection judges with the rest;
a rerun reads them back; a model that does not fit the campaign is refused up front."""

import json
import shutil
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml
from ase import Atoms, units
from ase.build import molecule
from conftest import DATA, REPO

from sapis.campaign.campaign import Campaign
from sapis.campaign.exploration import explore_round
from sapis.campaign.rollouts import dynamics_round, start_velocities
from sapis.campaign.round_selection import select_round
from sapis.errors import InputError
from sapis.generator.dynamics.data import Trajectories
from sapis.generator.dynamics.settings import DynamicsConfig
from sapis.generator.dynamics.training import train_dynamics
from sapis.io import read_rmd17
from sapis.structures import structure_hash

MOLECULE_MD = REPO / "data" / "dynamics" / "malonaldehyde-xtb-train.npz"


@pytest.fixture(scope="module")
def dynamics_model(tmp_path_factory) -> Path:
    """A small dynamics model of malonaldehyde (one frame 5 fs ahead per window) trained
    for 1000 steps (~8 s) on the first 40 frames of 8 GFN2-xTB NVE trajectories: from
    those trajectories' frames all its samples are valid."""
    md = Trajectories.load(MOLECULE_MD).subset(slice(0, 8))
    short = Trajectories(
        md.system,
        md.positions[:, :40],
        md.velocities[:, :40],
        md.masses,
        md.couplings,
        md.numbers,
        md.potential[:, :40],
        md.dt,
        md.info,
    )
    config = DynamicsConfig(
        frames=1, hidden=16, layers=2, train_steps=1000, batch_size=16, learning_rate=5e-3, steps=8
    )
    out = tmp_path_factory.mktemp("dynamics") / "model"
    train_dynamics(short, out, config)
    return out


def write_config(tmp_path: Path, model: Path, seeds: list[Atoms], **sections) -> Path:
    """A GFN2-xTB campaign on in-process threads whose rounds add rollout frames."""
    ase.io.write(tmp_path / "seeds.xyz", seeds)
    config = {
        "system": {"structures": "seeds.xyz"},
        "dft": {"program": "xtb", "method": "GFN2-xTB"},
        "executor": {"profile": "threads", "workers": 1},
        "database": "campaign/data.db",
        "pretrain": {"displaced": 4},
        "training": {"size": "xs", "members": 2, "max_epochs": 2},
        "explore": {
            "temperatures": [100.0],
            "steps": 40,
            "sample_every": 2,
            "stop_force_dev": 1000.0,
        },
        "dynamics": {"model": str(model), "share": 0.9, "windows": 2, "every": 1},
        "selection": {"policy": "uncertainty", "lo": 0.0, "hi": 1000.0, "labels_per_round": 6},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_round_takes_scored_valid_rollout_frames_and_a_rerun_reads_them_back(
    tmp_path, dynamics_model, tiny_ensemble
):
    seeds = read_rmd17(DATA / "rmd17_malonaldehyde_train_01.npz")[:2]
    campaign = Campaign.start(write_config(tmp_path, dynamics_model, seeds))
    # the tiny ensemble's MD soon turns unphysical: a few frames per trajectory
    md, _ = explore_round(campaign, tiny_ensemble, 1)
    assert len(md) >= 5 and all("momenta" in a.arrays for a in md)

    rolled, summary = dynamics_round(campaign, tiny_ensemble, 1, md)
    counts = summary["by_source"]["dynamics"]
    assert counts["proposed"] <= 9 * len(md)  # share 0.9 of the round: 9 per MD frame
    assert 0 < counts["valid"] == len(rolled)
    assert counts["proposed"] == counts["valid"] + sum(summary["rejected"].values())
    md_hashes = {structure_hash(a) for a in md}
    for atoms in rolled:
        assert atoms.info["source"] == "dynamics" and atoms.info["round"] == 1
        assert atoms.info["parent"] in md_hashes and atoms.info["frame"] in (1, 2)
        assert atoms.info["max_force_dev_calibrated"] > 0  # scored by the ensemble
        assert campaign.labeller.check(atoms, "rollout frame") is None
        assert atoms.get_kinetic_energy() > 0  # the rollout's velocities come along
    files = campaign.folder.round_dir(1)
    assert json.loads((files / "dynamics.json").read_text())["by_source"] == summary["by_source"]

    again, resumed = dynamics_round(campaign, tiny_ensemble, 1, md)
    assert resumed["resumed"] and resumed["by_source"] == summary["by_source"]
    assert [a.info for a in again] == [a.info for a in rolled]
    np.testing.assert_array_equal([a.positions for a in again], [a.positions for a in rolled])

    sel = select_round(campaign, md + rolled, 1, 6, tiny_ensemble)
    assert sel.explored == len(md) + len(rolled)
    assert sel.by_source["dynamics"]["candidate"] == len(rolled)  # the window takes all
    assert len(sel.chosen) == 6
    assert campaign.label_pending().labelled == 6
    labelled = {a.info["hash"]: a for a in campaign.store.labelled(level="GFN2-xTB")}
    chosen = [a for a in sel.chosen if a.info["source"] == "dynamics"]
    assert all(a.info["hash"] in labelled for a in chosen)


def test_starts_without_momenta_draw_them_at_their_temperature():
    frames = [molecule("CH3CH2OH") for _ in range(200)]
    for atoms in frames:
        atoms.info["temperature"] = 400.0
    v = start_velocities(frames, np.random.default_rng(0))
    masses = frames[0].get_masses()
    kinetic = 0.5 * (masses[None, :, None] * v**2).sum((1, 2))
    dof = 3 * len(masses)  # ASE keeps the temperature when it removes drift and rotation
    assert kinetic.mean() / (0.5 * dof * units.kB) == pytest.approx(400.0, rel=0.05)
    assert np.abs((masses[None, :, None] * v).sum(1)).max() < 1e-10
    moving = frames[0].copy()
    moving.set_momenta(np.ones((len(moving), 3)))
    np.testing.assert_allclose(
        start_velocities([moving], np.random.default_rng(0))[0], moving.get_velocities()
    )
    del frames[0].info["temperature"]
    with pytest.raises(InputError, match="start frame 0 has neither momenta nor a temperature"):
        start_velocities(frames[:1], np.random.default_rng(0))


def _other_bonds(model: Path, tmp_path: Path) -> Path:
    """A copy of ``model`` whose recorded bond graph lacks its first bond."""
    copy = tmp_path / "other-bonds"
    shutil.copytree(model, copy)
    meta = json.loads((copy / "dynamics.json").read_text())
    couplings = np.array(meta["couplings"])
    i, j = np.argwhere(np.triu(couplings))[0]
    couplings[i, j] = couplings[j, i] = 0
    meta["couplings"] = couplings.tolist()
    (copy / "dynamics.json").write_text(json.dumps(meta))
    return copy


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("water", "dynamics.model: {model} models C3H4O2 with atoms"),
        ("missing", "dynamics.model: {missing}: no dynamics model here"),
        ("bonds", "was trained on another bond graph than seed structure 0"),
        ("share", "dynamics.share"),
        ("no-model", "share > 0 needs model"),
        ("every", "dynamics.every: 3 is more than the 2 frames a rollout makes"),
    ],
)
def test_a_model_that_does_not_fit_the_campaign_is_refused_before_anything_runs(
    tmp_path, dynamics_model, case, message
):
    seeds = read_rmd17(DATA / "rmd17_malonaldehyde_train_01.npz")[:2]
    model, change = dynamics_model, {}
    if case == "water":
        seeds = [molecule("H2O")]
    elif case == "missing":
        model = tmp_path / "missing"
    elif case == "bonds":
        model = _other_bonds(dynamics_model, tmp_path)
    elif case == "share":
        change = {"share": 1.0}
    elif case == "every":
        change = {"every": 3}
    path = write_config(tmp_path, model, seeds, dynamics=change)
    if case == "no-model":
        data = yaml.safe_load(path.read_text())
        del data["dynamics"]["model"]
        path.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError) as err:
        Campaign.start(path)
    assert message.format(model=model, missing=tmp_path / "missing") in str(err.value)
    assert not (tmp_path / "campaign").exists()  # no folder, no database


def test_a_campaign_flow_round_adds_rollout_frames_to_its_candidates(tmp_path, dynamics_model):
    from prefect.testing.utilities import prefect_test_harness

    from sapis.campaign.folder import CampaignFolder
    from sapis.flows.campaign import campaign
    from sapis.flows.parameters import CampaignParameters

    seeds = read_rmd17(DATA / "rmd17_malonaldehyde_train_01.npz")[:2]
    path = write_config(
        tmp_path,
        dynamics_model,
        seeds,
        pretrain={"displaced": 6},
        split={"val": 0.25, "test": 0.25},
        dynamics={"share": 0.5},
        stop={"max_rounds": 1},
        scaling={"enabled": False},
    )
    with prefect_test_harness(server_startup_timeout=120):
        campaign(CampaignParameters(config=str(path)))
    folder = CampaignFolder(tmp_path / "campaign")
    record = folder.records()[1]
    md, rolled = record.by_source["md"], record.by_source["dynamics"]
    assert 0 < rolled["proposed"] <= md["valid"]  # share 0.5: one per MD frame at most
    assert 0 < rolled["valid"] == len(ase.io.read(folder.dynamics_path(1), ":"))
    assert record.explored == md["valid"] + rolled["valid"]
    assert record.selected == 6 and "explore" in record.seconds
