"""Settling a resilient step in a Ray worker (prefect-ray's task runner).

prefect-ray hands a downstream task the Ray object of its upstream's state,
found by the future's `wrapped_future`, not the Prefect future: a step whose
policy may change its state is therefore settled by a Ray task that depends
on the step's own, and the step's future wraps that task's object. As on
Dask, downstream tasks depend on it through Ray without the flow waiting.
"""

from __future__ import annotations

from typing import Any

from prefect.context import hydrated_context, serialize_context
from prefect.futures import PrefectFuture, PrefectWrappedFuture
from prefect.states import State

from prefect_resilience.future import ResilientFuture, kind_of, settled_state
from prefect_resilience.settle import StepCall


def settled_on_ray(primary: PrefectWrappedFuture[Any, Any], call: StepCall) -> PrefectFuture[Any]:
    """The step's future; a fail_fast step's state stands as it is and is settled when waited."""
    import ray

    wrapped = primary.wrapped_future
    if call.step.tolerates_failure:
        wrapped = ray.remote(_settle_in_worker).remote(wrapped, call, serialize_context())
    future: ResilientFuture[Any] = kind_of(primary)(primary.task_run_id, wrapped)
    future._bind(primary, call)
    return future


def _settle_in_worker(primary: State[Any], call: StepCall, context: dict[str, Any]) -> State[Any]:
    with hydrated_context(context):
        return settled_state(call, primary)
