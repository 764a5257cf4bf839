"""BR-WF-541: flow termination rate under injected step failures, plain Prefect vs resilient.

50 concurrent flow runs of a 20-step flow; every step *attempt* fails with
probability 0.15. Two failure mixes: all failures transient (each attempt draws
afresh), and one third of failures persistent (a step whose first attempt
fails keeps failing, with probability 1/3, on every attempt of that run).
Three variants run the same seeds, so they see the same draws:

  (a) plain Prefect tasks, no retries;
  (b) plain Prefect tasks with the same retries as (c);
  (c) `@resilient` steps with those retries inside a `@resilient_flow`.

A run is terminated when its flow run ends Failed. The design's target is a
termination rate under 10%.

    python failure_injection.py [--runs 50] [--steps 20] [--p 0.15] [--retries 2]
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import _server_busy
from _report import markdown_table, show, write_section
from prefect import Task, flow, task
from prefect.client.orchestration import get_client
from prefect.flow_engine import run_flow
from prefect.runtime import task_run
from prefect.states import Pending
from prefect.testing.utilities import prefect_test_harness

from prefect_resilience import (
    StepStatus,
    WorkflowPolicy,
    WorkflowTerminated,
    get_report,
    resilient,
    resilient_flow,
)

TARGET = 0.10
PERSISTENT_SHARE = 1 / 3
MIXES = ("transient", "persistent")
VARIANTS = ("plain", "plain+retries", "resilient")

POLICY = WorkflowPolicy(name="br-wf-541", max_partial_failures=5, critical_step_ratio=0.8)


class InjectedFailure(ConnectionError):
    """The only exception the steps raise: any other failure is the harness's own."""


# --- the failure draw ----------------------------------------------------------------------


def _draw(seed: int, index: int, what: str) -> float:
    # str seeds are hashed with SHA-512 by random.Random: the same in every process
    return random.Random(f"{seed}:{index}:{what}").random()


def attempt_fails(seed: int, index: int, attempt: int, mix: str, p: float) -> bool:
    """Whether attempt `attempt` (1-based) of step `index` in run `seed` fails."""
    first_fails = _draw(seed, index, "1") < p
    if attempt == 1:
        return first_fails
    if mix == "persistent" and first_fails and _draw(seed, index, "persist") < PERSISTENT_SHARE:
        return True
    return _draw(seed, index, str(attempt)) < p


def step_fails(seed: int, index: int, attempts: int, mix: str, p: float) -> bool:
    """Whether every one of `attempts` attempts fails (the step fails for good)."""
    return all(attempt_fails(seed, index, a, mix, p) for a in range(1, attempts + 1))


def work(seed: int, index: int, mix: str, p: float) -> tuple[str, int]:
    """One step: fails by the draw for (seed, step, attempt), else returns its own result."""
    attempt = task_run.run_count  # 1, 2, 3... across Prefect's retries of this task run
    if attempt_fails(seed, index, attempt, mix, p):
        raise InjectedFailure(f"injected: run {seed} step {index} attempt {attempt}")
    return ("own", index)


@task(name="cached_result")
def cached_result(index: int) -> tuple[str, int]:
    """The fallback of graceful_degradation steps; it does not fail."""
    return ("fallback", index)


# --- the step layout ----------------------------------------------------------------------


def layout(steps: int) -> list[str]:
    """Each step's role: every 7th step (0, 7, 14) critical, the rest rotate 3 policies."""
    roles, rotation = [], ("continue", "partial_success", "graceful_degradation")
    for index in range(steps):
        if index % 7 == 0:
            roles.append("critical")
        else:
            roles.append(rotation[(index - 1 - index // 7) % 3])
    return roles


@dataclass
class Steps:
    retries: int = 0
    plain: list[Task[..., Any]] = field(default_factory=list)
    retrying: list[Task[..., Any]] = field(default_factory=list)
    resilient: list[Task[..., Any]] = field(default_factory=list)


STEPS = Steps()
ROLES: list[str] = []


def build_steps(steps: int, retries: int) -> None:
    ROLES[:] = layout(steps)
    STEPS.retries = retries
    for index, role in enumerate(ROLES):
        name = f"step_{index:02d}"
        STEPS.plain.append(task(work, name=name))
        STEPS.retrying.append(task(work, name=name, retries=retries, retry_delay_seconds=0))
        common = {"retries": retries, "retry_delay": 0, "name": name}
        if role == "critical":
            step = resilient(policy="partial_success", critical=True, impact="critical", **common)
        elif role == "continue":
            step = resilient(policy="continue", impact="minor", **common)
        elif role == "partial_success":
            step = resilient(policy="partial_success", impact="major", **common)
        else:
            step = resilient(fallbacks=[cached_result], impact="major", **common)
        STEPS.resilient.append(step(work))


# --- the flows ---------------------------------------------------------------------------

# what each run's flow body received from its steps, by (variant, mix, seed)
_received: dict[tuple[str, str, int], list[Any]] = {}
_body_seconds: dict[tuple[str, str, int], float] = {}
_lock = threading.Lock()


class _Concurrency:
    """How many flow bodies are running at once, and the peak of a batch."""

    def __init__(self) -> None:
        self.active = self.peak = 0

    def __enter__(self) -> None:
        with _lock:
            self.active += 1
            self.peak = max(self.peak, self.active)

    def __exit__(self, *_: object) -> None:
        with _lock:
            self.active -= 1


_concurrency = _Concurrency()


def _run_steps(variant: str, steps: list[Task[..., Any]], seed: int, mix: str, p: float) -> int:
    key = (variant, mix, seed)
    with _lock:
        _received[key] = []
    started = time.perf_counter()
    try:
        with _concurrency:
            for index, step in enumerate(steps):
                value = step(seed=seed, index=index, mix=mix, p=p)  # plain: a failure propagates
                _received[key].append(value)
    finally:
        _body_seconds[key] = time.perf_counter() - started
    return len(steps)


@flow(name="br-wf-541-plain")
def plain_run(seed: int, mix: str, p: float) -> int:
    return _run_steps("plain", STEPS.plain, seed, mix, p)


@flow(name="br-wf-541-plain-retries")
def retrying_run(seed: int, mix: str, p: float) -> int:
    return _run_steps("plain+retries", STEPS.retrying, seed, mix, p)


@resilient_flow(policy=POLICY, name="br-wf-541-resilient")
def resilient_run(seed: int, mix: str, p: float) -> int:
    return _run_steps("resilient", STEPS.resilient, seed, mix, p)


FLOWS = {"plain": plain_run, "plain+retries": retrying_run, "resilient": resilient_run}


# --- what the draws imply ----------------------------------------------------------------


def expected(variant: str, seed: int, mix: str, p: float) -> tuple[bool, int, int]:
    """(terminated, steps delivered, steps recovered by a retry) if every variant applies
    its rules exactly to the draws."""
    attempts = 1 if variant == "plain" else STEPS.retries + 1
    delivered = recovered = failed = critical_total = critical_delivered = 0
    for index, role in enumerate(ROLES):
        fails = step_fails(seed, index, attempts, mix, p)
        recovered += not fails and attempt_fails(seed, index, 1, mix, p)
        if variant != "resilient":
            if fails:
                return True, delivered, recovered
            delivered += 1
            continue
        if not fails or role == "graceful_degradation":  # the fallback never fails
            delivered += 1
        else:
            failed += 1
        if role == "critical":
            critical_total += 1
            critical_delivered += not fails
        if failed > POLICY.max_partial_failures or (
            critical_total and critical_delivered / critical_total < POLICY.critical_step_ratio
        ):
            return True, delivered, recovered
    return False, delivered, recovered


# --- running and counting ----------------------------------------------------------------


@dataclass
class Tally:
    runs: int = 0
    terminated: int = 0
    other_failures: int = 0
    planned: int = 0
    delivered: int = 0
    by_fallback: int = 0
    expected_terminated: int = 0
    expected_delivered: int = 0
    expected_recovered: int = 0
    attempts_unknown: int = 0
    server_503: int = 0
    mismatched_runs: int = 0
    seconds: float = 0.0
    peak: int = 0
    run_seconds: float = 0.0
    body_seconds: float = 0.0
    partial_success: int = 0
    rules: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    health: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


DELIVERED = {StepStatus.SUCCEEDED, StepStatus.RECOVERED, StepStatus.DEGRADED}


def run_batch(variant: str, mix: str, seeds: list[int], p: float) -> Tally:
    """All runs of one variant and mix at once, each flow run in its own thread.

    The flow runs are created first, one after the other, as a scheduler creates them;
    then all are executed at once, as workers pick up scheduled runs. Creating 50 flow
    runs at the same instant makes the SQLite-backed server answer 503 (SQLITE_BUSY),
    and Prefect's client then backs off for up to a minute or gives up.
    """
    flow_fn = FLOWS[variant]
    params = [{"seed": seed, "mix": mix, "p": p} for seed in seeds]
    with get_client(sync_client=True) as client:
        runs = [client.create_flow_run(flow_fn, parameters=par, state=Pending()) for par in params]

    run_seconds: list[float] = []

    def one(flow_run: Any, parameters: dict[str, Any]) -> Any:
        began = time.perf_counter()
        try:
            return run_flow(flow_fn, flow_run=flow_run, parameters=parameters, return_type="state")
        except Exception as exc:  # the flow run could not be run to a final state
            return exc
        finally:
            run_seconds.append(time.perf_counter() - began)

    _concurrency.peak = 0
    busy_before = _server_busy.total()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(seeds)) as pool:
        states = list(pool.map(one, runs, params))
    tally = Tally(runs=len(seeds), seconds=time.perf_counter() - started)
    tally.peak = _concurrency.peak
    tally.server_503 = _server_busy.total() - busy_before
    tally.run_seconds = statistics.median(run_seconds)
    tally.body_seconds = statistics.median(
        _body_seconds.get((variant, mix, seed), float("nan")) for seed in seeds
    )
    for seed, state in zip(seeds, states, strict=True):
        tally.planned += len(ROLES)
        received = _received.get((variant, mix, seed), [])
        own_count = sum(1 for v in received if v is not None)
        exp_terminated, exp_delivered, exp_recovered = expected(variant, seed, mix, p)
        tally.expected_terminated += exp_terminated
        tally.expected_delivered += exp_delivered
        tally.expected_recovered += exp_recovered
        if isinstance(state, Exception):
            tally.other_failures += 1
            tally.notes.append(f"{variant} seed {seed}: the flow call raised {state!r:.300}")
            continue
        error = None if state.is_completed() else state.result(raise_on_failure=False)
        if variant == "resilient":
            delivered, terminated = _count_resilient(tally, state, error, own_count)
        else:
            terminated = isinstance(error, InjectedFailure)
            if not state.is_completed() and not terminated:
                tally.other_failures += 1
                tally.notes.append(f"{variant} seed {seed}: {state.name}: {error!r:.300}")
            delivered = own_count
        tally.terminated += terminated
        tally.delivered += delivered
        if (terminated, delivered) != (exp_terminated, exp_delivered):
            tally.mismatched_runs += 1
            tally.notes.append(
                f"{variant} {mix} seed {seed}: measured (terminated={terminated},"
                f" delivered={delivered}), draws imply ({exp_terminated}, {exp_delivered})"
            )
    return tally


def _count_resilient(tally: Tally, state: Any, error: Any, own_count: int) -> tuple[int, bool]:
    flow_run_id: UUID = state.state_details.flow_run_id
    report = get_report(flow_run_id)
    terminated = isinstance(error, WorkflowTerminated)
    if not state.is_completed() and not terminated:
        tally.other_failures += 1
        tally.notes.append(f"run {flow_run_id}: {state.name}: {error!r:.300}")
    if report is None:
        tally.notes.append(f"run {flow_run_id}: no report")
        return 0, terminated
    tally.statuses.update(o.status.value for o in report.steps)
    tally.attempts_unknown += sum(1 for o in report.steps if o.attempts is None)
    delivered = sum(1 for o in report.steps if o.status in DELIVERED)
    tally.by_fallback += sum(1 for o in report.steps if o.status is StepStatus.DEGRADED)
    tally.health.append(report.health.health_score)
    if report.health.stopped_by is not None:
        tally.rules[report.health.stopped_by.value] += 1
    if state.name == "PartialSuccess":
        tally.partial_success += 1
    if (report.overall_status.value == "terminated") != terminated:
        tally.notes.append(
            f"run {flow_run_id}: final state {state.name} but report {report.overall_status}"
        )
    if delivered != own_count:
        tally.notes.append(
            f"run {flow_run_id}: report says {delivered} delivered, flow body got {own_count}"
        )
    return delivered, terminated


def _pct(part: float, whole: float) -> str:
    return f"{part / whole:.1%}" if whole else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="concurrent flow runs per variant")
    parser.add_argument("--steps", type=int, default=20, help="steps per flow run")
    parser.add_argument("--p", type=float, default=0.15, help="failure probability per attempt")
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--seed", type=int, default=541, help="base of the per-run seeds")
    parser.add_argument("--verbose", action="store_true", help="keep Prefect's run logs")
    args = parser.parse_args()
    if not args.verbose:
        # each injected failure would print a traceback; quiet for every variant alike
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    build_steps(args.steps, args.retries)
    seeds = [args.seed * 1000 + r for r in range(args.runs)]

    results: dict[tuple[str, str], Tally] = {}
    with prefect_test_harness(server_startup_timeout=120):
        for variant in VARIANTS:  # warm-up: imports, connections, task registrations
            run_batch(variant, "transient", [-1, -2], args.p)
        for mix in MIXES:
            for variant in VARIANTS:
                results[(variant, mix)] = tally = run_batch(variant, mix, seeds, args.p)
                print(
                    f"{mix:>10} {variant:<14} terminated {tally.terminated}/{tally.runs}"
                    f" in {tally.seconds:.1f}s, peak {tally.peak} runs at once,"
                    f" {tally.other_failures} other failures"
                )

    columns = [
        "mix",
        "variant",
        "terminated",
        "termination rate",
        "target < 10%",
        "steps delivered",
        "of which by fallback",
        "draws imply (term. / delivered)",
        "other failures",
        "peak at once",
        "server 503s",
        "batch s",
        "median run s (steps s)",
    ]
    rows = []
    for mix in MIXES:
        for variant in VARIANTS:
            t = results[(variant, mix)]
            rate = t.terminated / t.runs
            rows.append(
                [
                    mix,
                    variant,
                    f"{t.terminated}/{t.runs}",
                    f"{rate:.1%}",
                    "met" if rate < TARGET else "MISSED",
                    f"{t.delivered}/{t.planned} ({_pct(t.delivered, t.planned)})",
                    str(t.by_fallback) if variant == "resilient" else "-",
                    f"{_pct(t.expected_terminated, t.runs)} / "
                    f"{_pct(t.expected_delivered, t.planned)}",
                    str(t.other_failures),
                    str(t.peak),
                    str(t.server_503),
                    f"{t.seconds:.1f}",
                    f"{t.run_seconds:.1f} ({t.body_seconds:.1f})",
                ]
            )
    title = (
        f"BR-WF-541: {args.runs} concurrent runs x {args.steps} steps,"
        f" p={args.p} per attempt, retries={args.retries}"
    )
    show(title, columns, rows)

    detail_columns = [
        "mix",
        "runs Completed",
        "of which PartialSuccess",
        "terminated by rule",
        "step statuses (report)",
        "recovered: report / draws",
        "steps with attempts unknown",
        "median health",
    ]
    detail_rows = []
    for mix in MIXES:
        t = results[("resilient", mix)]
        detail_rows.append(
            [
                mix,
                str(t.runs - t.terminated - t.other_failures),
                str(t.partial_success),
                ", ".join(f"{k} {v}" for k, v in sorted(t.rules.items())) or "none",
                ", ".join(f"{k} {v}" for k, v in sorted(t.statuses.items())),
                f"{t.statuses.get('recovered', 0)} / {t.expected_recovered}",
                str(t.attempts_unknown),
                f"{statistics.median(t.health):.3f}" if t.health else "n/a",
            ]
        )
    show("resilient variant, from get_report()", detail_columns, detail_rows)
    notes = [n for mix in MIXES for v in VARIANTS for n in results[(v, mix)].notes]
    if _server_busy.busy:
        notes.append(f"the server's 503 answers, by request: {_server_busy.describe()}")
    for note in notes:
        print("NOTE", note)

    counts = Counter(ROLES)
    critical = [i for i, r in enumerate(ROLES) if r == "critical"]
    body = f"""The originating design's BR-WF-541 scenario, measured on a real temporary Prefect
server (`prefect_test_harness`). Per variant and mix, {args.runs} flow runs of a
{args.steps}-step flow run **concurrently**, in one process: the {args.runs} flow runs are
first created through the API one after the other (`client.create_flow_run`, state
Pending, as a schedule creates them), then all are executed at once, each in its own
thread of a `ThreadPoolExecutor` with {args.runs} workers, by
`prefect.flow_engine.run_flow(flow, flow_run=..., return_type="state")` (what a worker
does with a scheduled run; a plain `flow(...)` call is the same engine, creating the run
itself). Creating all {args.runs} runs in the same instant instead made the SQLite-backed
test server answer `503` (SQLITE_BUSY) on `POST /flow_runs/`; Prefect's client backs off
(2, 4, 8... s) and gives up after 5 retries, so the runs ended up staggered and some
never started. `peak at once` is the most flow bodies running at the same moment,
counted inside the flow body. Inside a run the steps are called one after the other.

Every step *attempt* fails with probability {args.p},
drawn inside the task from (run seed, step index, attempt number from
`prefect.runtime.task_run.run_count`), so retries see fresh draws and the three
variants see the same draws (run r uses seed {args.seed}000 + r in every variant).

- **transient**: every attempt fails independently with p={args.p}.
- **persistent**: when a step's first attempt fails, with probability 1/3 the step
  fails on every attempt of that run; otherwise later attempts draw afresh.

Variants:

- **plain**: plain `@task` steps, no retries, called directly in a plain `@flow`, so a
  step's exception fails the flow run, as in an unprotected Prefect flow.
- **plain+retries**: the same with `retries={args.retries}, retry_delay_seconds=0`.
- **resilient**: `@resilient` steps with `retries={args.retries}, retry_delay=0` in a
  `@resilient_flow` with `WorkflowPolicy(max_partial_failures={POLICY.max_partial_failures},
  critical_step_ratio={POLICY.critical_step_ratio})` (the values of
  `blocks/production-resilience.yaml`). Steps {", ".join(map(str, critical))} are critical
  (`partial_success`, `critical=True`, impact critical); the other steps rotate
  `continue` (impact minor, {counts["continue"]} steps), `partial_success` (major,
  {counts["partial_success"]}) and `graceful_degradation` with one fallback task
  `cached_result` that does not fail (major, {counts["graceful_degradation"]}).

A run is **terminated** when its flow run ends Failed: for plain Prefect because an
injected step failure propagated, for this package because a termination rule raised
`WorkflowTerminated`. Any other failure is counted apart (`other failures`). **Steps
delivered** counts steps that produced a result of their own or a fallback's, out of
all planned steps (steps never reached in a terminated run did not deliver); for the
package it is read from `get_report(flow_run_id)` (statuses succeeded, recovered,
degraded) and cross-checked against the values the flow body received. **Draws imply**
is what the same draws give if each variant applies its rules exactly; a measured
number away from it would mean a step did not behave as configured. Prefect's run
loggers are set to CRITICAL in all variants alike (the injected failures would
otherwise print about a thousand tracebacks). `server 503s` counts the test server's
`503` answers during the batch (SQLite busy), which Prefect's client retried after a
back-off; `batch s` is the wall time of the batch, from the first run started to the last
run finished; `median run s` is the median wall time of one flow run in the batch
(`run_flow` from start to final state) and `steps s` the part spent in the flow body
calling the steps (the rest is Prefect's run start and end, and for the package the
report: reading attempts back and writing three artifacts).

{markdown_table(columns, rows)}

The resilient runs, from their reports. `recovered` is a step that succeeded after a
retry; the report knows it only from Prefect's record of the task run (`run_count`), which
`with_run_details` waits for up to 10 s at the end of the run; a step whose task run was
not yet recorded keeps `attempts` unknown and is reported as `succeeded`. `draws imply`
is the number of reached steps whose first attempt failed and a retry succeeded.

{markdown_table(detail_columns, detail_rows)}
"""
    if notes:
        body += "\nNotes from the run:\n\n" + "\n".join(f"- {n}" for n in notes[:20]) + "\n"
    command = (
        f"cd bench && ../.venv/bin/python failure_injection.py --runs {args.runs}"
        f" --steps {args.steps} --p {args.p} --retries {args.retries} --seed {args.seed}"
    )
    write_section(
        "failure-injection", "Termination under injected failures (BR-WF-541)", command, body
    )


if __name__ == "__main__":
    main()
