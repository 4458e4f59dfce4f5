"""Shared fixtures: the real composed config, shrunk, with every output under tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import open_dict
from sweep_helpers import kill_tree, popen

from hexsweep.cli import compose
from hexsweep.data.generate import ensure_dataset

# Training tests share one generated tiny dataset; each test's runs go to its own tmp_path.
TINY = ["debug=tiny", "trainer.progress=off"]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # pytest-xdist (-n 2, pyproject.toml): the workers share one tiny dataset, in this run's
        # shared base folder; ensure_dataset generates it under a file lock, once
        root = tmp_path_factory.getbasetemp().parent / "data"
        root.mkdir(exist_ok=True)
        return root
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_dataset(data_root) -> Path:
    cfg = compose(TINY + [f"paths.data={data_root}"])
    folder, _ = ensure_dataset(cfg.data, cfg.paths.data, workers=2)
    return folder


@pytest.fixture
def tiny_cfg(tmp_path, data_root, tiny_dataset):
    """Compose the real config for a tiny run; extra overrides are appended by the caller."""

    def make(*overrides: str):
        cfg = compose(TINY + [f"paths.outputs={tmp_path}", f"paths.data={data_root}", *overrides])
        with open_dict(cfg):
            pass
        return cfg

    return make


@pytest.fixture
def spawn():
    """Start processes the test owns (``sweep_helpers.popen``): when the test ends, however it
    ends, each of them and every process it started is killed, so a failed test leaves no
    driver, job server or stopped job running."""
    started = []

    def start(cmd, **kwargs):
        started.append(popen(cmd, **kwargs))
        return started[-1]

    try:
        yield start
    finally:
        for proc in started:
            kill_tree(proc, *proc.also)
