"""Each detail of Prefect that `prefect_resilience._prefect` relies on, checked by name.

An upgrade of Prefect that changes one of them fails here, with the name of
the function that needs a new way, instead of somewhere deep in a run.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from typing import Any

import cloudpickle
import pytest
from prefect import Task, flow, task
from prefect.states import Completed

from prefect_resilience import _prefect
from prefect_resilience.attempts import RECORD_ATTEMPTS, facts_of

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_attach_travels_with_a_state_and_never_reaches_the_api() -> None:
    state = Completed(data=1)
    _prefect.attach(state, "note", {"n": 1})
    for travelled in (
        pickle.loads(pickle.dumps(state)),
        cloudpickle.loads(cloudpickle.dumps(state)),
        state.model_copy(),
    ):
        assert _prefect.attached(travelled, "note") == {"n": 1}
    assert "note" not in state.model_dump_json()
    assert not any("prefect_resilience" in key for key in state.model_dump())
    assert _prefect.attached(Completed(), "note") is None


class Marked(Task[..., Any]):
    pass


def test_retyped_and_plain_task_copy_every_attribute() -> None:
    @task(retries=2, tags=["x"])
    def step() -> int:
        return 1

    marked = _prefect.retyped(step, Marked)
    assert type(marked) is Marked and marked.__dict__ == step.__dict__
    plain = _prefect.plain_task(marked)
    assert type(plain) is Task and plain.__dict__ == step.__dict__
    plain.retries = 5
    assert step.retries == marked.retries == 2
    with pytest.raises(TypeError):
        _prefect.retyped(object(), Marked)


class Holder:
    factor = 3

    @task
    @classmethod
    def per_class(cls, x: int) -> int:
        return cls.factor * x

    @task
    @staticmethod
    def static(x: int) -> int:
        return x


def test_method_kind_is_what_with_options_drops() -> None:
    per_class = Holder.__dict__["per_class"]
    assert _prefect.method_kind(per_class) == {"_isclassmethod": True}
    assert _prefect.method_kind(Holder.__dict__["static"]) == {"_isstaticmethod": True}
    # the reason for method_kind: Prefect's with_options does not carry the flag
    assert _prefect.method_kind(per_class.with_options(name="n")) == {}


def test_final_state_is_what_a_waited_future_holds() -> None:
    @task
    def step() -> int:
        return 4

    @flow
    def run() -> tuple[Any, Any, Any]:
        future = step.submit()
        future.wait()
        return _prefect.final_state(future), future.state, future

    final, state, future = run()
    assert final is not None and final.is_completed() and final.result() == 4
    assert final is state


def test_state_value_reads_synchronously_inside_an_event_loop() -> None:
    state = Completed(data=7)

    async def inside() -> Any:
        return _prefect.state_value(state)

    assert asyncio.run(inside()) == 7
    assert _prefect.state_value(Completed(data=ValueError("x")), raise_on_failure=False)


def test_mapped_parameters_expand_as_prefect_maps() -> None:
    def step(x: int, y: int, z: int = 0) -> int:
        return x + y + z

    from prefect import unmapped

    expanded = _prefect.mapped_parameters(step, {"x": [1, 2], "y": unmapped(10), "z": 5})
    assert expanded == [{"x": 1, "y": 10, "z": 5}, {"x": 2, "y": 10, "z": 5}]


def test_the_engine_hands_attempts_to_hooks_and_their_log_lines_are_hidden(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []
    seen: list[str] = []

    def mine(task: Any, run: Any, state: Any) -> None:
        seen.append(state.name)

    @task(retries=2, retry_delay_seconds=0, on_completion=[mine, RECORD_ATTEMPTS])
    def twice() -> int:
        calls.append(1)
        if len(calls) < 2:
            raise ValueError("once")
        return 1

    @flow
    def run() -> Any:
        return twice(return_state=True)

    with caplog.at_level(logging.INFO, logger="prefect.task_runs"):
        state = run()
    facts = facts_of(state)
    assert facts is not None and facts.attempts == 2 and facts.seconds > 0
    assert seen == ["Completed"]
    messages = [r.getMessage() for r in caplog.records if r.name == "prefect.task_runs"]
    # Prefect still logs hooks this way: the user's shows, ours is filtered out
    assert any("Running hook 'mine'" in m for m in messages)
    assert not any(RECORD_ATTEMPTS.__name__ in m for m in messages)


def test_a_resilient_future_pickles_as_the_runners_own_future() -> None:
    """A downstream step's parameters carry the upstream future to a Dask worker."""
    import pickle
    import threading
    from uuid import uuid4

    from prefect_dask.task_runners import PrefectDaskFuture

    from prefect_resilience.future import kind_of

    run_id = uuid4()
    plain = PrefectDaskFuture(run_id, "the settle job's key")
    future = kind_of(plain)(run_id, "the settle job's key")
    future._settling = threading.Lock()  # what _bind gives it: not picklable
    travelled = pickle.loads(pickle.dumps(future))
    assert type(travelled) is PrefectDaskFuture
    assert travelled.task_run_id == run_id
    assert travelled.wrapped_future == "the settle job's key"


@pytest.mark.parametrize("jitter", [None, 0.5])
def test_a_wait_chosen_in_the_retry_condition_is_the_wait_prefect_schedules(
    jitter: float | None,
) -> None:
    """The engine reads the task's delays and jitter after its retry condition, in its context.

    A plain task whose condition chooses 2 s over a configured 60 s (with and
    without jitter): the retry is scheduled about 2 s after the failure, and
    the task's own delays still read 60 s outside that task run.
    """
    from prefect.client.orchestration import get_client

    failed_at: list[float] = []

    def choose(task: Task[..., Any], task_run: Any, state: Any) -> bool:
        _prefect.wait_next(task, task_run, 2.0)
        return True

    @task(
        retries=1,
        retry_delay_seconds=60,
        retry_jitter_factor=jitter,
        retry_condition_fn=choose,
    )
    def flaky() -> int:
        if not failed_at:
            import time

            failed_at.append(time.time())
            raise ValueError("once")
        return 1

    @flow
    def run() -> Any:
        return flaky(return_state=True)

    state = run()
    assert state.is_completed()
    with get_client(sync_client=True) as client:
        history = client.read_task_run_states(state.state_details.task_run_id)
    (retrying,) = [s for s in history if s.name == "AwaitingRetry"]
    assert retrying.state_details.scheduled_time is not None
    waited = retrying.state_details.scheduled_time.timestamp() - failed_at[0]
    assert 1.5 <= waited <= 10, waited  # not the configured 60 s
    assert flaky.retry_delay_seconds == 60 or list(flaky.retry_delay_seconds) == [60]
