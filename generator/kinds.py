"""The two kinds of configuration generator, and loading whichever a folder holds."""

import json
from pathlib import Path

from sapis.errors import InputError
from sapis.generator.flow_model import FlowGenerator
from sapis.generator.model import META, WEIGHTS, Generator

AnyGenerator = Generator | FlowGenerator
KINDS: dict[str, type[Generator] | type[FlowGenerator]] = {
    "diffusion": Generator,
    "flow": FlowGenerator,
}


def load_generator(folder: str | Path) -> AnyGenerator:
    """The generator saved in ``folder``, diffusion model or flow."""
    folder = Path(folder)
    if not (folder / META).is_file() or not (folder / WEIGHTS).is_file():
        raise InputError(f"{folder}: no generator here (needs {WEIGHTS} and {META})")
    kind = json.loads((folder / META).read_text()).get("kind", "diffusion")
    if kind not in KINDS:
        raise InputError(f"{folder}: unknown generator kind {kind!r} (known: {sorted(KINDS)})")
    return KINDS[kind].load(folder)
