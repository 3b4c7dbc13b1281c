"""Neural scaling-law fits and grow-data / grow-model decisions (issue 5)."""
