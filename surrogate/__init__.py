"""The surrogate: NequIP models of named sizes, their training, ensembles with calibrated
uncertainty, an ASE calculator, and MD exploration on the ensemble-mean potential."""
