"""Hydra's sweep grammar -> Optuna distributions, as the official Optuna sweeper reads it.

    choice(a, b, c)              -> CategoricalDistribution
    range(start, stop, step=s)   -> IntDistribution / FloatDistribution(start, stop, step): as the
                                    official plugin, ``stop`` is Optuna's (inclusive) high end; a
                                    grid takes range()'s own points, which exclude ``stop``
    interval(lo, hi)             -> FloatDistribution (IntDistribution with int(interval()))
    tag(log, interval(lo, hi))   -> the same, log-scaled
    a plain value                -> fixed for every trial
"""

from __future__ import annotations

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep, Transformer
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from hexsweep.errors import ConfigError


def distribution(key: str, text: str) -> BaseDistribution | str:
    """One ``params`` entry: a distribution, or the fixed value's override text."""
    try:
        override = OverridesParser.create().parse_override(f"{key}={text}")
    except Exception as e:  # Hydra's parser raises its own grammar errors
        raise ConfigError(f"hydra.sweeper.params.{key}={text!r} is invalid: {str(e).splitlines()[0]}") from None
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    try:
        return _distribution(key, text, override)
    except ValueError as e:  # Optuna's own check of the bounds (low <= high, log with low > 0, ...)
        raise ConfigError(f"hydra.sweeper.params.{key}={text!r} is invalid: {str(e).splitlines()[0]}") from None


def _distribution(key: str, text: str, override: Any) -> BaseDistribution:
    value = override.value()
    if isinstance(value, ChoiceSweep):
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        return CategoricalDistribution([_plain(c) for c in choices])
    if isinstance(value, RangeSweep):
        if value.shuffle:
            return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
        start, stop, step = value.start, value.stop, value.step
        if any(isinstance(x, float) for x in (start, stop, step)):
            return FloatDistribution(float(start), float(stop), step=float(step))
        return IntDistribution(int(start), int(stop), step=int(step))
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(int(value.start), int(value.end), log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ConfigError(f"hydra.sweeper.params.{key}={text!r}: {type(value).__name__} is not supported: "
                      "allowed choice(), range(), interval(), int(interval()), tag(log, interval())")


def grid_points(key: str, d: BaseDistribution) -> list[Any]:
    """A distribution's points for the grid sampler: a choice()'s values, a range()'s steps
    (``stop`` excluded, as Python's range and the official plugin do)."""
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    if isinstance(d, IntDistribution | FloatDistribution) and d.step is not None and not d.log:
        n = int((d.high - d.low) // d.step)
        return [d.low + i * d.step for i in range(n)]
    raise ConfigError(f"GridSampler only supports discrete distributions: hydra.sweeper.params.{key} is {d}; "
                      "allowed choice() or range()")


def _plain(x: Any) -> Any:
    if isinstance(x, str):
        try:
            return int(x)
        except ValueError:
            try:
                return float(x)
            except ValueError:
                return x
    return x


def parse_params(params: dict[str, Any] | None) -> tuple[dict[str, BaseDistribution], list[str]]:
    """-> (searched distributions, fixed overrides)."""
    space: dict[str, BaseDistribution] = {}
    fixed: list[str] = []
    for key, text in (params or {}).items():
        d = distribution(str(key), str(text))
        if isinstance(d, str):
            fixed.append(f"{key}={d}")
        else:
            space[str(key)] = d
    return space, fixed


def to_override(key: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{key}={value!r}"
    if value is None:
        return f"{key}=null"
    return f"{key}={value}"
