"""OmegaConf resolvers for output folder names.

``${hexsweep_tag:}`` is ``<host>-<pid>`` of the process that resolves it first: appended to
Hydra's ``<date>/<time>`` folders it makes two sweeps started in the same second on one
machine (or on two machines sharing the outputs root) land in different folders. It is
cached like Hydra's ``now``, and Hydra copies the cache into every job's config, so all
jobs of a sweep resolve the same name.

``${hexsweep_host:}`` is the short host name of the process that resolves it, uncached: the
slot lock folder is per host, so jobs on two nodes of a cluster that share the outputs root
never contend for each other's slots.

``${hexsweep_abspath:<path>}`` anchors a relative path at the directory the run was started
from (Hydra's ``hydra.runtime.cwd``, which Hydra copies into every job's config). Ray and
Slurm workers start in another directory; without it their job folders would land there.
"""

from __future__ import annotations

import os
import socket

from omegaconf import OmegaConf


def _tag() -> str:
    return f"{host()[:16]}-{os.getpid()}"


def host() -> str:
    """The short host name, whole: lock folders of nodes must differ (node-00123 vs node-00124)."""
    return socket.gethostname().split(".")[0] or "host"


def launch_dir() -> str:
    """Where the user started the run: hydra.runtime.cwd when Hydra is set up, else here."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        cwd = HydraConfig.get().runtime.get("cwd")
        if cwd:
            return str(cwd)
    return os.getcwd()


def _abspath(path: str) -> str:
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(launch_dir(), path))


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("hexsweep_tag"):
        OmegaConf.register_new_resolver("hexsweep_tag", _tag, use_cache=True)
    if not OmegaConf.has_resolver("hexsweep_host"):
        OmegaConf.register_new_resolver("hexsweep_host", host)
    if not OmegaConf.has_resolver("hexsweep_abspath"):
        OmegaConf.register_new_resolver("hexsweep_abspath", _abspath)
