"""Each job's config, composed from a cache of what its config-group choices compose to.

Hydra composes a sweep's job from scratch: it parses the overrides, deep-copies its config
repository, loads every config of the defaults tree (YAML files, ConfigStore nodes) and merges
them, then applies the job's plain value overrides (``seed=3``, ``optim.lr=0.01``). With
hexsweep.train's config that is 0.2-0.5 s a job, in the driver, before the job starts, and the
BasicSweeper composes every job once more in ``validate_batch_is_legal``. Yet the jobs of a
sweep mostly differ in plain values only: what the defaults tree composes to depends only on
the overrides that select config groups (``model=big``, ``+extra=x``, ``~group``,
``group@pkg=x``, ``hydra/launcher=...``) and on ``hydra.searchpath``.

``SweepComposer.load_sweep_config`` is Hydra 1.3's ``ConfigLoaderImpl.load_sweep_config``
(hydra/_internal/config_loader_impl.py, ``_load_configuration_impl``) split in two:

- the head (defaults list, composition of the defaults) runs once per distinct set of
  config-group overrides, and its result is kept;
- the tail (struct flag, the plain overrides applied by Hydra's own ``_apply_overrides_to_config``,
  the ``hydra.overrides``/``runtime``/``job`` fields) runs on a deep copy of it for every job.

Hydra offers no hook to reuse a composition (its own per-call cache lives for one call), so
the split copies the order of Hydra's steps; which override is a config-group override is
Hydra's rule (``Overrides.__init__`` in hydra/_internal/defaults_list.py), and every
composition that misses the cache checks that rule against Hydra's own split, falling back to
Hydra's code for good if they ever differ. Any other Hydra version than 1.3 gets Hydra's
code. tests/test_cold_path.py compares the cached and the uncached config for a range of
overrides (``+key``, ``~key``, ``key@pkg``, interpolations, ``hydra.*``, job name and
override_dirname).
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

#: distinct config-group choices kept at once (an Optuna search over groups may have many)
MAX_CACHED = 64


def supported() -> bool:
    import hydra

    return hydra.__version__.startswith("1.3.")


class SweepComposer:
    """A drop-in ``load_sweep_config`` for one Hydra ConfigLoaderImpl; see the module's notes."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self._reset()

    def _reset(self) -> None:
        self._repos: dict[tuple, Any] = {}
        self._bases: OrderedDict[tuple, tuple[DictConfig, dict, list]] = OrderedDict()
        self.enabled = supported()
        self.hits = 0

    # A job's payload carries Hydra's context, and with it this composer: the cached
    # compositions stay in the driver.
    def __getstate__(self) -> dict[str, Any]:
        return {"loader": self.loader}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def hydra_load(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        """Hydra's own load_sweep_config (its class's: the instance's is this composer's)."""
        return type(self.loader).load_sweep_config(self.loader, master_config, sweep_overrides)

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        if not self.enabled:
            return self.hydra_load(master_config, sweep_overrides)
        from hydra.errors import ConfigCompositionException

        overrides = [*OmegaConf.to_container(master_config.hydra.overrides.hydra), *sweep_overrides]
        try:
            cfg = self._load(master_config.hydra.job.config_name, overrides)
        except OmegaConfBaseException as e:  # as Hydra's load_configuration wraps them
            raise ConfigCompositionException().with_traceback(sys.exc_info()[2]) from e
        if cfg is None:  # Hydra's split differed from ours: Hydra's code from now on
            self.enabled = False
            return self.hydra_load(master_config, sweep_overrides)
        # as Hydra does: the master's resolver cache (timestamps) holds for every job
        OmegaConf.copy_cache(from_config=master_config, to_config=cfg)
        return cfg

    def _group_overrides(self, config_name: str | None, parsed: list[Any]) -> tuple[tuple, list[Any]]:
        """The cache key (what selects the defaults tree) and the plain config overrides, in order."""
        searchpath = tuple(o.input_line for o in parsed if o.key_or_group == "hydra.searchpath")
        repo = self._repos.get((config_name, searchpath))
        if repo is None:  # the repository as this primary config's hydra.searchpath extends it
            _, repo = self.loader._parse_overrides_and_create_caching_repo(config_name, list(searchpath))
            self._repos[(config_name, searchpath)] = repo
        group, plain = [], []
        for o in parsed:
            # Hydra's rule (Overrides.__init__): a dict value or a key that is no config group
            is_config = isinstance(o.value(), dict) or not repo.group_exists(o.key_or_group)
            (plain if is_config and o.key_or_group != "hydra.searchpath" else group).append(o)
        return (config_name, tuple(o.input_line for o in group)), plain

    def _load(self, config_name: str | None, overrides: list[str]) -> DictConfig | None:
        from hydra._internal.defaults_list import create_defaults_list
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.types import RunMode

        loader = self.loader
        loader.ensure_main_config_source_available()
        parsed = OverridesParser.create().parse_overrides(overrides=overrides)
        key, plain = self._group_overrides(config_name, parsed)
        loader.validate_sweep_overrides_legal(overrides=parsed, run_mode=RunMode.RUN, from_shell=True)
        if key in self._bases:
            self._bases.move_to_end(key)
            base, choices, sources = self._bases[key]
            self.hits += 1
            return self._finish(copy.deepcopy(base), parsed, plain, choices, sources, config_name)
        # Hydra's head, as in _load_configuration_impl
        parsed, repo = loader._parse_overrides_and_create_caching_repo(config_name, overrides)
        defaults = create_defaults_list(repo=repo, config_name=config_name, overrides_list=parsed,
                                        prepend_hydra=True, skip_missing=False)
        if [o.input_line for o in defaults.config_overrides] != [o.input_line for o in plain]:
            return None
        cfg = loader._compose_config_from_defaults_list(defaults=defaults.defaults, repo=repo)
        sources = list(repo.get_sources())
        choices = dict(defaults.overrides.known_choices)
        self._bases[key] = (copy.deepcopy(cfg), choices, sources)
        if len(self._bases) > MAX_CACHED:
            self._bases.popitem(last=False)
        return self._finish(cfg, parsed, defaults.config_overrides, choices, sources, config_name)

    @staticmethod
    def _finish(cfg: DictConfig, parsed: list[Any], plain: list[Any], choices: dict, sources: list,
                config_name: str | None) -> DictConfig:
        """Hydra's tail of _load_configuration_impl, step for step."""
        from hydra import __version__, version
        from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
        from hydra.conf import ConfigSourceInfo
        from hydra.core.utils import JobRuntime

        OmegaConf.set_struct(cfg, True)
        OmegaConf.set_readonly(cfg.hydra, False)
        ConfigLoaderImpl._apply_overrides_to_config(plain, cfg)
        app_overrides = []
        for override in parsed:
            if override.is_hydra_override():
                cfg.hydra.overrides.hydra.append(override.input_line)
            else:
                cfg.hydra.overrides.task.append(override.input_line)
                app_overrides.append(override)
        with open_dict(cfg.hydra):
            cfg.hydra.runtime.choices.update(choices)
            for key in cfg.hydra.job.env_copy:
                cfg.hydra.job.env_set[key] = os.environ[key]
        cfg.hydra.runtime.version = __version__
        cfg.hydra.runtime.version_base = version.getbase()
        cfg.hydra.runtime.cwd = os.getcwd()
        cfg.hydra.runtime.config_sources = [ConfigSourceInfo(path=x.path, schema=x.scheme(), provider=x.provider)
                                            for x in sources]
        if "name" not in cfg.hydra.job:
            cfg.hydra.job.name = JobRuntime().get("name")
        cfg.hydra.job.override_dirname = get_overrides_dirname(
            overrides=app_overrides,
            kv_sep=cfg.hydra.job.config.override_dirname.kv_sep,
            item_sep=cfg.hydra.job.config.override_dirname.item_sep,
            exclude_keys=cfg.hydra.job.config.override_dirname.exclude_keys,
        )
        cfg.hydra.job.config_name = config_name
        return cfg


def share_composition(loader: Any) -> SweepComposer:
    """Make ``loader.load_sweep_config`` (every caller's: the BasicSweeper's validation, the
    launcher, the Optuna and race sweepers) compose through one SweepComposer. Hydra has no hook
    for it, so it replaces the method on this loader instance only; idempotent."""
    current = loader.__dict__.get("load_sweep_config")
    composer = getattr(current, "__self__", None)
    if isinstance(composer, SweepComposer):
        return composer
    composer = SweepComposer(loader)
    loader.load_sweep_config = composer.load_sweep_config
    return composer


@contextlib.contextmanager
def shared_config_store() -> Iterator[None]:
    """Within: a deep copy of Hydra's ConfigStore is the store itself.

    Hydra's ``--help`` lists every config group's options through ``get_group_options``, and each
    call deep-copies the config repository (``CachingConfigRepository.__init__``), and with it the
    whole ConfigStore (every registered schema, plugin and sampler node): about 90 copies, 1.3-1.7
    s of a 2.9 s ``--help``. Nothing writes to the copied store: Hydra copies the repository only so
    that ``initialize_sources`` cannot change the original's sources, and the sources it creates
    there take ``ConfigStore.instance()`` itself. Not for a whole run: ``Singleton.get_state()`` (a
    sweep's jobs, Hydra's test fixtures) relies on the copy being a snapshot."""
    from hydra.core.config_store import ConfigStore

    if "__deepcopy__" in vars(ConfigStore):  # Hydra defines its own now, or we are nested: leave it
        yield
        return
    ConfigStore.__deepcopy__ = _same_store
    try:
        yield
    finally:
        del ConfigStore.__deepcopy__


def _same_store(store: Any, memo: dict) -> Any:
    return store
