"""The command line: policy validate / show."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from prefect_resilience.cli import app
from tests.conftest import DATA, ROOT

runner = CliRunner(env={"COLUMNS": "200"})


def test_validate_accepts_the_seed_documents() -> None:
    result = runner.invoke(
        app,
        [
            "policy",
            "validate",
            str(ROOT / "blocks" / "production-resilience.yaml"),
            str(DATA / "seed-steps.yaml"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "valid:" in result.output and "production-resilience" in result.output


def test_validate_names_the_field_and_line_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepPolicies:\n  db:\n    maxRetries: -1\n")
    result = runner.invoke(app, ["policy", "validate", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}, line 3: stepPolicies.db.maxRetries" in result.output


def test_show_lists_step_policies() -> None:
    result = runner.invoke(
        app, ["policy", "show", str(ROOT / "blocks" / "production-resilience.yaml")]
    )
    assert result.exit_code == 0, result.output
    assert "database_operations" in result.output
    assert "log_notification" in result.output


def test_usage_errors_exit_2() -> None:
    assert runner.invoke(app, ["policy", "validate"]).exit_code == 2
    assert runner.invoke(app, ["policy", "nonsense"]).exit_code == 2
