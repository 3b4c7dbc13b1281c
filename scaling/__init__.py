"""Neural scaling laws: power-law fits with bootstrap intervals, probe plans, and the
grow-data / grow-model / stop decision."""
