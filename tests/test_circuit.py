"""Circuit breakers across runs and processes, on a real Prefect server.

A breaker's state is a Prefect Variable; every test uses a breaker of its own
name. "Not called" is checked by counting the calls the step's function saw.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prefect import flow, task
from prefect.client.schemas.actions import VariableUpdate
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

from prefect_resilience import StepStatus, collect_outcomes, resilient
from prefect_resilience.analytics import step_statistics
from prefect_resilience.circuit import read_state, state_variable
from prefect_resilience.circuit_state import Circuit
from prefect_resilience.history import task_run_record
from tests.records import recorded_task_runs

pytestmark = pytest.mark.usefixtures("prefect_server")

HERE = Path(__file__).resolve().parent
calls: Counter[str] = Counter()
down: set[str] = set()


def breaker_step(name: str, **settings: Any) -> Any:
    """A step calling a dependency that fails while its name is in `down`."""
    breaker = {"name": name, "failure_threshold": 2, "reset_after": 1.0, **settings}

    @task(name=f"use-{name}")
    def cached() -> str:
        return "cached"

    @resilient(retries=1, retry_delay=0, fallbacks=[cached], circuit_breaker=breaker)
    def call_dependency() -> str:
        calls[name] += 1
        if name in down:
            raise ConnectionError(f"{name} is down")
        return "live"

    return call_dependency


def call(step: Any, times: int) -> tuple[list[str], list[Any]]:
    @flow
    def calls_in_a_row() -> tuple[list[str], list[Any]]:
        with collect_outcomes() as outcomes:
            values = [step() for _ in range(times)]
        return values, outcomes

    return calls_in_a_row()


def circuit_events(name: str, wanted: int, kinds: tuple[str, ...]) -> list[str]:
    """The breaker's opened/closed events, oldest first, once `wanted` have arrived."""
    from prefect.client.orchestration import get_client

    found: list[Any] = []
    deadline = time.monotonic() + 20
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            page = client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(name=[f"prefect-resilience.circuit.{k}" for k in kinds]),
                    resource=EventResourceFilter(id=[f"prefect-resilience.circuit.{name}"]),
                ),
                limit=50,
            )
            found = page.events
            if len(found) >= wanted:
                time.sleep(1.0)  # and no more arrive
                found = client.read_events(
                    filter=EventFilter(
                        event=EventNameFilter(
                            name=[f"prefect-resilience.circuit.{k}" for k in kinds]
                        ),
                        resource=EventResourceFilter(id=[f"prefect-resilience.circuit.{name}"]),
                    ),
                    limit=50,
                ).events
                break
            time.sleep(0.3)
    return [e.event.rsplit(".", 1)[1] for e in sorted(found, key=lambda e: e.occurred)]


def test_it_opens_after_threshold_failures_and_then_does_not_call_the_function() -> None:
    name = "opens-after-two"
    step = breaker_step(name, reset_after=300)
    down.add(name)
    values, outcomes = call(step, 4)
    assert values == ["cached"] * 4  # the fallback carries every call
    assert [o.exception_type for o in outcomes] == ["ConnectionError"] * 2 + ["CircuitOpen"] * 2
    assert all(o.status is StepStatus.DEGRADED for o in outcomes)
    assert calls[name] == 4  # two calls of two attempts each; none once open
    assert [o.attempts for o in outcomes] == [2, 2, 1, 1]  # an open circuit is not retried
    assert "circuit 'opens-after-two' is open: the function was not called" in outcomes[2].reason
    state = read_state(name)
    assert state.state is Circuit.OPEN and "2 failures within 60s" in state.reason
    records = recorded_task_runs([o.task_run_id for o in outcomes])
    short = records[outcomes[3].task_run_id]
    assert short.state.is_failed() and "CircuitOpen" in (short.state.message or "")
    assert circuit_events(name, 1, ("opened", "closed")) == ["opened"]
    # history reads the short-circuited runs; analytics do not count them as the step's
    history = pd.DataFrame(
        [task_run_record(records[o.task_run_id], "calls-in-a-row") for o in outcomes]
    )
    assert list(history["error_type"]) == ["ConnectionError"] * 2 + ["CircuitOpen"] * 2
    (stats,) = step_statistics(history).itertuples()
    assert (stats.runs, stats.failures) == (2, 2)


def test_after_reset_after_one_trial_goes_through_and_its_success_closes_it() -> None:
    name = "half-open-then-closed"
    step = breaker_step(name, reset_after=4.0)
    down.add(name)
    call(step, 2)
    state = read_state(name)
    assert state.state is Circuit.OPEN and state.opened_at is not None
    down.discard(name)
    before = calls[name]
    assert call(step, 1)[0] == ["cached"]  # within reset_after: still open
    assert calls[name] == before
    time.sleep(max(0.0, state.opened_at + 4.1 - time.time()))
    values, outcomes = call(step, 2)
    assert values == ["live", "live"] and calls[name] == before + 2
    assert [o.status for o in outcomes] == [StepStatus.SUCCEEDED] * 2
    assert read_state(name).state is Circuit.CLOSED
    assert circuit_events(name, 2, ("opened", "closed")) == ["opened", "closed"]


def test_a_failed_trial_opens_it_again() -> None:
    name = "trial-fails"
    # reset after 4 s: on a loaded machine the call after the failed trial may take more than
    # a second to reach its breaker, and would then rightly be let through as a new trial
    step = breaker_step(name, reset_after=4.0)
    down.add(name)
    call(step, 2)
    opened_at = read_state(name).opened_at
    time.sleep(4.1)
    before = calls[name]
    values, outcomes = call(step, 2)
    assert calls[name] == before + 2  # the trial, and its one retry; the next call not at all
    assert [o.exception_type for o in outcomes] == ["ConnectionError", "CircuitOpen"]
    state = read_state(name)
    assert state.state is Circuit.OPEN and state.opened_at is not None and opened_at is not None
    assert state.opened_at > opened_at and "the trial call failed" in state.reason


def test_steps_naming_one_breaker_share_it() -> None:
    name = "shared-by-two"
    first, second = breaker_step(name, reset_after=300), breaker_step(name, reset_after=300)
    down.add(name)
    call(first, 2)
    before = calls[name]
    values, outcomes = call(second, 1)
    assert calls[name] == before and outcomes[0].exception_type == "CircuitOpen"


def test_an_operator_closes_it_by_editing_its_variable() -> None:
    from prefect.client.orchestration import get_client

    name = "closed-by-hand"
    step = breaker_step(name, reset_after=300)
    down.add(name)
    call(step, 2)
    assert read_state(name).state is Circuit.OPEN
    with get_client(sync_client=True) as client:
        variable = client.read_variable_by_name(state_variable(name))
        assert variable is not None and variable.value["failure_threshold"] == 2
        client.update_variable(VariableUpdate(name=state_variable(name), value={"state": "closed"}))
    down.discard(name)
    assert call(step, 1)[0] == ["live"]


def test_two_processes_failing_at_once_open_it_once() -> None:
    from prefect.settings import PREFECT_API_URL

    name = "raced-by-four"
    start = time.time() + 8  # all four processes import and reach the step before this
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    processes = [
        subprocess.Popen(
            [sys.executable, str(HERE / "circuit_flows.py"), name, str(start)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    assert all(o.rstrip().endswith("skipped") for o in outputs)
    assert read_state(name).state is Circuit.OPEN
    assert circuit_events(name, 1, ("opened",)) == ["opened"]
