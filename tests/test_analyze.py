"""`prefect-resilience analyze` and the monitor flow, on history made by real runs."""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, task
from typer.testing import CliRunner

from prefect_resilience.analytics import step_statistics
from prefect_resilience.cli import app
from prefect_resilience.history import load_history
from prefect_resilience.report import REPORT_TYPE
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("prefect_server")
runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def scenario_history(prefect_server: None) -> int:
    """Ten runs of the seed scenario with injected failures (a fixed seed per run)."""
    sys.path.insert(0, str(ROOT / "flows"))
    try:
        from seed_scenario import seed_scenario
    finally:
        sys.path.remove(str(ROOT / "flows"))
    for seed in range(10):
        seed_scenario(0.4, seed, return_state=True)
    return 10


def test_analyze_json_counts_every_run_and_step(scenario_history: int) -> None:
    result = runner.invoke(app, ["analyze", "--flow", "seed-scenario", "--since", "1d", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["flow_runs"] >= scenario_history
    steps = {row["task_name"]: row for row in data["steps"]}
    assert {"critical_database_setup", "monitoring_checks", "user_notification"} <= set(steps)
    # three regions per run: the monitoring step ran three times per finished flow run
    assert steps["monitoring_checks"]["runs"] == 3 * steps["user_notification"]["runs"]
    for row in data["steps"]:
        low, rate, high = row["failure_rate_low"], row["failure_rate"], row["failure_rate_high"]
        assert 0 <= low <= rate <= high <= 1
    (continuity,) = data["continuity"]
    assert continuity["n_finished"] == data["flow_runs"]


def test_analyze_prints_tables(scenario_history: int) -> None:
    result = runner.invoke(app, ["analyze", "--flow", "seed-scenario", "--since", "1d"])
    assert result.exit_code == 0, result.output
    assert "continuity" in result.output and "monitoring_checks" in result.output
    assert "failure patterns" in result.output


def test_analyze_writes_a_self_contained_html_report(scenario_history: int, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["analyze", "--flow", "seed-scenario", "--html", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text.count("data:image/png;base64,") == 2  # health over time, failure heatmap
    assert "<h2>Steps</h2>" in text and "http" not in text.split("<body>")[1]


def test_bad_arguments_are_usage_errors() -> None:
    result = runner.invoke(app, ["analyze", "--since", "soon"])
    assert result.exit_code == 2
    assert "soon" in result.output


def test_monitor_flow_publishes_its_analysis(scenario_history: int, client: Any) -> None:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    sys.path.insert(0, str(ROOT / "flows"))
    try:
        from resilience_monitor import resilience_monitor
    finally:
        sys.path.remove(str(ROOT / "flows"))
    summary = resilience_monitor("seed-scenario", "1d")
    assert summary["flow_runs"] >= scenario_history
    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["resilience-analysis-seed-scenario"])
        )
    )
    assert artifacts and "# Resilience analysis: seed-scenario" in artifacts[0].data


@task
def coin(i: int, seed: int, p: float, seconds: float) -> int:
    """Fails with probability p (a fixed draw per seed and step), after `seconds` of work."""
    time.sleep(seconds)
    if random.Random(f"{seed}:{i}").random() < p:
        raise RuntimeError(f"coin {i} came up tails")
    return i


@flow(name="known-parameters")
def known_parameters(seed: int, p: float = 0.3, seconds: float = 0.02) -> None:
    futures = coin.map(range(5), seed=seed, p=p, seconds=seconds)
    futures.wait()


def test_the_analysis_recovers_known_failure_rates_and_durations() -> None:
    for seed in range(40):
        known_parameters(seed, return_state=True)
    history = load_history("known-parameters", refresh=True)
    (row,) = step_statistics(history.task_runs).to_dict("records")
    assert row["runs"] == 200
    assert row["failure_rate_low"] <= 0.3 <= row["failure_rate_high"]
    # each run sleeps 0.02 s; Prefect's own work adds a little, never removes any
    assert 0.02 <= row["p50_s"] <= 0.2


def test_an_empty_history_says_no_runs_match() -> None:
    result = runner.invoke(app, ["analyze", "--flow", "never-ran", "--since", "1d"])
    assert result.exit_code == 1
    assert "no runs match" in result.output


def test_an_unreachable_api_is_a_clear_error() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        result = runner.invoke(app, ["analyze", "--flow", "any", "--refresh"])
    assert result.exit_code == 1
    assert "cannot read run history from the Prefect API at http://127.0.0.1:9/api" in (
        result.output
    )


def test_foreign_report_artifacts_are_skipped_and_counted(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from prefect.client.schemas.actions import ArtifactCreate

    state = known_parameters(999, p=0.0, seconds=0.0, return_state=True)
    client.create_artifact(
        ArtifactCreate(
            type=REPORT_TYPE, data={"not": "ours"}, flow_run_id=state.state_details.flow_run_id
        )
    )
    with caplog.at_level(logging.WARNING, logger="prefect_resilience.history"):
        history = load_history("known-parameters", refresh=True)
    assert history.reports.empty
    assert "skipped 1 malformed or foreign resilience-report artifacts" in caplog.text
