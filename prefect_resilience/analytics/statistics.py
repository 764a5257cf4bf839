"""How each step behaves: failure rates with their uncertainty, durations, what retries buy.

Only finished task runs count (state type COMPLETED, FAILED, CRASHED or
CANCELLED): a run still RUNNING, PENDING, SCHEDULED or PAUSED has no outcome
yet, and counting it would make every step look healthier while it runs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import (
    CANCELLED,
    COMPLETED,
    FAILED_STATES,
    FINISHED_STATES,
    durations,
    rate,
    require_columns,
    state_types,
    wilson_interval,
    z_value,
)

STEP_STATISTICS_COLUMNS: dict[str, str] = {
    "runs": "int64",
    "failures": "int64",
    "cancelled": "int64",
    "failure_rate": "float64",
    "failure_rate_low": "float64",
    "failure_rate_high": "float64",
    "attempts_mean": "float64",
    "duration_n": "int64",
    "p50_s": "float64",
    "p95_s": "float64",
    "wasted_retry_s": "float64",
    "retried_runs": "int64",
    "recovered_by_retry": "int64",
}

RETRY_RECOVERY_COLUMNS: dict[str, str] = {
    "reached": "int64",
    "succeeded": "int64",
    "success_rate": "float64",
    "success_rate_low": "float64",
    "success_rate_high": "float64",
}

_TASK_COLUMNS = ("task_name", "state_type", "run_count")


def _finished(task_runs: pd.DataFrame) -> pd.DataFrame:
    """The finished runs, with normalised state, attempts and duration columns."""
    state = state_types(task_runs)
    keep = state.isin(FINISHED_STATES).fillna(False).to_numpy(dtype=bool)
    attempts = pd.to_numeric(task_runs["run_count"], errors="coerce").astype(float)
    frame = pd.DataFrame(
        {
            "task_name": task_runs["task_name"],
            "state": state,
            "attempts": attempts.where(attempts >= 0),
        },
        index=task_runs.index,
    )
    if "duration_s" in task_runs.columns:
        frame["duration"] = durations(task_runs)
    frame = frame[keep]
    frame["failed"] = frame["state"].isin(FAILED_STATES).astype(bool)
    frame["completed"] = (frame["state"] == COMPLETED).astype(bool)
    frame["cancelled"] = (frame["state"] == CANCELLED).astype(bool)
    return frame


def _typed(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    return frame.reindex(columns=list(columns)).astype(columns)


def step_statistics(task_runs: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per step (task name): how often it fails, how long it takes, what its retries cost.

    Input `task_runs`, one row per Prefect task run; the columns read are
    `task_name` (str), `state_type` (str: COMPLETED, FAILED, CRASHED,
    CANCELLED, RUNNING, PENDING, SCHEDULED, PAUSED), `run_count` (int, attempts;
    0 if never ran), `start_time` and `end_time` (UTC datetimes, NaT when
    unknown) and `duration_s` (float seconds of total run time over all
    attempts, NaN when unknown). A missing column raises a ValueError naming it.

    Returns a frame indexed by `task_name`, one row per step with a finished run:

    - `runs`: finished runs (COMPLETED, FAILED, CRASHED, CANCELLED); runs in
      progress are left out everywhere. `failures`: FAILED or CRASHED runs;
      `cancelled`: CANCELLED runs (finished, in `runs`, not failures).
    - `failure_rate` = failures / runs, with `failure_rate_low`/`_high`, its
      Wilson score interval at `confidence`; n is `runs`.
    - `attempts_mean`: mean `run_count` of the finished runs that ran (run_count >= 1).
    - `duration_n`: finished runs with a known duration (n of the two quantiles);
      `p50_s`, `p95_s`: their median and 95th percentile (linear interpolation).
      A duration is unknown when NaN, negative, or when `end_time < start_time`.
    - `wasted_retry_s`: an estimate of the seconds spent in attempts that did not
      succeed. Attempts are assumed to be of equal length, so a run with r
      attempts that COMPLETED (or was CANCELLED) wasted duration * (r - 1) / r,
      and a FAILED or CRASHED run wasted all of its duration. Runs whose
      duration is unknown add nothing.
    - `retried_runs`: finished runs with run_count > 1; `recovered_by_retry`:
      those of them that COMPLETED (a retry saved them).
    """
    require_columns(
        task_runs, (*_TASK_COLUMNS, "start_time", "end_time", "duration_s"), "task_runs"
    )
    z_value(confidence)  # a bad confidence is an error even when there is nothing to count
    runs = _finished(task_runs)
    if runs.empty:
        return _typed(pd.DataFrame(index=pd.Index([], name="task_name")), STEP_STATISTICS_COLUMNS)
    attempts = runs["attempts"]
    retried = attempts > 1
    failed_share = np.where(runs["failed"], 1.0, np.where(retried, (attempts - 1) / attempts, 0.0))
    runs = runs.assign(
        wasted=runs["duration"] * failed_share,
        ran=attempts.where(attempts >= 1),
        retried=retried,
        recovered=retried & runs["completed"],
    )
    grouped = runs.groupby("task_name", sort=True)
    result = grouped.agg(
        runs=("state", "size"),
        failures=("failed", "sum"),
        cancelled=("cancelled", "sum"),
        attempts_mean=("ran", "mean"),
        duration_n=("duration", "count"),
        p50_s=("duration", "median"),
        wasted_retry_s=("wasted", "sum"),
        retried_runs=("retried", "sum"),
        recovered_by_retry=("recovered", "sum"),
    )
    result["p95_s"] = grouped["duration"].quantile(0.95)
    result["failure_rate"] = rate(result["failures"], result["runs"])
    low, high = wilson_interval(result["failures"], result["runs"], confidence)
    result["failure_rate_low"], result["failure_rate_high"] = low, high
    return _typed(result, STEP_STATISTICS_COLUMNS)


def retry_recovery(task_runs: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per step and attempt k: of the runs that reached attempt k, the share that succeeded at k.

    Input `task_runs` (see `step_statistics`); the columns read are `task_name`,
    `state_type` and `run_count`. A finished run with run_count = r reached
    attempts 1..r and failed attempts 1..r-1; attempt r succeeded if the run
    COMPLETED and failed if it FAILED or CRASHED. A CANCELLED run's last attempt
    has no outcome and is left out (its earlier attempts did fail). Runs in
    progress, runs that never ran (run_count 0) and non-integer run counts are
    left out.

    Returns a frame indexed by (`task_name`, `attempt`), attempts 1 up to the
    step's largest run_count, with `reached` (n: runs whose attempt k has an
    outcome), `succeeded`, `success_rate` = succeeded / reached and its Wilson
    interval `success_rate_low`/`_high` at `confidence` (NaN when reached is 0).
    So "the 2nd attempt rescues 60% of the runs that get there" is read off row
    (step, 2).
    """
    require_columns(task_runs, _TASK_COLUMNS, "task_runs")
    z_value(confidence)
    runs = _finished(task_runs)
    attempts = runs["attempts"]
    runs = runs[(attempts >= 1) & (attempts % 1 == 0)].assign(
        attempts=lambda f: f["attempts"].astype("int64"),
        decided=lambda f: ~f["cancelled"],
    )
    index = pd.MultiIndex.from_arrays([[], []], names=["task_name", "attempt"])
    if runs.empty:
        return _typed(pd.DataFrame(index=index), RETRY_RECOVERY_COLUMNS)
    by_attempts = runs.groupby(["task_name", "attempts"], sort=True).agg(
        ended=("decided", "size"), decided=("decided", "sum"), succeeded=("completed", "sum")
    )
    parts = []
    for task_name, table in by_attempts.groupby(level="task_name", sort=True):
        table = table.droplevel("task_name")
        table = table.reindex(range(1, int(table.index.max()) + 1), fill_value=0)
        went_on = table["ended"][::-1].cumsum()[::-1].shift(-1, fill_value=0)  # runs with r > k
        part = pd.DataFrame(
            {"reached": went_on + table["decided"], "succeeded": table["succeeded"]}
        )
        part.index = pd.MultiIndex.from_product(
            [[task_name], table.index], names=["task_name", "attempt"]
        )
        parts.append(part)
    result = pd.concat(parts)
    result["success_rate"] = rate(result["succeeded"], result["reached"])
    low, high = wilson_interval(result["succeeded"], result["reached"], confidence)
    result["success_rate_low"], result["success_rate_high"] = low, high
    return _typed(result, RETRY_RECOVERY_COLUMNS)
