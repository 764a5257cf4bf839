"""A self-contained HTML report of an analysis, with plots (matplotlib, the `plots` extra)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import pandas as pd

from ._common import FAILED_STATES, state_types
from .summary import Analysis


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _plots(
    analysis: Analysis, flow_runs: pd.DataFrame, reports: pd.DataFrame, task_runs: pd.DataFrame
) -> list[tuple[str, str]]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError(
            "the HTML report draws plots with matplotlib: pip install 'prefect-resilience[plots]'"
        ) from exc
    plots = []
    periods = analysis.trend.periods
    if not periods.empty:
        figure, axis = plt.subplots(figsize=(8, 3))
        axis.plot(periods.index, periods["failure_rate"], marker="o", label="step failure rate")
        if not reports.empty and not flow_runs.empty:
            merged = reports.merge(flow_runs[["flow_run_id", "start_time"]], on="flow_run_id")
            merged = merged.dropna(subset=["start_time"])
            if not merged.empty:
                freq = pd.infer_freq(periods.index) if len(periods) > 2 else None
                health = merged.set_index("start_time")["health_score"].astype(float)
                health = health.resample(freq or "1D").mean()
                axis.plot(health.index, health.values, marker="s", label="mean run health")
        axis.set_ylim(0, 1.05)
        if len(periods) == 1:  # one period: show a day either side, not matplotlib's years
            moment = periods.index[0]
            axis.set_xlim(moment - pd.Timedelta(days=1), moment + pd.Timedelta(days=1))
        axis.set_title("Health and failure rate over time")
        axis.legend(loc="best")
        figure.autofmt_xdate()
        plots.append(("Health and failure rate over time", _png(figure)))
        plt.close(figure)
    failed = task_runs[state_types(task_runs).isin(FAILED_STATES).fillna(False).to_numpy(bool)]
    failed = failed.dropna(subset=["start_time"])
    if not failed.empty:
        grid = pd.crosstab(failed["task_name"], failed["start_time"].dt.hour)
        grid = grid.reindex(columns=range(24), fill_value=0)
        figure, axis = plt.subplots(figsize=(9, 0.5 + 0.4 * len(grid)))
        image = axis.imshow(grid.values, aspect="auto", cmap="Reds")
        axis.set_yticks(range(len(grid)), grid.index)
        axis.set_xticks(range(0, 24, 2))
        axis.set_xlabel("hour of day (UTC)")
        axis.set_title("Failures by step and hour")
        figure.colorbar(image, ax=axis, label="failures")
        plots.append(("Failures by step and hour", _png(figure)))
        plt.close(figure)
    return plots


def render_html(
    analysis: Analysis,
    flow_runs: pd.DataFrame,
    task_runs: pd.DataFrame,
    reports: pd.DataFrame,
    title: str = "Resilience analysis",
) -> str:
    """One HTML file: plots embedded as data, tables of every measure."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
        "th{background:#f3f4f6}h2{margin-top:1.6em}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{analysis.flow_runs} flow runs, {analysis.task_runs} task runs.</p>",
    ]
    for caption, png in _plots(analysis, flow_runs, reports, task_runs):
        parts.append(f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' "
                     f"src='data:image/png;base64,{png}'>")  # fmt: skip
    sections = [
        ("Continuity", analysis.continuity),
        ("Steps", analysis.steps),
        ("Retry recovery by attempt", analysis.recovery),
        ("Degradation: recent window against baseline", analysis.degradation),
        ("Failure patterns", analysis.patterns),
        ("Steps that fail together", analysis.co_failures),
        ("Function uptime", analysis.uptime),
    ]
    for caption, frame in sections:
        if frame is not None and not frame.empty:
            parts.append(f"<h2>{html.escape(caption)}</h2>")
            parts.append(frame.to_html(float_format=lambda v: f"{v:.4g}", na_rep="-"))
    parts.append("</body></html>")
    return "\n".join(parts)
