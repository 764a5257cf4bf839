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


def test_show_with_the_flow_gives_each_steps_values_and_where_they_come_from(
    tmp_path: Path,
) -> None:
    (tmp_path / "policy.yaml").write_text(
        "name: etl\nstep_policies:\n  - match: load_*\n    policy: fail_fast\n    retries: 4\n"
    )
    (tmp_path / "etl.py").write_text(
        "from prefect import flow\n"
        "from prefect_resilience import resilient\n\n"
        "@resilient(retries=2, impact='minor')\n"
        "def load_orders() -> None: ...\n\n"
        "@resilient(critical=True)\n"
        "def enrich() -> None: ...\n\n"
        "@flow\n"
        "def etl() -> None:\n"
        "    load_orders()\n"
        "    enrich()\n"
    )
    result = runner.invoke(
        app,
        ["policy", "show", str(tmp_path / "policy.yaml"), "--flow", f"{tmp_path / 'etl.py'}:etl"],
    )
    assert result.exit_code == 0, result.output
    rows = {
        cells[0]: cells[1:]
        for line in result.output.splitlines()
        if (cells := [c.strip() for c in line.strip("│┃ ").split("│")])[0]
        in {"enrich", "load_orders"}
    }
    # policy, retries, delays, critical, impact, fallbacks
    assert rows["load_orders"] == [
        "fail_fast: rule load_*", "4: rule load_*", "0, 0, 0, 0: default", "no: default",
        "minor: decorator", "none: default",
    ]  # fmt: skip
    assert rows["enrich"] == [
        "fail_fast: policy default", "0: default", "none: default", "yes: decorator",
        "major: default", "none: default",
    ]  # fmt: skip
