"""The first hour at the command line: errors in one style, files and blocks that do not fight.

Against a real Prefect server, except where the point is that there is none.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from prefect import flow
from typer.testing import CliRunner

from prefect_resilience import load_policy
from prefect_resilience.blocks import load_block_policy, policy_document, save_policy
from prefect_resilience.cli import app
from prefect_resilience.cli_output import number

runner = CliRunner(env={"COLUMNS": "200"})

POLICY = """\
name: {name}
defaultFailurePolicy: continue
stepPolicies:
  - match: extract
    retries: 2
    retryDelay: 1s
"""


def test_an_unreachable_api_names_its_url_and_what_to_start() -> None:
    """Each command in its own process, as a user runs it: one line, no traceback."""
    dead = "http://127.0.0.1:9/api"
    for command in (
        ["register"],
        ["policy", "history", "some-policy"],
        ["policy", "export", "some-policy"],
        ["analyze", "--flow", "etl"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "prefect_resilience.cli", *command],
            capture_output=True,
            text=True,
            env={"PREFECT_API_URL": dead, "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
            timeout=120,
        )
        said = done.stdout + done.stderr
        assert done.returncode == 1, (command, said)
        assert dead in said and "prefect server start" in said, (command, said)
        assert "Traceback" not in said, (command, said)
        assert "Still processing items" not in said, (command, said)


def test_unknown_numbers_are_words() -> None:
    assert [number(math.nan), number(None), number(math.inf), number(0.01234)] == [
        "n/a",
        "n/a",
        "n/a",
        "0.0123",
    ]


@pytest.mark.usefixtures("prefect_server")
def test_apply_refuses_to_revert_a_version_it_did_not_write(tmp_path: Path) -> None:
    file = tmp_path / "etl-policy.yaml"
    file.write_text(POLICY.format(name="revert-guard"))
    assert runner.invoke(app, ["policy", "apply", str(file)]).exit_code == 0
    # as optimize --apply does: the block gets a version the file did not write
    tuned = load_policy(POLICY.format(name="revert-guard").replace("retries: 2", "retries: 4"))
    save_policy("revert-guard", tuned, note="optimize c1: retries extract")
    file.write_text(POLICY.format(name="revert-guard") + "    critical: true\n")

    dry = runner.invoke(app, ["policy", "apply", str(file), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would be updated revert-guard" in dry.output
    assert "reverts version" in dry.output and "optimize c1" in dry.output
    assert load_block_policy("revert-guard").step_policies[0].retries == 4  # nothing written

    refused = runner.invoke(app, ["policy", "apply", str(file)])
    assert refused.exit_code == 1
    assert "would revert revert-guard: version 2 (optimize c1" in refused.output
    assert "--force" in refused.output
    assert load_block_policy("revert-guard").step_policies[0].retries == 4

    forced = runner.invoke(app, ["policy", "apply", str(file), "--force"])
    assert forced.exit_code == 0, forced.output
    rule = load_block_policy("revert-guard").step_policies[0]
    assert (rule.retries, rule.critical) == (2, True)
    # the file wrote the newest version now: applying it again needs no force
    file.write_text(POLICY.format(name="revert-guard"))
    assert runner.invoke(app, ["policy", "apply", str(file)]).exit_code == 0


@pytest.mark.usefixtures("prefect_server")
def test_export_writes_a_block_back_as_a_file_apply_takes(tmp_path: Path) -> None:
    tuned = load_policy(POLICY.format(name="exported").replace("retries: 2", "retries: 4"))
    save_policy("exported", tuned, note="optimize c2: retries extract")
    result = runner.invoke(app, ["policy", "export", "exported"])
    assert result.exit_code == 0, result.output
    file = tmp_path / "exported.yaml"
    file.write_text(result.stdout)
    assert policy_document(load_policy(file)) == policy_document(tuned)
    assert runner.invoke(app, ["policy", "validate", str(file)]).exit_code == 0
    applied = runner.invoke(app, ["policy", "apply", str(file)])
    assert applied.exit_code == 0 and "unchanged exported" in applied.output


@pytest.mark.usefixtures("prefect_server")
def test_show_takes_a_block_and_says_which_values_are_the_steps_own() -> None:
    save_policy("shown", load_policy(POLICY.format(name="shown")), note="saved")
    result = runner.invoke(app, ["policy", "show", "shown"])
    assert result.exit_code == 0, result.output
    assert "shown (block)" in result.output
    (row,) = [line for line in result.output.splitlines() if "extract" in line]
    assert "2" in row and "(step's own)" in row  # critical and impact: not set by the policy
    assert "major" not in row


@pytest.mark.usefixtures("prefect_server")
def test_a_flow_named_by_its_function_gets_a_suggestion() -> None:
    @flow(name="daily-etl-cli")
    def daily_etl_cli() -> int:
        return 1

    daily_etl_cli()
    result = runner.invoke(app, ["analyze", "--flow", "daily_etl_cli"])
    assert result.exit_code == 1
    assert "no runs match" in result.output and "daily-etl-cli" in result.output


def test_markup_in_messages_is_printed_as_written() -> None:
    from prefect_resilience.cli_output import errors, fail

    with errors.capture() as captured:
        fail("pip install 'prefect-resilience[plots]'")
    assert "prefect-resilience[plots]" in captured.get()


def test_validate_names_a_misspelt_exception_and_accepts_real_ones(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "stepPolicies:\n  - match: fetch\n    retries: 2\n"
        "    retryOn: [ConnectionError, httpx.HTTPStatusError, 'Timeout*']\n"
        "    giveUpOn: [json.JSONDecodeError]\n"
    )
    assert runner.invoke(app, ["policy", "validate", str(good)]).exit_code == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "stepPolicies:\n  - match: fetch\n    retries: 2\n    retryOn: [ConnectionErrror]\n"
    )
    result = runner.invoke(app, ["policy", "validate", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}, line 4: step policy 'fetch' retry_on: unknown exception" in result.output
    assert "did you mean ConnectionError?" in result.output


def test_validate_never_imports_a_module_a_document_names(tmp_path: Path) -> None:
    """A module with an import side effect, named by a policy: validate reads, never runs it."""
    (tmp_path / "booby_trap.py").write_text(
        "import pathlib\npathlib.Path(__file__).with_suffix('.ran').write_text('ran')\n"
        "class TrapError(Exception):\n    pass\n"
    )
    policy = tmp_path / "trap.yaml"
    policy.write_text(
        "stepPolicies:\n  - match: s\n    retries: 1\n"
        "    retryOn: [booby_trap.TrapError, booby_trap.Missing]\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "prefect_resilience.cli", "policy", "validate", str(policy)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
        timeout=120,
    )
    assert not (tmp_path / "booby_trap.ran").exists()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "'booby_trap.Missing'" in done.stderr and "'booby_trap.TrapError'" not in done.stderr


@pytest.mark.usefixtures("prefect_server")
def test_a_dry_run_with_the_flow_predicts_each_change(tmp_path: Path) -> None:
    (tmp_path / "dry_flow.py").write_text(
        "from prefect import flow\n"
        "from prefect_resilience import resilient\n\n"
        "@resilient(retries=1, retry_delay=0)\n"
        "def fetch(i: int) -> int:\n"
        "    return i\n\n"
        "@flow(name='dry-run-flow')\n"
        "def dry_flow(i: int = 0) -> int:\n"
        "    return fetch(i)\n"
    )
    from prefect.flows import load_flow_from_entrypoint

    dry_flow = load_flow_from_entrypoint(f"{tmp_path / 'dry_flow.py'}:dry_flow")
    for i in range(20):
        dry_flow(i)
    file = tmp_path / "dry-policy.yaml"
    file.write_text("name: dry-policy\nstepPolicies:\n  - match: fetch\n    retries: 1\n")
    assert runner.invoke(app, ["policy", "apply", str(file)]).exit_code == 0
    file.write_text("name: dry-policy\nstepPolicies:\n  - match: fetch\n    retries: 3\n")
    entrypoint = f"{tmp_path / 'dry_flow.py'}:dry_flow"
    result = runner.invoke(app, ["policy", "apply", str(file), "--dry-run", "--flow", entrypoint])
    assert result.exit_code == 0, result.output
    assert "would be updated dry-policy" in result.output
    assert "predicted effect on dry-run-flow:" in result.output
    assert "predicted from 20 finished flow runs; dry-policy (in force)" in result.output
    assert load_block_policy("dry-policy").step_policies[0].retries == 1  # nothing written
