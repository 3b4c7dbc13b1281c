"""Prefect flows: pretrain, refinement round, campaign (issue 4)."""
