"""Generating dynamics: a diffusion model over windows of frames (positions and
velocities) conditioned on the first frame, with conservation priors on E[x0 | xt]."""
