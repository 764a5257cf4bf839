"""On a real server: a run refuses a document naming an unknown fallback before any step,
a registered name runs as its own task run, and the CLI reports the problem first."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from typer.testing import CliRunner

from prefect_resilience import get_report, resilient, resilient_flow
from prefect_resilience.cli import app
from prefect_resilience.fallbacks import register_fallback
from prefect_resilience.policy import WorkflowPolicy

pytestmark = pytest.mark.usefixtures("prefect_server", "clean_fallbacks")
runner = CliRunner(env={"COLUMNS": "200"})


def _policy_file(tmp_path: Path, fallback: str) -> Path:
    path = tmp_path / "notify.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            name: notify
            stepPolicies:
              notify_user:
                failurePolicy: graceful_degradation
                fallbackActions:
                  - type: {fallback}
            """
        )
    )
    return path


calls: list[str] = []


@resilient(policy="continue", default="skipped")
def notify_user(user: str) -> str:
    calls.append(user)
    raise ConnectionError("push service down")


def _flow(source: object, fallback_policy: object = None) -> object:
    @resilient_flow(policy=source, fallback_policy=fallback_policy, name="notify-flow")
    def notify_flow() -> str:
        return notify_user("ada")

    return notify_flow


def test_an_unknown_fallback_fails_the_run_before_any_step(tmp_path: Path) -> None:
    calls.clear()
    path = _policy_file(tmp_path, "os:system")
    state = _flow(str(path))(return_state=True)
    assert state.is_failed()
    assert calls == []  # no step ran
    assert "fallback 'os:system' is not available" in state.message
    assert f"{path}, line 6" in state.message


def test_an_unknown_fallback_uses_the_flows_fallback_policy(tmp_path: Path) -> None:
    calls.clear()
    path = _policy_file(tmp_path, "page_someone")
    flow = _flow(str(path), fallback_policy=WorkflowPolicy(name="safe"))
    state = flow(return_state=True)
    assert state.is_completed() and calls == ["ada"]
    assert state.result() == "skipped"  # the decorator's policy, under the fallback policy
    report = get_report(state.state_details.flow_run_id)
    assert report is not None and report.policy.name == "safe"
    assert "page_someone" in report.policy.fallback_reason


def test_a_registered_fallback_runs_as_its_own_task_run(tmp_path: Path) -> None:
    register_fallback("log_notification", lambda user: f"logged a notification for {user}")
    state = _flow(str(_policy_file(tmp_path, "log_notification")))(return_state=True)
    assert state.type.value == "COMPLETED" and state.name == "PartialSuccess"
    assert state.result() == "logged a notification for ada"
    report = get_report(state.state_details.flow_run_id)
    assert report is not None
    (step,) = report.steps
    assert step.fallback_used == "log_notification"
    with get_client(sync_client=True) as client:
        run = client.read_task_run(step.fallback_task_run_id)
    assert run.name.startswith("log_notification") and run.state.is_completed()


FLOW_FILE = """
from prefect_resilience import register_fallback, resilient, resilient_flow

{register}

@resilient(policy="graceful_degradation")
def notify_user(user: str) -> str:
    raise ConnectionError("down")

@resilient_flow
def notify_flow() -> str:
    return notify_user("ada")
"""


def _flow_file(tmp_path: Path, register: str = "") -> str:
    path = tmp_path / "notify_flows.py"
    path.write_text(FLOW_FILE.format(register=register))
    return f"{path}:notify_flow"


def test_policy_check_names_the_unknown_fallback_file_and_line(tmp_path: Path) -> None:
    policy = _policy_file(tmp_path, "log_notification")
    result = runner.invoke(app, ["policy", "check", str(policy), "--flow", _flow_file(tmp_path)])
    assert result.exit_code == 1
    assert "fallback 'log_notification' is not available" in result.output
    assert f"{policy}, line 6" in result.output and "register_fallback(" in result.output


def test_policy_check_passes_when_the_flows_code_registers_it(tmp_path: Path) -> None:
    policy = _policy_file(tmp_path, "log_notification")
    entry = _flow_file(tmp_path, 'register_fallback("log_notification", print)')
    result = runner.invoke(app, ["policy", "check", str(policy), "--flow", entry])
    assert result.exit_code == 0, result.output
    assert "fallbacks named, all available: log_notification" in result.output


def test_policy_apply_refuses_a_document_the_flow_cannot_run(tmp_path: Path) -> None:
    name = "fallback-apply-test"
    policy = tmp_path / "apply.yaml"
    policy.write_text(
        _policy_file(tmp_path, "subprocess:getoutput")
        .read_text()
        .replace("name: notify", f"name: {name}")
    )
    result = runner.invoke(app, ["policy", "apply", str(policy), "--flow", _flow_file(tmp_path)])
    assert result.exit_code == 1 and "subprocess:getoutput" in result.output
    from prefect_resilience.blocks import current_document

    assert current_document(name) is None  # nothing was saved


def test_policy_apply_without_a_flow_notes_the_fallbacks_to_check(tmp_path: Path) -> None:
    policy = tmp_path / "noted.yaml"
    policy.write_text(
        _policy_file(tmp_path, "log_notification")
        .read_text()
        .replace("name: notify", "name: fallback-noted-test")
    )
    result = runner.invoke(app, ["policy", "apply", str(policy)])
    assert result.exit_code == 0, result.output
    assert "names fallbacks log_notification" in result.output
    assert "policy check" in result.output
