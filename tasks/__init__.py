"""Prefect tasks: thin wrappers over the domain libraries (issue 4)."""
