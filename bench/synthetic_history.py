"""Synthetic run history with the loader's exact columns and dtypes, for the benchmarks.

`synthetic_history(flow_runs, steps, seed=...)` returns a `History` shaped as
`prefect_resilience.history.load_history` returns one: the columns of
TASK_RUN_COLUMNS / FLOW_RUN_COLUMNS / REPORT_COLUMNS in that order (checked
here, at generation time), start/end as datetime64[us, UTC] (NaT when
unknown), float `duration_s`, int64 `run_count`, pandas `str` text columns
(NaN when missing, as the loader's `from_records` makes them), bool
`critical`, lists in `tags` / `upstream` and the report lists, rows sorted by
start time with unknown starts last. With `check=True` a sample of the rows is
also written out as the cache's JSON records and read back by the loader's own
frame builder, which must give the same frame, dtypes included.

The model, vectorised with numpy (1,000,000 task runs in a few seconds):

- `flows` flows (names like "orders-etl"); each flow run belongs to one. Even
  flows are resilient (policy / critical / impact filled on their task runs,
  which carry the `resilience:*` tags of `@resilient(tag_runs=True)`, and a
  share of their runs has a report); odd ones are plain Prefect. Each flow has
  its own `steps` step (task) names.
- Every flow run that started has exactly one task run per step, so N flow
  runs x M steps give N*M task runs. Step 0 feeds chains of `chain` steps.
- Per (flow, step): a per-attempt transient failure probability (most steps
  ~1%, 15% flaky ones 5-30%), a persistent failure probability that retries
  do not cure (~0.7%, 5% of steps 2-8%), 0-3 retries, a retry delay, a
  lognormal attempt duration and a dominant exception type. `run_count` is
  the attempts used; a run fails when all its attempts failed (3% of the
  failures are CRASHED). Failures are twice as likely between 01:00 and
  03:00 UTC, and `degrading` steps fail `degrade_factor` times as often in
  the last `recent_days` days.
- In a plain flow a failed step leaves its downstream chain PENDING named
  "NotReady" (what Prefect 3 does with a task whose upstream failed). In a
  resilient flow failures are tolerated, except a critical or `fail_fast`
  step's, which terminates the run (flow FAILED, report "terminated"); its
  later steps are left PENDING "NotReady" too (a simplification: the package
  starts no further step, so those task runs would not exist; every measure
  skips unfinished runs either way, and this keeps N*M exact).
- The latest `in_progress` share of flow runs is RUNNING (one task RUNNING,
  the rest PENDING); `cancelled` / `crashed` shares of runs are cut at a
  random step. `clock_skew` of the finished runs end before they start.
- Reports (for `report_share` of the resilient flows' finished runs): status,
  health score from the impact weights (critical 1, major 0.6, minor 0.3,
  negligible 0.1; degraded counts half), stopped_by, and the function lists.

    python synthetic_history.py [--flow-runs 10000] [--steps 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import pandas as pd

from prefect_resilience.history import (
    FLOW_RUN_COLUMNS,
    REPORT_COLUMNS,
    TASK_RUN_COLUMNS,
    History,
    _frame,
)

END = pd.Timestamp("2026-01-05 12:00", tz="UTC")
FLOW_NAMES = ["orders-etl", "billing-sync", "inventory-refresh", "ml-features", "customer-360"]
VERBS = ["extract", "validate", "transform", "enrich", "load", "publish", "score", "notify"]
ERROR_TYPES = np.array(
    ["ConnectionError", "TimeoutError", "ValueError", "KeyError", "HTTPStatusError",
     "RuntimeError"], dtype=object,
)  # fmt: skip
TIMEOUT = 1  # index of TimeoutError: its runs end in a Failed state named TimedOut
POLICIES = ["continue", "partial_success", "graceful_degradation", "fail_fast"]
IMPACTS = ["major", "minor", "negligible"]
WEIGHTS = {"critical": 1.0, "major": 0.6, "minor": 0.3, "negligible": 0.1}
SERVICES = ["orders", "billing", "stock", "crm", "ledger", "catalog", "search"]
FIELDS = ["customer_id", "sku", "amount", "currency", "region", "order_id"]
CRASH_MESSAGES = [
    "Execution was cancelled by the runtime environment.",
    "Flow run infrastructure exited with non-zero status code 137.",
    "Task run was interrupted by the worker's shutdown.",
]

# state codes, and their Prefect state types and default state names
COMPLETED, FAILED, CRASHED, CANCELLED, RUNNING, PENDING = range(6)
STATE_TYPES = np.array(
    ["COMPLETED", "FAILED", "CRASHED", "CANCELLED", "RUNNING", "PENDING"], dtype=object
)
STATE_NAMES = np.array(
    ["Completed", "Failed", "Crashed", "Cancelled", "Running", "Pending"], dtype=object
)
NORMAL, IN_PROGRESS, CUT_CANCELLED, CUT_CRASHED = range(4)  # how a flow run ends
WORKING, TOLERATED, DEGRADED, UNAVAILABLE = range(4)  # a step's state in a report
NAT = np.iinfo(np.int64).min
US = 1_000_000  # microseconds per second


def _uuids(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random version-4 UUIDs as text (an object array), built without a Python loop."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    nibbles = np.empty((n, 32), dtype=np.uint8)
    nibbles[:, 0::2], nibbles[:, 1::2] = raw >> 4, raw & 0x0F
    chars = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[nibbles]
    text = np.full((n, 36), ord("-"), dtype=np.uint8)
    text[:, [i for i in range(36) if i not in (8, 13, 18, 23)]] = chars
    return text.view("S36").ravel().astype("U36").astype(object)


def _times(micros: np.ndarray) -> pd.Series:
    """int64 microseconds since the epoch (NAT for unknown) as datetime64[us, UTC]."""
    return pd.Series(micros.astype(np.int64).view("datetime64[us]")).dt.tz_localize("UTC")


def _text(values: np.ndarray) -> pd.Series:
    """Text as the loader's from_records infers it: `str` dtype, or object when all missing."""
    present = pd.notna(values)
    if not present.any():
        return pd.Series(values, dtype=object)
    return pd.Series(values, dtype="str")


def _lists(values: np.ndarray) -> pd.Series:
    """One fresh list per row (as the loader has), from an object array of tuples."""
    return pd.Series([list(v) for v in values], dtype=object)


def _error_messages(rng: np.random.Generator, kinds: np.ndarray) -> np.ndarray:
    """A realistic message per failure, with the variable parts real messages have."""
    n = len(kinds)
    a, b = rng.integers(1, 100_000, n), rng.integers(1, 10_000, n)
    svc = np.asarray(SERVICES, dtype=object)[rng.integers(0, len(SERVICES), n)]
    field = np.asarray(FIELDS, dtype=object)[rng.integers(0, len(FIELDS), n)]
    x = rng.uniform(0.5, 5000, n)
    ids = _uuids(rng, n)
    day = rng.integers(1, 29, n)
    out = np.empty(n, dtype=object)
    for i, (kind, ai, bi, si, fi, xi, ui, di) in enumerate(
        zip(kinds.tolist(), a.tolist(), b.tolist(), svc, field, x.tolist(), ids, day.tolist(),
            strict=True)
    ):  # fmt: skip
        if kind == 0:
            out[i] = (
                f"HTTPSConnectionPool(host='{si}.internal', port=443): Max retries exceeded "
                f"with url: /v1/{si}/{ai} (Caused by NewConnectionError('<urllib3.connection."
                f"HTTPSConnection object at 0x7f{bi:08x}>: Failed to establish a new "
                "connection: [Errno 111] Connection refused'))"
            )
        elif kind == 1:
            out[i] = f"Task run exceeded timeout of {30 * (1 + bi % 4)}.0 second(s)"
        elif kind == 2:
            out[i] = (
                f"row {ai} of s3://lake/{si}/dt=2025-12-{di:02d}/part-{bi:05d}.parquet: "
                f"column '{fi}' is negative ({-xi:.2f})"
            )
        elif kind == 3:
            out[i] = f"'{fi}'"
        elif kind == 4:
            out[i] = (
                f"Server error '503 Service Unavailable' for url "
                f"'https://api.{si}.example.com/v2/items?page={bi}'\nFor more information "
                "check: https://developer.mozilla.org/en-US/docs/Web/HTTP/Status/503"
            )
        else:
            out[i] = f"worker {ui} lost its lease on {si} after {xi:.1f}s"
    return out


def synthetic_history(
    flow_runs: int = 1000,
    steps: int = 100,
    *,
    flows: int = 4,
    seed: int = 0,
    days: float = 60.0,
    end: pd.Timestamp = END,
    fail_scale: float = 1.0,
    in_progress: float = 0.003,
    cancelled: float = 0.001,
    crashed: float = 0.002,
    clock_skew: float = 0.002,
    report_share: float = 0.8,
    degrading: int = 3,
    degrade_factor: float = 3.0,
    recent_days: float = 7.0,
    chain: int = 5,
    check: bool = True,
) -> History:
    """N flow runs x M steps of history (see the module docstring for the model)."""
    if flow_runs < 1 or steps < 1 or flows < 1 or chain < 1:
        raise ValueError("flow_runs, steps, flows and chain must be at least 1")
    rng = np.random.default_rng(seed)
    n, m, f = flow_runs, steps, flows

    # --- per flow and per (flow, step) ------------------------------------------------
    flow_names = np.array(
        [FLOW_NAMES[i % len(FLOW_NAMES)] + (f"-{i // len(FLOW_NAMES)}" if i >= len(FLOW_NAMES)
         else "") for i in range(f)], dtype=object,
    )  # fmt: skip
    resilient = np.arange(f) % 2 == 0
    prefixes = [name.split("-")[0].replace(".", "_") + (str(i) if i >= 5 else "")
                for i, name in enumerate(flow_names)]  # fmt: skip
    step_names = np.array(
        [[f"{p}_{VERBS[j % len(VERBS)]}_{j:03d}" for j in range(m)] for p in prefixes],
        dtype=object,
    )
    key_hash = rng.integers(0, 16**8, size=(f, m))
    task_keys = np.array(
        [[f"{step_names[i, j]}-{key_hash[i, j]:08x}" for j in range(m)] for i in range(f)],
        dtype=object,
    )
    critical = rng.random((f, m)) < 0.05
    critical[:, 0] = True
    critical &= resilient[:, None]
    policy_codes = rng.choice(4, size=(f, m), p=[0.4, 0.25, 0.3, 0.05])
    policy = np.asarray(POLICIES, dtype=object)[policy_codes]
    policy[critical] = "partial_success"
    impact = np.asarray(IMPACTS, dtype=object)[rng.choice(3, size=(f, m), p=[0.3, 0.5, 0.2])]
    impact[critical] = "critical"
    policy[~resilient], impact[~resilient] = None, None
    tags = np.empty((f, m), dtype=object)
    for i in range(f):
        for j in range(m):
            if resilient[i]:
                own = [f"resilience:{policy[i, j]}", f"resilience:impact:{impact[i, j]}"]
                tags[i, j] = tuple(sorted(own + (["resilience:critical"] if critical[i, j]
                                                 else [])))  # fmt: skip
            else:
                tags[i, j] = ()
    weights = np.vectorize(lambda v: WEIGHTS.get(v, 0.0), otypes=[float])(impact)
    flaky = rng.random((f, m)) < 0.15
    p_attempt = np.where(flaky, rng.uniform(0.05, 0.3, (f, m)), rng.beta(1, 80, (f, m)))
    bad = rng.random((f, m)) < 0.05
    p_final = np.where(bad, rng.uniform(0.02, 0.08, (f, m)), rng.beta(1, 150, (f, m)))
    p_attempt, p_final = p_attempt * fail_scale, p_final * fail_scale
    retries = rng.choice(4, size=(f, m), p=[0.25, 0.35, 0.3, 0.1])
    retry_delay = rng.choice([0.0, 2.0, 10.0], size=(f, m))
    mu, sigma = np.log(rng.uniform(0.2, 20, (f, m))), rng.uniform(0.3, 0.9, (f, m))
    main_error = rng.integers(0, len(ERROR_TYPES), (f, m))
    degrading_cells = rng.choice(f * m, size=min(degrading, f * m), replace=False)
    deployments = _uuids(rng, f)

    # --- flow runs: which flow, when, how they end --------------------------------------
    flow = rng.integers(0, f, n)
    end_us = end.value // 1000
    start_us = np.sort(end_us - (rng.random(n) * days * 86400 * US).astype(np.int64))
    kind = np.full(n, NORMAL)
    draw = rng.random(n)
    kind[draw < cancelled + crashed] = CUT_CRASHED
    kind[draw < cancelled] = CUT_CANCELLED
    n_running = min(n, max(1, round(n * in_progress))) if in_progress > 0 else 0
    if n_running:
        kind[n - n_running :] = IN_PROGRESS  # the latest runs, started in the last 10 minutes
        start_us[n - n_running :] = end_us - np.sort(rng.uniform(1, 600, n_running) * US)[::-1]
    flow_run_ids = _uuids(rng, n)

    # --- attempts and outcomes per task run (n x m) -------------------------------------
    p = p_attempt[flow].copy()
    q = p_final[flow].copy()
    hour = (start_us // (3600 * US)) % 24
    nightly = (hour >= 1) & (hour < 3)
    p[nightly] *= 2
    q[nightly] *= 2
    recent = start_us > end_us - int(recent_days * 86400 * US)
    for cell in degrading_cells:
        rows = recent & (flow == cell // m)
        p[rows, cell % m] *= degrade_factor
        q[rows, cell % m] *= degrade_factor
    p, q = np.clip(p, 0, 0.95), np.clip(q, 0, 1)
    allowed = retries[flow] + 1
    until_success = rng.geometric(1 - p)
    persistent = rng.random((n, m)) < q
    run_count = np.where(persistent, allowed, np.minimum(until_success, allowed))
    failed = persistent | (until_success > allowed)
    state = np.where(failed, FAILED, COMPLETED).astype(np.int8)
    state[failed & (rng.random((n, m)) < 0.03)] = CRASHED

    # blocked: never ran (PENDING, "NotReady") because an upstream failed or the run stopped
    upstream = np.array([-1] + [0 if (j - 1) % chain == 0 else j - 1 for j in range(1, m)])
    blocked = np.zeros((n, m), dtype=bool)
    plain_run = ~resilient[flow]
    for j in range(1, m):
        u = upstream[j]
        blocked[:, j] = plain_run & (failed[:, u] | blocked[:, u])
    stopper = failed & (critical[flow] | (policy[flow] == "fail_fast"))
    stops = stopper.any(axis=1)
    first_stop = np.where(stops, stopper.argmax(axis=1), m)
    column = np.arange(m)[None, :]
    blocked |= column > first_stop[:, None]

    # runs in progress, cancelled or crashed: cut at a step no later than the first stop
    cut_run = kind != NORMAL
    cut = (rng.random(n) * (np.minimum(first_stop, m - 1) + 1)).astype(np.int64)
    after = cut_run[:, None] & (column > cut[:, None])
    at = cut_run[:, None] & (column == cut[:, None]) & ~blocked
    not_ready = blocked & ~after
    state[blocked | after] = PENDING
    for which, code in ((IN_PROGRESS, RUNNING), (CUT_CANCELLED, CANCELLED),
                        (CUT_CRASHED, CRASHED)):  # fmt: skip
        state[at & (kind == which)[:, None]] = code
    run_count = np.where(state == PENDING, 0, np.where(at, 1, run_count)).astype(np.int64)
    finished = state <= CANCELLED
    started = finished | (state == RUNNING)
    failed = (state == FAILED) | (state == CRASHED)

    # --- times ---------------------------------------------------------------------------
    attempt = rng.lognormal(mu[flow], sigma[flow])
    duration = np.where(finished, attempt * run_count, np.where(state == RUNNING, 0.0, np.nan))
    wall = np.where(finished, duration + (run_count - 1) * retry_delay[flow], 0.0)
    advance = np.where(started, wall + rng.uniform(0.01, 0.3, (n, m)), 0.0)
    offset = np.cumsum(advance, axis=1) - advance + 0.5
    task_start = np.where(started, start_us[:, None] + (offset * US).astype(np.int64), NAT)
    true_end = task_start + (wall * US).astype(np.int64)
    task_end = np.where(finished, true_end, NAT)
    skewed = finished & (rng.random((n, m)) < clock_skew)
    task_end[skewed] = task_start[skewed] - (rng.uniform(0.5, 300, skewed.sum()) * US).astype(
        np.int64
    )

    # --- flow run outcomes -----------------------------------------------------------------
    status = np.where(failed, np.select(
        [policy[flow] == "continue", policy[flow] == "graceful_degradation"],
        [TOLERATED, DEGRADED], UNAVAILABLE), WORKING)  # fmt: skip
    counted = finished & (state != CANCELLED)  # a cancelled step has no outcome in a report
    partial = ((status >= DEGRADED) & counted).any(axis=1)
    terminated = (kind == NORMAL) & stops
    any_failed = failed.any(axis=1)
    flow_state = np.select(
        [kind == IN_PROGRESS, kind == CUT_CANCELLED, kind == CUT_CRASHED,
         terminated | (plain_run & any_failed)],
        [RUNNING, CANCELLED, CRASHED, FAILED], COMPLETED,
    )  # fmt: skip
    flow_state_name = STATE_NAMES[flow_state].copy()
    flow_state_name[(flow_state == COMPLETED) & resilient[flow] & partial] = "PartialSuccess"
    last_end = np.where(finished, true_end, NAT).max(axis=1)
    flow_end = np.where(last_end == NAT, start_us + US, last_end) + int(0.3 * US)
    flow_end = np.where(kind == IN_PROGRESS, NAT, flow_end)
    flow_duration = np.where(kind == IN_PROGRESS, 0.0, (flow_end - start_us) / US)
    flow_skewed = (kind != IN_PROGRESS) & (rng.random(n) < clock_skew)
    flow_end[flow_skewed] = start_us[flow_skewed] - int(5 * US)

    # --- the task runs frame ---------------------------------------------------------------
    rows = n * m
    flat_flow = np.repeat(flow, m)
    task_run_ids = _uuids(rng, rows)
    flat_state = state.ravel()
    task_names = step_names[flow].ravel()
    hex3 = np.array([f"{i:03x}" for i in range(4096)], dtype=object)
    state_names = STATE_NAMES[flat_state].copy()
    state_names[not_ready.ravel()] = "NotReady"
    error_type = np.full(rows, None, dtype=object)
    error_message = np.full(rows, None, dtype=object)
    wrong = np.flatnonzero((flat_state == FAILED) | (flat_state == CRASHED)
                           | (flat_state == CANCELLED))  # fmt: skip
    codes = flat_state[wrong]
    chosen = np.where(rng.random(len(wrong)) < 0.8, main_error[flow].ravel()[wrong],
                      rng.integers(0, len(ERROR_TYPES), len(wrong)))  # fmt: skip
    is_failed = codes == FAILED
    error_type[wrong[is_failed]] = ERROR_TYPES[chosen[is_failed]]
    error_message[wrong[is_failed]] = _error_messages(rng, chosen[is_failed])
    state_names[wrong[is_failed & (chosen == TIMEOUT)]] = "TimedOut"
    crash_rows = wrong[codes == CRASHED]
    error_type[crash_rows] = "Crashed"
    error_message[crash_rows] = np.asarray(CRASH_MESSAGES, dtype=object)[
        rng.integers(0, len(CRASH_MESSAGES), len(crash_rows))
    ]
    cancel_rows = wrong[codes == CANCELLED]
    error_type[cancel_rows] = "Cancelled"
    error_message[cancel_rows] = "The parent flow run was cancelled."
    upstream_rows = (np.arange(n)[:, None] * m + np.maximum(upstream, 0)[None, :]).ravel()
    has_upstream = np.tile(upstream >= 0, n)
    upstream_ids = task_run_ids[upstream_rows]
    task_runs = pd.DataFrame(
        {
            "task_run_id": _text(task_run_ids),
            "flow_run_id": _text(np.repeat(flow_run_ids, m)),
            "flow_name": _text(flow_names[flat_flow]),
            "task_name": _text(task_names),
            "task_run_name": _text(task_names + "-" + hex3[rng.integers(0, 4096, rows)]),
            "task_key": _text(task_keys[flow].ravel()),
            "state_type": _text(STATE_TYPES[flat_state]),
            "state_name": _text(state_names),
            "run_count": run_count.ravel(),
            "start_time": _times(task_start.ravel()),
            "end_time": _times(task_end.ravel()),
            "duration_s": duration.ravel().astype(float),
            "tags": _lists(tags[flow].ravel()),
            "policy": _text(policy[flow].ravel()),
            "critical": critical[flow].ravel().astype(bool),
            "impact": _text(impact[flow].ravel()),
            "error_type": _text(error_type),
            "error_message": _text(error_message),
            "upstream": pd.Series(
                [[u] if h else [] for u, h in zip(upstream_ids, has_upstream, strict=True)],
                dtype=object,
            ),
        }
    )
    task_runs = _sorted(task_runs, task_start.ravel())

    # --- the flow runs frame -----------------------------------------------------------------
    deployment = deployments[flow].copy()
    deployment[rng.random(n) < 0.1] = None  # ad hoc runs, from no deployment
    flow_tags = [("env:prod", "team:data") if resilient[i] else ("env:prod",) for i in flow]
    flow_frame = pd.DataFrame(
        {
            "flow_run_id": _text(flow_run_ids),
            "flow_name": _text(flow_names[flow]),
            "deployment_id": _text(deployment),
            "state_type": _text(STATE_TYPES[flow_state]),
            "state_name": _text(flow_state_name),
            "start_time": _times(start_us),
            "end_time": _times(flow_end),
            "duration_s": flow_duration.astype(float),
            "tags": pd.Series([list(t) for t in flow_tags], dtype=object),
        }
    )
    flow_frame = _sorted(flow_frame, start_us)

    # --- reports -------------------------------------------------------------------------------
    reported = np.flatnonzero(
        resilient[flow]
        & ((kind == NORMAL) | (kind == CUT_CRASHED))
        & (rng.random(n) < report_share)
    )
    credit = np.select([status == WORKING, status == DEGRADED], [1.0, 0.5], 0.0)
    w = weights[flow] * counted
    with np.errstate(invalid="ignore", divide="ignore"):
        health = np.where(w.sum(axis=1) > 0, (w * credit).sum(axis=1) / w.sum(axis=1), 1.0)
    report_rows: dict[str, list[Any]] = {column: [] for column in REPORT_COLUMNS}
    for i in reported:
        names, own, seen = step_names[flow[i]], status[i], counted[i]
        if kind[i] == CUT_CRASHED:
            overall, stopped_by = "crashed", None
        elif terminated[i]:
            overall = "terminated"
            fail_fast = policy[flow[i], first_stop[i]] == "fail_fast"
            stopped_by = "fail_fast" if fail_fast else "critical_step_ratio"
        else:
            overall, stopped_by = ("partial_success" if partial[i] else "completed"), None
        report_rows["flow_run_id"].append(flow_run_ids[i])
        report_rows["overall_status"].append(overall)
        report_rows["health_score"].append(float(health[i]))
        report_rows["stopped_by"].append(stopped_by)
        for column, code in (("working", WORKING), ("degraded", DEGRADED),
                             ("unavailable", UNAVAILABLE), ("tolerated", TOLERATED)):  # fmt: skip
            report_rows[column].append(sorted(names[seen & (own == code)].tolist()))
    reports = pd.DataFrame(
        {
            column: (
                _text(np.array(values, dtype=object))
                if column in ("flow_run_id", "overall_status", "stopped_by")
                else pd.Series(values, dtype=float if column == "health_score" else object)
            )
            for column, values in report_rows.items()
        }
    )

    history = History(flow_frame, task_runs, reports)
    _check_columns(history)
    if check:
        check_against_loader(history)
    return history


def _sorted(frame: pd.DataFrame, starts: np.ndarray) -> pd.DataFrame:
    """By start time (int64 microseconds, NAT unknown), unknown last, as the loader orders."""
    order = np.argsort(np.where(starts == NAT, np.iinfo(np.int64).max, starts), kind="stable")
    return frame.take(order).reset_index(drop=True)


def _check_columns(history: History) -> None:
    for frame, columns, name in (
        (history.task_runs, TASK_RUN_COLUMNS, "task_runs"),
        (history.flow_runs, FLOW_RUN_COLUMNS, "flow_runs"),
        (history.reports, REPORT_COLUMNS, "reports"),
    ):
        if list(frame.columns) != list(columns):
            raise AssertionError(f"{name} columns {list(frame.columns)} != {list(columns)}")


def _record(row: dict[str, Any]) -> dict[str, Any]:
    """A frame row as the cache stores it: ISO times, None for missing, plain lists."""
    out = {}
    for key, value in row.items():
        if isinstance(value, pd.Timestamp):
            value = value.isoformat()
        elif isinstance(value, list):
            value = list(value)
        elif value is None or (not isinstance(value, str | bool) and pd.isna(value)):
            value = None
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def check_against_loader(history: History, sample: int = 300, seed: int = 0) -> None:
    """Rows written out as the cache's records and read back by the loader give the same frame.

    The sample takes random rows plus, per column, a few rows where it is not
    missing, so a column is all-missing in the sample only when it is in the frame
    (pandas infers a text column's dtype from whether it has any text).
    """
    rng = np.random.default_rng(seed)
    for frame, columns, name in (
        (history.task_runs, TASK_RUN_COLUMNS, "task_runs"),
        (history.flow_runs, FLOW_RUN_COLUMNS, "flow_runs"),
        (history.reports, REPORT_COLUMNS, "reports"),
    ):
        if frame.empty:
            continue
        picked = set(rng.choice(len(frame), size=min(sample, len(frame)), replace=False).tolist())
        for column in columns:
            present = np.flatnonzero(frame[column].notna().to_numpy())
            picked.update(present[:3].tolist())
            missing = np.flatnonzero(frame[column].isna().to_numpy())
            picked.update(missing[:3].tolist())
        part = frame.iloc[sorted(picked)]
        records = [_record(r) for r in part.to_dict("records")]
        loaded = _frame(records, columns)
        mine = part.reset_index(drop=True)
        key = columns[0]
        loaded = loaded.sort_values(key).reset_index(drop=True)
        mine = mine.sort_values(key).reset_index(drop=True)
        if dict(loaded.dtypes) != dict(mine.dtypes):
            diff = {
                c: (str(mine[c].dtype), str(loaded[c].dtype))
                for c in columns
                if mine[c].dtype != loaded[c].dtype
            }
            raise AssertionError(f"{name}: dtypes differ from the loader's (mine, loader): {diff}")
        pd.testing.assert_frame_equal(mine, loaded, obj=name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flow-runs", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    history = synthetic_history(args.flow_runs, args.steps, seed=args.seed, check=False)
    built = time.perf_counter() - started
    started = time.perf_counter()
    check_against_loader(history)
    checked = time.perf_counter() - started
    tasks, flows = history.task_runs, history.flow_runs
    print(
        f"{len(tasks):,} task runs, {len(flows):,} flow runs, {len(history.reports):,} reports "
        f"built in {built:.2f} s (loader check {checked:.2f} s)"
    )
    print("task run states:", tasks["state_type"].value_counts().to_dict())
    print("flow run states:", flows["state_name"].value_counts().to_dict())
    print("report statuses:", history.reports["overall_status"].value_counts().to_dict())
    finished = tasks["state_type"].isin(["COMPLETED", "FAILED", "CRASHED", "CANCELLED"])
    failures = tasks["state_type"].isin(["FAILED", "CRASHED"])
    print(f"task failure rate {failures.sum() / finished.sum():.4f}; dtypes:")
    print(tasks.dtypes.to_string())


if __name__ == "__main__":
    main()
