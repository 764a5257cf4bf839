"""Run history from a real Prefect server into frames; the incremental cache."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta

import pytest
from prefect import flow, task

from prefect_resilience import resilient, resilient_flow
from prefect_resilience.history import (
    FLOW_RUN_COLUMNS,
    REPORT_COLUMNS,
    TASK_RUN_COLUMNS,
    Cache,
    load_history,
    parse_since,
)

pytestmark = pytest.mark.usefixtures("prefect_server")


@task(name="plain-step", task_run_name="custom-{x}")
def plain_step(x: int) -> int:
    if x == 2:
        raise ValueError(f"bad input {x}")
    return x


@flow(name="history-plain")
def plain_history() -> list[int]:
    return plain_step.map([1, 2, 3]).result(raise_on_failure=False)


@resilient(policy="partial_success", critical=True, impact="minor", retries=1, retry_delay=0)
def tough_step(x: int) -> int:
    if x == 2:
        raise KeyError("missing key 2")
    return x


@resilient_flow(name="history-resilient")
def resilient_history() -> list[int]:
    return tough_step.map([1, 2]).result()


def test_plain_prefect_history_reads_into_documented_frames() -> None:
    plain_history(return_state=True)
    history = load_history("history-plain", refresh=True)
    assert list(history.flow_runs.columns) == FLOW_RUN_COLUMNS
    assert list(history.task_runs.columns) == TASK_RUN_COLUMNS
    assert list(history.reports.columns) == REPORT_COLUMNS
    runs = history.task_runs
    # Prefect records no task name; with a custom task_run_name the step is named by
    # its function (from the task key), otherwise by the run name's task part
    assert set(runs["task_name"]) == {"plain_step"}
    failed = runs[runs["state_type"] == "FAILED"].iloc[0]
    assert (failed["error_type"], failed["error_message"]) == ("ValueError", "bad input 2")
    assert runs["policy"].isna().all() and not runs["critical"].any()
    assert history.reports.empty  # plain flows have no resilience report
    assert str(runs["start_time"].dtype).startswith("datetime64")


def test_resilient_history_carries_policy_tags_attempts_and_reports() -> None:
    state = resilient_history(return_state=True)
    history = load_history("history-resilient", refresh=True)
    runs = history.task_runs.set_index("state_type")
    failed = runs.loc["FAILED"]
    assert (failed["task_name"], failed["policy"], failed["impact"]) == (
        "tough_step",
        "partial_success",
        "minor",
    )
    assert failed["critical"] and failed["run_count"] == 2
    assert failed["error_type"] == "KeyError"
    (report,) = history.reports.to_dict("records")
    assert report["flow_run_id"] == str(state.state_details.flow_run_id)
    assert report["overall_status"] == "partial_success"
    assert report["unavailable"] == ["tough_step"]
    assert history.flow_runs.iloc[0]["state_name"] == "PartialSuccess"


def test_the_cache_fetches_only_runs_it_has_not_seen_finished() -> None:
    @flow(name="history-cached")
    def cached() -> int:
        return plain_step(1)

    for _ in range(3):
        cached()
    first = load_history("history-cached", refresh=True)
    assert first.fetched_flow_runs == 3
    again = load_history("history-cached")
    assert again.fetched_flow_runs == 0
    assert len(again.task_runs) == len(first.task_runs) == 3
    cached()
    third = load_history("history-cached")
    assert third.fetched_flow_runs == 1 and len(third.flow_runs) == 4
    assert load_history("history-cached", refresh=True).fetched_flow_runs == 4


def test_the_cache_file_is_readable_by_the_user_only() -> None:
    load_history("history-plain")
    from prefect.settings import PREFECT_API_URL

    path = Cache.location(str(PREFECT_API_URL.value() or "ephemeral"), "history-plain")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_filters_by_window_and_tags() -> None:
    from prefect import tags

    with tags("nightly"):
        plain_history(return_state=True)
    tagged = load_history("history-plain", tags=["nightly"])
    assert len(tagged.flow_runs) == 1
    future = load_history("history-plain", since=datetime.now(UTC) + timedelta(days=1))
    assert future.flow_runs.empty and future.task_runs.empty


def test_parse_since() -> None:
    now = datetime(2026, 1, 8, tzinfo=UTC)
    assert parse_since("7d", now) == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_since("12h", now) == now - timedelta(hours=12)
    assert parse_since("2026-01-02", now) == datetime(2026, 1, 2, tzinfo=UTC)
    with pytest.raises(ValueError, match="--since 'soon'"):
        parse_since("soon", now)
