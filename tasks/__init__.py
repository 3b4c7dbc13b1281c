"""Prefect tasks: thin wrappers over the campaign's stages (:mod:`sapis.tasks.stages`),
and the session a flow run shares between them (:mod:`sapis.tasks.session`)."""
