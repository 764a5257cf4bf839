"""Which failures repeat, which steps fail together, and whether failures cluster in time.

A failure is a finished task run in state FAILED or CRASHED; runs still in
progress never count. Every test here says how many runs it rests on, so a
pattern seen twice is not read as a law.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse, stats

from ._common import (
    FAILED_STATES,
    FINISHED_STATES,
    event_times,
    names,
    rate,
    require_columns,
    state_types,
)

_PLACEHOLDERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+"), "<url>"),
    (
        re.compile(
            r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"
        ),
        "<uuid>",
    ),
    (
        re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"),
        "<time>",
    ),
    # a quote that opens or closes inside a word is an apostrophe (can't), not a quote
    (re.compile(r"(?<!\w)'[^'\n]*'(?!\w)|(?<!\w)\"[^\"\n]*\"(?!\w)"), "<str>"),
    (re.compile(r"(?<![\w.])(?:[A-Za-z]:\\|\\\\)[^\s'\"<>]*"), "<path>"),
    (re.compile(r"(?<![\w:/.~])(?:~|\.{1,2})?(?:/[\w.\-@+%]+)+/?"), "<path>"),
    (re.compile(r"\b0[xX][0-9a-fA-F]+\b"), "<hex>"),
    (re.compile(r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b"), "<hex>"),
    # digits right after a letter are part of a name (s3, ipv4, http2) and stay
    (re.compile(r"(?<![A-Za-z])[-+]?\d+(?:[.,:]\d+)*"), "<num>"),
)
_SPACE = re.compile(r"\s+")


def message_template(message: str | None) -> str:
    """An error message with its variable parts replaced, so repeats of one error group together.

    URLs become `<url>`, UUIDs `<uuid>`, ISO timestamps `<time>`, quoted
    strings `<str>`, file paths `<path>`, hex ids (0x1f, or 8+ hex characters
    with a digit and a letter) `<hex>`, and numbers `<num>`; whitespace is
    collapsed. Digits glued to a letter (s3, ipv4) are kept as part of a name.
    The rules are applied until nothing changes, so a template is its own
    template. None gives "".
    """
    if message is None or (isinstance(message, float) and np.isnan(message)):
        return ""
    text = str(message)
    for _ in range(10):
        before = text
        for pattern, placeholder in _PLACEHOLDERS:
            text = pattern.sub(placeholder, text)
        text = _SPACE.sub(" ", text).strip()
        if text == before:
            break
    return text


def _failed_runs(task_runs: pd.DataFrame) -> pd.DataFrame:
    state = state_types(task_runs)
    return task_runs[state.isin(FAILED_STATES).fillna(False).to_numpy(dtype=bool)]


FAILURE_PATTERN_COLUMNS = [
    "task_name",
    "error_type",
    "template",
    "failures",
    "task_failures",
    "share",
    "flow_runs",
    "first_seen",
    "last_seen",
    "example",
]


def failure_patterns(task_runs: pd.DataFrame) -> pd.DataFrame:
    """Failed runs grouped by (task_name, error_type, message template), most frequent first.

    Input `task_runs`; the columns read are `task_name`, `flow_run_id`,
    `state_type`, `error_type` (str or None), `error_message` (str or None),
    `start_time` and `end_time`. A missing column raises a ValueError naming it.

    One row per pattern: `failures` (failed or crashed runs with it),
    `task_failures` (all failures of that step: the n of `share`), `share` =
    failures / task_failures, `flow_runs` (distinct flow runs it hit),
    `first_seen`/`last_seen` (run start, or end when the start is unknown)
    and `example`, the message of its latest occurrence. A missing error type
    or message is kept as its own group (NaN type, "" template).
    """
    require_columns(
        task_runs,
        (
            "task_name",
            "flow_run_id",
            "state_type",
            "error_type",
            "error_message",
            "start_time",
            "end_time",
        ),
        "task_runs",
    )
    failed = _failed_runs(task_runs)
    frame = pd.DataFrame(
        {
            "task_name": failed["task_name"],
            "error_type": failed["error_type"],
            "template": failed["error_message"].map(message_template).astype(object),
            "message": failed["error_message"],
            "flow_run_id": failed["flow_run_id"],
            "time": event_times(failed),
        }
    ).sort_values("time", na_position="first", kind="stable")
    if frame.empty:
        return pd.DataFrame(columns=FAILURE_PATTERN_COLUMNS).astype(
            {"failures": "int64", "task_failures": "int64", "flow_runs": "int64", "share": float}
        )
    grouped = frame.groupby(["task_name", "error_type", "template"], dropna=False, sort=False)
    result = grouped.agg(
        failures=("time", "size"),
        flow_runs=("flow_run_id", "nunique"),
        first_seen=("time", "min"),
        last_seen=("time", "max"),
        example=("message", "last"),
    ).reset_index()
    result["task_failures"] = result.groupby("task_name")["failures"].transform("sum")
    result["share"] = rate(result["failures"], result["task_failures"])
    result = result.sort_values(
        ["failures", "last_seen", "task_name"],
        ascending=[False, False, True],
        na_position="last",
        kind="stable",
    ).reset_index(drop=True)
    return result[FAILURE_PATTERN_COLUMNS]


CO_FAILURE_COLUMNS = [
    "step_a",
    "step_b",
    "flow_runs",
    "together",
    "a_only",
    "b_only",
    "neither",
    "lift",
    "p_value",
    "direct_dependency",
]


def co_failures(task_runs: pd.DataFrame) -> pd.DataFrame:
    """Pairs of steps that fail in the same flow run more often than chance would have them.

    Input `task_runs`; the columns read are `flow_run_id`, `task_name` and
    `state_type`, and, when present, `task_run_id` and `upstream` (list of
    upstream task run ids) to tell a direct dependency. A missing required
    column raises a ValueError naming it.

    Per flow run, a step ran if it has a finished task run there and failed if
    any of them FAILED or CRASHED (a mapped step has many). A pair is judged
    on the flow runs in which both ran (`flow_runs`, the n): `together`,
    `a_only`, `b_only` and `neither` count them by which of the two failed.
    `lift` = P(both fail) / (P(a fails) * P(b fails)) over those flow runs: 1
    is chance, 2 twice as often. `p_value` is Fisher's exact test, one-sided
    (they fail together more often than independent steps would).
    `direct_dependency` is True when one step is a direct upstream of the
    other in some run (a co-failure may then be a cascade), NA without the
    `upstream` column.

    Only pairs that failed together at least once with lift > 1 are returned,
    smallest p-value first; step_a < step_b by name.
    """
    require_columns(task_runs, ("flow_run_id", "task_name", "state_type"), "task_runs")
    state = state_types(task_runs)
    finished = state.isin(FINISHED_STATES).fillna(False).to_numpy(dtype=bool)
    runs = pd.DataFrame(
        {
            "flow_run": task_runs["flow_run_id"].astype(str),
            "task_name": task_runs["task_name"],
            "failed": state.isin(FAILED_STATES).fillna(False).astype(bool),
        }
    )[finished]
    runs = runs[runs["task_name"].notna()]
    flow_codes, _ = pd.factorize(runs["flow_run"])
    step_codes, steps = pd.factorize(runs["task_name"], sort=True)
    if len(steps) < 2:
        return _empty_co_failures()
    shape = (int(flow_codes.max()) + 1, len(steps))

    def indicator(mask: np.ndarray) -> sparse.csr_matrix:
        ones = np.ones(int(mask.sum()))
        matrix = sparse.csr_matrix((ones, (flow_codes[mask], step_codes[mask])), shape=shape)
        matrix.data[:] = 1.0  # several runs of a step in one flow run count once
        return matrix

    ran = indicator(np.ones(len(runs), dtype=bool))
    failed = indicator(runs["failed"].to_numpy(dtype=bool))
    both_ran = (ran.T @ ran).toarray()
    together = (failed.T @ failed).toarray()
    a_failed = (failed.T @ ran).toarray()  # [a, b]: a failed in a flow run where b ran
    b_failed = a_failed.T
    a, b = np.triu_indices(len(steps), k=1)
    pairs = pd.DataFrame(
        {
            "step_a": steps[a],
            "step_b": steps[b],
            "flow_runs": both_ran[a, b].astype("int64"),
            "together": together[a, b].astype("int64"),
            "a_failed": a_failed[a, b].astype("int64"),
            "b_failed": b_failed[a, b].astype("int64"),
        }
    )
    pairs = pairs[pairs["together"] > 0]
    pairs = pairs.assign(
        a_only=pairs["a_failed"] - pairs["together"],
        b_only=pairs["b_failed"] - pairs["together"],
        neither=pairs["flow_runs"] - pairs["a_failed"] - pairs["b_failed"] + pairs["together"],
        lift=pairs["together"] * pairs["flow_runs"] / (pairs["a_failed"] * pairs["b_failed"]),
    )
    pairs = pairs[pairs["lift"] > 1 + 1e-12]
    pairs = pairs.assign(
        p_value=stats.hypergeom.sf(
            pairs["together"] - 1, pairs["flow_runs"], pairs["a_failed"], pairs["b_failed"]
        ).astype(float),
        direct_dependency=_dependencies(task_runs, pairs),
    )
    pairs = pairs.sort_values(
        ["p_value", "together", "step_a", "step_b"],
        ascending=[True, False, True, True],
        kind="stable",
    )
    return pairs[CO_FAILURE_COLUMNS].reset_index(drop=True)


def _empty_co_failures() -> pd.DataFrame:
    return pd.DataFrame(columns=CO_FAILURE_COLUMNS).astype(
        {
            "flow_runs": "int64",
            "together": "int64",
            "a_only": "int64",
            "b_only": "int64",
            "neither": "int64",
            "lift": float,
            "p_value": float,
            "direct_dependency": "boolean",
        }
    )


def _dependencies(task_runs: pd.DataFrame, pairs: pd.DataFrame) -> pd.Series:
    """Whether either step of each pair feeds the other directly (from `upstream`)."""
    if "upstream" not in task_runs.columns or "task_run_id" not in task_runs.columns:
        return pd.Series(pd.NA, index=pairs.index, dtype="boolean")
    name_of = dict(zip(task_runs["task_run_id"].astype(str), task_runs["task_name"], strict=True))
    edges: set[frozenset[str]] = set()
    for name, upstream in zip(task_runs["task_name"], task_runs["upstream"], strict=True):
        for run_id in names(upstream):
            source = name_of.get(run_id)
            if source is not None and source != name:
                edges.add(frozenset((source, name)))
    linked = [
        frozenset((a, b)) in edges for a, b in zip(pairs["step_a"], pairs["step_b"], strict=True)
    ]
    return pd.Series(linked, index=pairs.index, dtype="boolean")


@dataclass(frozen=True, eq=False)
class Concentration:
    """Failures over the bins of one clock (hours of the day, or days of the week).

    `table` has, per bin, `runs`, `failures`, `failure_rate` (NaN without
    runs), `expected_failures` (if failures followed the runs' distribution:
    total failures * runs / total runs) and `ratio` = failures / expected.
    `chi2`, `dof` and `p_value` are the chi-square test of independence of
    failing and bin, over bins with runs; NaN when there is nothing to test
    (fewer than two bins with runs, or no failure or no success at all).
    `min_expected` is the smallest expected cell count: under 5 the p-value is
    a rough guide only. `runs` and `failures` are the totals (the n).
    """

    table: pd.DataFrame
    chi2: float
    dof: int
    p_value: float
    min_expected: float
    runs: int
    failures: int


@dataclass(frozen=True, eq=False)
class TimeConcentration:
    """Failures by hour of the day and by day of the week, each with its test."""

    hour: Concentration
    weekday: Concentration
    tz: str


_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def time_concentration(task_runs: pd.DataFrame, tz: str = "UTC") -> TimeConcentration:
    """Whether failures concentrate at some hours or weekdays more than the runs themselves do.

    Input `task_runs` (or `flow_runs`); the columns read are `state_type`,
    `start_time` and `end_time`. A missing column raises a ValueError naming
    it. A finished run is placed by its start (its end when the start is
    unknown) on the clock of `tz`.

    Comparing failures with all runs, not with a flat clock, is the point: if
    most jobs run at 02:00 most failures will too. The test is a chi-square
    test of the 2 x bins table (failed, not failed) x bin, which asks whether
    failures are spread over the bins as the runs are; a small p-value makes
    "failures concentrate at 02:00" a measured claim, and `ratio` shows where.
    """
    require_columns(task_runs, ("state_type", "start_time", "end_time"), "task_runs")
    state = state_types(task_runs)
    frame = pd.DataFrame(
        {"time": event_times(task_runs), "failed": state.isin(FAILED_STATES).fillna(False)}
    )
    finished = state.isin(FINISHED_STATES).fillna(False).to_numpy(dtype=bool)
    frame = frame[finished & frame["time"].notna().to_numpy(dtype=bool)]
    local = frame["time"].dt.tz_convert(tz)
    hours = _concentration(local.dt.hour, frame["failed"], pd.RangeIndex(24, name="hour"))
    days = pd.Series(np.asarray(_WEEKDAYS, dtype=object)[local.dt.dayofweek], index=frame.index)
    weekdays = _concentration(days, frame["failed"], pd.Index(_WEEKDAYS, name="weekday"))
    return TimeConcentration(hour=hours, weekday=weekdays, tz=tz)


def _concentration(bins: pd.Series, failed: pd.Series, index: pd.Index) -> Concentration:
    failed = failed.astype(bool)
    runs = bins.value_counts().reindex(index, fill_value=0).astype("int64")
    failures = bins[failed].value_counts().reindex(index, fill_value=0).astype("int64")
    total_runs, total_failures = int(runs.sum()), int(failures.sum())
    table = pd.DataFrame({"runs": runs, "failures": failures}, index=index)
    table["failure_rate"] = rate(table["failures"], table["runs"])
    table["expected_failures"] = (
        total_failures * table["runs"] / total_runs if total_runs else np.nan
    )
    table["ratio"] = rate(table["failures"], table["expected_failures"])
    observed = table[table["runs"] > 0]
    nan = float("nan")
    if len(observed) < 2 or total_failures == 0 or total_failures == total_runs:
        return Concentration(table, nan, 0, nan, nan, total_runs, total_failures)
    contingency = np.vstack(
        [observed["failures"].to_numpy(), (observed["runs"] - observed["failures"]).to_numpy()]
    )
    result = stats.chi2_contingency(contingency, correction=False)
    return Concentration(
        table=table,
        chi2=float(result.statistic),
        dof=int(result.dof),
        p_value=float(result.pvalue),
        min_expected=float(result.expected_freq.min()),
        runs=total_runs,
        failures=total_failures,
    )
