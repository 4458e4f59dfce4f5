"""Imported by the job server before it forks any job, for every app: Hydra's plugin discovery.

Each job receives the driver's Hydra singletons (the ConfigStore, the plugin registry), as
Hydra's joblib and submitit launchers hand them to their workers. Unpickling them imports
every Hydra plugin module and rebuilds the plugin registry: ~0.4 s a job when the server
has not done it once already.
"""

from hydra.core.plugins import Plugins

Plugins.instance()
