"""Imported by the job server before it forks any job: what every training job would import
on first use, loaded once so that each job starts without it.

Building a torch optimizer imports torch._dynamo, sympy and ~800 modules (~1.5-2.7 s). It
runs no parallel kernel (one scalar parameter), so the server never starts the OpenMP
pool that a forked child could not use, and it never touches CUDA. It also lists the installed
packages once, for every job's reproducibility record (hexsweep/provenance.py).

hexsweep.train's own start-up (``--help``, the sweep's driver) leaves out what only a job uses:
torch and the training code (hexsweep/lifecycle.py), TensorBoard's writer (the default logger,
~0.3 s) and, for an Optuna trial's pruning link, Optuna and its storages; they load here
instead, once for every job. None of them starts a thread. Everything here delays a sweep's
first job (the driver waits for the server): what no job needs stays out (the evaluation's
calibration bins with numpy, not scipy.stats).
"""

import warnings

import numpy.ma  # noqa: F401  (numpy 2 imports it on a job's first np.unique, in the dataset's split)
import torch
from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (logger=tensorboard, the default)

from hexsweep import lifecycle, provenance  # noqa: F401  (lifecycle: hexsweep.train's job, its trainer)
from hexsweep.search import storage  # noqa: F401  (an Optuna trial's link: optuna, its storages)

# The server imports hexsweep.train under its name; multiprocessing runs it again in each job
# as __mp_main__, and runpy warns that it is already imported. Expected here: silence it.
warnings.filterwarnings("ignore", message=".*found in sys.modules after import of package", category=RuntimeWarning)

torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
provenance.packages()  # the installed packages, listed once (~0.1 s), for every job's env.json
