"""Reading configuration files: one clear error for every way a file can be wrong."""

import pytest
from pydantic import Field

from sapis.config import Strict, read_yaml, validate
from sapis.errors import InputError


class Section(Strict):
    workers: int = Field(2, ge=1)


def write(tmp_path, text: str | bytes):
    path = tmp_path / "config.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_broken_yaml_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="not valid YAML"):
        read_yaml(write(tmp_path, "system: {charge: 0\n"))
    with pytest.raises(InputError, match="no such config file"):
        read_yaml(tmp_path / "nope.yaml")
    with pytest.raises(InputError, match="expected a mapping"):
        read_yaml(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(InputError, match="not valid YAML"):
        read_yaml(write(tmp_path, bytes(range(256))))
    assert read_yaml(write(tmp_path, "")) == {}


def test_validation_names_every_wrong_field():
    assert validate(Section, {"workers": 3}).workers == 3
    with pytest.raises(InputError) as err:
        validate(Section, {"workers": 0, "threads": 2}, "here")
    text = str(err.value)
    assert text.startswith("here: invalid configuration")
    assert "workers: Input should be greater than or equal to 1 (got 0)" in text
    assert "threads: unknown field" in text
