"""History-fetch throughput from a local Prefect server: a cold read, and a read through the cache.

A temporary Prefect server (`prefect_test_harness`, SQLite) is populated with
`--runs` flow runs of one small flow that maps a plain `@task` over `--tasks`
items: about one item in eleven fails for good, one in seventeen fails its
first attempt and succeeds on its retry, and one flow run in ten fails. Then
`load_history(flow_name, refresh=True)` (cold: every run listed and its task
runs and report artifacts fetched, the cache rewritten) and
`load_history(flow_name)` (through the cache: the recent runs are listed again,
details are fetched only for runs not yet seen finished) are timed in
alternation, `--repeats` times each, after one untimed warm-up call. Rows per
second = (task runs + flow runs) / seconds, medians. The cache lives in a
temporary PREFECT_HOME for the measurement, so nothing is left in ~/.prefect.

    python history_fetch.py [--runs 200] [--tasks 10] [--repeats 5] [--workers 4]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
from _report import markdown_table, show, write_section
from prefect import flow, task, unmapped
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.futures import wait
from prefect.runtime import task_run as current_task_run
from prefect.settings import PREFECT_HOME, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from prefect_resilience.history import load_history

FLOW_NAME = "history-fetch-bench"


@task(retries=1, retry_delay_seconds=0)
def item(run: int, index: int) -> int:
    if (run * 7 + index) % 11 == 0:
        raise ValueError(f"item {index} of run {run} is malformed")
    if (run + 3 * index) % 17 == 0 and current_task_run.run_count == 1:
        raise ConnectionError(f"upstream refused item {index} of run {run}")
    return index


@flow(name=FLOW_NAME)
def mapped(run: int, tasks: int) -> int:
    futures = item.map(unmapped(run), range(tasks))
    wait(futures)
    failed = sum(1 for f in futures if f.state.is_failed())
    if run % 10 == 0:
        raise RuntimeError(f"run {run}: {failed} items failed")
    return failed


def _populate(runs: int, tasks: int, workers: int) -> float:
    """Run the flow `runs` times, `workers` flow runs at a time (each in its own thread)."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        states = list(pool.map(lambda run: mapped(run, tasks, return_state=True), range(runs)))
    if len(states) != runs:
        raise RuntimeError(f"{len(states)} of {runs} flow runs ran")
    return time.perf_counter() - started


def _wait_recorded(expected: int, timeout: float = 120.0) -> float:
    """Prefect 3 records task run states from events; wait until the server has them all."""
    final = TaskRunFilter(
        state=TaskRunFilterState(
            type=TaskRunFilterStateType(any_=["COMPLETED", "FAILED", "CRASHED", "CANCELLED"])
        )
    )
    ours = FlowFilter(name=FlowFilterName(any_=[FLOW_NAME]))
    started = time.perf_counter()
    with get_client(sync_client=True) as client:
        while True:
            last = client.read_task_runs(
                flow_filter=ours, task_run_filter=final, offset=expected - 1, limit=1
            )
            if last:
                return time.perf_counter() - started
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"the server did not record {expected} finished task runs")
            time.sleep(0.5)


def _same(a: pd.DataFrame, b: pd.DataFrame, key: str) -> bool:
    try:
        pd.testing.assert_frame_equal(
            a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
        )
        return True
    except AssertionError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="flow runs to create")
    parser.add_argument("--tasks", type=int, default=10, help="mapped task runs per flow run")
    parser.add_argument("--repeats", type=int, default=5, help="timed reads of each kind")
    parser.add_argument("--workers", type=int, default=4, help="flow runs populated at once")
    parser.add_argument("--verbose", action="store_true", help="keep Prefect's run logs")
    args = parser.parse_args()
    if not args.verbose:  # each failing item would print a traceback
        for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.flows", "prefect.tasks"):
            logging.getLogger(name).setLevel(logging.CRITICAL)

    timings: dict[str, list[float]] = {"cold": [], "cached": []}
    fetched: dict[str, list[int]] = {"cold": [], "cached": []}
    # no telemetry: offline it only logs errors (and on SQLite it competes for the lock)
    with (
        temporary_settings({PREFECT_SERVER_ANALYTICS_ENABLED: False}),
        prefect_test_harness(server_startup_timeout=120),
    ):
        populated = _populate(args.runs, args.tasks, args.workers)
        recorded = _wait_recorded(args.runs * args.tasks)
        with tempfile.TemporaryDirectory() as home, temporary_settings({PREFECT_HOME: home}):
            load = os.getloadavg()[0]
            reference = load_history(FLOW_NAME, refresh=True)  # warm-up: client, first reads
            same = True
            for _ in range(args.repeats):
                for kind in ("cold", "cached"):
                    started = time.perf_counter()
                    history = load_history(FLOW_NAME, refresh=kind == "cold")
                    timings[kind].append(time.perf_counter() - started)
                    fetched[kind].append(history.fetched_flow_runs)
                    same &= _same(history.task_runs, reference.task_runs, "task_run_id")
                    same &= _same(history.flow_runs, reference.flow_runs, "flow_run_id")

    task_rows, flow_rows = len(reference.task_runs), len(reference.flow_runs)
    rows_total = task_rows + flow_rows
    states = reference.task_runs["state_type"].value_counts().to_dict()
    flow_states = reference.flow_runs["state_type"].value_counts().to_dict()
    med = {kind: statistics.median(v) for kind, v in timings.items()}
    columns = ["read", "median s", "min s", "max s", "flow runs with details fetched",
               "rows / s (task + flow runs)", "task runs / s"]  # fmt: skip
    labels = {
        "cold": "cold: load_history(flow, refresh=True)",
        "cached": "cached: load_history(flow)",
    }
    rows = [
        [
            labels[kind],
            f"{med[kind]:.3f}",
            f"{min(timings[kind]):.3f}",
            f"{max(timings[kind]):.3f}",
            "/".join(str(v) for v in sorted(set(fetched[kind]))),
            f"{rows_total / med[kind]:,.0f}",
            f"{task_rows / med[kind]:,.0f}",
        ]
        for kind in ("cold", "cached")
    ]
    ratio = med["cold"] / med["cached"]
    title = f"History fetch: {flow_rows} flow runs, {task_rows} task runs, {args.repeats} reads"
    show(title, columns, rows)
    print(f"cached read {ratio:.1f}x faster than cold; frames identical: {same}")
    print(f"populated in {populated:.1f} s, task runs recorded {recorded:.1f} s later")
    body = (
        f"A temporary Prefect server (`prefect_test_harness`, SQLite) holding {flow_rows} flow "
        f"runs of one flow that maps a plain `@task` over {args.tasks} items "
        f"({task_rows} task runs: {states}; flow runs: {flow_states}; some task runs retried). "
        f"Populating it took {populated:.0f} s ({args.workers} flow runs at a time; not part of "
        "the figures). Each read is timed in "
        f"alternation, {args.repeats} times, after an untimed warm-up read; the table gives "
        "medians. Rows = task runs + flow runs returned (the flow has no resilience reports). "
        "The cache lives in a temporary PREFECT_HOME.\n\n"
        + markdown_table(columns, rows)
        + f"\n\nThrough the cache the read is **{ratio:.1f}x** faster than cold. Every read "
        f"returned the same frames as the first: {'yes' if same else 'NO'}. The cached read "
        "still lists the recent flow runs from the API (from an hour before the latest "
        "finished run it knows, `REFETCH_MARGIN`, which here is every run since all were made "
        "within minutes) and rebuilds the frames from the cache file; it fetches task runs and "
        "reports only for runs it has not seen finished (none here). Both are one process "
        "talking to a local server; a remote API adds its network latency to every call. "
        f"Load average when the reads began: {load:.2f} ({os.cpu_count()} CPUs)."
    )
    write_section(
        "history-fetch",
        "History-fetch throughput, cold and through the cache",
        f"cd bench && ../.venv/bin/python history_fetch.py --runs {args.runs} "
        f"--tasks {args.tasks} --repeats {args.repeats} --workers {args.workers}",
        body,
    )


if __name__ == "__main__":
    main()
