"""The workloads of the replay harness (bench/replay.py): flows whose steps fail by a
known process, and the flow each variant (a policy, or a code change) runs.

Failure draws are a pure function of the run's key, the step and the attempt, so
runs with the same key see the same draws under any policy: the harness compares a
candidate's runs with the baseline's run by run (common random numbers).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TOLERATED = "tolerated"


@dataclass(frozen=True)
class Step:
    """One step of a workload: how it fails, and the decorator settings it starts with."""

    name: str
    process: str = "ok"
    """ok | transient | persistent | burst | degrading | dependent | hang"""
    p: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.01
    uses_previous: bool = True
    """Takes the previous step's result (a task_inputs link); False lets them overlap."""


@dataclass(frozen=True)
class Workload:
    name: str
    steps: tuple[Step, ...]
    workflow: dict[str, Any] = field(default_factory=dict)
    fallback_for: tuple[str, ...] = ()
    """Steps a realised `fallback` candidate may give a (working) fallback task."""


def _fails(step: Step, run_key: str, run_index: int, previous: Any) -> bool:
    """Whether this attempt of `step` fails, by its workload's failure process."""
    from prefect.runtime import task_run

    attempt = task_run.run_count or 1
    draw = random.Random(f"{run_key}:{step.name}:{attempt}").random()
    per_run = random.Random(f"{run_key}:{step.name}").random()
    if step.process == "transient":
        return draw < step.p
    if step.process == "persistent":
        return per_run < step.p
    if step.process == "burst":  # down for the first `p` share of every 1.5 s of the clock
        return time.time() % 1.5 < 1.5 * step.p
    if step.process == "degrading":  # failure chance rises with the run's index
        return draw < step.p * min(run_index / 40, 2.0)
    if step.process == "dependent":  # fails whenever the step before it was tolerated
        return previous == TOLERATED or draw < step.p
    if step.process == "hang":  # a broken run hangs, then fails
        if per_run < step.p:
            time.sleep(step.seconds * 20)
            return True
        return False
    return False


def _body(step: Step) -> Callable[..., str]:
    """The step's function; `step` is closed over, not a parameter Prefect would record."""

    def body(run_key: str, run_index: int, previous: Any = None) -> str:
        time.sleep(step.seconds)
        if _fails(step, run_key, run_index, previous):
            raise ConnectionError(f"{step.name}: {step.process} failure")
        return "ok"

    return body


def build_flow(
    workload: Workload,
    flow_name: str,
    policy: Any,
    *,
    parallel: frozenset[str] = frozenset(),
    fallbacks: frozenset[str] = frozenset(),
) -> Callable[..., Any]:
    """The workload as a resilient flow; `parallel` steps are submitted, `fallbacks` get one."""
    from prefect import task

    from prefect_resilience import resilient, resilient_flow

    tasks = {}
    for step in workload.steps:
        body = _body(step)
        settings = dict(step.settings)
        if step.name in fallbacks:
            settings["policy"] = "graceful_degradation"
            settings["fallbacks"] = [task(lambda: "fallback", name=f"{step.name}_fallback")]
        settings.setdefault("default", TOLERATED)
        tasks[step.name] = resilient(body, name=step.name, **settings)

    @resilient_flow(policy=policy, name=flow_name)
    def workload_flow(run_key: str, run_index: int) -> None:
        previous: Any = None
        pending = None
        for step in workload.steps:
            call = tasks[step.name]
            given = (previous,) if step.uses_previous else ()
            if step.name in parallel:
                pending = call.submit(run_key, run_index, *given)
                continue
            result = call(run_key, run_index, *given)
            if pending is not None:
                pending.result(raise_on_failure=False)
                pending = None
            previous = result
        if pending is not None:
            pending.result(raise_on_failure=False)

    return workload_flow


WORKLOADS = [
    Workload("transient-critical", (
        Step("extract", "transient", 0.25, {"policy": "fail_fast", "critical": True}),
        Step("transform", "ok"),
        Step("load", "transient", 0.05, {"policy": "continue", "impact": "minor"}),
    )),
    Workload("transient-tolerated", (
        Step("fetch", "ok", settings={"policy": "fail_fast", "critical": True}),
        Step("enrich", "transient", 0.4, {"policy": "continue", "retries": 1}),
        Step("publish", "ok"),
    )),
    Workload("persistent-retried", (
        Step("fetch", "ok", settings={"policy": "fail_fast", "critical": True}),
        Step("score", "persistent", 0.3,
             {"policy": "continue", "retries": 3, "retry_delay": 0.05}, seconds=0.03),
        Step("publish", "ok"),
    )),
    Workload("bursty-outage", (
        Step("fetch", "burst", 0.3,
             {"policy": "fail_fast", "critical": True, "retries": 1, "retry_delay": 0.1}),
        Step("store", "ok"),
    )),
    Workload("slow-degrading", (
        Step("ingest", "ok", settings={"policy": "fail_fast", "critical": True}),
        Step("validate", "degrading", 0.3, {"policy": "fail_fast", "impact": "major"}),
        Step("report", "ok"),
    )),
    Workload("dependent", (
        Step("lookup", "transient", 0.3, {"policy": "continue", "impact": "minor"}),
        Step("join", "dependent", 0.02, {"policy": "continue", "impact": "major"}),
        Step("save", "ok"),
    ), fallback_for=("lookup",)),
    Workload("non-critical-fail-fast", (
        Step("prepare", "ok", settings={"policy": "fail_fast", "critical": True}),
        Step("thumbnail", "persistent", 0.25, {"policy": "fail_fast", "impact": "minor"}),
        Step("index", "ok"),
    )),
    Workload("hanging-failures", (
        Step("call_api", "hang", 0.25, {"policy": "continue", "impact": "minor"}, seconds=0.02),
        Step("save", "ok"),
    ), fallback_for=("call_api",)),
    Workload("independent-steps", (
        Step("load_users", "ok", seconds=0.15, uses_previous=False),
        Step("load_orders", "ok", seconds=0.15, uses_previous=False),
        Step("merge", "ok"),
    )),
    Workload("mixed", (
        Step("fetch", "transient", 0.2, {"policy": "fail_fast", "critical": True, "retries": 1}),
        Step("enrich", "persistent", 0.2, {"policy": "continue", "retries": 2}),
        Step("notify", "transient", 0.3, {"policy": "partial_success", "impact": "minor"}),
    ), fallback_for=("notify", "enrich")),
    Workload("rare-failures", (
        Step("a", "transient", 0.01, {"policy": "fail_fast", "critical": True}),
        Step("b", "ok"),
    )),
]  # fmt: skip

WORKLOADS_BY_NAME = {w.name: w for w in WORKLOADS}

HAND_WRITTEN = {
    "transient-critical": {"step_policies": [{"match": "*", "retries": 2}]},
    "non-critical-fail-fast": {"step_policies": [{"match": "*", "retries": 1}]},
    "dependent": {"step_policies": [{"match": "join", "policy": "fail_fast"}]},
}
"""Policies a person might write for a workload, whose `simulate` predictions the harness
checks: retries everywhere (transient failures: fewer terminations; persistent ones:
only more wasted seconds), and stopping runs when a step that follows another's failures
fails."""
