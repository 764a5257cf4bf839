"""Adaptive retries: what each attempt of a step buys, learned from run history, and the
retries and backoff that buy the most success within a time budget.

The history holds one row per task run with its final state and `run_count`
(attempts made). A COMPLETED run with run_count k failed attempts 1..k-1 and
succeeded at attempt k; a FAILED or CRASHED run with run_count k failed all k
attempts and says nothing about attempt k+1 (it is right-censored: its retries
ran out); a CANCELLED run failed attempts 1..k-1 and its attempt k has no
outcome. So, per step, the discrete-time hazard

    h_k = P(attempt k succeeds | attempts 1..k-1 failed) = succeeded_k / reached_k

is a Kaplan-Meier estimate over attempts: `reached_k` counts the runs whose
attempt k has an outcome, and `1 - prod(1 - h_j, j <= k)` is the chance that a
run has succeeded within k attempts.

Error types. The frame's `error_type` is that of the *final* state only: a
recovered (COMPLETED) run has none, although attempts 1..k-1 failed with some
exception. Prefect 3 keeps no exception in the state history of a retried run
(a failed attempt moves Running -> AwaitingRetry / Retrying with an empty
message); the exception is only in the task run's log line "Task run failed
with exception: ConnectionError(...) - Retry 1/3 ...". So hazards per
(step, error type) need an optional `attempt_errors` column: per run, the
error type of each failed attempt, in order. With it, the hazard of attempt
k >= 2 is grouped by the error type of attempt k-1 (the failure that caused
the retry). Without it there is no per-error-type estimate: grouping by the
final error type would put every recovered run under "no error", so the
hazard of a retry per error type would be 0 by construction. The final error
types of the failed runs are still counted (`RetryModel.final_errors`).

The delay. A run's total wall time (end - start) minus its run time
(`duration_s`, Prefect's total_run_time over all attempts) is the time it
spent waiting between attempts. Taking attempts of one run as equally long
and its waits as equal, a retried run gives its mean wait per retry and the
elapsed time from its first failure (end of attempt 1) to the start of its
last attempt: wall - 2 * duration / k. Whether waiting longer helps is tested
on the first retry: retried runs are grouped by wait level (powers of two of
seconds) and attempt 2's success rate compared across levels with at least
`min_runs` runs each (chi-square test of homogeneity). With fewer than two such
levels the delay cannot be learned from the history and the declared backoff
is kept. When the levels differ significantly, the recovery-time view is
fitted: the time T from the first failure until the step works again (an
outage that ends after T seconds) is interval-censored (a run recovered at
attempt k tells T in (start of attempt k-1, start of attempt k]; a run that
failed all attempts tells T > start of its last attempt), and its distribution
F(t) = P(T <= t) is the Turnbull nonparametric maximum-likelihood estimate,
with bootstrap intervals. F is used only up to the longest elapsed time at
which at least `min_runs` runs were still retrying; beyond it, it is held flat
(no extrapolation).

`retry_choice.choose_retries` then picks the retries (and backoff) from the
fitted model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ._common import (
    CANCELLED,
    COMPLETED,
    FINISHED_STATES,
    durations,
    rate,
    require_columns,
    state_types,
    utc,
    wilson_interval,
    z_value,
)
from .drift import Drift, detect_drift

MIN_RUNS = 20
"""Default evidence threshold: an attempt's hazard is used only when at least this many runs
reached it (had an outcome at it); a wait level and a point of the recovery curve likewise."""

ANY_ERROR = "*"
"""The `error_type` label of hazards over all error types."""

UNKNOWN_ERROR = "<unknown>"
"""The label of a retry whose preceding failure has no recorded error type."""

HAZARD_COLUMNS: dict[str, str] = {
    "reached": "int64",
    "succeeded": "int64",
    "hazard": "float64",
    "hazard_low": "float64",
    "hazard_high": "float64",
    "success_by": "float64",
}

WAIT_LEVEL_COLUMNS: dict[str, str] = {
    "typical_wait_s": "float64",
    "runs": "int64",
    "succeeded": "int64",
    "success_rate": "float64",
    "success_rate_low": "float64",
    "success_rate_high": "float64",
}

RECOVERY_COLUMNS: dict[str, str] = {
    "still_retrying": "int64",
    "recovered_share": "float64",
    "recovered_share_low": "float64",
    "recovered_share_high": "float64",
}

BOOTSTRAP = 200
"""Bootstrap replicates behind every interval of the model and of the retries chosen from it."""


# --- the model ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DelayEvidence:
    """Whether the history says how long to wait before a retry.

    `levels`: per wait level (index: the level's median wait per retry in
    seconds), the retried runs at that level, those whose attempt 2
    succeeded, and that success rate with its Wilson interval. `learnable`:
    at least two levels have `min_runs` runs. `matters`: learnable and the
    chi-square test across those levels has p_value < alpha. `reason` says
    what was concluded, in words.
    """

    learnable: bool
    matters: bool
    p_value: float
    levels: pd.DataFrame
    reason: str


@dataclass(frozen=True, eq=False)
class RecoveryCurve:
    """F(t): the share of runs that failed attempt 1 and work again within t seconds.

    `table` is indexed by elapsed seconds since the first failure (the
    Turnbull support points), with `still_retrying` (runs with an attempt at
    or after t), `recovered_share` = F(t) and its bootstrap interval.
    `supported_s` is the longest t with `still_retrying` >= min_runs: F is
    read up to there and held flat beyond. `never_share` is the mass of T
    beyond every attempt seen (runs that did not recover while retried).
    """

    table: pd.DataFrame
    supported_s: float
    never_share: float
    runs: int
    replicates: np.ndarray = field(repr=False)  # bootstrap F at each support point

    def at(self, elapsed: float, replicate: int | None = None) -> float:
        """F(elapsed), held flat beyond `supported_s`: nothing is extrapolated."""
        times = self.table.index.to_numpy(dtype=float)
        shares = (
            self.table["recovered_share"].to_numpy()
            if replicate is None
            else self.replicates[replicate]
        )
        position = np.searchsorted(times, min(elapsed, self.supported_s), side="right") - 1
        return float(shares[position]) if position >= 0 else 0.0


@dataclass(frozen=True, eq=False)
class RetryModel:
    """What attempts and waits bought one step, with the n behind every number.

    `hazards`: indexed by attempt k (1, 2, ...), `reached`, `succeeded`,
    `hazard` = h_k with its Wilson interval, and `success_by` = chance of
    success within k attempts. `by_error`: indexed by (error_type, attempt),
    attempts >= 2, grouped by the error type of the failure before the
    attempt; empty unless the frame had `attempt_errors`. `final_errors`:
    failed runs per final error type. `recovery`: the recovery-time view,
    fitted only when `delay.matters`. `runs`: finished runs that ran.
    """

    step: str
    hazards: pd.DataFrame
    by_error: pd.DataFrame
    final_errors: pd.Series
    delay: DelayEvidence
    recovery: RecoveryCurve | None
    runs: int
    min_runs: int
    confidence: float
    fitted_at: datetime
    drift: Drift | None = None
    """Set when the first attempt's success moved within the history (`drift`): the model
    is then fitted on the latest third of the runs, its intervals widened toward the drift."""

    def supported_attempts(self, error_type: str | None = None) -> int:
        """The largest k such that attempts 1..k were each reached by at least min_runs runs."""
        reached = self.hazards["reached"]
        if error_type is not None:
            if reached.get(1, 0) < self.min_runs:
                return 0
            own = self._error_rows(error_type)["reached"]
            reached = pd.concat([reached.loc[[1]], own]) if 1 in reached.index else own
        k = 0
        while reached.get(k + 1, 0) >= self.min_runs:
            k += 1
        return k

    def _error_rows(self, error_type: str) -> pd.DataFrame:
        if self.by_error.empty or error_type not in self.by_error.index.get_level_values(0):
            return self.by_error.iloc[0:0].droplevel(0)
        return self.by_error.xs(error_type, level="error_type")


# --- fitting -----------------------------------------------------------------------------


def _runs(task_runs: pd.DataFrame) -> pd.DataFrame:
    """Finished runs that ran: step, attempts, completed, decided, and wait/elapsed when known."""
    require_columns(task_runs, ("task_name", "state_type", "run_count"), "task_runs")
    state = state_types(task_runs)
    attempts = pd.to_numeric(task_runs["run_count"], errors="coerce").astype(float)
    keep = (
        state.isin(FINISHED_STATES).fillna(False).to_numpy(dtype=bool)
        & (attempts >= 1).to_numpy()
        & (attempts % 1 == 0).to_numpy()
        & task_runs["task_name"].notna().to_numpy()
    )
    runs = pd.DataFrame(
        {
            "step": task_runs["task_name"].astype(object),
            "attempts": attempts,
            "completed": (state == COMPLETED).fillna(False).astype(bool),
            "decided": (state != CANCELLED).fillna(False).astype(bool),
            "final_error": task_runs.get("error_type", pd.Series(None, index=task_runs.index)),
        },
        index=task_runs.index,
    )
    if {"start_time", "end_time", "duration_s"} <= set(task_runs.columns):
        wall = (utc(task_runs["end_time"]) - utc(task_runs["start_time"])).dt.total_seconds()
        runs["wall"] = wall.astype(float)
        runs["run_time"] = durations(task_runs)
    else:
        runs["wall"], runs["run_time"] = np.nan, np.nan
    if "attempt_errors" in task_runs.columns:
        runs["attempt_errors"] = task_runs["attempt_errors"]
    if "start_time" in task_runs.columns:
        runs["start"] = utc(task_runs["start_time"])
    runs = runs[keep].astype({"attempts": "int64"})
    k = runs["attempts"].to_numpy(dtype=float)
    wall, run_time = runs["wall"].to_numpy(), runs["run_time"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        # the clocks of start/end and of run time differ by a little: tolerate 50 ms + 1%
        slack = 0.05 + 0.01 * run_time
        known = (k >= 2) & np.isfinite(wall) & np.isfinite(run_time) & (wall >= run_time - slack)
        runs["wait"] = np.where(known, np.maximum(wall - run_time, 0.0) / (k - 1), np.nan)
        elapsed = np.where(known, np.maximum(wall - 2 * run_time / k, 0.0), np.nan)
        runs["elapsed"] = elapsed  # first failure -> start of the last attempt
        previous = np.where(k == 2, 0.0, elapsed - runs["wait"].to_numpy() - run_time / k)
        runs["elapsed_before"] = np.where(known, np.maximum(previous, 0.0), np.nan)
    return runs


def _error_list(value: Any, row: Any) -> list[Any]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str) or not isinstance(value, Sequence | np.ndarray):
        raise ValueError(
            f"task_runs column 'attempt_errors' holds a list of error types per run;"
            f" row {row!r} has {value!r}"
        )
    return list(value)


def _trials(runs: pd.DataFrame, with_errors: bool) -> pd.DataFrame:
    """One row per attempt with an outcome: step, attempt, success (and the error before it)."""
    r = runs["attempts"].to_numpy()
    run = np.repeat(np.arange(len(runs)), r)
    attempt = np.arange(len(run)) - np.repeat(np.cumsum(r) - r, r) + 1
    last = attempt == r[run]
    success = last & runs["completed"].to_numpy()[run]
    keep = ~last | runs["decided"].to_numpy()[run]
    trials = pd.DataFrame(
        {"step": runs["step"].to_numpy()[run], "attempt": attempt, "success": success}
    )
    if with_errors:
        lists = [_error_list(v, i) for i, v in zip(runs.index, runs["attempt_errors"], strict=True)]
        labels = np.full(len(run), None, dtype=object)
        for position in np.flatnonzero(attempt >= 2):
            errors = lists[run[position]]
            index = attempt[position] - 2
            label = errors[index] if index < len(errors) else None
            labels[position] = UNKNOWN_ERROR if label is None or pd.isna(label) else str(label)
        trials["error_type"] = labels
    return trials[keep]


def _hazard_table(trials: pd.DataFrame, keys: list[str], confidence: float) -> pd.DataFrame:
    grouped = trials.groupby([*keys, "attempt"], sort=True)["success"]
    table = grouped.agg(reached="size", succeeded="sum")
    table["hazard"] = rate(table["succeeded"], table["reached"])
    low, high = wilson_interval(table["succeeded"], table["reached"], confidence)
    table["hazard_low"], table["hazard_high"] = low, high
    failing = 1 - table["hazard"]
    still = failing.groupby(level=list(range(len(keys)))).cumprod() if keys else failing.cumprod()
    table["success_by"] = 1 - still
    return table.reindex(columns=list(HAZARD_COLUMNS)).astype(HAZARD_COLUMNS)


def retry_hazards(
    task_runs: pd.DataFrame, by_error: bool = False, confidence: float = 0.95
) -> pd.DataFrame:
    """Per step, error type and attempt k: h_k = P(attempt k succeeds | attempts 1..k-1 failed).

    Input `task_runs` (history contract); the columns read are `task_name`,
    `state_type`, `run_count`, and with `by_error=True` also `attempt_errors`
    (per run, a list of the error types of its failed attempts, in order;
    a ValueError names the column when it is missing). Only finished runs that
    ran count; a CANCELLED run's last attempt has no outcome.

    Returns a frame indexed by (`task_name`, `error_type`, `attempt`) with
    `reached` (n), `succeeded`, `hazard` and its Wilson interval at
    `confidence`, and `success_by` = 1 - prod(1 - h_j, j <= k). With
    `by_error=False` error_type is "*" (all); with `by_error=True` each retry
    (attempt >= 2) is grouped by the error type of the attempt before it and
    attempt 1 is left out (it follows no failure); `success_by` then chains
    that error type's hazards from attempt 2.
    """
    z_value(confidence)
    if by_error:
        require_columns(task_runs, ("attempt_errors",), "task_runs")
    runs = _runs(task_runs)
    trials = _trials(runs, by_error)
    trials = trials[trials["attempt"] >= 2] if by_error else trials.assign(error_type=ANY_ERROR)
    if trials.empty:
        index = pd.MultiIndex.from_arrays(
            [[], [], []], names=["task_name", "error_type", "attempt"]
        )
        return pd.DataFrame(index=index, columns=list(HAZARD_COLUMNS)).astype(HAZARD_COLUMNS)
    table = _hazard_table(trials, ["step", "error_type"], confidence)
    table.index = table.index.set_names(["task_name", "error_type", "attempt"])
    return table


def _wait_levels(runs: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """Retried runs by wait level (powers of two of seconds): attempt 2's outcome per level."""
    retried = runs[(runs["attempts"] >= 2) & runs["wait"].notna()]
    retried = retried[~((retried["attempts"] == 2) & ~retried["decided"])]
    if retried.empty:
        return pd.DataFrame(columns=list(WAIT_LEVEL_COLUMNS)).astype(WAIT_LEVEL_COLUMNS)
    level = np.round(np.log2(1 + retried["wait"].to_numpy())).astype(int)
    success = (retried["attempts"] == 2) & retried["completed"]
    grouped = pd.DataFrame({"level": level, "wait": retried["wait"], "success": success}).groupby(
        "level", sort=True
    )
    table = grouped.agg(
        typical_wait_s=("wait", "median"), runs=("success", "size"), succeeded=("success", "sum")
    )
    table["success_rate"] = rate(table["succeeded"], table["runs"])
    low, high = wilson_interval(table["succeeded"], table["runs"], confidence)
    table["success_rate_low"], table["success_rate_high"] = low, high
    table = table.set_index("typical_wait_s", drop=False)
    table.index.name = "wait_s"
    return table.reindex(columns=list(WAIT_LEVEL_COLUMNS)).astype(WAIT_LEVEL_COLUMNS)


def _delay_evidence(
    runs: pd.DataFrame, min_runs: int, confidence: float, alpha: float
) -> DelayEvidence:
    levels = _wait_levels(runs, confidence)
    usable = levels[levels["runs"] >= min_runs]
    nan = float("nan")
    if len(usable) < 2:
        seen = (
            "no retried run with known start, end and run time"
            if levels.empty
            else "retried runs waited "
            + ", ".join(
                f"~{w:.3g} s ({n} runs)" for w, n in zip(levels.index, levels["runs"], strict=True)
            )
        )
        reason = (
            f"the delay cannot be learned from this history: {seen}; it takes at least two wait"
            f" levels with {min_runs} retried runs each. Keep the declared backoff."
        )
        return DelayEvidence(False, False, nan, levels, reason)
    table = np.vstack([usable["succeeded"], usable["runs"] - usable["succeeded"]])
    # no success or no failure at all: nothing to compare, the test has no p-value
    p_value = nan if (table.sum(axis=1) == 0).any() else float(stats.chi2_contingency(table)[1])
    rates = ", ".join(
        f"{r:.0%} of {n} after ~{w:.3g} s"
        for w, r, n in zip(usable.index, usable["success_rate"], usable["runs"], strict=True)
    )
    matters = bool(p_value < alpha)
    if matters:
        reason = f"the wait changes the first retry's success ({rates}; {_p(p_value)})"
    else:
        reason = (
            f"longer waits made no significant difference to the first retry ({rates};"
            f" {_p(p_value)}): the delay is not learned; keep the declared backoff"
        )
    return DelayEvidence(True, matters, p_value, levels, reason)


def _p(p_value: float) -> str:
    return "p < 1e-6" if p_value < 1e-6 else f"p = {p_value:.2g}"


def _round_seconds(values: np.ndarray) -> np.ndarray:
    """Two significant digits (times under 10 ms become 0): a few support points, not thousands."""
    out = np.zeros_like(values, dtype=float)
    finite = np.isfinite(values)
    out[~finite] = values[~finite]
    big = finite & (values >= 0.01)
    exponent = np.floor(np.log10(values[big])) - 1
    out[big] = np.round(values[big] / 10**exponent) * 10**exponent
    return out


def _turnbull(
    left: np.ndarray,
    right: np.ndarray,
    weights: np.ndarray,
    points: np.ndarray,
    start: np.ndarray | None = None,
    tol: float = 1e-8,
    max_iter: int = 5000,
) -> np.ndarray:
    """Turnbull's self-consistency (EM) estimate of the mass on `points` (last one: infinity).

    Observation i says T lies in (left_i, right_i]; weights are counts.
    """
    alpha = (points[None, :] > left[:, None]) & (points[None, :] <= right[:, None])
    empty = ~alpha.any(axis=1)  # rounding put left on right: the mass goes to right itself
    alpha[empty, np.searchsorted(points, right[empty])] = True
    a = alpha.astype(float)
    w = weights / weights.sum()
    p = np.full(len(points), 1 / len(points)) if start is None else start.copy()
    for _ in range(max_iter):
        new = p * ((w / (a @ p)) @ a)
        if np.max(np.abs(new - p)) < tol:
            return new
        p = new
    return p


def _recovery_curve(
    runs: pd.DataFrame, min_runs: int, confidence: float, seed: int = 0
) -> RecoveryCurve | None:
    """F(t) over elapsed time since the first failure, from the retried runs (see module doc)."""
    retried = runs[(runs["attempts"] >= 2) & runs["decided"] & runs["elapsed"].notna()]
    if retried.empty or not retried["completed"].any():
        return None
    recovered = retried["completed"].to_numpy()
    elapsed = _round_seconds(retried["elapsed"].to_numpy())
    before = _round_seconds(retried["elapsed_before"].to_numpy())
    left = np.where(recovered, before, elapsed)
    right = np.where(recovered, elapsed, np.inf)
    intervals = pd.DataFrame({"left": left, "right": right}).value_counts().reset_index()
    left, right = intervals["left"].to_numpy(), intervals["right"].to_numpy()
    counts = intervals["count"].to_numpy(dtype=float)
    grid = np.unique(right[np.isfinite(right)])
    points = np.append(grid, np.inf)
    mass = _turnbull(left, right, counts, points)
    rng = np.random.default_rng(seed)
    total = int(counts.sum())
    replicates = np.empty((BOOTSTRAP, len(grid)))
    for b in range(BOOTSTRAP):
        drawn = rng.multinomial(total, counts / total).astype(float)
        used = drawn > 0
        replicate = _turnbull(left[used], right[used], drawn[used], points, mass, tol=1e-6)
        replicates[b] = np.cumsum(replicate)[:-1]
    # runs still retrying at t: an attempt at or after t (recovered ones up to their success)
    still = (elapsed[None, :] >= grid[:, None]).sum(axis=1)  # last attempt at `elapsed`
    supported = grid[still >= min_runs]
    tail = (1 - confidence) / 2
    table = pd.DataFrame(
        {
            "still_retrying": still,
            "recovered_share": np.cumsum(mass)[:-1],
            "recovered_share_low": np.quantile(replicates, tail, axis=0),
            "recovered_share_high": np.quantile(replicates, 1 - tail, axis=0),
        },
        index=pd.Index(grid, name="elapsed_s"),
    ).astype(RECOVERY_COLUMNS)
    return RecoveryCurve(
        table=table,
        supported_s=float(supported.max()) if len(supported) else -1.0,
        never_share=float(mass[-1]),
        runs=len(retried),
        replicates=replicates,
    )


def fit_retry_models(
    task_runs: pd.DataFrame,
    *,
    min_runs: int = MIN_RUNS,
    confidence: float = 0.95,
    alpha: float = 0.05,
    fitted_at: datetime | None = None,
    steps: Sequence[str] | None = None,
) -> dict[str, RetryModel]:
    """A `RetryModel` per step (task name) with a finished run, from the history's task runs.

    Columns read: `task_name`, `state_type`, `run_count`; `start_time`,
    `end_time`, `duration_s` for the delay (without them the delay is not
    learnable); `error_type` for the final errors; `attempt_errors` when
    present for per-error-type hazards (see the module docstring). `steps`
    limits the fit to those step names. `alpha` is the significance level of
    the wait-level test. `fitted_at` defaults to now (UTC).
    """
    z_value(confidence)
    if min_runs < 1:
        raise ValueError(f"min_runs must be at least 1, got {min_runs}")
    fitted_at = fitted_at or datetime.now(UTC)
    runs = _runs(task_runs)
    if steps is not None:
        runs = runs[runs["step"].isin(list(steps))]
    with_errors = "attempt_errors" in runs.columns
    models: dict[str, RetryModel] = {}
    for step, everything in runs.groupby("step", sort=True):
        drift, latest = _drift(everything, min_runs)
        own = everything[latest]
        trials = _trials(own, with_errors)
        hazards = _hazard_table(trials, [], confidence)
        if drift is not None:
            widened = [
                drift.widen(lo, hi, h)
                for lo, hi, h in hazards[["hazard_low", "hazard_high", "hazard"]].itertuples(
                    index=False
                )
            ]
            hazards[["hazard_low", "hazard_high"]] = widened
        if with_errors:
            by_error = _hazard_table(trials[trials["attempt"] >= 2], ["error_type"], confidence)
        else:
            index = pd.MultiIndex.from_arrays([[], []], names=["error_type", "attempt"])
            by_error = pd.DataFrame(index=index, columns=list(HAZARD_COLUMNS)).astype(
                HAZARD_COLUMNS
            )
        failed = own[own["decided"] & ~own["completed"]]
        final_errors = failed["final_error"].fillna(UNKNOWN_ERROR).astype(str).value_counts()
        delay = _delay_evidence(own, min_runs, confidence, alpha)
        recovery = _recovery_curve(own, min_runs, confidence) if delay.matters else None
        models[str(step)] = RetryModel(
            step=str(step),
            hazards=hazards,
            by_error=by_error,
            final_errors=final_errors,
            delay=delay,
            recovery=recovery,
            runs=len(own),
            min_runs=min_runs,
            confidence=confidence,
            fitted_at=fitted_at,
            drift=drift,
        )
    return models


def _drift(runs: pd.DataFrame, min_runs: int) -> tuple[Drift | None, np.ndarray]:
    """`detect_drift` on one step's runs, by start time (none without start times)."""
    first_won = (runs["completed"] & (runs["attempts"] == 1)).to_numpy(bool)
    return detect_drift(runs.get("start", pd.Series(pd.NaT, index=runs.index)), first_won, min_runs)
