"""OmegaConf resolvers for output folder names.

``${hexsweep_tag:}`` is ``<host>-<pid>`` of the process that resolves it first: appended to
Hydra's ``<date>/<time>`` folders it makes two sweeps started in the same second on one
machine (or on two machines sharing the outputs root) land in different folders. It is
cached like Hydra's ``now``, and Hydra copies the cache into every job's config, so all
jobs of a sweep resolve the same name.
"""

from __future__ import annotations

import os
import socket

from omegaconf import OmegaConf


def _tag() -> str:
    host = socket.gethostname().split(".")[0][:16] or "host"
    return f"{host}-{os.getpid()}"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("hexsweep_tag"):
        OmegaConf.register_new_resolver("hexsweep_tag", _tag, use_cache=True)
