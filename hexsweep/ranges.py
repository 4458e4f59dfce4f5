"""Numeric ranges declared on dataclass fields, and their one-line check.

The config schema (config.py) and the sweeper's pruner settings (pruners.py) declare each
numeric key's range where the key is defined, with ``ranged(default, gt=/ge=/lt=/le=)``; the
message of a value out of range comes from that declaration.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hexsweep.errors import ConfigError

RANGE = "hexsweep_range"  # the dataclass field metadata key


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric key: optional bounds; ``allowed`` rewords the message."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    allowed: str | None = None

    def accepts(self, x: float) -> bool:
        return ((self.gt is None or x > self.gt) and (self.ge is None or x >= self.ge)
                and (self.lt is None or x < self.lt) and (self.le is None or x <= self.le))

    def describe(self, integer: bool, plural: bool = False) -> str:
        if self.allowed:
            return self.allowed
        kind = ("integers" if plural else "an integer") if integer else ("numbers" if plural else "a number")
        lo = self.ge if self.ge is not None else self.gt
        hi = self.le if self.le is not None else self.lt
        if lo is not None and hi is not None:
            if integer and self.ge is not None and self.le is not None:
                return f"{kind} in {lo:g}..{hi:g}"
            return f"{kind} in {'[' if self.ge is not None else '('}{lo:g}, {hi:g}{']' if self.le is not None else ')'}"
        if lo is not None:
            return f"{kind} {'>=' if self.ge is not None else '>'} {lo:g}"
        if hi is not None:
            return f"{kind} {'<=' if self.le is not None else '<'} {hi:g}"
        return kind



def ranged(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None,
           allowed: str | None = None, gt: float | None = None, ge: float | None = None,
           lt: float | None = None, le: float | None = None) -> Any:
    """A numeric schema field with its allowed range (checked by ``validate``)."""
    meta = {RANGE: Range(gt, ge, lt, le, allowed)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def check_fields(values: Any, cls: type, prefix: str) -> None:
    """ConfigError (one line, the key named as ``prefix.field``) for the first value of ``values``
    (a mapping) outside the range its field of dataclass ``cls`` declares."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        r = f.metadata.get(RANGE)
        if r is None or f.name not in values:
            continue
        value = values[f.name]
        integer = hints[f.name] is int
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
            and (not integer or float(value).is_integer()) and r.accepts(value)
        if not ok:
            raise ConfigError(f"{prefix}.{f.name}={value!r} is invalid: allowed {r.describe(integer)}")
