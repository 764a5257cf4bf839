"""The originating design's targets, evaluated from run history: pass, miss, or not enough data.

The design this package comes from asks for "continuous validation" of its
targets (termination under 10%, success 90% or more, health 85% or more); the
system it came from met them by relabelling failures. Here each target is
measured from the three history frames (`prefect_resilience.history`), shown
with its sample size, and a measured value on the wrong side of its target is
a `miss`, whatever the reason. Too few runs to say is `not enough data`, with
the value still shown.

Pure like `analytics`: pandas and scipy only, no Prefect import. Only finished
flow runs (COMPLETED, FAILED, CRASHED, CANCELLED) and their task runs and
reports count; runs in progress have no outcome yet.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from prefect_resilience.analytics import FINISHED_STATES, continuity_metrics, wilson_interval
from prefect_resilience.analytics._common import COMPLETED, PARTIAL_SUCCESS, state_types

MIN_SAMPLE = 10
"""Fewer finished runs (or steps, or reports) than this and a target is `not enough data`."""

LOOP_ITERATIONS = 100
CONDITION_MS = 100.0

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_SYMBOL = {"<": "<", "<=": "≤", ">": ">", ">=": "≥"}


class Status(StrEnum):
    PASS = "pass"
    MISS = "miss"
    NOT_ENOUGH_DATA = "not enough data"


@dataclass(frozen=True)
class TargetResult:
    """One target of the design, as measured from history.

    `measured` is NaN when there was nothing to measure; `low` / `high` are
    its 95% interval (Wilson for a rate, t for a mean health; NaN where none
    applies); `sample_size` counts `sample_unit`s; `method` says how the
    value was measured and `note` adds what the reader should know.
    """

    id: str
    claim: str
    comparison: str  # one of <, <=, >, >=
    threshold: float
    unit: str  # "%" (a share, shown in percent), "ms" or "iterations"
    measured: float
    sample_size: int
    sample_unit: str
    status: Status
    method: str
    low: float = math.nan
    high: float = math.nan
    note: str = ""

    @property
    def target(self) -> str:
        return f"{_SYMBOL[self.comparison]} {_format(self.threshold, self.unit)}"

    @property
    def measured_text(self) -> str:
        return _format(self.measured, self.unit)

    @property
    def interval_text(self) -> str:
        if math.isnan(self.low) or math.isnan(self.high):
            return "-"
        return f"{_format(self.low, self.unit)} .. {_format(self.high, self.unit)}"


@dataclass(frozen=True)
class NotFromHistory:
    """A target that run history cannot answer, and where it is measured instead."""

    id: str
    claim: str
    where: str


NOT_FROM_HISTORY: tuple[NotFromHistory, ...] = (
    NotFromHistory(
        "BR-WF-541",
        "> 40% faster with parallel steps; 20 parallel steps",
        "needs the same run sequential and submitted: bench/parallel.py",
    ),
    NotFromHistory(
        "BR-ORK-001",
        "3-5 optimization candidates, ROI prediction accuracy > 70%",
        "needs predicted vs realised gains on re-run workloads",
    ),
    NotFromHistory(
        "BR-ORCH-001",
        "confidence ≥ 80%, gain ≥ 15%",
        "needs the gain measured after a candidate is applied",
    ),
    NotFromHistory(
        "BR-ORCH-002",
        "resource adaptation with ≥ 85% confidence",
        "this package adapts no resources",
    ),
    NotFromHistory(
        "BR-ORCH-005",
        "predictive scaling accuracy ≥ 80%",
        "needs a backtest of a scaling model on held-out history",
    ),
)


@dataclass
class ComplianceReport:
    """Every target history can answer, for one selection of runs."""

    results: list[TargetResult]
    flow_runs: int  # flow runs in the selection
    finished_flow_runs: int
    in_progress: int  # flow runs left out: not finished yet
    min_sample: int
    not_from_history: tuple[NotFromHistory, ...] = field(default=NOT_FROM_HISTORY)

    @property
    def missed(self) -> list[TargetResult]:
        return [r for r in self.results if r.status is Status.MISS]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; NaN becomes null."""
        return {
            "flow_runs": self.flow_runs,
            "finished_flow_runs": self.finished_flow_runs,
            "in_progress": self.in_progress,
            "min_sample": self.min_sample,
            "missed": len(self.missed),
            "targets": [
                {
                    **{k: _plain(v) for k, v in asdict(r).items()},
                    "status": r.status.value,
                    "target": r.target,
                }
                for r in self.results
            ],
            "not_from_history": [asdict(n) for n in self.not_from_history],
        }

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per target, for a table artifact."""
        return [
            {
                "id": r.id,
                "claim": r.claim,
                "target": r.target,
                "measured": r.measured_text,
                "95% interval": r.interval_text,
                "n": r.sample_size,
                "of": r.sample_unit,
                "status": r.status.value,
            }
            for r in self.results
        ]

    def to_markdown(self, title: str = "Compliance with the design's targets") -> str:
        """The report for a Prefect markdown artifact: the table, then how each was measured."""
        missed = self.missed
        verdict = (
            f"**{len(missed)} target{'s' if len(missed) != 1 else ''} missed:** "
            + ", ".join(f"{r.id} ({r.claim})" for r in missed)
            if missed
            else "No target missed."
        )
        lines = [
            f"# {title}",
            "",
            f"{self.finished_flow_runs} finished flow runs ({self.in_progress} still in progress,"
            f" left out). A target needs at least {self.min_sample} samples.",
            "",
            verdict,
            "",
            "| id | claim | target | measured | 95% interval | n | status |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.results:
            status = "**MISSED**" if r.status is Status.MISS else r.status.value
            lines.append(
                f"| {r.id} | {_cell(r.claim)} | {r.target} | {r.measured_text} |"
                f" {r.interval_text} | {r.sample_size} {r.sample_unit} | {status} |"
            )
        lines += ["", "## How each was measured", ""]
        for r in self.results:
            lines.append(f"- **{r.id}, {r.claim}**: {r.method}" + (f" {r.note}" if r.note else ""))
        lines += ["", "## Not answerable from run history", ""]
        lines += [f"- {n.id}, {n.claim}: {n.where}." for n in self.not_from_history]
        return "\n".join(lines) + "\n"


# --- evaluation --------------------------------------------------------------------------


def evaluate(
    flow_runs: pd.DataFrame,
    task_runs: pd.DataFrame,
    reports: pd.DataFrame | None = None,
    *,
    min_sample: int = MIN_SAMPLE,
) -> ComplianceReport:
    """Evaluate every target history can answer over one selection of runs.

    The frames are those of `History` (flow_runs, task_runs, reports). A
    `loops` column on `reports` (each cell a list of the run's loop records:
    `iterations`, `condition_ms_max`) is read when present for BR-WF-556.
    """
    if min_sample < 1:
        raise ValueError(f"min_sample must be at least 1, got {min_sample}")
    finished = state_types(flow_runs).isin(FINISHED_STATES).fillna(False).to_numpy(dtype=bool)
    done = flow_runs[finished]
    done_ids = set(done["flow_run_id"].astype(str))
    steps = task_runs[task_runs["flow_run_id"].astype(str).isin(done_ids)]
    if reports is not None and len(reports):
        reports = reports.assign(flow_run_id=reports["flow_run_id"].astype(str))
        reports = reports[reports["flow_run_id"].isin(done_ids)]
        reports = reports.drop_duplicates("flow_run_id", keep="last")
    else:
        reports = None
    results = [
        *_run_targets(done, reports, steps, min_sample),
        _step_success(steps, min_sample),
        _health(reports, min_sample),
        *_loops(reports),
    ]
    return ComplianceReport(
        results=results,
        flow_runs=len(flow_runs),
        finished_flow_runs=len(done),
        in_progress=len(flow_runs) - len(done),
        min_sample=min_sample,
    )


def _judge(measured: float, comparison: str, threshold: float, n: int, needed: int) -> Status:
    if n < needed or math.isnan(measured):
        return Status.NOT_ENOUGH_DATA
    return Status.PASS if _COMPARE[comparison](measured, threshold) else Status.MISS


def _share(
    target: tuple[str, str, str, float],
    part: int,
    n: int,
    unit: str,
    min_sample: int,
    method: str,
    note: str = "",
) -> TargetResult:
    """A rate `part / n` against `target` (id, claim, comparison, threshold)."""
    id_, claim, comparison, threshold = target
    measured = part / n if n else math.nan
    low, high = wilson_interval(part, n)
    return TargetResult(
        id=id_,
        claim=claim,
        comparison=comparison,
        threshold=threshold,
        unit="%",
        measured=measured,
        sample_size=n,
        sample_unit=unit,
        status=_judge(measured, comparison, threshold, n, min_sample),
        method=method,
        low=float(low),
        high=float(high),
        note=note,
    )


def _run_targets(
    done: pd.DataFrame, reports: pd.DataFrame | None, steps: pd.DataFrame, min_sample: int
) -> list[TargetResult]:
    (row,) = continuity_metrics(done, reports, by=None).to_dict("records")
    n = int(row["n_finished"])
    state = state_types(done)
    completed = int((state == COMPLETED).fillna(False).sum())
    partial = int(
        ((state == COMPLETED) & (done["state_name"].astype("string") == PARTIAL_SUCCESS))
        .fillna(False)
        .sum()
    )
    terminated = round(row["termination_rate"] * n) if n else 0
    step_state = state_types(steps)
    step_n = int(step_state.isin(FINISHED_STATES).fillna(False).sum())
    step_failed = int(step_state.isin({"FAILED", "CRASHED"}).fillna(False).sum())
    reported = int(row["n_reported"])
    context = (
        f"Observed step failure rate: {step_failed}/{step_n} finished task runs"
        f" ({_format(step_failed / step_n, '%')}); the design states this target under 15%"
        " injected step failure, which bench/failure_injection.py measures."
        if step_n
        else "No finished task runs to give the step failure rate this was measured under."
    )
    return [
        _share(
            ("BR-WF-541", "workflow termination rate", "<", 0.10),
            terminated,
            n,
            "finished flow runs",
            min_sample,
            f"Terminated finished flow runs / finished flow runs. A run with a resilience report"
            f" ({reported} of {n}) was terminated when its report says so (a termination rule"
            " fired); a run without one when it ended FAILED.",
            context,
        ),
        _share(
            ("BR-WF-541", "workflow completion rate", ">", 0.90),
            completed,
            n,
            "finished flow runs",
            min_sample,
            "COMPLETED finished flow runs / finished flow runs; a PartialSuccess run counts as"
            f" completed here ({partial} of them).",
        ),
        _share(
            ("BR-ORCH-011", "flow-run success rate", ">=", 0.90),
            completed - partial,
            n,
            "finished flow runs",
            min_sample,
            "Finished flow runs that COMPLETED in full / finished flow runs. A PartialSuccess run"
            " is not a success: some function was unavailable or degraded. FAILED, CRASHED and"
            " CANCELLED runs are not successes.",
        ),
    ]


def _step_success(steps: pd.DataFrame, min_sample: int) -> TargetResult:
    state = state_types(steps)
    finished = state.isin(FINISHED_STATES).fillna(False)
    n = int(finished.sum())
    ok = int((finished & (state == COMPLETED)).fillna(False).sum())
    return _share(
        ("BR-ORCH-011", "step success rate", ">=", 0.90),
        ok,
        n,
        "finished task runs",
        min_sample,
        "Task runs of finished flow runs that ended COMPLETED (after any retries) / finished task"
        " runs. A failed primary step stays a failed task run even when a fallback (its own task"
        " run) delivered.",
    )


def _health(reports: pd.DataFrame | None, min_sample: int) -> TargetResult:
    method = (
        "Mean of the health score (0-1, as each resilient run's report recorded it) over the"
        " finished flow runs with a report, with a 95% t interval."
    )
    scores = (
        pd.to_numeric(reports["health_score"], errors="coerce").dropna()
        if reports is not None
        else pd.Series(dtype=float)
    )
    scores = scores[np.isfinite(scores)]
    n = len(scores)
    measured = float(scores.mean()) if n else math.nan
    low = high = math.nan
    if n >= 2:
        half = stats.t.ppf(0.975, n - 1) * scores.std(ddof=1) / math.sqrt(n)
        low, high = max(0.0, measured - half), min(1.0, measured + half)
    return TargetResult(
        id="BR-ORCH-011",
        claim="workflow health",
        comparison=">=",
        threshold=0.85,
        unit="%",
        measured=measured,
        sample_size=n,
        sample_unit="reported flow runs",
        status=_judge(measured, ">=", 0.85, n, min_sample),
        method=method,
        low=low,
        high=high,
        note=(
            ""
            if n
            else "No run in the selection has a resilience report (plain Prefect flows"
            " have no health score)."
        ),
    )


def _loops(reports: pd.DataFrame | None) -> list[TargetResult]:
    """BR-WF-556 from the loop records of the reports, where history carries them."""
    records: list[dict[str, Any]] = []
    carried = reports is not None and "loops" in reports.columns
    if reports is not None and carried:
        for cell in reports["loops"]:
            if isinstance(cell, list | tuple):
                records.extend(r for r in cell if isinstance(r, dict))
    iterations = [int(r["iterations"]) for r in records if _number(r.get("iterations"))]
    conditions = [
        float(r["condition_ms_max"]) for r in records if _number(r.get("condition_ms_max"))
    ]
    missing = (
        ""
        if records
        else "The history's reports carry no loop records, so this cannot be measured yet."
    )
    slowest = max(conditions) if conditions else math.nan
    longest = max(iterations) if iterations else math.nan
    longest_status = (
        Status.PASS if iterations and longest >= LOOP_ITERATIONS else Status.NOT_ENOUGH_DATA
    )
    return [
        TargetResult(
            id="BR-WF-556",
            claim="loop condition evaluation time",
            comparison="<",
            threshold=CONDITION_MS,
            unit="ms",
            measured=slowest,
            sample_size=len(conditions),
            sample_unit="loops",
            status=_judge(slowest, "<", CONDITION_MS, len(conditions), 1),
            method="The slowest single evaluation of a `resilient_loop`'s `until` condition, over"
            " every loop the reports recorded (the worst case, not a mean).",
            note=missing,
        ),
        TargetResult(
            id="BR-WF-556",
            claim="loop iterations supported",
            comparison=">=",
            threshold=LOOP_ITERATIONS,
            unit="iterations",
            measured=longest,
            sample_size=len(iterations),
            sample_unit="loops",
            status=longest_status,
            method=f"The most iterations one recorded loop ran. A capability: it passes once a"
            f" loop ran {LOOP_ITERATIONS} or more; until then history has not shown it, which"
            " is not enough data rather than a miss.",
            note=missing,
        ),
    ]


# --- formatting --------------------------------------------------------------------------


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _format(value: float, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "%":
        return f"{value * 100:.1f}%"
    if unit == "ms":
        return f"{value:.3g} ms"
    return f"{value:g}"


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _plain(value.item())
    return value


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
