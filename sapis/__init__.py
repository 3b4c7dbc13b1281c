"""SAPIS-MD: active learning of machine-learned interatomic potentials.

Core package: configuration, dataset store, structure hashing and checks, units, CLI.
Domain libraries live in ``sapis.dft``, ``sapis.surrogate``, ``sapis.generator`` and
``sapis.scaling``; Prefect wrappers in ``sapis.tasks`` and ``sapis.flows``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sapis-md")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
