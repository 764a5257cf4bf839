"""One analysis of a history: every measure, and its renderings as markdown and JSON.

Pure, like the rest of the package: it takes the three history frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .continuity import continuity_metrics, function_uptime
from .patterns import TimeConcentration, co_failures, failure_patterns, time_concentration
from .statistics import retry_recovery, step_statistics
from .trends import FailureTrend, detect_degradation, failure_trend


@dataclass
class Analysis:
    """Everything `prefect-resilience analyze` reports, for one selection of runs."""

    steps: pd.DataFrame
    recovery: pd.DataFrame
    trend: FailureTrend
    degradation: pd.DataFrame
    patterns: pd.DataFrame
    co_failures: pd.DataFrame
    concentration: TimeConcentration
    continuity: pd.DataFrame
    uptime: pd.DataFrame
    flow_runs: int
    task_runs: int

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types: NaN becomes null, times ISO strings."""
        trend = self.trend
        return _clean(
            {
                "flow_runs": self.flow_runs,
                "task_runs": self.task_runs,
                "steps": _records(self.steps, index="task_name"),
                "retry_recovery": _records(self.recovery),
                "trend": {
                    "slope": trend.slope,
                    "slope_low": trend.slope_low,
                    "slope_high": trend.slope_high,
                    "slope_p_value": trend.slope_p_value,
                    "n_periods": trend.n_periods,
                    "n_runs": trend.n_runs,
                    "periods": _records(trend.periods, index="period"),
                },
                "degradation": _records(self.degradation, index="group"),
                "failure_patterns": _records(self.patterns),
                "co_failures": _records(self.co_failures),
                "time_concentration": {
                    "hour": _concentration(self.concentration.hour),
                    "weekday": _concentration(self.concentration.weekday),
                },
                "continuity": _records(self.continuity, index="flow_name"),
                "function_uptime": _records(self.uptime, index="function"),
            }
        )


def analyze(
    task_runs: pd.DataFrame,
    flow_runs: pd.DataFrame,
    reports: pd.DataFrame | None = None,
    *,
    freq: str = "1D",
    recent: str = "7D",
    baseline: str = "28D",
    alpha: float = 0.05,
) -> Analysis:
    """Run every measure over one history selection."""
    return Analysis(
        steps=step_statistics(task_runs),
        recovery=retry_recovery(task_runs),
        trend=failure_trend(task_runs, freq=freq),
        degradation=detect_degradation(
            task_runs, recent=recent, baseline=baseline, alpha=alpha, by="task_name"
        ),
        patterns=failure_patterns(task_runs),
        co_failures=co_failures(task_runs),
        concentration=time_concentration(task_runs),
        continuity=continuity_metrics(flow_runs, reports),
        uptime=function_uptime(reports) if reports is not None else pd.DataFrame(),
        flow_runs=len(flow_runs),
        task_runs=len(task_runs),
    )


def to_markdown(analysis: Analysis, title: str = "Resilience analysis") -> str:
    """A summary for a Prefect markdown artifact: the same figures as the CLI's tables."""
    lines = [f"# {title}", "", f"{analysis.flow_runs} flow runs, {analysis.task_runs} task runs."]
    if not analysis.continuity.empty:
        lines += ["", "## Continuity", "", _table(analysis.continuity, index="flow")]
    if not analysis.steps.empty:
        steps = analysis.steps[
            ["runs", "failures", "failure_rate", "failure_rate_low", "failure_rate_high",
             "attempts_mean", "p50_s", "p95_s", "wasted_retry_s"]
        ]  # fmt: skip
        lines += ["", "## Steps", "", _table(steps, index="step")]
    degraded = analysis.degradation
    if not degraded.empty and "degraded" in degraded and degraded["degraded"].fillna(False).any():
        lines += ["", "## Degrading steps", "", _table(degraded[degraded["degraded"] == True])]  # noqa: E712
    if not analysis.patterns.empty:
        top = analysis.patterns.head(10)[["task_name", "error_type", "template", "failures"]]
        lines += ["", "## Failure patterns", "", _table(top, index=None)]
    trend = analysis.trend
    if not math.isnan(trend.slope):
        lines += [
            "",
            f"Failure rate trend: {trend.slope:+.4f} per period "
            f"(95% CI {trend.slope_low:+.4f} .. {trend.slope_high:+.4f}, "
            f"p={trend.slope_p_value:.3g}, {trend.n_periods} periods).",
        ]
    return "\n".join(lines) + "\n"


def _table(frame: pd.DataFrame, index: str | None = "") -> str:
    shown = frame.reset_index() if index is not None else frame
    header = [str(c) for c in shown.columns]
    rows = [[_cell(v) for v in row] for row in shown.itertuples(index=False)]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3g}"
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d %H:%M")
    # placeholders such as <num> would be read as HTML tags and vanish
    return str(value).replace("|", "\\|").replace("<", "\\<")


def _concentration(c: Any) -> dict[str, Any]:
    return {
        "chi2": c.chi2,
        "dof": c.dof,
        "p_value": c.p_value,
        "min_expected": c.min_expected,
        "runs": c.runs,
        "failures": c.failures,
        "bins": _records(c.table, index="bin"),
    }


def _records(frame: pd.DataFrame, index: str | None = None) -> list[dict[str, Any]]:
    if frame is None or frame.empty:
        return []
    shown = frame.reset_index() if index is not None else frame
    if index is not None and "index" in shown.columns:
        shown = shown.rename(columns={"index": index})
    return shown.to_dict("records")


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, pd.Timestamp | np.datetime64):
        return None if pd.isna(value) else pd.Timestamp(value).isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if value is pd.NaT:
        return None
    return value
