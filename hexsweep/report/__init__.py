"""The report of sweeps and studies: aggregation, statistics, files and plots, the last line.

``aggregate`` reads job folders into one table; ``stats`` compares configurations;
``files`` writes the table, summary, report and plots; ``study`` summarises an Optuna study;
``end`` prints a sweep's last line and decides its exit status. Nothing is imported here, so
that a module that only needs one of them does not load the others' libraries.
"""
