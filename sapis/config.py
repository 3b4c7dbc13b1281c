"""Reading configuration: YAML files into validated pydantic models, one clear error.

Every library keeps the settings of its own YAML section beside its code (``dft``'s in
:mod:`sapis.dft.settings`, ``training``'s in :mod:`sapis.surrogate.settings`, ...); the
campaign file composes them (:mod:`sapis.campaign.config`). This module holds what they
all share: a base model that refuses unknown fields, the YAML reader and the error text.
"""

import re
from pathlib import Path
from typing import TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from sapis.errors import InputError

Model = TypeVar("Model", bound=BaseModel)


class Strict(BaseModel):
    """A config block that rejects unknown fields, NaN and infinite numbers, and empty
    paths (``""`` would read as the current folder)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_empty_path(cls, value: object, info: ValidationInfo) -> object:
        if value == "" and Path in _types(cls.model_fields[info.field_name].annotation):
            raise ValueError("empty path: leave the field out or name a file")
        return value


def _types(annotation: object) -> tuple:
    """The types an annotation admits (``Path | None``: Path and NoneType)."""
    return get_args(annotation) or (annotation,)


def is_url(database: str) -> bool:
    """True for a server URL (``postgresql://``), False for a file path."""
    return "://" in database


#: ``scheme://user:password@``: the password runs to the last ``@`` before a space.
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]*):\S*@")
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&\s]*")


def redact(text: str) -> str:
    """``text`` (a database URL, or a message holding some) with every password replaced
    by ``***``: ``postgresql://user:***@host/db``. Everything shown to a user or a log
    goes through it."""
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", str(text)))


def format_validation_error(err: ValidationError, source: str) -> str:
    """One readable message naming every wrong field."""
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "missing":
            msg = "required field is missing"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if "input" in e and not isinstance(e["input"], dict | list):
                msg += f" (got {e['input']!r})"
        lines.append(f"{field}: {msg}")
    return f"{source}: invalid configuration\n  " + "\n  ".join(lines)


def validate(model: type[Model], data: object, source: str = "config") -> Model:
    """``model`` validated from ``data``; an :class:`InputError` naming every wrong field."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise InputError(format_validation_error(err, source)) from None


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML file (empty file: ``{}``); an :class:`InputError` for a
    missing file, a file that is not YAML text, or YAML that is not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid YAML ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def resolve(path: Path | None, base: Path) -> Path | None:
    """``path`` taken relative to ``base`` unless absolute (None stays None)."""
    if path is None or path.is_absolute():
        return path
    return base / path
