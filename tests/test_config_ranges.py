"""Every numeric key of the schema has a range, and validate enforces it (issue 12, item 10)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing

import pytest
from omegaconf import OmegaConf, open_dict

from hexsweep import config
from hexsweep.cli import compose
from hexsweep.config import RANGE, Range, TrainConfig, validate
from hexsweep.errors import ConfigError


def numeric_leaves(schema: type, prefix: str = ""):
    """(key, element type, is a list, field) for every int/float leaf, walked independently of config.py."""
    hints = typing.get_type_hints(schema, vars(config))
    for f in dataclasses.fields(schema):
        tp, key = hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(tp):
            yield from numeric_leaves(tp, key + ".")
            continue
        if typing.get_origin(tp) in (types.UnionType, typing.Union):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        is_list = typing.get_origin(tp) is list
        if is_list:
            tp = typing.get_args(tp)[0]
        if tp in (int, float):
            yield key, tp, is_list, f


def outside(r: Range, kind: type) -> list:
    """Values just outside each declared bound (and NaN, infinity for floats)."""
    bad = []
    if r.gt is not None:
        bad.append(kind(r.gt))
    if r.ge is not None:
        bad.append(kind(r.ge - 1))
    if r.lt is not None:
        bad.append(kind(r.lt))
    if r.le is not None:
        bad.append(kind(r.le + 1))
    if kind is float:
        bad += [math.nan, math.inf, -math.inf]
    return bad


def test_every_numeric_schema_key_rejects_values_outside_its_range():
    base = compose([])
    leaves = list(numeric_leaves(TrainConfig))
    assert len(leaves) > 40  # the walk reaches every group
    missing = [key for key, _, _, f in leaves if f.metadata.get(RANGE) is None]
    assert not missing, f"numeric schema keys without a range (declare them with config.ranged): {missing}"
    unbounded = [key for key, _, _, f in leaves if all(
        getattr(f.metadata[RANGE], b) is None for b in ("gt", "ge", "lt", "le"))]
    assert not unbounded, f"numeric schema keys whose range has no bound: {unbounded}"
    for key, kind, is_list, f in leaves:
        for bad in outside(f.metadata[RANGE], kind):
            cfg = base.copy()
            OmegaConf.update(cfg, key, [bad] if is_list else bad, merge=False)
            with pytest.raises(ConfigError) as err:
                validate(cfg)
            message = str(err.value)
            assert message.startswith(f"{key}="), (key, bad, message)
            assert "is invalid" in message and "\n" not in message, message
        validate(base)  # and the defaults pass


@pytest.mark.parametrize("override, message", [
    ("trainer.grad_clip=-1", "trainer.grad_clip=-1.0 is invalid: allowed a number > 0, or 0 or null (no clipping)"),
    ("data.games_per_chunk=0", "data.games_per_chunk=0 is invalid: allowed an integer > 0"),
    ("resources.sample_interval_s=0", "resources.sample_interval_s=0.0 is invalid: allowed a number >= 0.1"),
    ("trainer.min_delta=nan", "trainer.min_delta=nan is invalid: allowed a number >= 0"),
    ("optim.lr=inf", "optim.lr=inf is invalid"),
    ("trainer.eval_batch_size=0", "trainer.eval_batch_size=0 is invalid: allowed an integer > 0"),
    ("trainer.max_steps_per_epoch=0", "trainer.max_steps_per_epoch=0 is invalid: allowed an integer > 0 or null"),
    ("data.val_fraction=0.999", "data.val_fraction=0.999 is invalid: allowed a number in (0, 0.5]"),
    ("data.num_positions=20", "data.num_positions=20 is invalid: allowed an integer > 50"),
    ("seed=-1", "seed=-1 is invalid: allowed an integer in 0..2**63-1"),
    ("data.name=../../x", "data.name='../../x' is invalid: allowed a non-empty name without '/'"),
    ("data.name=a/b", "data.name='a/b' is invalid"),
    ("data.name=''", "data.name='' is invalid"),
])
def test_values_from_issue_12_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as err:
        compose([override])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize("override", ["trainer.grad_clip=null", "trainer.grad_clip=0", "data.val_fraction=0.5"])
def test_boundary_values_that_mean_something_pass(override):
    compose([override])


def test_hydra_job_name_becomes_a_file_name_and_is_checked():
    cfg = compose([])
    with open_dict(cfg):
        cfg.hydra = {"job": {"name": "../../x"}}
    with pytest.raises(ConfigError, match=r"hydra.job.name='../../x' is invalid"):
        validate(cfg)
    cfg.hydra.job.name = "train"
    validate(cfg)
