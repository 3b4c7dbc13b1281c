"""NequIP models, training, ensembles with calibrated uncertainty, ASE calculator and
MD exploration (issue 3)."""
