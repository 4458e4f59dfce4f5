"""The job server's last preload: freeze everything it imported before it forks any job.

A job is forked from the server and inherits its heap: torch, torch._dynamo, sympy and the
training code, about a million objects that the job never frees. CPython's full garbage
collection walks every tracked object and writes to its header, so a job's first full
collection (the unpickling of its config allocates enough to trigger one) touched the whole
inherited heap: ~0.2 s a job, and a private copy of every page it wrote (copy-on-write).
``gc.freeze()`` moves those objects to the permanent generation that collections skip, as
Python's documentation of ``gc.freeze`` advises for a parent that forks without exec.
``sweep/process.py`` lists this module last, after every other preload.
"""

import gc

gc.freeze()
