"""Cost of the health bookkeeping: one outcome update and one health reading, at 10,000 steps.

Pure: no Prefect server. `HealthLedger.add` / `.health()` / `.score`, and the
flow run's `RunTracker.record` / `.health()` (flow_run_id=None), over 10,000
pre-made outcomes with a realistic mix of statuses. Two naming schemes: 20 task
names repeated (a loop or map over a few tasks) and 10,000 distinct names.

    python health_bookkeeping.py [--steps 10000] [--runs 5] [--readings 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import prefect.events
from _report import markdown_table, show, write_section
from prefect.testing.utilities import prefect_test_harness

from prefect_resilience import (
    FailureAction,
    FailureImpact,
    FailurePolicy,
    StepOutcome,
    StepStatus,
    WorkflowPolicy,
)
from prefect_resilience.health import HealthLedger
from prefect_resilience.tracker import RunTracker

# thresholds that are checked after every outcome but do not fire on this mix: a run
# that was stopped would start no more steps, so 10,000 outcomes mean a live run
POLICY = WorkflowPolicy(
    name="bench", max_partial_failures=100_000, critical_step_ratio=0.5, termination_threshold=0.5
)
MIX = {
    StepStatus.SUCCEEDED: 0.82,
    StepStatus.RECOVERED: 0.06,
    StepStatus.DEGRADED: 0.05,
    StepStatus.TOLERATED: 0.06,
    StepStatus.FAILED: 0.01,
}
IMPACTS = [FailureImpact.MAJOR, FailureImpact.MINOR, FailureImpact.NEGLIGIBLE]


def make_outcomes(count: int, distinct_names: bool, seed: int = 7) -> list[StepOutcome]:
    rng = random.Random(seed)
    statuses, weights = list(MIX), list(MIX.values())
    finished = datetime.now(UTC)
    outcomes = []
    for i in range(count):
        status = rng.choices(statuses, weights)[0]
        critical = rng.random() < 0.10
        fields: dict[str, Any] = {
            "name": f"step_{i:05d}" if distinct_names else f"task_{i % 20:02d}",
            "task_run_id": uuid.UUID(int=rng.getrandbits(128)),
            "status": status,
            "policy": rng.choice([FailurePolicy.CONTINUE, FailurePolicy.PARTIAL_SUCCESS]),
            "critical": critical,
            "impact": FailureImpact.CRITICAL if critical else rng.choice(IMPACTS),
            "attempts": 1 if status is StepStatus.SUCCEEDED else 3,
            "duration": rng.uniform(0.01, 2.0),
            "finished": finished,
        }
        if status is StepStatus.DEGRADED:
            fields |= {
                "policy": FailurePolicy.GRACEFUL_DEGRADATION,
                "action": FailureAction.FALLBACK,
                "fallback_used": "cached_result",
                "reason": "ConnectionError; 2 retries exhausted; cached_result succeeded",
            }
        if status in (StepStatus.DEGRADED, StepStatus.TOLERATED, StepStatus.FAILED):
            fields |= {"exception_type": "ConnectionError", "exception_message": "refused"}
        if status is StepStatus.TOLERATED:
            continues = fields["policy"] is FailurePolicy.CONTINUE
            fields |= {
                "action": FailureAction.CONTINUE if continues else FailureAction.DEGRADE,
                "reason": "ConnectionError; 2 retries exhausted; yields the default",
            }
        if status is StepStatus.FAILED:
            fields |= {"reason": "cancelled"}
        outcomes.append(StepOutcome(**fields))
    return outcomes


# --- the two bookkeepers ---------------------------------------------------------------


class Ledger:
    label = "HealthLedger"

    def __init__(self) -> None:
        self.book = HealthLedger(POLICY)
        self.update = self.book.add
        self.health = self.book.health

    @property
    def stopped_by(self) -> Any:
        return self.book.stopped_by

    def score(self) -> float:
        return self.book.score


class Tracker:
    label = "RunTracker"

    def __init__(self) -> None:
        self.book = RunTracker(POLICY, flow_name="bench", flow_run_id=None)
        self.update = self.book.record
        self.health = self.book.health

    @property
    def stopped_by(self) -> Any:
        return self.book.ledger.stopped_by

    score = None


# RunTracker.record emits a Prefect event for every degraded or tolerated step, also with
# flow_run_id=None; with no server configured Prefect would start a temporary one to take
# them. This benchmark has no server: emission is replaced by a counter (the tracker's own
# code still builds each event's payload), unless --real-events is given.
_events: Counter[str] = Counter()
_real_emit = prefect.events.emit_event


def _count_event(event: str, **_: Any) -> None:
    _events[event] += 1


def _count_and_emit(event: str, **kwargs: Any) -> Any:
    _events[event] += 1
    return _real_emit(event=event, **kwargs)


# --- timing ------------------------------------------------------------------------------


def time_updates(make: Callable[[], Any], outcomes: list[StepOutcome]) -> tuple[Any, list[float]]:
    """Feed every outcome to a fresh bookkeeper; seconds per update, in order."""
    book = make()
    update, clock = book.update, time.perf_counter
    times = []
    for outcome in outcomes:
        start = clock()
        update(outcome)
        times.append(clock() - start)
    return book, times


def time_reading(read: Callable[[], Any], calls: int, batch: int) -> float:
    """Median seconds per call, over batches of `batch` calls."""
    per_call = []
    for _ in range(max(1, calls // batch)):
        start = time.perf_counter()
        for _ in range(batch):
            read()
        per_call.append((time.perf_counter() - start) / batch)
    return statistics.median(per_call)


def measure(
    make: Callable[[], Any], outcomes: list[StepOutcome], runs: int, readings: int
) -> dict[str, float]:
    means, first, last, fired = [], [], [], set()
    book_small = book = None
    for _ in range(runs):
        book, times = time_updates(make, outcomes)
        means.append(sum(times) / len(times))
        first.append(statistics.median(times[:1000]))
        last.append(statistics.median(times[-1000:]))
        fired.add(book.stopped_by)
    book_small, _ = time_updates(make, outcomes[: min(1000, len(outcomes))])
    result = {
        "update_mean": statistics.median(means),
        "update_first": statistics.median(first),
        "update_last": statistics.median(last),
        "health_small": time_reading(book_small.health, readings, 20),
        "health": time_reading(book.health, readings, 20),
        "score": time_reading(book.score, readings * 10, 1000) if book.score else float("nan"),
        "fired": fired,
        "final": book.health(),
        "failing_names": len(getattr(book.book, "ledger", book.book)._failures_by_step),
    }
    return result


def _us(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1e6:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5, help="repetitions of the 10,000 updates")
    parser.add_argument("--readings", type=int, default=5000, help="health() calls timed")
    parser.add_argument(
        "--real-events",
        action="store_true",
        help="let RunTracker emit its events for real, to a temporary Prefect server",
    )
    args = parser.parse_args()
    # prefect_resilience.flow._emit imports prefect.events.emit_event at each call
    prefect.events.emit_event = _count_and_emit if args.real_events else _count_event

    results: dict[tuple[str, str], dict[str, Any]] = {}
    schemes = {"20 names": False, f"{args.steps:,} names": True}
    with contextlib.ExitStack() as stack:
        if args.real_events:  # a temporary server, as the other benchmarks use, to take them
            stack.enter_context(prefect_test_harness(server_startup_timeout=120))
        gc.collect()
        for scheme, distinct in schemes.items():
            outcomes = make_outcomes(args.steps, distinct)
            for kind in (Ledger, Tracker):
                time_updates(kind, outcomes)  # warm-up
                results[(kind.label, scheme)] = r = measure(
                    kind, outcomes, args.runs, args.readings
                )
                _events.clear()
                time_updates(kind, outcomes)
                r["events"] = sum(_events.values())

    statuses = Counter(o.status.value for o in make_outcomes(args.steps, False))
    columns = [
        "bookkeeping",
        "step names",
        "update µs (mean of all)",
        "update µs (median, first 1,000)",
        "update µs (median, last 1,000)",
        "health() µs at 1,000",
        f"health() µs at {args.steps:,}",
        f"score µs at {args.steps:,}",
    ]
    rows = []
    for (label, scheme), r in results.items():
        rows.append(
            [
                label,
                scheme,
                _us(r["update_mean"]),
                _us(r["update_first"]),
                _us(r["update_last"]),
                _us(r["health_small"]),
                _us(r["health"]),
                _us(r["score"]),
            ]
        )
    show(f"Health bookkeeping at {args.steps:,} steps (median of {args.runs} runs)", columns, rows)
    fired = {str(f) for r in results.values() for f in r["fired"] if f is not None}
    final = results[("HealthLedger", "20 names")]["final"]
    tracker_events = results[("RunTracker", "20 names")]["events"]
    print(
        f"rules fired: {sorted(fired) or 'none'}; final health {final.health_score:.3f};"
        f" events the tracker emitted per {args.steps:,} updates (flow_run_id=None):"
        f" {tracker_events}"
    )

    events_note = (
        "`RunTracker.record` was left to emit its events for real (`--real-events`), to a"
        " temporary Prefect server (`prefect_test_harness`); the cost measured is Prefect's"
        " `emit_event` putting the event on its events worker's queue, not the sending."
        if args.real_events
        else "`RunTracker.record` emits a Prefect event for every degraded or tolerated step"
        f" of a flow run; with `flow_run_id=None` it emitted {tracker_events} per"
        f" {args.steps:,} updates here. This benchmark is pure, so"
        " `prefect.events.emit_event` is replaced by a counter. Run with"
        " `--real-events` to send them to a temporary server."
    )
    mix = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
    failing = {scheme: results[("HealthLedger", scheme)]["failing_names"] for scheme in schemes}
    growth = (
        "An update does not depend on how many steps came before. A `health()` reading"
        " builds its recommendations from the most frequent failures, so it grows with the"
        " k distinct failing step names ("
        + ", ".join(f"k = {v:,} with {k}" for k, v in failing.items())
        + " at the end); `score` alone is constant."
    )
    body = f"""Pure, no Prefect server. {args.steps:,} pre-made `StepOutcome`s ({mix}; 10%
critical, impacts mixed) are fed one by one to a fresh `HealthLedger(policy).add` and to a
fresh `RunTracker(policy, flow_name="bench", flow_run_id=None).record`, the bookkeeping a
`@resilient_flow` run does for each step; each update is timed on its own
(`time.perf_counter`, which adds about 0.1 µs), {args.runs} times, median over the
repetitions. Readings are timed at 1,000 and at {args.steps:,} steps, in batches (20
`health()` calls, 1,000 `score` reads), median of the batches, {args.readings:,}
`health()` calls in all. The policy is `WorkflowPolicy(max_partial_failures=100000,
critical_step_ratio=0.5, termination_threshold=0.5)`: every rule is checked after every
outcome and none fires (rules fired: {sorted(fired) or "none"}), as in a run still going.
Two naming schemes: 20 task names repeated (a loop or a map over a few tasks), and
{args.steps:,} distinct names (every step its own task).

{markdown_table(columns, rows)}

{growth}

{events_note}
"""
    command = (
        f"cd bench && ../.venv/bin/python health_bookkeeping.py --steps {args.steps}"
        f" --runs {args.runs} --readings {args.readings}"
        + (" --real-events" if args.real_events else "")
    )
    write_section("health-bookkeeping", "Health bookkeeping cost at 10,000 steps", command, body)


if __name__ == "__main__":
    main()
