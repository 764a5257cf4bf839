"""What the analytics modules share: state sets, the column check, Wilson intervals, clean times.

Every function here takes the frames of the history contract as they come and
normalises them once: state types are upper-cased, timestamps are read as UTC,
and a duration is unknown (NaN) when it is negative or the clock skewed
(`end_time < start_time`), so one bad row never turns into a made-up number.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

FINISHED_STATES: frozenset[str] = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
"""Final state types: only runs in one of these count. RUNNING, PENDING, ... never do."""

FAILED_STATES: frozenset[str] = frozenset({"FAILED", "CRASHED"})
"""State types that count as a failure. CANCELLED is finished but not a failure."""

SHORT_CIRCUITED = "SHORT_CIRCUITED"
"""The state type analytics read for a task run an open circuit breaker settled without
calling the step (`error_type` "CircuitOpen"): neither finished nor failed, because the
step did not run. Counting it would charge the dependency's outage to the step again and
again, and propose retries the breaker refuses anyway."""

CIRCUIT_OPEN = "CircuitOpen"

COMPLETED = "COMPLETED"
CANCELLED = "CANCELLED"
PARTIAL_SUCCESS = "PartialSuccess"
"""The name of the COMPLETED state a resilient flow run ends in when it only partly succeeded."""

ALL = "all"
"""The index label of the single row a function returns when asked for no grouping."""


def require_columns(frame: Any, columns: Iterable[str], name: str) -> None:
    """Raise a ValueError naming every column of the contract that `frame` lacks."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        listed = ", ".join(repr(column) for column in missing)
        plural = "s" if len(missing) > 1 else ""
        raise ValueError(
            f"{name} is missing the required column{plural} {listed}"
            f" (it has: {', '.join(map(str, frame.columns)) or 'no columns'})"
        )


def state_types(frame: pd.DataFrame) -> pd.Series:
    """`state_type` upper-cased as plain strings; an enum member is read by its value.

    A task run short-circuited by an open circuit breaker reads `SHORT_CIRCUITED`.
    """
    column = frame["state_type"]
    # a handful of distinct values: normalise each once, then look them up (fast at 1M rows)
    normal = {v: str(getattr(v, "value", v)).upper() for v in column.dropna().unique()}
    types = column.map(normal).astype("string")
    if "error_type" in frame.columns:
        types = types.mask(frame["error_type"].eq(CIRCUIT_OPEN).fillna(False), SHORT_CIRCUITED)
    return types


def utc(series: pd.Series) -> pd.Series:
    """Timestamps as UTC; naive ones are taken to be UTC, unreadable ones become NaT."""
    return pd.to_datetime(series, utc=True, errors="coerce")


def durations(frame: pd.DataFrame) -> pd.Series:
    """`duration_s` as float seconds, NaN when unknown, negative, or the clock skewed.

    A row whose `end_time` is before its `start_time` has a clock problem: its
    duration is treated as unknown rather than trusted.
    """
    duration = pd.to_numeric(frame["duration_s"], errors="coerce").astype(float)
    skewed = (utc(frame["end_time"]) < utc(frame["start_time"])).fillna(False)
    bad = skewed.to_numpy(dtype=bool) | ~np.isfinite(duration.to_numpy()) | (duration < 0)
    return duration.mask(bad)


def event_times(frame: pd.DataFrame) -> pd.Series:
    """When a run happened: its `start_time`, or its `end_time` when the start is unknown."""
    return utc(frame["start_time"]).fillna(utc(frame["end_time"]))


def names(value: Any) -> list[str]:
    """A list-of-names cell as a list: None and NaN are empty, a lone string is one name."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, float) and np.isnan(value):
        return []
    return [str(item) for item in value]


def z_value(confidence: float) -> float:
    """The two-sided normal quantile for `confidence` (1.96 for 0.95)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    return float(stats.norm.ppf(0.5 + confidence / 2))


def wilson_interval(
    successes: Any, n: Any, confidence: float = 0.95
) -> tuple[np.ndarray | float, np.ndarray | float]:
    """The Wilson score interval of the proportion `successes / n`.

    Unlike the normal ("Wald") interval it stays inside [0, 1] and is not of
    zero width at 0 or n successes, which is what small samples of runs need.
    Where n is 0 both bounds are NaN. Scalars give floats, arrays give arrays.
    """
    z = z_value(confidence)
    k = np.asarray(successes, dtype=float)
    total = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / total
        denominator = 1 + z**2 / total
        centre = (p + z**2 / (2 * total)) / denominator
        half = z * np.sqrt(p * (1 - p) / total + z**2 / (4 * total**2)) / denominator
        low = np.where(k <= 0, 0.0, np.clip(centre - half, 0.0, 1.0))
        high = np.where(k >= total, 1.0, np.clip(centre + half, 0.0, 1.0))
    empty = ~(total > 0)
    low, high = np.where(empty, np.nan, low), np.where(empty, np.nan, high)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


def two_proportion_z(first_hits: Any, first_n: Any, second_hits: Any, second_n: Any) -> Any:
    """How many pooled standard errors the second proportion lies above the first.

    NaN where either sample is empty or the pooled proportion is 0 or 1 (every
    run alike: there is no difference to measure). Scalars give floats.
    """
    a, n = np.asarray(first_hits, dtype=float), np.asarray(first_n, dtype=float)
    b, m = np.asarray(second_hits, dtype=float), np.asarray(second_n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = (a + b) / (n + m)
        error = np.sqrt(pooled * (1 - pooled) * (1 / n + 1 / m))
        z = np.where(error > 0, (b / m - a / n) / error, np.nan)
    return float(z) if z.ndim == 0 else z


def rate(part: Any, n: Any) -> Any:
    """part / n, NaN where n is 0: a rate of nothing is unknown, not zero."""
    part_values = np.asarray(part, dtype=float)
    n_values = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        result = np.where(n_values > 0, part_values / n_values, np.nan)
    return float(result) if result.ndim == 0 else result
