"""The ``sapis`` command line, split by verb group: data (``label``, ``db``), models
(``train``, ``predict``, ``train-generator``, ``generate``), dynamics
(``train-dynamics``, ``generate-dynamics``) and campaigns (``campaign``,
``round``, ``status``, ``serve``, ``scaling``). It is the one place that imports every
layer; nothing imports it."""

from sapis.cli import campaign, data, dynamics, models
from sapis.cli.app import app

__all__ = ["app", "campaign", "data", "dynamics", "models"]
