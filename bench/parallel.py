"""BR-WF-541: wall time of 20 independent steps, sequential vs submitted, plain vs resilient.

Each step sleeps 0.2 s. Four variants, each its own flow run, repeated in
interleaved rounds (the order rotates each round) on one Prefect server:
plain `@task` called directly / submitted, `@resilient` (in a `@resilient_flow`)
called directly / submitted. Both flows use the same
`ThreadPoolTaskRunner(max_workers=20)`. The figures are medians over rounds.

    python parallel.py [--runs 7] [--steps 20] [--sleep 0.2]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import _server_busy
from _report import markdown_table, show, write_section
from prefect import flow, task
from prefect.settings import get_current_settings
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.testing.utilities import prefect_test_harness

from prefect_resilience import resilient, resilient_flow

WORKERS = 20
WITHIN = 0.10  # the resilient speed-up within 10% of plain Prefect's (the goal)
FASTER = 0.40  # the design: submitted at least 40% faster (wall time 40% shorter)


def nap(index: int, seconds: float) -> int:
    time.sleep(seconds)
    return index


plain_step = task(nap, name="nap")
resilient_step = resilient(nap, policy="continue", name="nap")
# the tags @resilient puts on its task runs: Prefect makes a concurrency-limit API call
# for every tagged task run, so a plain task with them shows what the tags alone cost
TAGS = sorted(resilient_step.tags)
tagged_step = task(nap, name="nap", tags=TAGS)


def _steps(step: Any, mode: str, steps: int, seconds: float) -> float:
    """Run the steps; return the wall time from the first call to the last result."""
    started = time.perf_counter()
    if mode == "sequential":
        values = [step(i, seconds) for i in range(steps)]
    else:
        futures = [step.submit(i, seconds) for i in range(steps)]
        values = [f.result() for f in futures]
    elapsed = time.perf_counter() - started
    if values != list(range(steps)):
        raise RuntimeError(f"steps returned {values}")
    return elapsed


@flow(name="parallel-plain", task_runner=ThreadPoolTaskRunner(max_workers=WORKERS))
def plain_run(mode: str, steps: int, seconds: float) -> float:
    return _steps(plain_step, mode, steps, seconds)


@flow(name="parallel-plain-tags", task_runner=ThreadPoolTaskRunner(max_workers=WORKERS))
def tagged_run(mode: str, steps: int, seconds: float) -> float:
    return _steps(tagged_step, mode, steps, seconds)


@resilient_flow(name="parallel-resilient", task_runner=ThreadPoolTaskRunner(max_workers=WORKERS))
def resilient_run(mode: str, steps: int, seconds: float) -> float:
    return _steps(resilient_step, mode, steps, seconds)


KINDS = ("plain", "plain+tags", "resilient")
VARIANTS: list[tuple[str, str, Callable[..., float]]] = [
    ("plain", "sequential", plain_run),
    ("plain", "submitted", plain_run),
    ("plain+tags", "sequential", tagged_run),
    ("plain+tags", "submitted", tagged_run),
    ("resilient", "sequential", resilient_run),
    ("resilient", "submitted", resilient_run),
]


def measure(runs: int, steps: int, seconds: float) -> dict[tuple[str, str], dict[str, list[float]]]:
    """Per variant: wall time of the steps (inside the flow) and of the whole flow call."""
    timings: dict[tuple[str, str], dict[str, list[float]]] = {
        (kind, mode): {"steps": [], "flow": [], "busy": []} for kind, mode, _ in VARIANTS
    }
    shift = itertools.count()
    for _ in range(runs):
        k = next(shift) % len(VARIANTS)
        for kind, mode, run in VARIANTS[k:] + VARIANTS[:k]:
            busy = _server_busy.total()
            started = time.perf_counter()
            inside = run(mode=mode, steps=steps, seconds=seconds)
            timings[(kind, mode)]["flow"].append(time.perf_counter() - started)
            timings[(kind, mode)]["steps"].append(inside)
            timings[(kind, mode)]["busy"].append(_server_busy.total() - busy)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sleep", type=float, default=0.2, help="seconds each step sleeps")
    parser.add_argument("--verbose", action="store_true", help="keep Prefect's run logs")
    args = parser.parse_args()
    if not args.verbose:  # every task run logs a line; quiet for every variant alike
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).setLevel(logging.WARNING)
    default_workers = ThreadPoolTaskRunner()._max_workers  # Prefect keeps it private
    workers_setting = get_current_settings().tasks.runner.thread_pool_max_workers
    with prefect_test_harness(server_startup_timeout=120):
        measure(1, args.steps, args.sleep)  # warm-up
        busy_before = _server_busy.snapshot()
        timings = measure(args.runs, args.steps, args.sleep)
        busy = sum((_server_busy.busy - busy_before).values())
        busy_by_request = _server_busy.describe(since=busy_before)

    med = {key: {k: statistics.median(v) for k, v in t.items()} for key, t in timings.items()}
    best = {key: min(t["steps"]) for key, t in timings.items()}
    hit = {key: sum(1 for b in t["busy"] if b) for key, t in timings.items()}
    speedup = {
        kind: med[(kind, "sequential")]["steps"] / med[(kind, "submitted")]["steps"]
        for kind in KINDS
    }
    flow_speedup = {
        kind: med[(kind, "sequential")]["flow"] / med[(kind, "submitted")]["flow"] for kind in KINDS
    }
    columns = [
        "variant",
        "sequential s",
        "submitted s",
        "speed-up",
        "time saved",
        "design > 40% faster",
        "flow run: seq s / sub s / speed-up",
        "best round: seq s / sub s / speed-up",
        "rounds with a 503: seq / sub",
    ]
    rows = []
    for kind in KINDS:
        seq, sub = med[(kind, "sequential")], med[(kind, "submitted")]
        saved = 1 - sub["steps"] / seq["steps"]
        rows.append(
            [
                kind,
                f"{seq['steps']:.3f}",
                f"{sub['steps']:.3f}",
                f"{speedup[kind]:.2f}x",
                f"{saved:.1%}",
                "met" if saved > FASTER else "MISSED",
                f"{seq['flow']:.3f} / {sub['flow']:.3f} / {flow_speedup[kind]:.2f}x",
                f"{best[(kind, 'sequential')]:.3f} / {best[(kind, 'submitted')]:.3f} /"
                f" {best[(kind, 'sequential')] / best[(kind, 'submitted')]:.2f}x",
                f"{hit[(kind, 'sequential')]} / {hit[(kind, 'submitted')]} of {args.runs}",
            ]
        )
    summary_columns = [
        "measure",
        "resilient / plain",
        "goal >= 0.90 (within 10%)",
        "resilient / plain+tags",
    ]
    best_speedup = {kind: best[(kind, "sequential")] / best[(kind, "submitted")] for kind in KINDS}
    summary_rows = []
    for label, ups in (
        ("steps", speedup),
        ("whole flow run", flow_speedup),
        ("steps, best rounds", best_speedup),
    ):
        ratio = ups["resilient"] / ups["plain"]
        summary_rows.append(
            [
                f"speed-up of the {label}",
                f"{ratio:.3f}",
                "met" if ratio >= 1 - WITHIN else "MISSED",
                f"{ups['resilient'] / ups['plain+tags']:.3f}",
            ]
        )
    title = f"{args.steps} steps x {args.sleep}s, median of {args.runs} interleaved rounds"
    show(title, columns, rows)
    show("resilient speed-up against plain Prefect's", summary_columns, summary_rows)
    print(f"server 503s during the rounds: {busy} ({busy_by_request})")

    spread = "; ".join(
        f"{kind} {mode} {min(t['steps']):.3f}-{max(t['steps']):.3f}"
        for (kind, mode), t in timings.items()
    )
    default = (
        f"`sys.maxsize` ({default_workers}), i.e. no cap"
        if default_workers == sys.maxsize
        else str(default_workers)
    )
    body = f"""{args.steps} independent steps that each sleep {args.sleep} s, run sequentially
(direct calls) and submitted (`.submit()` for all, then `.result()` of each), with a plain
`@task` in a plain `@flow`, with a plain `@task` carrying the tags `@resilient` adds
({", ".join(TAGS)}) in a plain `@flow` (`plain+tags`), and with
`@resilient(policy="continue")` in a `@resilient_flow` (no workflow policy). Each variant
is its own flow run; {args.runs} rounds, interleaved, the order rotating each round, after
one warm-up round; the figures are medians. All flows set
`task_runner=ThreadPoolTaskRunner(max_workers={WORKERS})`, the same for every variant. On
this machine (2 cores) `ThreadPoolTaskRunner()`'s default `max_workers` is {default}:
`PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS` is {workers_setting or "unset"}, and unset
Prefect uses `sys.maxsize`, so the default would also run all {args.steps} steps at once.
Prefect's run loggers are set to WARNING for every variant alike.

The step times are measured inside the flow, from the first call to the last result;
"flow run" is the whole call of the flow from outside (flow run creation, and for the
resilient flow its end of run bookkeeping: reading attempts back from the API and writing
the report artifacts). Speed-up = sequential / submitted; time saved = 1 - submitted /
sequential, against the design's "> 40% faster".

{markdown_table(columns, rows)}

{markdown_table(summary_columns, summary_rows)}

Range of the step times over the rounds (s): {spread}.

The test server answered `503` (SQLite busy) {busy} times during the measured rounds
({busy_by_request}); Prefect's client retries each after a back-off of 2 s or
more, so a 503 on a step's path shows as seconds of wall time, and whether a round is hit
is luck: `rounds with a 503` counts them per variant, and `best round` (the fastest round
of each variant) shows the times without them. The medians decide the verdicts; a 503 in
the sequential arm inflates a speed-up as much as one in the submitted arm deflates it,
so the best-rounds row is the comparison without the back-offs.
"""
    command = (
        f"cd bench && ../.venv/bin/python parallel.py --runs {args.runs}"
        f" --steps {args.steps} --sleep {args.sleep}"
    )
    write_section("parallel", "Parallel steps: sequential vs submitted (BR-WF-541)", command, body)


if __name__ == "__main__":
    main()
