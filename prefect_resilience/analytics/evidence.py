"""What a flow's history can tell, measured on its runs: the evidence candidates rest on.

- `realised_metrics`: the candidate metrics as real runs show them.
- `resample_runs`: the bootstrap, flow runs drawn with replacement.
- `measurement_noise`: the standard error of each metric over as many runs as
  history holds, which a before/after comparison must beat.
- `backtest_error`: how far the model's failed-run rate is from runs it has
  not seen, and how much of that sampling alone explains.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from prefect_resilience.policy import WorkflowPolicy

from ._common import FAILED_STATES, FINISHED_STATES, durations, state_types, utc
from .model import fit, simulate
from .statistics import step_statistics


def realised_metrics(
    task_runs: pd.DataFrame, flow_runs: pd.DataFrame, reports: pd.DataFrame | None
) -> dict[str, float]:
    """The candidate metrics as real runs show them, to compare with a prediction.

    Per finished flow run: failure_rate (share not COMPLETED), health_loss
    (1 - mean report health), wasted_s (seconds in failed attempts of resilient
    steps), duration_s (mean flow run duration) and lost:<step> (share of runs
    in which a task run of the step failed for good).
    """
    finished = flow_runs[state_types(flow_runs).isin(FINISHED_STATES).fillna(False).to_numpy(bool)]
    if finished.empty:
        nan = float("nan")
        return {"flow_runs": 0.0, "failure_rate": nan, "health_loss": nan, "wasted_s": nan,
                "duration_s": nan}  # fmt: skip
    count = len(finished)
    tasks = task_runs[task_runs["flow_run_id"].isin(finished["flow_run_id"])]
    tasks = tasks[tasks["policy"].notna().to_numpy(bool)]
    failed = state_types(tasks).isin(FAILED_STATES).to_numpy(bool)
    wasted = step_statistics(tasks)["wasted_retry_s"].sum()  # the package's one definition
    down = tasks[failed].groupby("task_name")["flow_run_id"].nunique()
    health = (
        reports["health_score"].astype(float)
        if reports is not None and not reports.empty
        else pd.Series(dtype=float)
    )
    return {
        "flow_runs": float(len(finished)),
        "failure_rate": float((state_types(finished) != "COMPLETED").astype(bool).mean()),
        "health_loss": float(1 - health.mean()) if len(health) else float("nan"),
        "wasted_s": float(wasted / count),
        "duration_s": float(durations(finished).mean()),
        **{
            f"lost:{name}": float(down.get(name, 0) / count) for name in tasks["task_name"].unique()
        },
    }


def resample_runs(
    frames: Sequence[pd.DataFrame], ids: np.ndarray, rng: np.random.Generator
) -> list[pd.DataFrame]:
    """The frames for len(ids) flow runs drawn from `ids` with replacement (the bootstrap).

    Each draw becomes a run of its own: its rows in every frame get a new flow_run_id,
    so a run drawn twice counts twice.
    """
    picked = pd.DataFrame({"flow_run_id": rng.choice(ids, len(ids)), "copy": range(len(ids))})
    drawn = []
    for frame in frames:
        joined = frame.merge(picked, on="flow_run_id")
        drawn.append(joined.assign(flow_run_id=joined.pop("copy")))
    return drawn


def measurement_noise(
    task_runs: pd.DataFrame,
    flow_runs: pd.DataFrame,
    reports: pd.DataFrame | None,
    count: int = 40,
    seed: int = 0,
) -> dict[str, float]:
    """Per metric: the standard error of its value over as many runs as history holds.

    It is what a comparison of those runs with as many runs after a change can
    resolve, measured by resampling the finished flow runs (the bootstrap), so
    each metric's own spread from run to run counts, not a formula for it.
    """
    finished = flow_runs[state_types(flow_runs).isin(FINISHED_STATES).fillna(False).to_numpy(bool)]
    ids = finished["flow_run_id"].to_numpy()
    if not len(ids):
        return {}
    rng = np.random.default_rng(seed)
    frames = [task_runs, finished] + ([] if reports is None else [reports])
    values = []
    for _ in range(max(count, 2)):
        tasks, flows, *drawn_reports = resample_runs(frames, ids, rng)
        values.append(realised_metrics(tasks, flows, drawn_reports[0] if drawn_reports else None))
    return {str(k): float(v) for k, v in pd.DataFrame(values).std().items()}


def backtest_error(
    task_runs: pd.DataFrame,
    flow_runs: pd.DataFrame,
    reports: pd.DataFrame | None,
    policy: WorkflowPolicy,
    *,
    runs: int = 2000,
    seed: int = 0,
) -> tuple[float | None, float | None]:
    """How well the model predicts runs it has not seen: fit on the earlier two thirds.

    Returns |predicted - observed| failed-run rate on the latest third, and one
    standard error of that observed rate (the part of the error sampling alone
    explains). Candidates must beat the rest, the model's own error. (None,
    None) when either part has fewer than 10 finished runs.
    """
    finished = flow_runs[state_types(flow_runs).isin(FINISHED_STATES).fillna(False).to_numpy(bool)]
    order = finished.assign(_t=utc(finished["start_time"])).sort_values("_t")
    cut = len(order) * 2 // 3
    early, late = order.iloc[:cut].drop(columns="_t"), order.iloc[cut:].drop(columns="_t")
    if len(early) < 10 or len(late) < 10:
        return None, None
    seen = task_runs[task_runs["flow_run_id"].isin(early["flow_run_id"])]
    predicted = 1 - simulate(fit(seen, early, reports, policy), policy, runs, seed).success_rate
    observed = float((state_types(late) != "COMPLETED").mean())
    if not np.isfinite(predicted):
        return None, None
    noise = float(np.sqrt(max(observed * (1 - observed), 1 / len(late)) / len(late)))
    return abs(predicted - observed), noise
