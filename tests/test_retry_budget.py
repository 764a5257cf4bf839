"""`retry_budget` and `RetryAfter` on a real Prefect server, timed inside the step.

Each step writes down when each of its attempts starts; the gap between the
first attempt's start and the next is what a budget bounds and what a
`RetryAfter` (or an HTTP 429's `Retry-After`) lengthens. The retries are
Prefect's own: the task run's `run_count` counts them.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prefect import flow, task

from prefect_resilience import RetryAfter, StepStatus, collect_outcomes, resilient
from tests.records import recorded_task_runs

pytestmark = pytest.mark.usefixtures("prefect_server")

SLACK = 2.0
"""How much later than asked a retry may start on a busy shared machine."""

starts: dict[str, list[float]] = defaultdict(list)


def gaps(key: str) -> list[float]:
    times = starts[key]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def attempt(key: str) -> int:
    starts[key].append(time.monotonic())
    return len(starts[key])


def run(step: Callable[..., Any], *args: Any) -> tuple[Any, Any]:
    @flow
    def one() -> tuple[Any, Any]:
        with collect_outcomes() as outcomes:
            value = step(*args)
        return value, outcomes[0]

    return one()


def test_retry_after_waits_longer_than_the_backoff_asks(request: pytest.FixtureRequest) -> None:
    key = request.node.name

    @resilient(retries=3, retry_delay=0.1, policy="continue", default="default")
    def rate_limited() -> str:
        if attempt(key) < 3:
            raise RetryAfter(1.2, "rate limited")
        return "ok"

    value, outcome = run(rate_limited)
    assert value == "ok" and outcome.status is StepStatus.RECOVERED and outcome.attempts == 3
    assert all(1.2 <= gap < 1.2 + SLACK for gap in gaps(key)), gaps(key)
    record = recorded_task_runs([outcome.task_run_id])[outcome.task_run_id]
    assert record.run_count == 3  # Prefect's own retries


def test_a_backoff_longer_than_asked_wins(request: pytest.FixtureRequest) -> None:
    key = request.node.name

    @resilient(retries=1, retry_delay=1.0, policy="continue")
    def asks_little() -> str:
        if attempt(key) == 1:
            raise RetryAfter(0.1)
        return "ok"

    assert run(asks_little)[0] == "ok"
    assert 1.0 <= gaps(key)[0] < 1.0 + SLACK


def test_jitter_never_shortens_the_wait_asked_for(request: pytest.FixtureRequest) -> None:
    @resilient(retries=1, backoff={"initial": 0.1, "max": 0.1, "jitter": 2.0}, policy="continue")
    def jittered(i: int) -> int:
        if attempt(f"{request.node.name}-{i}") == 1:
            raise RetryAfter(1.0)
        return i

    @flow
    def many() -> list[int]:
        return [f.result() for f in jittered.map(range(4))]

    assert many() == [0, 1, 2, 3]
    for i in range(4):
        assert 1.0 <= gaps(f"{request.node.name}-{i}")[0] < 1.0 + SLACK


def test_each_mapped_task_run_waits_what_it_asked(request: pytest.FixtureRequest) -> None:
    """The task runs of one .map() share one task copy; each still gets its own wait."""

    @resilient(retries=1, retry_delay=0, policy="continue")
    def per_item(i: int) -> int:
        if attempt(f"{request.node.name}-{i}") == 1:
            raise RetryAfter(0.6 * i)
        return i

    @flow
    def many() -> list[int]:
        return [f.result() for f in per_item.map(range(4))]

    assert many() == [0, 1, 2, 3]
    for i in range(4):
        gap = gaps(f"{request.node.name}-{i}")[0]
        assert 0.6 * i <= gap < 0.6 * i + SLACK, (i, gap)


def test_an_http_429_retry_after_header_is_honoured(request: pytest.FixtureRequest) -> None:
    key = request.node.name

    @resilient(retries=2, policy="continue", retry_on=[httpx.HTTPStatusError])
    def call_api() -> str:
        if attempt(key) == 1:
            request_ = httpx.Request("GET", "https://api.example/items")
            response = httpx.Response(429, headers={"Retry-After": "1"}, request=request_)
            response.raise_for_status()
        return "ok"

    assert run(call_api)[0] == "ok"
    assert 1.0 <= gaps(key)[0] < 1.0 + SLACK


def test_an_async_step_may_ask_too(request: pytest.FixtureRequest) -> None:
    key = request.node.name

    @resilient(retries=1, policy="continue")
    async def fetch() -> str:
        if attempt(key) == 1:
            await asyncio.sleep(0)
            raise RetryAfter(1.0)
        return "ok"

    @flow
    async def one() -> str:
        return await fetch()

    assert asyncio.run(one()) == "ok"
    assert 1.0 <= gaps(key)[0] < 1.0 + SLACK


def test_no_retry_starts_past_the_budget(request: pytest.FixtureRequest) -> None:
    key = request.node.name

    @resilient(
        retries=10,
        backoff={"initial": 0.5, "factor": 2, "max": 8},
        retry_budget=2.0,
        policy="continue",
        default="cached",
    )
    def flaky() -> str:
        attempt(key)
        raise ConnectionError("down")

    value, outcome = run(flaky)
    # attempts start at about 0, 0.5 and 1.5 s; the next wait (2 s) would end at 3.5 s
    assert value == "cached" and outcome.status is StepStatus.TOLERATED
    assert outcome.attempts == len(starts[key]) == 3
    assert starts[key][-1] - starts[key][0] < 2.0
    assert "past retry_budget 2s" in outcome.reason and "continue yields" in outcome.reason
    assert "retry 3 would start" in outcome.reason


def test_the_budget_also_bounds_a_retry_after(request: pytest.FixtureRequest) -> None:
    key = request.node.name

    @resilient(retries=3, retry_budget="1s", policy="continue", default=0)
    def asks_too_much() -> int:
        attempt(key)
        raise RetryAfter(5, "come back in 5s")

    began = time.monotonic()
    value, outcome = run(asks_too_much)
    assert value == 0 and len(starts[key]) == 1 and outcome.attempts == 1
    assert time.monotonic() - began < 5  # the run did not wait for a retry it would not make
    assert "past retry_budget 1s" in outcome.reason


def test_a_plain_task_and_a_resilient_one_retry_alike() -> None:
    """The retry condition every resilient step with retries now has changes nothing else."""
    counts: dict[str, int] = defaultdict(int)

    def flaky(name: str) -> int:
        counts[name] += 1
        if counts[name] < 3:
            raise ValueError("not yet")
        return counts[name]

    plain = task(flaky, retries=3, retry_delay_seconds=0.05)
    wrapped = resilient(plain, policy="fail_fast")

    @flow
    def both() -> tuple[Any, Any]:
        return plain("plain", return_state=True), wrapped("wrapped", return_state=True)

    plain_state, wrapped_state = both()
    assert plain_state.result() == wrapped_state.result() == 3
    records = recorded_task_runs(
        [plain_state.state_details.task_run_id, wrapped_state.state_details.task_run_id]
    )
    assert [r.run_count for r in records.values()] == [3, 3]
    assert [r.empirical_policy.retry_delay for r in records.values()] == [0.05, 0.05]
