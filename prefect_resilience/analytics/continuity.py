"""Business continuity: how often runs deliver, how fast a flow recovers, which functions are up.

Flow-run rates count finished flow runs only (COMPLETED, FAILED, CRASHED,
CANCELLED). A partial success is a COMPLETED flow run whose state name is
"PartialSuccess": it counts as completed, and is also counted on its own.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pandas as pd

from ._common import (
    ALL,
    COMPLETED,
    FINISHED_STATES,
    PARTIAL_SUCCESS,
    names,
    rate,
    require_columns,
    state_types,
    utc,
)

CRITICAL_RULES: frozenset[str] = frozenset({"critical_step_ratio", "termination_threshold"})
"""Termination rules that fire only because critical steps failed.

`critical_step_ratio` stops a run when too few critical steps delivered and
`termination_threshold` when critical failures exceed a share of the steps.
`fail_fast` is not among them: it fires for any fail_fast step, critical or
not; nor are `max_partial_failures` (any step) and the low-health rules.
"""

CONTINUITY_COLUMNS: dict[str, str] = {
    "n_finished": "int64",
    "completion_rate": "float64",
    "partial_success_rate": "float64",
    "termination_rate": "float64",
    "n_reported": "int64",
    "critical_failure_rate": "float64",
    "n_recoveries": "int64",
    "mttr_s": "float64",
    "open_incidents": "int64",
}

UPTIME_COLUMNS: dict[str, str] = {
    "n_reports": "int64",
    "working": "int64",
    "degraded": "int64",
    "tolerated": "int64",
    "unavailable": "int64",
    "working_share": "float64",
    "working_or_degraded_share": "float64",
}

_REPORT_LISTS = ("working", "tolerated", "degraded", "unavailable")
"""Report lists, least to most severe (the report's own ranking of a function's state)."""


def _one_per_run(reports: pd.DataFrame) -> pd.DataFrame:
    """Reports keyed by flow run id as text; a run reported twice keeps its last report."""
    reports = reports.assign(flow_run_id=reports["flow_run_id"].astype(str))
    return reports.drop_duplicates("flow_run_id", keep="last")


def continuity_metrics(
    flow_runs: pd.DataFrame,
    reports: pd.DataFrame | None = None,
    by: str | None = "flow_name",
    critical_rules: Collection[str] = CRITICAL_RULES,
) -> pd.DataFrame:
    """Completion, partial success, termination and critical failure rates, and recovery time.

    Input `flow_runs`, one row per flow run; the columns read are
    `flow_run_id`, `flow_name`, `state_type`, `state_name`, `start_time`,
    `end_time` (UTC, NaT when unknown), and `by` when it names another column.
    Optional `reports`, one row per reported flow run; the columns read are
    `flow_run_id`, `overall_status` ("completed", "partial_success",
    "terminated", "failed", "crashed") and `stopped_by` (a termination rule or
    None). A missing column raises a ValueError naming it.

    One row per `by` group with a finished run (runs whose `by` value is
    missing are left out); when `by` is None, a single row "all", which has
    zero counts and NaN rates when no run has finished:

    - `n_finished`: finished flow runs, the n of the next three rates.
    - `completion_rate`: COMPLETED runs (PartialSuccess included) / n_finished.
    - `partial_success_rate`: COMPLETED runs named PartialSuccess / n_finished.
    - `termination_rate`: runs that were terminated / n_finished. A run with a
      report was terminated when its overall_status is "terminated"; a run
      without one (no reports given, or none for that run) when its state
      type is FAILED, the plain-Prefect reading of a stopped run.
    - `n_reported`: finished runs with a report, the n of
      `critical_failure_rate`: runs whose report's `stopped_by` is one of
      `critical_rules` (default: critical_step_ratio, termination_threshold),
      over n_reported. NaN when no run has a report: unreported runs are
      unknown, not free of critical failures.
    - `n_recoveries` and `mttr_s`: an incident is a streak of finished runs
      that did not complete (FAILED, CRASHED, CANCELLED), taken in order of
      start time within each flow (within each `by` group when `by` is given);
      its recovery time runs from the end of its first run to the end of the
      next COMPLETED run (PartialSuccess included, as for completion); a
      missing end falls back to the run's start. mttr_s is their mean over
      the n_recoveries incidents that recovered with a known, non-negative
      time; NaN when none did.
    - `open_incidents`: flows whose latest finished run did not complete.

    Runs in progress are left out everywhere.
    """
    flow_columns = ["flow_run_id", "flow_name", "state_type", "state_name", "start_time"]
    flow_columns.append("end_time")
    if by is not None and by not in flow_columns:
        flow_columns.append(by)
    require_columns(flow_runs, flow_columns, "flow_runs")
    if reports is not None:
        require_columns(reports, ("flow_run_id", "overall_status", "stopped_by"), "reports")
    state = state_types(flow_runs)
    runs = pd.DataFrame(
        {
            "flow_run_id": flow_runs["flow_run_id"].astype(str),
            "group": flow_runs[by] if by is not None else ALL,
            "streak": flow_runs[by] if by is not None else flow_runs["flow_name"],
            "completed": (state == COMPLETED).fillna(False).astype(bool),
            "start": utc(flow_runs["start_time"]),
            "end": utc(flow_runs["end_time"]),
        }
    )
    runs["partial"] = runs["completed"] & (
        flow_runs["state_name"].astype("string") == PARTIAL_SUCCESS
    ).fillna(False).to_numpy(dtype=bool)
    runs["failed"] = (state == "FAILED").fillna(False).to_numpy(dtype=bool)
    runs = runs[state.isin(FINISHED_STATES).fillna(False).to_numpy(dtype=bool)]

    if reports is not None and len(reports):
        reported = _one_per_run(reports).set_index("flow_run_id")
        status = runs["flow_run_id"].map(reported["overall_status"])
        stopped_by = runs["flow_run_id"].map(reported["stopped_by"])
        has_report = runs["flow_run_id"].isin(reported.index)
    else:
        status = stopped_by = pd.Series(None, index=runs.index, dtype=object)
        has_report = pd.Series(False, index=runs.index)
    runs["reported"] = has_report.astype(bool)
    runs["terminated"] = np.where(
        runs["reported"], (status == "terminated").fillna(False), runs["failed"]
    ).astype(bool)
    runs["critical"] = runs["reported"] & stopped_by.isin(list(critical_rules)).astype(bool)

    if by is None:
        groups = pd.Index([ALL])
    else:
        groups = pd.Index(runs["group"].dropna().unique(), name=by).sort_values()
    counted = runs.groupby("group", sort=True).agg(
        n_finished=("completed", "size"),
        completed=("completed", "sum"),
        partial=("partial", "sum"),
        terminated=("terminated", "sum"),
        n_reported=("reported", "sum"),
        critical=("critical", "sum"),
    )
    result = counted.reindex(groups, fill_value=0)
    result["completion_rate"] = rate(result["completed"], result["n_finished"])
    result["partial_success_rate"] = rate(result["partial"], result["n_finished"])
    result["termination_rate"] = rate(result["terminated"], result["n_finished"])
    result["critical_failure_rate"] = rate(result["critical"], result["n_reported"])

    incidents = _incidents(runs)
    recovered = incidents.dropna(subset=["seconds"])
    result["n_recoveries"] = (
        recovered.groupby("group")["seconds"].size().reindex(groups, fill_value=0)
    )
    result["mttr_s"] = recovered.groupby("group")["seconds"].mean().reindex(groups)
    open_now = incidents[incidents["open"]].groupby("group")["streak"].nunique()
    result["open_incidents"] = open_now.reindex(groups, fill_value=0)
    return result.reindex(columns=list(CONTINUITY_COLUMNS)).astype(CONTINUITY_COLUMNS)


def _incidents(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per incident: its group, streak key, recovery seconds (NaN if none) and open flag."""
    timed = runs.assign(
        order=runs["start"].fillna(runs["end"]), moment=runs["end"].fillna(runs["start"])
    )
    timed = timed[timed["order"].notna()].sort_values(["order", "flow_run_id"], kind="stable")
    rows: list[dict[str, object]] = []
    for streak, flow in timed.groupby("streak", sort=False):
        began = None
        group = flow["group"].iloc[0]
        for completed, moment in zip(flow["completed"], flow["moment"], strict=True):
            if not completed and began is None:
                began = moment
            elif completed and began is not None:
                seconds = (moment - began).total_seconds()
                rows.append(
                    {
                        "group": group,
                        "streak": streak,
                        "seconds": seconds if seconds >= 0 else np.nan,
                        "open": False,
                    }
                )
                began = None
        if began is not None:
            rows.append({"group": group, "streak": streak, "seconds": np.nan, "open": True})
    return pd.DataFrame(rows, columns=["group", "streak", "seconds", "open"]).astype(
        {"seconds": float, "open": bool}
    )


def function_uptime(reports: pd.DataFrame) -> pd.DataFrame:
    """Per function (task name): in what share of the reports it was working.

    Input `reports`, one row per reported flow run; the columns read are
    `flow_run_id` and the lists of function names `working`, `degraded`,
    `tolerated` and `unavailable` (None or NaN read as empty). A missing
    column raises a ValueError naming it. A run reported twice counts once
    (its last report).

    `n_reports` (the n) is the number of reports that name the function; a
    report that does not (the run never reached it) says nothing about it.
    A function named in several lists of one report takes the worst:
    unavailable over degraded over tolerated over working, as the report does.

    Two shares, no half credits: `working_share` = working / n_reports, and
    `working_or_degraded_share` = (working + degraded) / n_reports, since a
    fallback delivered a result when degraded (`StepStatus.delivered`). A
    tolerated function failed and its default was used, so it is not up.
    """
    require_columns(reports, ("flow_run_id", *_REPORT_LISTS), "reports")
    reports = _one_per_run(reports).reset_index(drop=True)
    parts = []
    for severity, column in enumerate(_REPORT_LISTS):
        listed = reports[column].map(names).explode().dropna()
        parts.append(
            pd.DataFrame({"report": listed.index, "function": listed.to_numpy(), "rank": severity})
        )
    long = pd.concat(parts, ignore_index=True)
    if long.empty:
        return (
            pd.DataFrame(index=pd.Index([], name="function"))
            .reindex(columns=list(UPTIME_COLUMNS))
            .astype(UPTIME_COLUMNS)
        )
    worst = long.groupby(["report", "function"])["rank"].max().reset_index()
    worst["state"] = np.asarray(_REPORT_LISTS, dtype=object)[worst["rank"].to_numpy()]
    counts = pd.crosstab(worst["function"], worst["state"]).reindex(
        columns=list(_REPORT_LISTS), fill_value=0
    )
    result = counts.rename_axis(index="function", columns=None)
    result["n_reports"] = result[list(_REPORT_LISTS)].sum(axis=1)
    result["working_share"] = rate(result["working"], result["n_reports"])
    result["working_or_degraded_share"] = rate(
        result["working"] + result["degraded"], result["n_reports"]
    )
    return result.reindex(columns=list(UPTIME_COLUMNS)).astype(UPTIME_COLUMNS).sort_index()
