"""A resilient task behaves as the plain Prefect task it wraps: each behaviour run twice.

Every test here builds the same task twice, once with a plain `@task` and
once with `@resilient(policy="fail_fast")` over it, runs both the same way
against the test server, and asserts the same observable result. A fail_fast
step adds nothing a user can see but its report entry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from prefect import Task, flow, task
from prefect.cache_policies import INPUTS
from prefect.futures import PrefectConcurrentFuture, PrefectDistributedFuture, wait
from prefect.states import State
from prefect.tasks import exponential_backoff

from prefect_resilience import ResilientTask, resilient
from tests.records import recorded_task_runs

pytestmark = pytest.mark.usefixtures("prefect_server")

VARIANTS = ("plain", "resilient")


def make(variant: str, fn: Callable[..., Any], **options: Any) -> Task[..., Any]:
    plain = task(**options)(fn)
    return plain if variant == "plain" else resilient(policy="fail_fast")(plain)


def both(build: Callable[[str], Any]) -> tuple[Any, Any]:
    plain, resilient_ = (build(v) for v in VARIANTS)
    return plain, resilient_


PREFECT_ATTRIBUTES = (
    "name",
    "description",
    "tags",
    "version",
    "task_run_name",
    "retries",
    "retry_delay_seconds",
    "retry_jitter_factor",
    "retry_condition_fn",
    "timeout_seconds",
    "cache_policy",
    "cache_expiration",
    "persist_result",
    "result_serializer",
    "result_storage_key",
    "cache_result_in_memory",
    "log_prints",
    "refresh_cache",
    "on_completion_hooks",
    "on_failure_hooks",
    "on_running_hooks",
    "isasync",
    "isgenerator",
    "task_key",
)


def attributes(t: Task[..., Any]) -> dict[str, Any]:
    return {name: getattr(t, name) for name in PREFECT_ATTRIBUTES}


def flaky_calls() -> Callable[[], int]:
    calls: list[int] = []

    def flaky() -> int:
        calls.append(1)
        if len(calls) < 2:
            raise ValueError("first attempt fails")
        return len(calls)

    return flaky


# --- attributes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"retries": 3, "retry_delay_seconds": 2},
        {"retries": 2, "retry_delay_seconds": [1, 5]},
        {"retries": 4, "retry_delay_seconds": exponential_backoff(backoff_factor=2)},
        {"retries": 1, "retry_jitter_factor": 0.5, "timeout_seconds": 9},
        {"name": "n", "tags": ["a", "b"], "task_run_name": "run-{x}", "version": "7"},
        {"cache_policy": INPUTS, "persist_result": True, "log_prints": True},
    ],
)
def test_attributes_are_those_prefect_sets(options: dict[str, Any]) -> None:
    def step(x: int) -> int:
        return x

    plain, wrapped = both(lambda v: make(v, step, **options))
    assert isinstance(wrapped, ResilientTask)
    assert attributes(wrapped) == attributes(plain)


def test_with_options_is_prefects_own() -> None:
    def step() -> int:
        return 1

    plain, wrapped = both(lambda v: make(v, step))
    for change in (
        {"retries": 2, "retry_delay_seconds": exponential_backoff(backoff_factor=3)},
        {"retry_delay_seconds": 5, "retries": 1},
        {"name": "renamed", "tags": ["x"], "timeout_seconds": 4},
    ):
        assert attributes(wrapped.with_options(**change)) == attributes(
            plain.with_options(**change)
        )
    errors = []
    for t in (plain, wrapped):
        with pytest.raises(TypeError) as raised:
            t.with_options(retry_delay_seconds="soon")
        errors.append(str(raised.value))
    assert errors[0] == errors[1]


# --- calling -----------------------------------------------------------------------------


def summary(state: State[Any]) -> tuple[Any, ...]:
    """What a state shows, read inside the flow (a flow returning a Failed state fails)."""
    result = state.result(raise_on_failure=False)
    return state.type, state.name, type(result).__name__, str(result)


def run_in_flow(body: Callable[[], Any]) -> Any:
    @flow
    def f() -> Any:
        return body()

    return f()


def test_a_call_returns_the_value_and_the_state() -> None:
    def step(x: int) -> int:
        return x + 1

    for t in both(lambda v: make(v, step)):
        value, state = run_in_flow(lambda t=t: (t(1), t(2, return_state=True)))
        assert value == 2
        assert isinstance(state, State) and state.is_completed() and state.result() == 3


def test_a_failure_raises_the_same_exception_and_state() -> None:
    def step() -> None:
        raise KeyError("missing")

    seen = []
    for t in both(lambda v: make(v, step)):
        shown = run_in_flow(lambda t=t: summary(t(return_state=True)))
        with pytest.raises(KeyError) as raised:
            run_in_flow(t)
        seen.append((*shown, str(raised.value)))
    assert seen[0] == seen[1]


def test_async_tasks_are_awaited_alike() -> None:
    async def step(x: int) -> int:
        await asyncio.sleep(0)
        return x * 3

    for t in both(lambda v: make(v, step)):

        @flow
        async def f(t: Task[..., Any] = t) -> tuple[int, int]:
            return await t(2), t.submit(3).result()

        assert asyncio.run(f()) == (6, 9)


def test_generator_tasks_stream_alike() -> None:
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    async def letters(n: int) -> AsyncIterator[str]:
        for i in range(n):
            yield "abc"[i]

    for sync, agen in zip(
        both(lambda v: make(v, numbers)), both(lambda v: make(v, letters)), strict=True
    ):
        assert run_in_flow(lambda sync=sync: list(sync(3))) == [0, 1, 2]

        @flow
        async def f(agen: Task[..., Any] = agen) -> list[str]:
            return [x async for x in agen(2)]

        assert asyncio.run(f()) == ["a", "b"]


def test_retries_run_alike() -> None:
    results = []
    for variant in VARIANTS:
        t = make(variant, flaky_calls(), retries=2, retry_delay_seconds=0)
        results.append(run_in_flow(t))
    assert results == [2, 2]


def test_an_async_retry_condition_is_awaited() -> None:
    async def never(task: Any, run: Any, state: Any) -> bool:
        return False

    for variant in VARIANTS:
        flaky = flaky_calls()
        t = make(variant, flaky, retries=3, retry_condition_fn=never)
        shown = run_in_flow(lambda t=t: summary(t(return_state=True)))
        assert shown[2] == "ValueError"  # the condition said no: one attempt only


class Shop:
    rate = 2

    def __init__(self, base: int) -> None:
        self.base = base


def test_method_tasks_bind_alike() -> None:
    for variant in VARIANTS:

        class Priced(Shop):
            @classmethod
            def _per_class(cls, x: int) -> int:
                return cls.rate * x

            @staticmethod
            def _static(x: int) -> int:
                return -x

            def _method(self, x: int) -> int:
                return self.base + x

            per_class = make(variant, _per_class)  # type: ignore[arg-type]
            static = make(variant, _static)  # type: ignore[arg-type]
            method = make(variant, _method)

        shop = Priced(10)
        got = run_in_flow(
            lambda p=Priced, s=shop: (p.per_class(3), p.static(3), s.method(3))  # type: ignore[misc]
        )
        assert got == (6, -3, 13), variant


# --- futures -----------------------------------------------------------------------------


def test_submit_and_map_give_the_runners_futures() -> None:
    def double(x: int) -> int:
        return 2 * x

    for t in both(lambda v: make(v, double)):

        def body(t: Task[..., Any] = t) -> tuple[Any, ...]:
            one = t.submit(1)
            many = t.map([1, 2, 3])
            chained = t.submit(one)
            done, _ = wait([one, chained, *many])
            # futures a flow returns are resolved by Prefect: look at them here
            runner_kind = all(isinstance(f, PrefectConcurrentFuture) for f in (one, *many))
            return runner_kind, chained.result(), [f.result() for f in many], len(done)

        runner_kind, chained, mapped, done = run_in_flow(body)
        assert runner_kind
        assert (chained, mapped, done) == (4, [2, 4, 6], 5)


def test_a_future_passed_on_links_the_downstream_run() -> None:
    def source() -> int:
        return 5

    @task
    def sink(x: int) -> int:
        return x

    for t in both(lambda v: make(v, source)):

        def body(t: Task[..., Any] = t) -> tuple[Any, Any]:
            upstream = t.submit()
            return upstream.task_run_id, sink(upstream, return_state=True)

        upstream_id, state = run_in_flow(body)
        run = recorded_task_runs([state.state_details.task_run_id])[state.state_details.task_run_id]
        assert [i.id for i in run.task_inputs["x"]] == [upstream_id]


def test_wait_for_orders_runs_alike() -> None:
    order: list[str] = []

    def first() -> None:
        time.sleep(0.2)
        order.append("first")

    def second() -> None:
        order.append("second")

    for variant in VARIANTS:
        order.clear()
        a, b = make(variant, first), make(variant, second)
        run_in_flow(lambda a=a, b=b: b.submit(wait_for=[a.submit()]).result())
        assert order == ["first", "second"]


def test_deferred_map_and_delay_give_prefects_distributed_futures() -> None:
    def step(x: int) -> int:
        return x

    for t in both(lambda v: make(v, step)):
        # no task worker runs them here: look at the futures, never wait on them
        kinds = run_in_flow(lambda t=t: [type(f) for f in t.map([1, 2], deferred=True)])
        assert kinds == [PrefectDistributedFuture] * 2
        assert type(t.delay(3)) is PrefectDistributedFuture


# --- caching, timeouts, names, persistence -----------------------------------------------


def test_caching_hits_alike() -> None:
    for key, variant in enumerate(VARIANTS):
        calls: list[int] = []

        def cached(x: int, calls: list[int] = calls) -> int:
            calls.append(x)
            return x

        t = make(variant, cached, cache_policy=INPUTS - "calls", persist_result=True)
        x = time.time_ns() + key  # a key no earlier run has cached
        first, second = run_in_flow(
            lambda t=t, x=x: (t(x, return_state=True), t(x, return_state=True))
        )
        assert (first.name, second.name, second.result(), calls) == ("Completed", "Cached", x, [x])


def test_a_timeout_fails_alike() -> None:
    def slow() -> None:
        time.sleep(5)

    seen = []
    for t in both(lambda v: make(v, slow, timeout_seconds=0.3)):
        seen.append(run_in_flow(lambda t=t: summary(t(return_state=True))))
    assert seen[0] == seen[1]
    assert seen[0][1] == "TimedOut" and "Timeout" in seen[0][2]


def test_run_names_tags_and_persisted_results_are_recorded_alike() -> None:
    def step(x: int) -> int:
        return x

    records = []
    for t in both(
        lambda v: make(v, step, task_run_name="step-{x}", tags=["t1"], persist_result=True)
    ):
        state = run_in_flow(lambda t=t: t(8, return_state=True))
        run_id = state.state_details.task_run_id
        run = recorded_task_runs([run_id])[run_id]
        records.append(
            (run.name, set(run.tags), run.run_count, state.data.metadata.storage_key is not None)
        )
    assert records[0] == records[1] == ("step-8", {"t1"}, 1, True)
