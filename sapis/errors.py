"""Errors that SAPIS-MD raises for a user to read."""


class InputError(ValueError):
    """Bad input (structure, file, configuration): raised before any expensive work."""
