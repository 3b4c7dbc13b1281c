import textwrap
from pathlib import Path

import pytest

from sapis.campaign.config import load_config
from sapis.errors import InputError

GOOD = """
system: {structures: seeds.xyz, charge: 0, multiplicity: 1}
dft: {xc: PBE, basis: def2-svp, density_fit: true, conv_tol: 1.0e-9, threads: 1}
executor: {profile: local, workers: 2}
database: runs/demo/data.db
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "campaign.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_the_documented_example_loads_with_paths_resolved_next_to_the_file(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.dft.level_of_theory == "PBE/def2-svp"
    assert config.system.structures == tmp_path / "seeds.xyz"
    assert config.database == str(tmp_path / "runs/demo/data.db")
    assert config.dft.ladder[0].name == "default"


def test_a_postgres_url_is_kept_as_is(tmp_path):
    config = load_config(write(tmp_path, "database: postgresql://u:p@host:5432/db\n"))
    assert config.database == "postgresql://u:p@host:5432/db"


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (("dft: {xc", "dft: {xcc"), "dft.xcc", "unknown field"),
        (("xc: PBE", "xc: PBEE"), "dft.xc", "unknown exchange-correlation functional"),
        (("def2-svp", "def2-nonsense"), "dft.basis", "unknown basis set"),
        (("conv_tol: 1.0e-9", "conv_tol: -1"), "dft.conv_tol", "greater than 0"),
        (("profile: local", "profile: cloud"), "executor.profile", "'threads'"),
        (("workers: 2", "workers: two"), "executor.workers", "integer"),
        (("multiplicity: 1", "multiplicity: 0"), "system.multiplicity", "greater than or equal"),
        (("database: runs/demo/data.db", ""), "database", "required field is missing"),
    ],
)
def test_a_wrong_field_is_named_in_one_clear_error(tmp_path, change, field, message):
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(InputError) as err:
        load_config(path)
    text = str(err.value)
    assert str(path) in text
    assert f"{field}: " in text
    assert message in text


def test_walltime_and_ladder_are_checked(tmp_path):
    bad = GOOD.replace("workers: 2}", "workers: 2, walltime: 3h}")
    with pytest.raises(InputError, match=r"executor\.walltime: walltime must be HH:MM:SS"):
        load_config(write(tmp_path, bad))
    bad = GOOD.replace("threads: 1}", "threads: 1, ladder: [{name: a}, {name: a}]}")
    with pytest.raises(InputError, match="rung names must be unique"):
        load_config(write(tmp_path, bad))


def test_defaults_that_depend_on_other_fields_are_filled_once(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.folder == tmp_path / "runs/demo"  # beside the SQLite database
    assert config.executor.run_dir == tmp_path / "runs/demo/runinfo"
    config = load_config(write(tmp_path, "database: postgresql://h/db\nfolder: camp\n"))
    assert config.folder == tmp_path / "camp"
    assert config.executor.run_dir == tmp_path / "camp/runinfo"


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            "selection: {policy: top-k, density_weight: 1.0}\n"
            "generator: {kind: diffusion, share: 0.5}\n",
            "generator.kind is 'diffusion'",
        ),
        (
            "selection: {policy: top-k, density_weight: 1.0}\ngenerator: {kind: flow}\n",
            "generator.share 0.0",
        ),
        (
            "selection: {density_weight: 1.0}\ngenerator: {kind: flow, share: 0.5}\n",
            "policy 'lcmd' does not rank by uncertainty",
        ),
        ("selection: {policy: top-k, density_weight: -1}\n", "greater than or equal to 0"),
    ],
)
def test_a_density_weight_needs_a_trained_flow_and_a_ranking_policy(tmp_path, sections, message):
    with pytest.raises(InputError, match="selection") as err:
        load_config(write(tmp_path, GOOD + sections))
    assert message in str(err.value)


def test_a_density_weight_with_a_flow_and_top_k_loads(tmp_path):
    text = "selection: {policy: top-k, density_weight: 2.0}\ngenerator: {kind: flow, share: 0.5}\n"
    config = load_config(write(tmp_path, GOOD + text))
    assert config.selection.density_weight == 2.0 and config.generator.kind == "flow"
