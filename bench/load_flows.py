"""The flows of bench/load.py: 20 steps with failures drawn from the run's seed, and the plan.

Every run's steps, fallbacks, termination rule and final state follow from its
seed (`plan`), worked out independently of the package, so a batch can be
checked against it. The same steps run as a `@resilient_flow` and as a plain
Prefect flow that does the same work by hand.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from prefect import flow, task, unmapped
from prefect.runtime import task_run
from prefect.task_runners import ThreadPoolTaskRunner

from prefect_resilience import WorkflowPolicy, resilient, resilient_flow

RETRIES = 1  # every step: 2 attempts, no delay
MAX_PARTIAL_FAILURES = 2
CRITICAL_STEP_RATIO = 0.75
POLICY = WorkflowPolicy(
    name="load",
    max_partial_failures=MAX_PARTIAL_FAILURES,
    critical_step_ratio=CRITICAL_STEP_RATIO,
)
TASK_RUNNER_WORKERS = 5

# --- the flow's layout -------------------------------------------------------------------

# (how the steps are started, their indices): direct calls, .submit(), one task .map()ped
PHASES: list[tuple[str, range]] = [
    ("direct", range(0, 5)),
    ("submit", range(5, 10)),
    ("map", range(10, 15)),
    ("direct", range(15, 20)),
]
STEPS = 20
# each step's role: its failure policy (critical steps are 0, 4 and 15)
ROLES: dict[int, str] = {
    0: "fail_fast",
    1: "continue",
    2: "partial_success",
    3: "graceful",
    4: "critical_partial",
    5: "continue",
    6: "partial_success",
    7: "graceful",
    8: "continue",
    9: "partial_success",
    **dict.fromkeys(range(10, 15), "graceful"),  # the mapped step
    15: "fail_fast",
    16: "continue",
    17: "graceful",
    18: "partial_success",
    19: "continue",
}
CRITICAL = {"fail_fast", "critical_partial"}
MAPPED = "step_mapped"


def step_name(index: int) -> str:
    return MAPPED if 10 <= index < 15 else f"step_{index:02d}"


# --- the injected failures: a pure function of (seed, step) ----------------------------

FAILURES = {"permanent": 0.06, "transient": 0.10, "fallback": 0.3}


def _draw(seed: int, index: int, what: str) -> float:
    # str seeds are hashed with SHA-512 by random.Random: the same in every process
    return random.Random(f"load:{seed}:{index}:{what}").random()


def kind(seed: int, index: int) -> str:
    """'permanent' (every attempt fails), 'transient' (the first attempt fails) or 'ok'."""
    u = _draw(seed, index, "kind")
    if u < FAILURES["permanent"]:
        return "permanent"
    return "transient" if u < FAILURES["permanent"] + FAILURES["transient"] else "ok"


def fallback_fails(seed: int, index: int) -> bool:
    return _draw(seed, index, "fallback") < FAILURES["fallback"]


class InjectedFailure(ConnectionError):
    """The only exception the steps raise: any other failure is the harness's own."""


def work(seed: int, index: int, pause: float) -> tuple[str, int]:
    """One step: sleeps `pause` s (its I/O), then fails or not as the draws say."""
    time.sleep(pause)
    attempt = task_run.run_count  # 1, 2 across Prefect's retries of this task run
    what = kind(seed, index)
    if what == "permanent" or (what == "transient" and attempt == 1):
        raise InjectedFailure(f"injected: run {seed} step {index} attempt {attempt}")
    return ("own", index)


def cached_result(seed: int, index: int) -> tuple[str, int]:
    """The fallback of the graceful_degradation steps; fails as its own draw says."""
    if fallback_fails(seed, index):
        raise InjectedFailure(f"injected: run {seed} fallback of step {index}")
    return ("fallback", index)


# --- what every run must end with --------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """A run's expected outcome: its steps (name, status, attempts), final state, rule."""

    steps: tuple[tuple[str, str, int], ...]
    final: str  # the flow run's state name: Completed, PartialSuccess or Failed
    rule: str | None  # the termination rule that fires, if any
    fallbacks: int  # fallback task runs

    @property
    def reached(self) -> int:
        return len(self.steps)

    @property
    def task_runs(self) -> int:
        return self.reached + self.fallbacks

    @property
    def report_status(self) -> str:
        return {"Completed": "completed", "PartialSuccess": "partial_success"}.get(
            self.final, "terminated"
        )


def plan(seed: int) -> Plan:
    """What DESIGN.md's rules give for the draws of `seed`, worked out independently.

    A rule is checked after each step's outcome; in a direct-call phase a rule that
    fires stops the run before the next step; in a submitted or mapped phase all its
    steps are already started, so the run stops after the phase (the next step's
    start raises). Only max_partial_failures can fire inside such a phase here (no
    critical or fail_fast step is in one), and it only grows, so when it fires does
    not depend on the order the phase's steps finish in.
    """
    steps: list[tuple[str, str, int]] = []
    failed = critical_total = critical_delivered = fallbacks = 0
    partial = False
    rule: str | None = None
    for mode, indices in PHASES:
        for index in indices:
            role, what = ROLES[index], kind(seed, index)
            attempts = 1 if what == "ok" else RETRIES + 1
            delivered = what != "permanent"
            status = {"ok": "succeeded", "transient": "recovered"}.get(what, "")
            if not delivered:
                if role == "graceful":
                    fallbacks += 1
                    delivered = not fallback_fails(seed, index)
                status = "degraded" if delivered else "tolerated"
                if role == "fail_fast":
                    status = "failed"
                if not delivered:
                    failed += 1
                partial = partial or role != "continue"  # continue tolerates silently
            if role in CRITICAL:
                critical_total += 1
                critical_delivered += delivered
            steps.append((step_name(index), status, attempts))
            if rule is None:
                if role == "fail_fast" and not delivered:
                    rule = "fail_fast"
                elif failed > MAX_PARTIAL_FAILURES:
                    rule = "max_partial_failures"
                elif critical_total and critical_delivered / critical_total < CRITICAL_STEP_RATIO:
                    rule = "critical_step_ratio"
            if rule and mode == "direct":
                break
        if rule:
            break
    final = "Failed" if rule else ("PartialSuccess" if partial else "Completed")
    return Plan(tuple(steps), final, rule, fallbacks)


# --- the two flows -----------------------------------------------------------------------


def _resilient_step(index: int) -> Any:
    role = ROLES[index]
    common: dict[str, Any] = {"retries": RETRIES, "retry_delay": 0, "name": step_name(index)}
    if role == "fail_fast":
        return resilient(work, policy="fail_fast", critical=True, impact="critical", **common)
    if role == "critical_partial":
        return resilient(work, policy="partial_success", critical=True, impact="critical", **common)
    if role == "continue":
        return resilient(work, policy="continue", impact="minor", **common)
    if role == "partial_success":
        return resilient(work, policy="partial_success", impact="major", **common)
    return resilient(work, fallbacks=[FALLBACK], impact="major", **common)


FALLBACK = task(cached_result, name="cached_result")
RESILIENT = {i: _resilient_step(i) for i in range(STEPS) if not 10 <= i < 15}
RESILIENT[10] = _resilient_step(10)  # the mapped step, one task for steps 10-14
PLAIN = {
    i: task(work, name=step_name(i), retries=RETRIES, retry_delay_seconds=0)
    for i in range(STEPS)
    if not 10 <= i < 15
}
PLAIN[10] = task(work, name=MAPPED, retries=RETRIES, retry_delay_seconds=0)


def _resilient_steps(seed: int, pause: float) -> int:
    """The 20 steps; the package applies the policies and stops the run when a rule fires."""
    values: list[Any] = []
    for mode, indices in PHASES:
        if mode == "direct":
            values += [RESILIENT[i](seed=seed, index=i, pause=pause) for i in indices]
        elif mode == "submit":
            futures = [RESILIENT[i].submit(seed=seed, index=i, pause=pause) for i in indices]
            values += [f.result() for f in futures]
        else:
            futures = RESILIENT[10].map(
                seed=unmapped(seed), index=list(indices), pause=unmapped(pause)
            )
            values += [f.result() for f in futures]
    return len(values)


resilient_run = resilient_flow(
    _resilient_steps,
    policy=POLICY,
    name="load-resilient",
    task_runner=ThreadPoolTaskRunner(max_workers=TASK_RUNNER_WORKERS),
)


@flow(name="load-plain", task_runner=ThreadPoolTaskRunner(max_workers=TASK_RUNNER_WORKERS))
def plain_run(seed: int, pause: float) -> int:
    """The same steps in plain Prefect: failures caught, fallbacks called by hand.

    To do the same work as the resilient run, it stops where that run is planned
    to stop (a plain flow has no termination rules), and ends Completed.
    """
    stop = plan(seed).reached
    done = 0

    def settle(index: int, state: Any) -> None:
        if state.is_failed() and ROLES[index] == "graceful":
            FALLBACK(seed=seed, index=index, return_state=True)

    for mode, indices in PHASES:
        if done >= stop:
            break
        if mode == "direct":
            for i in indices:
                if done >= stop:
                    break
                settle(i, PLAIN[i](seed=seed, index=i, pause=pause, return_state=True))
                done += 1
            continue
        if mode == "submit":
            futures = [PLAIN[i].submit(seed=seed, index=i, pause=pause) for i in indices]
        else:
            futures = list(
                PLAIN[10].map(seed=unmapped(seed), index=list(indices), pause=unmapped(pause))
            )
        for i, future in zip(indices, futures, strict=True):
            future.wait()
            settle(i, future.state)
        done += len(indices)
    return done


FLOWS = {"plain": plain_run, "resilient": resilient_run}
