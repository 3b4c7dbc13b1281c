"""Equivariant diffusion generator with physical priors and validity filters (issue 6)."""
