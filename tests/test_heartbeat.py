"""The job's heartbeat (hexsweep/heartbeat.py), read as the sweep driver reads it: a counter in
shared memory."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from hexsweep import heartbeat


@pytest.fixture
def counter():
    value = multiprocessing.RawValue("Q", 0)
    heartbeat.attach(value)
    try:
        yield value
    finally:
        heartbeat.attach(None)


def test_a_busy_block_beats_until_its_limit_and_no_longer(counter):
    start = time.monotonic()
    with heartbeat.busy(1.0):
        while counter.value == 0 and time.monotonic() - start < 1.0:
            time.sleep(0.02)
        assert counter.value >= 1  # it beats while the block runs
        time.sleep(max(0.0, start + 1.8 - time.monotonic()))  # past the limit: a block stuck this long is a stall
        late = counter.value
        time.sleep(0.5)
        assert counter.value == late


def test_outside_a_job_busy_starts_no_thread():
    import threading

    before = threading.active_count()
    with heartbeat.busy(5):
        assert threading.active_count() == before
