"""The configuration generator as a campaign source, either kind: a round trains it in
``round-NNN/generator/`` (warm-started round to round), keeps its valid samples scored
by the ensemble (a flow's with their log-density), and a rerun reads them back; with
``selection.density_weight`` the selection weighs every candidate by its density under
the round's flow. Tiny settings on water: a flow of 20 steps already samples valid
waters."""

import json
import math
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.build import molecule
from conftest import jiggled

from sapis.campaign.campaign import Campaign
from sapis.campaign.exploration import explore_round
from sapis.campaign.generation import (
    candidate_log_densities,
    generate_round,
    train_round_generator,
)
from sapis.campaign.round_selection import select_round
from sapis.campaign.selection import density_weights
from sapis.errors import InputError
from sapis.generator.kinds import load_generator

TINY_FLOW = {"blocks": 1, "hidden": 8, "layers": 1, "bins": 4, "density_draws": 4}


def write_config(tmp_path: Path, seeds: list[Atoms], **sections) -> Path:
    """A GFN2-xTB water campaign on in-process threads whose rounds add generated
    structures (half of each round's candidates, at least 30)."""
    ase.io.write(tmp_path / "seeds.xyz", seeds)
    config = {
        "system": {"structures": "seeds.xyz"},
        "dft": {"program": "xtb", "method": "GFN2-xTB"},
        "executor": {"profile": "threads", "workers": 1},
        "database": "campaign/data.db",
        "pretrain": {"displaced": 4},
        "training": {"size": "xs", "members": 2, "max_epochs": 2},
        "explore": {
            "temperatures": [300.0],
            "steps": 40,
            "sample_every": 2,
            "stop_force_dev": 1000.0,
        },
        "generator": {
            "share": 0.5,
            "min_samples": 30,
            "train_steps": 20,
            "batch_size": 8,
            "learning_rate": 0.01,
            "hidden": 8,
            "layers": 1,
            "steps": 4,
            "flow": TINY_FLOW,
        },
        "selection": {"policy": "top-k", "lo": 0.0, "hi": 1000.0, "labels_per_round": 4},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(("kind", "beta"), [("diffusion", 0.0), ("flow", 0.0), ("flow", 1.0)])
def test_a_round_trains_either_generator_kind_and_keeps_its_scored_valid_samples(
    tmp_path, tiny_ensemble, kind, beta
):
    flow = kind == "flow"
    selection = {"density_weight": beta}
    path = write_config(tmp_path, [molecule("H2O")], generator={"kind": kind}, selection=selection)
    campaign = Campaign.start(path)
    campaign.store.add(jiggled("H2O", 20, amplitude=0.05))  # what the store knows already
    md, _ = explore_round(campaign, tiny_ensemble, 1)
    assert len(md) >= 2
    if beta:  # the density weight needs the round's flow, which is not trained yet
        with pytest.raises(InputError, match="round 1 has no trained flow"):
            select_round(campaign, md, 1, 4, tiny_ensemble)
        assert not campaign.folder.selected_path(1).exists()

    generated, summary = generate_round(campaign, tiny_ensemble, 1, md)
    counts = summary["by_source"]["generator"]
    assert counts["proposed"] == max(len(md), 30) and counts["valid"] == len(generated)
    training = summary["training"]
    assert training["kind"] == kind and training["steps"] == 20 and not training["warm_start"]
    assert math.isfinite(training["nll" if flow else "denoise"])
    folder = campaign.folder.generator_dir(1)
    meta = json.loads((folder / "generator.json").read_text())
    assert meta["kind"] == kind and meta["round"] == "round-001"
    assert [t["kind"] for t in meta["trainings"]] == [kind]
    assert load_generator(folder).kind == kind
    for atoms in generated:
        assert atoms.info["source"] == "generator" and atoms.info["round"] == 1
        assert atoms.info["max_force_dev_calibrated"] > 0  # scored by the ensemble
        assert ("log_density" in atoms.info) == (beta > 0)  # only when it is used
    if flow:
        assert len(generated) > 0  # a 20-step flow samples valid waters
    if beta:
        assert all(np.isfinite(a.info["log_density"]) for a in generated)
    on_disk = json.loads(campaign.folder.generated_path(1).with_name("generated.json").read_text())
    assert on_disk["training"]["kind"] == kind

    again, resumed = generate_round(campaign, tiny_ensemble, 1, md)
    assert resumed["resumed"] and resumed["by_source"] == summary["by_source"]
    assert [a.info for a in again] == [a.info for a in generated]

    # the next round's generator goes on from this one's
    gen, record = train_round_generator(campaign, 2, campaign.store.structures() + md)
    assert gen.kind == kind and record.warm_start and record.kind == kind
    assert len(gen.meta["trainings"]) == 2

    candidates = md + generated
    sel = select_round(campaign, candidates, 1, 4, tiny_ensemble)
    assert len(sel.chosen) == 4 and sel.density_weight == beta
    if not beta:
        assert all("log_density" not in a.info for a in md)
        return
    # every candidate, MD frames too, now has its density under the round's flow, and
    # the four chosen are those of largest uncertainty × w
    ell = np.array([a.info["log_density"] for a in candidates])
    assert np.isfinite(ell).all()
    u = np.array([a.info["max_force_dev_calibrated"] for a in candidates])
    score = u * density_weights(ell, 3 * 3 - 3, 1.0)
    best = {candidates[i].info["hash"] for i in np.argsort(-score)[:4]}
    assert {a.info["hash"] for a in sel.chosen} == best
    assert all(0 < a.info["density_factor"] <= 1 for a in sel.chosen)
    assert json.loads(campaign.folder.selected_path(1).with_name("selection.json").read_text())[
        "density_weight"
    ] == pytest.approx(1.0)
    # the MD frames' densities are the flow's own estimate, seeded by the round
    mine = [a.copy() for a in md]
    for atoms in mine:
        del atoms.info["log_density"]
    candidate_log_densities(campaign, 1, mine)
    assert [a.info["log_density"] for a in mine] == [a.info["log_density"] for a in md]


def test_a_flow_for_elements_its_force_field_lacks_is_refused_before_anything_runs(tmp_path):
    lih = Atoms("LiH", positions=[[0, 0, 0], [0, 0, 1.6]])
    path = write_config(tmp_path, [lih], generator={"kind": "flow"})
    with pytest.raises(InputError, match=r"generator\.kind: flow: its force field: .*\[3\]"):
        Campaign.start(path)
    assert not (tmp_path / "campaign").exists()
