"""The NequIP size ladder: named sizes from a seconds-long CPU test model to a
production-grade molecular potential, smallest first."""

from pydantic import Field

from sapis.config import Strict


class ModelSize(Strict):
    """One rung of the NequIP size ladder: interaction layers, largest rotation order,
    features per irrep, width of the radial MLP."""

    layers: int = Field(ge=1)
    l_max: int = Field(ge=0, le=4)
    features: int = Field(ge=1)
    radial_width: int = Field(ge=1)


#: Sizes from a seconds-long CPU test model to a production-grade molecular potential.
SIZES: dict[str, ModelSize] = {
    "xs": ModelSize(layers=2, l_max=1, features=8, radial_width=16),
    "s": ModelSize(layers=3, l_max=1, features=16, radial_width=32),
    "m": ModelSize(layers=4, l_max=2, features=32, radial_width=64),
    "l": ModelSize(layers=5, l_max=2, features=64, radial_width=128),
}
