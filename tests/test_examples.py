"""Every example flow in flows/ ends in the state its policies promise.

Each example (not demo.py, which has its own run) runs on the session's
Prefect server without failures and with failures injected on purpose
(`fail_steps`), and must end `Completed`, `PartialSuccess` or `Failed` with a
report that says why. Two run as the user starts them, `python flows/NAME.py`,
to prove the command-line path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import ROOT

FLOWS = ROOT / "flows"
ROWS = 20  # rows per partition: small, the pipelines' logic does not depend on it

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture(scope="module")
def examples(prefect_server: None) -> Iterator[SimpleNamespace]:
    """The example modules, imported as `python flows/NAME.py` would (flows/ on sys.path).

    flows/ stays on sys.path while the tests run: Dask's worker processes take
    their path from this one and import the steps' module by name.
    """
    sys.path.insert(0, str(FLOWS))
    try:
        import dask_pipeline
        import data_pipeline
        import partner_api
        import seed_scenario

        yield SimpleNamespace(
            seed_scenario=seed_scenario.seed_scenario,
            partner_api=partner_api.partner_api,
            inventory_breaker=partner_api.INVENTORY_BREAKER,
            data_pipeline=data_pipeline.data_pipeline,
            dask_pipeline=dask_pipeline.dask_pipeline,
        )
    finally:
        sys.path.remove(str(FLOWS))


def report_of(state: Any) -> Any:
    from prefect_resilience import get_report

    report = get_report(state.state_details.flow_run_id)
    assert report is not None, f"no resilience report for a run that ended {state.name}"
    return report


def failure_rule(report: Any) -> str | None:
    return report.health.stopped_by.value if report.health.stopped_by else None


# --- the seed scenario -----------------------------------------------------------------

SEED_CASES = [
    # fail_steps, final state name, rule that stopped the run, degraded, tolerated functions
    ([], "Completed", None, [], []),
    # three mapped checks fail: tolerated (continue), and 3 is not over max_partial_failures
    (["monitoring_checks:*"], "Completed", None, [], ["monitoring_checks"]),
    # the queue fallback carries the notification once push and email failed
    (["user_notification", "email_fallback"], "PartialSuccess", None, ["user_notification"], []),
    (["critical_database_setup"], "Failed", "fail_fast", [], []),
]


@pytest.mark.parametrize(("fail_steps", "final", "rule", "degraded", "tolerated"), SEED_CASES)
def test_seed_scenario(
    examples: SimpleNamespace,
    fail_steps: list[str],
    final: str,
    rule: str | None,
    degraded: list[str],
    tolerated: list[str],
) -> None:
    state = examples.seed_scenario(0.0, None, fail_steps, return_state=True)
    report = report_of(state)
    assert state.name == final, state.message
    assert failure_rule(report) == rule
    assert report.business_impact.degraded_functions == degraded
    assert report.business_impact.tolerated_functions == tolerated
    if final != "Failed":
        value = state.result()
        assert value["database"] == "schema ready"
        expected_notification = "queued a notification for ada" if degraded else "pushed to ada"
        assert value["notification"] == expected_notification
        regions = ["unknown"] * 3 if tolerated else ["us healthy", "eu healthy", "ap healthy"]
        assert value["monitoring"] == regions


# --- the data pipeline, on threads and on Dask -----------------------------------------

PIPELINE_CASES = [
    # fail_steps, final state name, rule, partitions missing from the load, dashboard
    ([], "Completed", None, [], f"dashboard shows {6 * ROWS} rows"),
    (["extract:part-2"], "PartialSuccess", None, ["part-2"], f"dashboard shows {5 * ROWS} rows"),
    (["refresh_dashboard"], "Completed", None, [], "dashboard not refreshed"),
    # four lost partitions: more than the policy's max_partial_failures (3)
    (["extract:part-[0-3]"], "Failed", "max_partial_failures", None, None),
    (["load"], "Failed", "fail_fast", None, None),
]


@pytest.mark.parametrize(("fail_steps", "final", "rule", "missing", "dashboard"), PIPELINE_CASES)
def test_data_pipeline(
    examples: SimpleNamespace,
    fail_steps: list[str],
    final: str,
    rule: str | None,
    missing: list[str] | None,
    dashboard: str | None,
) -> None:
    state = examples.data_pipeline(6, ROWS, 0.0, None, fail_steps, return_state=True)
    report = report_of(state)
    assert state.name == final, state.message
    assert failure_rule(report) == rule
    if missing is not None:
        value = state.result()
        assert value["missing_partitions"] == missing
        assert value["loaded_rows"] == (6 - len(missing)) * ROWS
        assert value["dashboard"] == dashboard


@pytest.mark.parametrize(
    ("fail_steps", "final", "missing"),
    [([], "Completed", []), (["extract:part-1"], "PartialSuccess", ["part-1"])],
)
def test_dask_pipeline(
    examples: SimpleNamespace, fail_steps: list[str], final: str, missing: list[str]
) -> None:
    from prefect_dask import DaskTaskRunner

    assert isinstance(examples.dask_pipeline.task_runner, DaskTaskRunner)
    state = examples.dask_pipeline(4, ROWS, 0.0, None, fail_steps, return_state=True)
    report = report_of(state)
    assert state.name == final, state.message
    assert report.flow_name == "dask-pipeline"
    assert report.business_impact.unavailable_functions == (["extract"] if missing else [])
    value = state.result()
    assert value["missing_partitions"] == missing
    assert value["loaded_rows"] == (4 - len(missing)) * ROWS


def test_partner_api_shows_what_retries_alone_cannot_do(examples: SimpleNamespace) -> None:
    from prefect_resilience import TerminationRule, circuit

    partner_api, breaker = examples.partner_api, examples.inventory_breaker
    circuit.reset(breaker)
    state = partner_api(rate_limited_for=1, return_state=True)
    assert state.name == "Completed" and state.result()["priced"] == 10
    quote = next(o for o in report_of(state).steps if o.name == "fetch_quote")
    assert quote.attempts == 2 and quote.duration is not None and quote.duration < 1

    budget = report_of(partner_api(rate_limited_for=6, return_state=True))
    assert budget.health.stopped_by is TerminationRule.FAIL_FAST
    assert "past retry_budget 5s" in budget.message

    ratio = report_of(partner_api(broken_skus=3, return_state=True))
    assert ratio.health.stopped_by is TerminationRule.MIN_SUCCESS_RATIO

    runs = [report_of(partner_api(outage=True, return_state=True)) for _ in range(2)]
    short = [[o.exception_type for o in r.steps if o.name == "inventory"] for r in runs]
    assert short == [["ConnectionError"] * 3 + ["CircuitOpen"], ["CircuitOpen"] * 4]
    assert all(r.overall_status.value == "partial_success" for r in runs)
    assert circuit.read_state(breaker).state.value == "open"
    circuit.reset(breaker)


# --- as the user starts them -----------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "arguments", "final"),
    [
        ("seed_scenario.py", ["--failure-rate", "0"], "Completed"),
        (
            "data_pipeline.py",
            ["--rows", str(ROWS), "--fail-step", "extract:part-2"],
            "PartialSuccess",
        ),
    ],
)
def test_script_runs_on_the_configured_server(
    examples: SimpleNamespace, script: str, arguments: list[str], final: str
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
    )
    from prefect.settings import PREFECT_API_URL

    from prefect_resilience import get_report

    flow_name = script.removesuffix(".py").replace("_", "-")
    started = datetime.now(UTC)
    result = subprocess.run(
        [sys.executable, str(FLOWS / script), *arguments],
        env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1].startswith(f"{final}:"), result.stdout[-2000:]
    # the run went to this server, ended there as printed, and left its report
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=started)),
        )
    assert run.state.name == final
    report = get_report(run.id)
    assert report is not None and report.flow_name == flow_name


def test_the_demo_runs_every_part_to_the_proposed_changes(examples: SimpleNamespace) -> None:
    """The main job (`make demo`), on the session's server, with a shorter history."""
    from prefect.settings import PREFECT_API_URL

    result = subprocess.run(
        [sys.executable, str(FLOWS / "demo.py"), "--runs", "20"],
        env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "Final state: PartialSuccess" in out  # every policy at work in one run
    for part in ("2. The seed scenario, 20 runs", "3. The latest run's report",
                 "4. What the run history says", "5. Proposed changes"):  # fmt: skip
        assert part in out, out[-3000:]
    assert "Optimization candidates: seed-scenario" in out
    assert "finished flow runs" in out
    assert "6. Beyond retries: a rate-limited, flaky partner API" in out
    assert "Circuit breaker 'partner-inventory'" in out and "): open, 3 failures" in out
