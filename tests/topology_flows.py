"""The flow the topology tests deploy: a few steps, failures by seed, a hold for kills.

Workers load it by entrypoint (`tests/topology_flows.py:topology_batch`), so it
imports nothing from the test suite. Which steps fail is a pure function of the
seed, so a test knows each run's report before the run starts.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

from prefect import runtime

from prefect_resilience import resilient, resilient_flow

STEPS = 6


class InjectedOutage(ConnectionError):
    """The failure a seed injects."""


def failing_steps(seed: int) -> list[int]:
    """Steps that fail for good in the run of `seed` (each with probability 0.2)."""
    draw = random.Random(seed)
    return [i for i in range(STEPS) if draw.random() < 0.2]


@resilient(policy="partial_success", retries=1, default=None)
def topology_step(index: int, fail: bool, pause: float) -> int:
    time.sleep(pause)
    if fail:
        raise InjectedOutage(f"step {index} down")
    return index


@resilient_flow(name="topology-batch")
def topology_batch(seed: int, pause: float = 0.2, hold: str = "") -> list[int | None]:
    """Every step under `partial_success`: a run with failures ends PartialSuccess.

    With `hold`, the run writes its pid and id to that file after its third step
    and sleeps, so a test can kill what runs it.
    """
    failing = failing_steps(seed)
    done: list[int | None] = []
    for index in range(STEPS):
        done.append(topology_step(index, index in failing, pause))
        if hold and index == 2:
            ready = {"pid": os.getpid(), "flow_run_id": str(runtime.flow_run.id)}
            Path(hold).write_text(json.dumps(ready))
            time.sleep(300)
    return done
