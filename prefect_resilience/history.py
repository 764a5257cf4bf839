"""Run history from the Prefect API, as pandas frames, with an incremental local cache.

Prefect already stores every flow run and task run; this module reads them
(and this package's run reports, where there are any) into three frames whose
columns are documented below, for the pure `analytics` package. It works on
plain Prefect history too: columns this package adds are then empty.

The cache is one JSON file per server and flow filter under the Prefect home
(`<PREFECT_HOME>/prefect-resilience/cache/`), readable by the user only. A
finished run never changes, so a repeat analysis lists the recent flow runs
and fetches task runs and reports only for runs it has not seen finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pandas as pd

from prefect_resilience.local_store import write_private
from prefect_resilience.report import REPORT_TYPE

logger = logging.getLogger("prefect_resilience.history")

FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
PAGE = 200
ID_BATCH = 50
REFETCH_MARGIN = timedelta(hours=1)
CACHE_VERSION = 2  # 2: reports carry their loops

FLOW_RUN_COLUMNS = [
    "flow_run_id", "flow_name", "deployment_id", "state_type", "state_name",
    "start_time", "end_time", "duration_s", "tags",
]  # fmt: skip
TASK_RUN_COLUMNS = [
    "task_run_id", "flow_run_id", "flow_name", "task_name", "task_run_name", "task_key",
    "state_type", "state_name", "run_count", "start_time", "end_time", "duration_s", "tags",
    "policy", "critical", "impact", "error_type", "error_message", "upstream",
]  # fmt: skip
REPORT_COLUMNS = [
    "flow_run_id", "overall_status", "health_score", "stopped_by",
    "working", "degraded", "unavailable", "tolerated", "loops",
]  # fmt: skip


@dataclass
class History:
    """Three frames of run history.

    flow_runs: flow_run_id, flow_name, deployment_id, state_type, state_name
      (a `PartialSuccess` run is state_type COMPLETED), start_time, end_time
      (UTC; NaT while unknown), duration_s, tags.
    task_runs: task_run_id, flow_run_id, flow_name, task_name, task_run_name,
      task_key, state_type, state_name, run_count (attempts), start_time,
      end_time, duration_s, tags, policy / critical / impact (as the run's
      report recorded them, or from `tag_runs` tags; None / False on plain
      tasks), error_type, error_message
      (from the state message; error_type "CircuitOpen" for a run an open
      circuit breaker settled without calling the step, which analytics read
      as short-circuited, not as a failure of the step), upstream (task_run_ids
      from task_inputs).
    reports: one row per run with a resilience report: flow_run_id,
      overall_status, health_score, stopped_by, and the function names by
      status: working, degraded, unavailable, tolerated.
    """

    flow_runs: pd.DataFrame
    task_runs: pd.DataFrame
    reports: pd.DataFrame
    fetched_flow_runs: int = 0  # how many flow runs needed their details fetched


def parse_since(text: str | None, now: datetime | None = None) -> datetime | None:
    """'7d', '12h', '30m', '2w' or an ISO date/time, as a UTC datetime."""
    if text is None:
        return None
    now = now or datetime.now(UTC)
    match = re.fullmatch(r"\s*(\d+)\s*([mhdw])\s*", text)
    if match:
        unit = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[match.group(2)]
        return now - timedelta(**{unit: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: use e.g. 7d, 12h, 30m, 2w or an ISO date") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- records: what the cache keeps (JSON), built from Prefect's objects ------------------


_EXCEPTION = re.compile(r"exception (?P<type>[A-Za-z_][\w.]*):\s*(?P<message>.*)$", re.S)


def _error(state: Any) -> tuple[str | None, str | None]:
    if state is None or state.type.value in ("COMPLETED", "RUNNING", "PENDING", "SCHEDULED"):
        return None, None
    message = state.message or ""
    match = _EXCEPTION.search(message)
    if match:
        return match.group("type").rsplit(".", 1)[-1], match.group("message")[:500]
    if state.name == "TimedOut":
        return "TimeoutError", message[:500]
    return state.name, message[:500] or None


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _seconds(delta: timedelta | None) -> float | None:
    return delta.total_seconds() if delta is not None else None


def task_name_of(run: Any) -> str:
    """The task's name: Prefect names a run '<task name>-<3 chars of its dynamic key>'."""
    suffix = f"-{str(run.dynamic_key)[:3]}"
    if run.name and run.name.endswith(suffix):
        return run.name[: -len(suffix)]
    return run.task_key.rsplit("-", 1)[0] if run.task_key else run.name


def _resilience_tags(tags: Iterable[str]) -> tuple[str | None, bool, str | None]:
    policy, impact, critical = None, None, False
    for tag in tags:
        if tag == "resilience:critical":
            critical = True
        elif tag.startswith("resilience:impact:"):
            impact = tag.removeprefix("resilience:impact:")
        elif tag.startswith("resilience:"):
            policy = tag.removeprefix("resilience:")
    return policy, critical, impact


def task_run_record(run: Any, flow_name: str) -> dict[str, Any]:
    state = run.state
    error_type, error_message = _error(state)
    policy, critical, impact = _resilience_tags(run.tags or [])
    upstream = sorted(
        {
            str(item.id)
            for inputs in (run.task_inputs or {}).values()
            for item in inputs
            if getattr(item, "input_type", None) == "task_run"
        }
    )
    return {
        "task_run_id": str(run.id),
        "flow_run_id": str(run.flow_run_id) if run.flow_run_id else None,
        "flow_name": flow_name,
        "task_name": task_name_of(run),
        "task_run_name": run.name,
        "task_key": run.task_key,
        "state_type": state.type.value if state else None,
        "state_name": state.name if state else None,
        "run_count": run.run_count,
        "start_time": _iso(run.start_time),
        "end_time": _iso(run.end_time),
        "duration_s": _seconds(run.total_run_time) if run.start_time else None,
        "tags": sorted(run.tags or []),
        "policy": policy,
        "critical": critical,
        "impact": impact,
        "error_type": error_type,
        "error_message": error_message,
        "upstream": upstream,
    }


def flow_run_record(run: Any, flow_name: str) -> dict[str, Any]:
    state = run.state
    return {
        "flow_run_id": str(run.id),
        "flow_name": flow_name,
        "deployment_id": str(run.deployment_id) if run.deployment_id else None,
        "state_type": state.type.value if state else None,
        "state_name": state.name if state else None,
        "state_id": str(run.state_id) if run.state_id else None,
        "expected_start_time": _iso(run.expected_start_time),
        "start_time": _iso(run.start_time),
        "end_time": _iso(run.end_time),
        "duration_s": _seconds(run.total_run_time) if run.start_time else None,
        "tags": sorted(run.tags or []),
    }


def report_record(data: Any) -> dict[str, Any]:
    """The report columns of a resilience report artifact; ValueError if it is not one."""
    if not isinstance(data, dict) or "overall_status" not in data:
        raise ValueError("not a resilience report")
    impact = data.get("business_impact") or {}
    health = data.get("health") or {}
    steps = {
        str(step["task_run_id"]): [step.get("policy"), bool(step.get("critical")),
                                   step.get("impact")]
        for step in data.get("steps") or []
        if isinstance(step, dict) and step.get("task_run_id")
    }  # fmt: skip
    return {
        "flow_run_id": str(data.get("flow_run_id")),
        "steps": steps,  # policy, critical, impact per task run, as the run applied them
        "overall_status": data.get("overall_status"),
        "health_score": health.get("health_score"),
        "stopped_by": health.get("stopped_by"),
        "working": impact.get("working_functions", impact.get("critical_functions", [])),
        "degraded": impact.get("degraded_functions", []),
        "unavailable": impact.get("unavailable_functions", []),
        "tolerated": impact.get("tolerated_functions", []),
        "loops": [loop for loop in data.get("loops") or [] if isinstance(loop, dict)],
    }


# --- the cache ---------------------------------------------------------------------------


@dataclass
class Cache:
    path: Path
    covered_from: str | None = None  # ISO time: runs expected from here on are all known
    flow_runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    task_runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by flow run
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def location(cls, api_url: str, flow_name: str | None) -> Path:
        from prefect.settings import PREFECT_HOME

        key = hashlib.sha256(f"{api_url}|{flow_name or '*'}".encode()).hexdigest()[:20]
        return Path(PREFECT_HOME.value()) / "prefect-resilience" / "cache" / f"{key}.json"

    @classmethod
    def load(cls, path: Path) -> Cache:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("version") != CACHE_VERSION:
                return cls(path)
            return cls(path, data["covered_from"], data["flow_runs"], data["task_runs"],
                       data["reports"])  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            return cls(path)  # no cache, or one we cannot read: start afresh

    def save(self) -> None:
        """Write atomically, readable by the user only (run data can be sensitive)."""
        document = {
            "version": CACHE_VERSION,
            "covered_from": self.covered_from,
            "flow_runs": self.flow_runs,
            "task_runs": self.task_runs,
            "reports": self.reports,
        }
        write_private(self.path, json.dumps(document))


# --- reading the API ---------------------------------------------------------------------


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _paged(read: Any, **kwargs: Any) -> Iterator[Any]:
    offset = 0
    while True:
        page = read(offset=offset, limit=PAGE, **kwargs)
        yield from page
        if len(page) < PAGE:
            return
        offset += len(page)


def load_history(
    flow_name: str | None = None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    deployment_id: str | None = None,
    tags: Sequence[str] = (),
    refresh: bool = False,
    progress: bool = False,
) -> History:
    """Read run history from the Prefect API (through the cache unless `refresh`).

    Runs are selected by their expected start time in [since, until); tags
    must all be present on the flow run.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
    )
    from prefect.settings import PREFECT_API_URL

    since = since or datetime(1970, 1, 1, tzinfo=UTC)
    cache_path = Cache.location(str(PREFECT_API_URL.value() or "ephemeral"), flow_name)
    cache = Cache(cache_path) if refresh else Cache.load(cache_path)
    covered = cache.covered_from is not None and cache.covered_from <= since.isoformat()
    if covered:
        known_final = [
            datetime.fromisoformat(r["expected_start_time"])
            for r in cache.flow_runs.values()
            if r["state_type"] in FINAL_STATES and r.get("expected_start_time")
        ]
        start = max(known_final, default=since) - REFETCH_MARGIN
        start = max(start, since)
    else:
        start = since
    fetched = 0
    with get_client(sync_client=True) as client:
        flow_names: dict[UUID, str] = {}

        def name_of(flow_id: UUID) -> str:
            if flow_id not in flow_names:
                flow_names[flow_id] = client.read_flow(flow_id).name
            return flow_names[flow_id]

        listed = list(
            _paged(
                client.read_flow_runs,
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name]))
                if flow_name
                else None,
                flow_run_filter=FlowRunFilter(
                    expected_start_time=FlowRunFilterExpectedStartTime(after_=start)
                ),
            )
        )
        unfinished = [
            UUID(i) for i, r in cache.flow_runs.items() if r["state_type"] not in FINAL_STATES
        ]
        for ids in _chunks(unfinished, ID_BATCH):
            listed.extend(client.read_flow_runs(flow_run_filter=FlowRunFilter(id={"any_": ids})))
        stale = []
        for run in listed:
            record = flow_run_record(run, name_of(run.flow_id))
            old = cache.flow_runs.get(record["flow_run_id"])
            if (
                old is None
                or old["state_id"] != record["state_id"]
                or old["state_type"] not in (FINAL_STATES)
            ):
                stale.append(run.id)
            cache.flow_runs[record["flow_run_id"]] = record
        fetched = len(set(stale))
        _fetch_details(client, sorted(set(stale)), cache, name_of, progress)
    cache.covered_from = min(since.isoformat(), cache.covered_from or since.isoformat())
    cache.save()
    return _frames(cache, since, until, deployment_id, tags, fetched, datetime.now(UTC))


def _fetch_details(
    client: Any, flow_run_ids: list[UUID], cache: Cache, name_of: Any, progress: bool
) -> None:
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
        FlowRunFilter,
    )

    bar = _progress(progress, len(flow_run_ids))
    skipped = 0
    try:
        for ids in _chunks(flow_run_ids, ID_BATCH):
            names = {str(i): cache.flow_runs[str(i)]["flow_name"] for i in ids}
            by_run: dict[str, list[dict[str, Any]]] = {str(i): [] for i in ids}
            for run in _paged(
                client.read_task_runs, flow_run_filter=FlowRunFilter(id={"any_": list(ids)})
            ):
                key = str(run.flow_run_id)
                by_run.setdefault(key, []).append(task_run_record(run, names.get(key, "")))
            cache.task_runs.update(by_run)
            artifacts = _paged(
                client.read_artifacts,
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=list(ids)),
                    type=ArtifactFilterType(any_=[REPORT_TYPE]),
                ),
            )
            for artifact in artifacts:
                try:
                    cache.reports[str(artifact.flow_run_id)] = report_record(artifact.data)
                except (AttributeError, TypeError, ValueError):
                    skipped += 1
            if bar:
                bar[0].advance(bar[1], len(ids))
    finally:
        if bar:
            bar[0].stop()
        if skipped:
            logger.warning("skipped %s malformed or foreign %s artifacts", skipped, REPORT_TYPE)


def _progress(wanted: bool, total: int) -> tuple[Any, Any] | None:
    if not wanted or not total:
        return None
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    if not console.is_terminal:
        return None
    progress = Progress(console=console, transient=True)
    progress.start()
    return progress, progress.add_task("reading run history", total=total)


def _frames(
    cache: Cache,
    since: datetime,
    until: datetime | None,
    deployment_id: str | None,
    tags: Sequence[str],
    fetched: int,
    read_at: datetime | None = None,
) -> History:
    def chosen(run: dict[str, Any]) -> bool:
        expected = run.get("expected_start_time")
        if expected is None:
            return False
        moment = datetime.fromisoformat(expected)
        return (
            moment >= since
            and (until is None or moment < until)
            and (deployment_id is None or run["deployment_id"] == deployment_id)
            and set(tags) <= set(run["tags"])
        )

    runs = [r for r in cache.flow_runs.values() if chosen(r)]
    ids = sorted(r["flow_run_id"] for r in runs)  # the same frames in every process
    flow_runs = _frame(runs, FLOW_RUN_COLUMNS, read_at)
    task_runs = _frame(
        [_with_policy(t, cache) for i in ids for t in cache.task_runs.get(i, [])],
        TASK_RUN_COLUMNS,
        read_at,
    )
    reports = _frame([cache.reports[i] for i in ids if i in cache.reports], REPORT_COLUMNS)
    return History(flow_runs, task_runs, reports, fetched)


def _with_policy(run: dict[str, Any], cache: Cache) -> dict[str, Any]:
    """Policy, criticality and impact from the run's report where its tags do not say."""
    if run["policy"] is not None:
        return run
    report = cache.reports.get(run["flow_run_id"]) or {}
    applied = (report.get("steps") or {}).get(run["task_run_id"])
    if not applied:
        return run
    policy, critical, impact = applied
    return {**run, "policy": policy, "critical": critical, "impact": impact}


CLOCK_TOLERANCE = timedelta(minutes=5)
"""A run time later than the moment history was read, by more than this, is a skewed clock."""


def _frame(
    records: list[dict[str, Any]], columns: list[str], read_at: datetime | None = None
) -> pd.DataFrame:
    """Records as a frame; a time from a clock running ahead of the reading is unknown (NaT)."""
    frame = pd.DataFrame.from_records(records, columns=columns)
    for column in ("start_time", "end_time"):
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], utc=True, format="ISO8601")
            if read_at is not None:
                frame.loc[frame[column] > read_at + CLOCK_TOLERANCE, column] = pd.NaT
    if "run_count" in frame:
        frame["run_count"] = frame["run_count"].fillna(0).astype(int)
    if "duration_s" in frame:
        frame["duration_s"] = frame["duration_s"].astype(float)
    if "start_time" in frame:
        frame = frame.sort_values([columns[0], "start_time"], na_position="last")
        frame = frame.sort_values("start_time", na_position="last", kind="stable")
    return frame.reset_index(drop=True)
