"""Prefect flows: pretrain, refinement round and campaign (:mod:`sapis.flows.campaign`),
their parameters, what a person sees of them, and deployments."""
