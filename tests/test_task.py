"""`@resilient` on a real Prefect server: policies, retries, fallbacks, futures."""

from __future__ import annotations

import itertools
from typing import Any
from uuid import UUID

import pytest
from prefect import Task, flow, task
from prefect.futures import PrefectFuture

from prefect_resilience import (
    FailureAction,
    ResilienceConfigError,
    ResilientTask,
    StepStatus,
    collect_outcomes,
    resilient,
)
from tests.records import recorded_task_runs

pytestmark = pytest.mark.usefixtures("prefect_server")


class Boom(RuntimeError):
    pass


@task
def from_cache(x: int) -> int:
    return 1000 + x


@task
def also_broken(x: int) -> int:
    raise Boom(f"cache down for {x}")


def queue_for_later() -> str:
    return "queued"


@resilient(policy="fail_fast")
def fail_fast_step(x: int) -> int:
    raise Boom(f"fail_fast {x}")


@resilient(policy="continue", default=-1)
def continue_step(x: int) -> int:
    raise Boom(f"continue {x}")


@resilient(policy="partial_success", default=-2)
def partial_step(x: int) -> int:
    raise Boom(f"partial {x}")


@resilient(policy="graceful_degradation", fallbacks=[from_cache], default=-3)
def degrading_step(x: int) -> int:
    raise Boom(f"degrading {x}")


@resilient(fallbacks=[also_broken, queue_for_later], default=-4)
def second_fallback_step(x: int) -> Any:
    raise Boom(f"primary {x}")


@resilient(fallbacks=[also_broken], default=-5)
def all_fallbacks_fail_step(x: int) -> int:
    raise Boom(f"primary {x}")


@task
def double(value: int) -> int:
    return value * 2


def read_runs(client: Any, ids: list[UUID]) -> dict[UUID, Any]:
    """Task runs as Prefect recorded them (it records from events, a moment later)."""
    return recorded_task_runs(ids)


EXPECTED = {
    "continue": (continue_step, -1, StepStatus.TOLERATED, FailureAction.CONTINUE, None),
    "partial_success": (partial_step, -2, StepStatus.TOLERATED, FailureAction.DEGRADE, None),
    "graceful_degradation": (
        degrading_step,
        1007,
        StepStatus.DEGRADED,
        FailureAction.FALLBACK,
        "from_cache",
    ),
}


@pytest.mark.parametrize("mode", ["call", "submit", "map"])
@pytest.mark.parametrize("policy", sorted(EXPECTED))
def test_tolerating_policies_give_their_value_in_every_calling_mode(
    client: Any, policy: str, mode: str
) -> None:
    step, value, status, action, fallback = EXPECTED[policy]

    @flow
    def run() -> tuple[list[Any], list[Any]]:
        with collect_outcomes() as outcomes:
            if mode == "call":
                values = [step(7)]
            elif mode == "submit":
                values = [step.submit(7).result()]
            else:
                values = step.map([7, 7]).result()
        return values, outcomes

    values, outcomes = run()
    assert values == [value] * len(values)
    assert len(outcomes) == len(values)
    for outcome in outcomes:
        assert (outcome.status, outcome.action, outcome.fallback_used) == (
            status,
            action,
            fallback,
        )
        assert outcome.exception_type == "Boom"
        assert outcome.attempts == 1
        runs = read_runs(client, [outcome.task_run_id, outcome.fallback_task_run_id or UUID(int=0)])
        # resilience never relabels a failure: the primary task run is Failed in Prefect
        assert runs[outcome.task_run_id].state.is_failed()
        if fallback:
            fallback_run = runs[outcome.fallback_task_run_id]
            assert fallback_run.state.is_completed()
            assert fallback_run.task_key != runs[outcome.task_run_id].task_key


@pytest.mark.parametrize("mode", ["call", "submit", "map"])
def test_fail_fast_raises_the_original_error(mode: str) -> None:
    @flow
    def run() -> Any:
        if mode == "call":
            return fail_fast_step(1)
        if mode == "submit":
            return fail_fast_step.submit(1).result()
        return fail_fast_step.map([1, 2]).result()

    with pytest.raises(Boom, match="fail_fast [12]"):
        run()


def test_futures_of_tolerated_and_degraded_steps_feed_downstream_tasks() -> None:
    @flow
    def run() -> list[int]:
        tolerated = continue_step.submit(1)
        degraded = degrading_step.submit(2)
        mapped = degrading_step.map([3, 4])
        return [
            double.submit(tolerated).result(),
            double.submit(degraded).result(),
            *double.map(mapped).result(),
            double(partial_step.submit(5)),
        ]

    assert run() == [-2, 2004, 2006, 2008, -4]


def test_downstream_run_is_linked_to_the_primary_task_run(client: Any) -> None:
    @flow
    def run() -> tuple[UUID, UUID]:
        upstream = degrading_step.submit(1)
        downstream = double.submit(upstream)
        downstream.wait()
        return upstream.task_run_id, downstream.task_run_id

    upstream_id, downstream_id = run()
    downstream = client.read_task_run(downstream_id)
    linked = {inp.id for inp in downstream.task_inputs["value"]}
    assert linked == {upstream_id}


def test_fallbacks_run_in_order_until_one_succeeds(client: Any) -> None:
    @flow
    def run() -> tuple[Any, Any]:
        with collect_outcomes() as outcomes:
            value = second_fallback_step(3)
        return value, outcomes[0]

    value, outcome = run()
    assert value == "queued"
    assert outcome.fallback_used == "queue_for_later"
    assert "also_broken failed with Boom: cache down for 3" in outcome.reason
    fallback_run = read_runs(client, [outcome.fallback_task_run_id])[outcome.fallback_task_run_id]
    assert fallback_run.state.is_completed()
    assert fallback_run.name.startswith("queue_for_later")


def test_when_every_fallback_fails_the_default_is_used() -> None:
    @flow
    def run() -> tuple[Any, Any]:
        with collect_outcomes() as outcomes:
            value = all_fallbacks_fail_step.submit(1).result()
        return value, outcomes[0]

    value, outcome = run()
    assert value == -5
    assert (outcome.status, outcome.action) == (StepStatus.TOLERATED, FailureAction.DEGRADE)
    assert "all 1 fallbacks failed" in outcome.reason


def test_retries_are_prefect_retries_counted_in_run_count(client: Any) -> None:
    attempts = itertools.count(1)

    @resilient(policy="continue", retries=3, retry_delay=0, default=0)
    def flaky() -> str:
        if next(attempts) < 3:
            raise ConnectionError("blip")
        return "ok"

    @flow
    def run() -> tuple[str, Any]:
        future = flaky.submit()
        return future.result(), future.outcome()

    value, outcome = run()
    assert value == "ok"
    assert (outcome.status, outcome.attempts) == (StepStatus.RECOVERED, 3)
    assert client.read_task_run(outcome.task_run_id).run_count == 3
    assert outcome.duration is not None and outcome.duration >= 0


def test_exhausted_retries_then_policy(client: Any) -> None:
    @resilient(policy="continue", retries=2, backoff={"initial": 0.01, "max": 0.02}, default="d")
    def never() -> str:
        raise TimeoutError("slow")

    @flow
    def run() -> tuple[str, Any]:
        future = never.submit()
        return future.result(), future.outcome()

    value, outcome = run()
    assert value == "d"
    assert (outcome.status, outcome.attempts) == (StepStatus.TOLERATED, 3)
    assert "2 retries exhausted" in outcome.reason


@pytest.mark.parametrize(
    ("error", "kwargs", "expected_runs"),
    [
        (ValueError, {"give_up_on": [ValueError]}, 1),
        (ConnectionError, {"give_up_on": [ValueError]}, 4),
        (ConnectionError, {"retry_on": ["OSError"]}, 4),
        (KeyError, {"retry_on": ["OSError"]}, 1),
        (Boom, {"retry_on": "tests.test_task.*"}, 4),
    ],
)
def test_retry_on_and_give_up_on_decide_prefect_retries(
    client: Any, error: type[Exception], kwargs: dict, expected_runs: int
) -> None:
    @resilient(policy="continue", retries=3, retry_delay=0, **kwargs)
    def failing() -> None:
        raise error("no")

    @flow
    def run() -> Any:
        return failing.submit().outcome()

    outcome = run()
    assert outcome.attempts == expected_runs
    assert client.read_task_run(outcome.task_run_id).run_count == expected_runs


def test_a_returned_failed_state_is_handled_like_a_raise() -> None:
    from prefect.states import Failed

    @resilient(policy="continue", retries=1, retry_delay=0, default="tolerated")
    def returns_failed() -> Any:
        return Failed(message="bad answer")

    @flow
    def run() -> Any:
        future = returns_failed.submit()
        return future.result(), future.outcome()

    value, outcome = run()
    assert value == "tolerated"
    assert outcome.attempts == 2


def test_stacked_over_task_keeps_prefect_options_and_hooks() -> None:
    seen: list[str] = []

    def remember(task: Any, run: Any, state: Any) -> None:
        seen.append(state.type.value)

    @resilient(policy="continue", default=0, tag_runs=True)
    @task(name="stacked", retries=2, retry_delay_seconds=0, tags=["mine"], on_failure=[remember])
    def stacked() -> int:
        raise Boom("x")

    assert isinstance(stacked, Task) and isinstance(stacked, ResilientTask)
    assert stacked.name == "stacked"
    assert stacked.retries == 2 and stacked.step.retries == 2
    assert {"mine", "resilience:continue", "resilience:impact:major"} <= stacked.tags
    assert stacked.on_failure_hooks == [remember]

    @flow
    def run() -> int:
        return stacked()

    assert run() == 0
    assert seen == ["FAILED"]


def test_with_options_keeps_the_policy_and_changes_what_it_is_told() -> None:
    renamed = degrading_step.with_options(name="renamed", retries=1)
    assert isinstance(renamed, ResilientTask)
    assert renamed.name == "renamed"
    assert renamed.step.retries == 1 and renamed.retries == 1
    assert renamed.step.fallbacks == ("from_cache",)
    relaxed = degrading_step.with_options(policy="continue")
    assert relaxed.step.fallbacks == ()
    with pytest.raises(ResilienceConfigError, match="retries"):
        degrading_step.with_options(retries=-1)

    @flow
    def run() -> int:
        return renamed(1)

    assert run() == 1001


def test_runs_are_tagged_only_when_asked() -> None:
    @resilient(policy="fail_fast", critical=True, impact="critical", tag_runs=True)
    def db() -> None:
        return None

    assert {"resilience:fail_fast", "resilience:critical", "resilience:impact:critical"} <= db.tags
    assert db.with_options(policy="continue").tags >= {"resilience:continue"}
    assert continue_step.tags == set()  # tags cost a Prefect API call per task run


def test_outcomes_of_a_map_are_one_per_element_with_its_own_fallback_input() -> None:
    @flow
    def run() -> tuple[list[int], list[Any]]:
        with collect_outcomes() as outcomes:
            futures = degrading_step.map([1, 2, 3])
            values = [f.result() for f in futures]
        return values, outcomes

    values, outcomes = run()
    assert values == [1001, 1002, 1003]
    assert len({o.task_run_id for o in outcomes}) == 3


def test_resilient_future_is_a_prefect_future_and_waits() -> None:
    @flow
    def run() -> bool:
        future = continue_step.submit(1)
        assert isinstance(future, PrefectFuture)
        from prefect.futures import wait

        done, not_done = wait([future])
        return future in done and not not_done and future.state.name == "Tolerated"

    assert run()


def test_async_task_direct_call() -> None:
    @resilient(policy="continue", default="fallback-value")
    async def fetch(x: int) -> str:
        raise Boom("async")

    @flow
    async def run() -> str:
        return await fetch(1)

    import asyncio

    assert asyncio.run(run()) == "fallback-value"
