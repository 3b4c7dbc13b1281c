"""Prefect tasks: thin wrappers over the domain libraries, one per stage of a round.

Tasks take the validated configuration and file paths and return small records; the
heavy data stays in the store and the campaign folder. They carry no Prefect cache
(``cache_policy=NONE``): resuming is the campaign folder's job (see
:mod:`sapis.campaign`), which knows which stage's output exists.
"""
