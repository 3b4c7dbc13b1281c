"""An equivariant diffusion generator of one molecule's configurations, with physical
priors in training and sampling, guidance by ensemble disagreement, and sample quality."""
