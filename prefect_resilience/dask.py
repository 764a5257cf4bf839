"""Settling a resilient step on the Dask worker that ran it (prefect-dask's task runner).

prefect-dask hands a downstream task the Dask future of its upstream, not
the Prefect future: a step whose policy may change its state is therefore
settled by a Dask job that depends on the step's own, and the step's future
wraps that job. Downstream tasks depend on it through Dask, without the
flow waiting, and its result carries the outcome back to the flow's report.
"""

from __future__ import annotations

from typing import Any

from prefect.context import hydrated_context, serialize_context
from prefect.futures import PrefectFuture, PrefectWrappedFuture
from prefect.states import State

from prefect_resilience.future import ResilientFuture, kind_of, settled_state
from prefect_resilience.settle import StepCall


def settled_on_dask(primary: PrefectWrappedFuture[Any, Any], call: StepCall) -> PrefectFuture[Any]:
    """The step's future; a fail_fast step's state stands as it is and is settled when waited."""
    wrapped = primary.wrapped_future
    if call.step.tolerates_failure:
        wrapped = wrapped.client.submit(
            _settle_on_worker, wrapped, call, serialize_context(), pure=False
        )
        wrapped.task_run_id = primary.task_run_id  # Prefect links downstream runs by it
    future: ResilientFuture[Any] = kind_of(primary)(primary.task_run_id, wrapped)
    future._bind(primary, call)
    return future


def _settle_on_worker(primary: State[Any], call: StepCall, context: dict[str, Any]) -> State[Any]:
    with hydrated_context(context):
        return settled_state(call, primary)
