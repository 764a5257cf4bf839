"""Load: many concurrent resilient flow runs on a Prefect server on PostgreSQL, vs plain Prefect.

A throwaway PostgreSQL cluster and `prefect server start` on it (tests/servers.py).
In batches, N flow runs of a 20-step flow run at once: driver processes (this script
with `driver`) each run their share of the runs in threads, each thread one flow run
(`prefect.flow_engine.run_flow`, what a worker's flow-run process does). Batches
alternate (ABBA order over rounds) between the same flow in plain Prefect, as a
`@resilient_flow` (default `report_wait`, 10 s) and as one with `report_wait=0`.
Failures are injected by seed, so each run's expected steps, report and final state
are known beforehand; after each batch the server is read back and every run,
report, step outcome and task run is checked against them.

    python load.py [--runs 200] [--concurrency RUNS] [--processes 4] [--rounds 2]
    python load.py --runs 20          # a smoke run

Exit status 1 if any check failed (the figures are still written).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _report import markdown_table, show, write_section  # noqa: E402
from prefect import flow, tags, task, unmapped  # noqa: E402
from prefect.flow_engine import run_flow  # noqa: E402
from prefect.runtime import task_run  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from prefect_resilience import WorkflowPolicy, resilient, resilient_flow  # noqa: E402

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
# words of the package's warnings that a report or a record is at risk (any logger)
TROUBLE = ("could not", "is lost", "given up", "kept it in", "EventsWorker' failed")
# the state types a task run of these flows ends in
FINAL_STATES = ["COMPLETED", "FAILED"]


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


def _resilient_flow(name: str, report_wait: float) -> Any:
    def steps(seed: int, pause: float) -> int:
        return _resilient_steps(seed, pause)

    return resilient_flow(
        steps,
        policy=POLICY,
        name=name,
        report_wait=report_wait,
        task_runner=ThreadPoolTaskRunner(max_workers=TASK_RUNNER_WORKERS),
    )


# the package's default report_wait (10 s), and none: the report does not wait for
# Prefect's records of the task runs (their attempts stay unknown)
resilient_run = _resilient_flow("load-resilient", report_wait=10.0)
resilient_nowait_run = _resilient_flow("load-resilient-nowait", report_wait=0.0)


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


FLOWS = {"plain": plain_run, "resilient": resilient_run, "resilient-nowait": resilient_nowait_run}


# --- a driver process: its share of one batch, each run in a thread ---------------------


def drive(args: argparse.Namespace) -> None:
    """Run this driver's seeds at once once the go file exists; write what happened."""
    flow_fn = FLOWS[args.variant]
    seeds = [int(s) for s in args.seeds.split(",")]
    timings = _time_report_calls()
    # warm-up: imports, connections, task registration, outside the batch's tag
    with tags("load-warmup"):
        run_flow(flow_fn, parameters={"seed": -1, "pause": args.pause}, return_type="state")
    for calls in timings.values():
        calls.clear()  # only the batch's runs
    Path(args.ready).touch()
    while not Path(args.go).exists():
        time.sleep(0.02)

    def one(seed: int) -> dict[str, Any]:
        record: dict[str, Any] = {"seed": seed, "started": time.time()}
        began = time.perf_counter()
        try:
            with tags(args.tag):
                state = run_flow(
                    flow_fn, parameters={"seed": seed, "pause": args.pause}, return_type="state"
                )
            record.update(
                flow_run_id=str(state.state_details.flow_run_id),
                state_type=state.type.value,
                state_name=state.name,
            )
        except BaseException as exc:  # the run could not be run to a final state
            record["error"] = f"{type(exc).__name__}: {exc}"[:500]
        record["seconds"] = time.perf_counter() - began
        record["ended"] = time.time()
        return record

    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        records = list(pool.map(one, seeds))
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (EventsWorker, APILogWorker):
        service.drain_all(timeout=120)
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.out).write_text(
        json.dumps({"runs": records, "maxrss_mb": maxrss_mb, "timings": timings})
    )


def _time_report_calls() -> dict[str, list[float]]:
    """Time the two calls at the end of a resilient run that talk to the API.

    `with_run_details` waits (up to `report_wait`) for Prefect to record the run's
    task runs; `publish_or_keep` writes the report's artifacts. Both are wrapped in
    the flow module's namespace with a timer that calls straight through.
    """
    import prefect_resilience.flow as flow_module

    timings: dict[str, list[float]] = {"with_run_details": [], "publish_or_keep": []}
    for name, calls in timings.items():
        original = getattr(flow_module, name)

        def timed(*a: Any, _original: Any = original, _calls: Any = calls, **k: Any) -> Any:
            began = time.perf_counter()
            try:
                return _original(*a, **k)
            finally:
                _calls.append(time.perf_counter() - began)

        setattr(flow_module, name, timed)
    return timings


# --- the main process: servers, batches, checks --------------------------------------------


@dataclass
class Batch:
    """One batch of one variant, and what the checks found."""

    variant: str
    runs: int
    records: list[dict[str, Any]] = field(default_factory=list)
    wall: float = 0.0
    load_before: float = 0.0
    driver_rss_mb: list[float] = field(default_factory=list)
    server_runs: int = 0
    peak_server: int = 0
    server_seconds: list[float] = field(default_factory=list)
    states: Counter[str] = field(default_factory=Counter)
    reports: int = 0
    step_outcomes: int = 0
    planned_outcomes: int = 0
    task_runs: int = 0
    task_runs_final: int = 0
    events_dropped: int = 0
    pool_timeouts: int = 0
    prefect_findings: list[str] = field(default_factory=list)
    planned_task_runs: int = 0
    task_runs_lag: float | None = None
    attempts_unknown: int = 0
    reports_with_unknown: int = 0
    pending_files: int = 0
    journals_left: int = 0
    warnings: Counter[str] = field(default_factory=Counter)
    errors_logged: int = 0
    timings: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def client_seconds(self) -> list[float]:
        return [r["seconds"] for r in self.records]

    def fail(self, message: str) -> None:
        self.failures.append(f"{self.variant}: {message}")


def _peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end at t closes before a start at t)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = active = 0
    for _, delta in events:
        active += delta
        peak = max(peak, active)
    return peak


def _read_all(read: Any, page: int = 200) -> list[Any]:
    items: list[Any] = []
    while True:
        chunk = read(limit=page, offset=len(items))
        items += chunk
        if len(chunk) < page:
            return items


def run_batch(
    server: Any,
    variant: str,
    seeds: list[int],
    tag: str,
    args: argparse.Namespace,
    work_dir: Path,
) -> Batch:
    """Start the drivers, release them at once, wait, and collect their records."""
    batch = Batch(variant, len(seeds))
    directory = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=work_dir))
    log_offset = server.log.stat().st_size  # the server's log from here on is this batch's
    go = directory / "go"
    shares = [seeds[p :: args.processes] for p in range(args.processes)]
    shares = [share for share in shares if share]
    threads = math.ceil(args.concurrency / len(shares))
    drivers = []
    for p, share in enumerate(shares):
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "driver",
            "--variant",
            variant,
            "--seeds",
            ",".join(map(str, share)),
            "--tag",
            tag,
            "--threads",
            str(threads),
            "--pause",
            str(args.pause),
            "--ready",
            str(directory / f"ready-{p}"),
            "--go",
            str(go),
            "--out",
            str(directory / f"out-{p}.json"),
        ]
        log = (directory / f"driver-{p}.log").open("wb")
        drivers.append(
            subprocess.Popen(command, env=server.env(), stdout=log, stderr=subprocess.STDOUT)
        )
    deadline = time.monotonic() + 300
    while not all((directory / f"ready-{p}").exists() for p in range(len(shares))):
        if any(d.poll() is not None for d in drivers) or time.monotonic() > deadline:
            _stop(drivers)
            raise RuntimeError(f"a driver did not get ready; logs in {directory}")
        time.sleep(0.1)
    batch.load_before = os.getloadavg()[0]
    go.touch()
    for driver in drivers:
        try:
            driver.wait(timeout=args.batch_timeout)
        except subprocess.TimeoutExpired:
            batch.fail(f"a driver ran over {args.batch_timeout}s and was stopped")
            _stop(drivers)
    for p, driver in enumerate(drivers):
        out = directory / f"out-{p}.json"
        if driver.returncode != 0 or not out.exists():
            batch.fail(f"driver {p} exited {driver.returncode}; log: {directory}/driver-{p}.log")
            continue
        data = json.loads(out.read_text())
        batch.records += data["runs"]
        batch.driver_rss_mb.append(data["maxrss_mb"])
        for name, calls in data["timings"].items():
            batch.timings.setdefault(name, []).extend(calls)
    for p in range(len(shares)):
        text = (directory / f"driver-{p}.log").read_text(errors="replace")
        for line in text.splitlines():
            parts = [part.strip() for part in line.split("|", 2)]
            ours = len(parts) == 3 and parts[2].startswith("prefect.prefect_resilience")
            trouble = any(marker in line for marker in TROUBLE)
            if ours and parts[1] == "ERROR" and not trouble:
                batch.errors_logged += 1  # a termination rule fired (checked against the plan)
            elif trouble or (ours and parts[1] in ("WARNING", "ERROR")):
                batch.warnings[parts[-1][:200]] += 1
    if batch.records:
        batch.wall = max(r["ended"] for r in batch.records) - min(
            r["started"] for r in batch.records
        )
    batch.records.sort(key=lambda r: r["seed"])
    check_batch(server, batch, tag, seeds, args, log_offset)
    return batch


def _stop(drivers: list[subprocess.Popen[bytes]]) -> None:
    for driver in drivers:
        if driver.poll() is None:
            driver.kill()
            driver.wait()


def check_batch(
    server: Any,
    batch: Batch,
    tag: str,
    seeds: list[int],
    args: argparse.Namespace,
    log_offset: int,
) -> None:
    """Read the batch back from the server and compare every run with its plan."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterType,
        FlowRunFilter,
        FlowRunFilterTags,
    )

    from prefect_resilience.report import REPORT_TYPE, PartialSuccessResult

    plans = {seed: plan(seed) for seed in seeds}
    by_tag = {"tags": {"all_": [tag]}}
    errors = [r for r in batch.records if "error" in r]
    for record in errors[:5]:
        batch.fail(f"seed {record['seed']}: the run raised {record['error']}")
    if len(errors) > 5:
        batch.fail(f"{len(errors) - 5} more runs raised")

    # Prefect records task runs from events: wait until it has all of them in a final
    # state, or until its counts stop moving (events it dropped never arrive)
    batch.planned_task_runs = sum(p.task_runs for p in plans.values())
    final = {"flow_runs": by_tag, "task_runs": {"state": {"type": {"any_": FINAL_STATES}}}}
    started = last_change = time.monotonic()
    counts: tuple[Any, Any] = (None, None)
    while True:
        seen = (
            server.request("POST", "/task_runs/count", {"flow_runs": by_tag}),
            server.request("POST", "/task_runs/count", final),
        )
        now = time.monotonic()
        if seen != counts:
            counts, last_change = seen, now
        if (
            counts[1] >= batch.planned_task_runs
            or now - last_change > args.record_settle
            or now - started > args.record_wait
        ):
            break
        time.sleep(1)
    batch.task_runs, batch.task_runs_final = int(counts[0]), int(counts[1])
    if batch.task_runs_final == batch.planned_task_runs == batch.task_runs:
        batch.task_runs_lag = now - started
    else:
        batch.prefect_findings.append(
            f"{batch.variant}: Prefect recorded {batch.task_runs} of {batch.planned_task_runs}"
            f" task runs, {batch.task_runs_final} in a final state; the counts stopped"
            f" moving {now - last_change:.0f}s before the check ended ({now - started:.0f}s)"
        )
    log = server.log.read_bytes()[log_offset:].decode(errors="replace")
    batch.events_dropped = log.count("Subscription queue is full, dropping message")
    batch.pool_timeouts = log.count("QueuePool limit")

    run_filter = FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]))
    with get_client(sync_client=True) as client:
        flow_runs = _read_all(
            lambda limit, offset: client.read_flow_runs(
                flow_run_filter=run_filter, limit=limit, offset=offset
            )
        )
        artifacts = _read_all(
            lambda limit, offset: client.read_artifacts(
                artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=[REPORT_TYPE])),
                flow_run_filter=run_filter,
                limit=limit,
                offset=offset,
            )
        )
    batch.server_runs = len(flow_runs)
    if batch.server_runs != batch.runs:
        batch.fail(f"{batch.server_runs} flow runs on the server, {batch.runs} launched")
    intervals = [
        (r.start_time.timestamp(), r.end_time.timestamp())
        for r in flow_runs
        if r.start_time and r.end_time
    ]
    batch.peak_server = _peak_overlap(intervals)
    batch.server_seconds = [e - s for s, e in intervals]

    reports: dict[str, list[PartialSuccessResult]] = {}
    for artifact in artifacts:
        reports.setdefault(str(artifact.flow_run_id), []).append(
            PartialSuccessResult.model_validate(artifact.data)
        )
    batch.reports = len(artifacts)
    home_pending = server.home / "prefect-resilience" / "pending"
    batch.pending_files = len(
        [p for p in home_pending.glob("*.json") if not p.name.startswith(".")]
    )
    batch.journals_left = len(list(home_pending.glob("*.steps.jsonl")))
    if batch.pending_files or batch.journals_left:
        batch.fail(
            f"{batch.pending_files} reports kept locally, {batch.journals_left} step journals"
            f" left in {home_pending}"
        )

    seen_seeds = set()
    for run in flow_runs:
        seed = int(run.parameters["seed"])
        seen_seeds.add(seed)
        expected = plans[seed]
        batch.planned_outcomes += expected.reached
        state = run.state
        name = state.name if state else "no state"
        batch.states[name] += 1
        resilient_variant = batch.variant.startswith("resilient")
        want = expected.final if resilient_variant else "Completed"
        want_type = "FAILED" if want == "Failed" else "COMPLETED"
        if state is None or state.type.value != want_type or name != want:
            batch.fail(f"seed {seed}: final state {name}, expected {want}")
        if resilient_variant:
            check_report(batch, seed, expected, reports.get(str(run.id), []))
    missing = sorted(set(seeds) - seen_seeds)
    if missing:
        batch.fail(f"no flow run on the server for seeds {missing[:10]}")
    if batch.variant.startswith("resilient") and batch.reports != batch.server_runs:
        batch.fail(f"{batch.reports} reports for {batch.server_runs} flow runs")


def check_report(batch: Batch, seed: int, expected: Plan, reports: list[Any]) -> None:
    """One report per run; its steps, statuses, attempts, status and rule as planned."""
    if len(reports) != 1:
        batch.fail(f"seed {seed}: {len(reports)} reports")
        if not reports:
            return
    report = reports[0]
    batch.step_outcomes += len(report.steps)
    if len(report.steps) != expected.reached:
        batch.fail(f"seed {seed}: {len(report.steps)} step outcomes, {expected.reached} planned")
    unknown = 0
    got = []
    for outcome in report.steps:
        status, attempts = outcome.status.value, outcome.attempts
        if attempts is None:
            unknown += 1
            # without Prefect's record of attempts a recovered step reads as succeeded
            status = "recovered?" if status == "succeeded" else status
        got.append((outcome.name, status, attempts))
    batch.attempts_unknown += unknown
    batch.reports_with_unknown += bool(unknown)
    want = sorted(expected.steps)
    matched = _match(sorted(got, key=lambda t: (t[0], t[1].rstrip("?"))), want)
    if not matched:
        batch.fail(f"seed {seed}: steps {sorted(got)} but planned {want}")
    if report.overall_status.value != expected.report_status:
        batch.fail(f"seed {seed}: report {report.overall_status.value}, planned {expected.final}")
    rule = report.health.stopped_by.value if report.health.stopped_by else None
    if rule != expected.rule:
        batch.fail(f"seed {seed}: stopped by {rule}, planned {expected.rule}")


def _match(got: list[tuple[str, str, int | None]], want: list[tuple[str, str, int]]) -> bool:
    """Same steps; statuses and attempts equal, except where attempts are unknown."""
    if len(got) != len(want):
        return False
    pool = Counter(want)
    for name, status, attempts in got:
        if attempts is not None:
            candidates = [(name, status, attempts)]
        elif status == "recovered?":
            candidates = [(name, "succeeded", 1), (name, "recovered", RETRIES + 1)]
        else:
            candidates = [(name, status, 1), (name, status, RETRIES + 1)]
        hit = next((c for c in candidates if pool[c] > 0), None)
        if hit is None:
            return False
        pool[hit] -= 1
    return True


# --- reporting -----------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _rounds(args: argparse.Namespace) -> Iterator[str]:
    """ABBA: the variants in order in odd rounds, in reverse in even ones."""
    for r in range(args.rounds):
        yield from (args.variants if r % 2 == 0 else reversed(args.variants))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="flow runs per batch")
    parser.add_argument("--concurrency", type=int, help="runs in flight at once (default: runs)")
    parser.add_argument("--processes", type=int, default=4, help="driver processes per batch")
    parser.add_argument("--rounds", type=int, default=2, help="batches per variant (ABBA)")
    parser.add_argument(
        "--variants",
        default="plain,resilient,resilient-nowait",
        help=f"comma-separated, in the order of the first round; of {sorted(FLOWS)}",
    )
    parser.add_argument("--pause", type=float, default=0.1, help="seconds each step sleeps")
    parser.add_argument("--seed", type=int, default=8000, help="base of the per-run seeds")
    parser.add_argument(
        "--record-wait", type=float, default=120, help="most s to wait for Prefect's records"
    )
    parser.add_argument(
        "--record-settle",
        type=float,
        default=30,
        help="stop waiting for Prefect's records once their counts are still for this many s",
    )
    parser.add_argument("--batch-timeout", type=float, default=900)
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    sub = parser.add_subparsers(dest="command")
    drv = sub.add_parser("driver", help="(internal) run a share of one batch")
    for name in ("variant", "seeds", "tag", "ready", "go", "out"):
        drv.add_argument(f"--{name}", required=True)
    drv.add_argument("--threads", type=int, required=True)
    drv.add_argument("--pause", type=float, required=True)
    args = parser.parse_args()
    if args.command == "driver":
        drive(args)
        return
    args.concurrency = args.concurrency or args.runs
    args.variants = args.variants.split(",")
    unknown = set(args.variants) - set(FLOWS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {sorted(FLOWS)}")

    from tests.servers import postgres_bin_dir, postgres_cluster, prefect_server

    plans = [plan(args.seed * 1000 + r) for r in range(args.runs)]
    finals = Counter(p.final for p in plans)
    print(f"planned final states per batch: {dict(finals)}")
    batches: list[Batch] = []
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="load-bench-") as work_dir,
        postgres_cluster() as pg,
        prefect_server(pg.url) as server,
        server.settings(),
    ):
        version = server.request("GET", "/admin/version")
        pg_version = subprocess.run(
            [str(Path(str(postgres_bin_dir())) / "postgres"), "--version"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        for number, variant in enumerate(_rounds(args)):
            # the same seeds in every batch: each variant sees the same draws
            seeds = [args.seed * 1000 + r for r in range(args.runs)]
            tag = f"load-{number + 1}-{variant}"
            batch = run_batch(server, variant, seeds, tag, args, Path(work_dir))
            batches.append(batch)
            print(
                f"batch {number + 1} {variant}: {batch.server_runs} runs in {batch.wall:.1f}s,"
                f" peak {batch.peak_server} at once, {len(batch.failures)} check failures"
            )
    total = time.monotonic() - started
    versions = f"Prefect server {version}, {pg_version}"
    report(args, batches, finals, plans, total, versions)


def report(
    args: argparse.Namespace,
    batches: list[Batch],
    finals: Counter[str],
    plans: list[Plan],
    total: float,
    versions: str,
) -> None:
    columns = [
        "batch",
        "variant",
        "runs launched / on server",
        "peak runs at once (server)",
        "wall s",
        "runs/min",
        "steps/s",
        "task runs/s",
        "median run s (client / server)",
        "final states",
        "reports / step outcomes",
        "task runs recorded (final) / planned",
        "recorded after s",
        "events dropped by the server",
        "check failures",
        "load avg before",
    ]
    rows = []
    for number, b in enumerate(batches, 1):
        steps = sum(plan.reached for plan in plans)  # planned step outcomes per batch
        rows.append(
            [
                str(number),
                b.variant,
                f"{b.runs} / {b.server_runs}",
                str(b.peak_server),
                f"{b.wall:.1f}",
                f"{b.runs / b.wall * 60:.0f}" if b.wall else "n/a",
                f"{steps / b.wall:.1f}" if b.wall else "n/a",
                f"{b.task_runs / b.wall:.1f}" if b.wall else "n/a",
                f"{_median(b.client_seconds):.1f} / {_median(b.server_seconds):.1f}",
                ", ".join(f"{k} {v}" for k, v in sorted(b.states.items())),
                f"{b.reports} / {b.step_outcomes}" if b.variant != "plain" else "-",
                f"{b.task_runs} ({b.task_runs_final}) / {b.planned_task_runs}",
                f"{b.task_runs_lag:.1f}" if b.task_runs_lag is not None else "never",
                f"{b.events_dropped:,}",
                str(len(b.failures)),
                f"{b.load_before:.2f}",
            ]
        )
    title = f"{args.runs} runs x {STEPS} steps per batch, concurrency {args.concurrency}"
    show(title, columns, rows)

    def by(variant: str) -> list[Batch]:
        return [b for b in batches if b.variant == variant]

    terminations = sum(p.rule is not None for p in plans)
    report_columns = [
        "batch",
        "reports / runs",
        "step outcomes / planned",
        "attempts unknown: steps (reports)",
        "end-of-run wait for Prefect's records s: median / max",
        "report publish s: median / max",
        "terminations logged / planned",
        "package warnings",
    ]
    report_rows = []
    for number, b in enumerate(batches, 1):
        if b.variant == "plain":
            continue
        wait, publish = b.timings.get("with_run_details", []), b.timings.get("publish_or_keep", [])
        report_rows.append(
            [
                str(number),
                f"{b.reports} / {b.server_runs}",
                f"{b.step_outcomes} / {b.planned_outcomes}",
                f"{b.attempts_unknown} ({b.reports_with_unknown})",
                f"{_median(wait):.2f} / {max(wait, default=float('nan')):.2f}",
                f"{_median(publish):.2f} / {max(publish, default=float('nan')):.2f}",
                f"{b.errors_logged} / {terminations}",
                str(sum(b.warnings.values())),
            ]
        )
    if report_rows:
        show("resilient batches: reports", report_columns, report_rows)
    ratio_columns = ["measure"] + [f"{v} / plain" for v in args.variants if v != "plain"]
    ratio_rows: list[list[str]] = []
    plain_batches = by("plain")
    others = [by(v) for v in args.variants if v != "plain"]
    if plain_batches and others:
        measures: list[tuple[str, Any]] = [
            ("batch wall time", lambda bs: _median([b.wall for b in bs])),
            (
                "median flow run, client (run_flow call)",
                lambda bs: _median([x for b in bs for x in b.client_seconds]),
            ),
            (
                "median flow run, server (start to end time)",
                lambda bs: _median([x for b in bs for x in b.server_seconds]),
            ),
        ]
        for label, measure in measures:
            base = measure(plain_batches)
            ratio_rows.append([label] + [f"{measure(bs) / base:.2f}" for bs in others])
        show("against plain Prefect, same server, same seeds", ratio_columns, ratio_rows)
    failures = [f for b in batches for f in b.failures]
    findings = [f for b in batches for f in b.prefect_findings]
    for finding in findings:
        print("PREFECT", finding)
    for failure in failures:
        print("CHECK FAILED", failure)
    warnings = Counter[str]()
    for b in batches:
        warnings.update(b.warnings)
    for line, count in warnings.most_common(10):
        print(f"WARNING x{count}: {line}")
    print(f"total {total:.0f}s; {len(failures)} check failures")

    if not args.no_write:
        tables = [(columns, rows), (report_columns, report_rows), (ratio_columns, ratio_rows)]
        write_docs(args, batches, finals, plans, tables, failures, findings, warnings, versions)
        print("wrote docs/benchmarks.md (section load)")
    if failures:
        sys.exit(1)


def write_docs(
    args: argparse.Namespace,
    batches: list[Batch],
    finals: Counter[str],
    plans: list[Plan],
    tables: list[tuple[list[str], list[list[str]]]],
    failures: list[str],
    findings: list[str],
    warnings: Counter[str],
    versions: str,
) -> None:
    rss = [x for b in batches for x in b.driver_rss_mb]
    planned_steps = sum(p.reached for p in plans)
    processes = min(args.processes, args.runs)
    threads = math.ceil(args.concurrency / processes)
    (columns, rows), (report_columns, report_rows), (ratio_columns, ratio_rows) = tables
    body = f"""{args.runs} flow runs of a {STEPS}-step flow per batch, started together,
against `prefect server start` on a throwaway PostgreSQL cluster on localhost
(`tests/servers.py`; {versions}). {processes} driver processes each run their share of a
batch in up to {threads} threads, one flow run per thread
(`prefect.flow_engine.run_flow`, what a worker's flow-run process runs), released at once
after each driver has done one warm-up run. `peak runs at once` is the most flow runs
Running at the same instant by the server's own start and end times. Variants, one batch
each per round, in the order {", ".join(args.variants)} (reversed in even rounds;
{args.rounds} round(s)), all with the same seeds, so all see the same injected failures:
`resilient` is `@resilient_flow` with its default `report_wait` (10 s),
`resilient-nowait` the same with `report_wait=0` (the report does not wait for Prefect's
records of the task runs, so their attempts stay unknown), `plain` the same flow in plain
Prefect.

Steps 0-4 and 15-19 are called directly, 5-9 `.submit()`ted, 10-14 are one task
`.map()`ped (`ThreadPoolTaskRunner(max_workers={TASK_RUNNER_WORKERS})`); each sleeps
{args.pause} s. Policies: 0 and 15 `fail_fast`, critical; 4 `partial_success`, critical;
`continue` 1, 5, 8, 16, 19; `partial_success` 2, 6, 9, 18; `graceful_degradation` with a
fallback task 3, 7, 10-14, 17. Workflow policy `max_partial_failures={MAX_PARTIAL_FAILURES}`,
`critical_step_ratio={CRITICAL_STEP_RATIO}`; every step `retries={RETRIES}`, no delay. For each
(run seed, step) a pure function of the seed makes the step fail every attempt
({FAILURES["permanent"]:.0%}), fail its first attempt only ({FAILURES["transient"]:.0%}) or
succeed; a fallback fails with probability {FAILURES["fallback"]:.0%}. From the draws, each
run's steps (name, status, attempts), fallback task runs, termination rule and final state
are worked out beforehand, independently of the package (`plan()` in the script): per batch
{", ".join(f"{k} {v}" for k, v in sorted(finals.items()))}, {planned_steps} step outcomes. A
terminated run stops after the step that fired a rule, or after the submitted or mapped
phase in which one fired, so its report has that many outcomes, not {STEPS}. The plain flow
runs the same steps, calls the same fallback by hand when a step failed for good, catches
every failure, stops where the resilient run is planned to stop, and ends `Completed`.

Checked after each batch, read back from the server (a mismatch fails the benchmark):
flow runs on the server = runs launched; each final state as planned (plain:
`Completed`); for the resilient flows one report per run (reports = flow runs), each
report's steps, statuses, attempts, status and termination rule as planned; no report kept
locally and no step journal left. A step whose attempts the report does not know (Prefect
had not recorded its task run when `report_wait` ran out) is matched on its status alone
(a recovered step then reads `succeeded`), and counted.

Also read, as a finding about Prefect rather than a check of the package: how many of the
planned task runs (primary and fallback) Prefect recorded, and how many in a final state.
Prefect 3 records task runs from the events the flow processes send; `recorded after s` is
the time from the batch's end until all were recorded in a final state ("never": the
counts stopped moving, after {args.record_settle:.0f} s unchanged, short of the plan).
`events dropped by the server` counts the server's log lines `Subscription queue is full,
dropping message for topic='events'` during the batch and its checks: the server's
in-memory message broker (the default; `prefect.server.utilities.messaging.memory`) gives
each of its event consumers a queue of 10,000 messages, and drops what does not fit.

{markdown_table(columns, rows)}

{markdown_table(report_columns, report_rows) if report_rows else ""}

`end-of-run wait` is `with_run_details` at the end of each resilient run (it waits up to
`report_wait` for Prefect to record the run's task runs, to read their attempts);
`report publish` is the writing of its three artifacts; both timed in the drivers by a
wrapper that calls straight through.

Against plain Prefect, same server, same seeds (medians over batches and runs):

{markdown_table(ratio_columns, ratio_rows) if ratio_rows else "(no plain batch)"}

Driver processes peaked at {min(rss, default=0):.0f}-{max(rss, default=0):.0f} MB resident
each. The server's database pool (SQLAlchemy, Prefect's default 5 + 10 overflow) timed out
{sum(b.pool_timeouts for b in batches)} time(s). Check failures: {len(failures)}.
"""
    if failures:
        body += "\n" + "\n".join(f"- {f}" for f in failures[:20]) + "\n"
    if findings:
        body += "\nPrefect's records:\n\n" + "\n".join(f"- {f}" for f in findings) + "\n"
    if warnings:
        body += "\nWarnings about reports or records in the drivers' logs:\n\n" + "\n".join(
            f"- {count} x `{line}`" for line, count in warnings.most_common(8)
        )
    command = (
        f"cd bench && ../.venv/bin/python load.py --runs {args.runs}"
        f" --concurrency {args.concurrency} --processes {args.processes}"
        f" --rounds {args.rounds} --pause {args.pause} --seed {args.seed}"
    )
    write_section("load", "Load: concurrent resilient runs on PostgreSQL", command, body)


if __name__ == "__main__":
    main()
