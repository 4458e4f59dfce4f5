"""Sweeps: the hexsweep launcher, aggregation of job folders, the report."""
