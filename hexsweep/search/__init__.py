"""Optuna searches: the search-space grammar, the sweeper's core, the job-side pruning hook."""
