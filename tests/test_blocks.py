"""Policies in Prefect blocks: standard suite, round trips, versions, apply, next-run pickup."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from typer.testing import CliRunner

from prefect_resilience import (
    FailureImpact,
    FailurePolicy,
    ResilienceConfigError,
    ResiliencePolicy,
    WorkflowPolicy,
    WorkflowTerminated,
    resilient,
    resilient_flow,
)
from prefect_resilience import blocks as policy_blocks
from prefect_resilience.cli import app
from prefect_resilience.policy import DEFAULT_IMPACT_WEIGHTS
from tests.conftest import ROOT
from tests.servers import file_server


@pytest.fixture
def served_logo(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The shipped logo served over HTTP on 127.0.0.1, as a team serves it for its UI;
    the block type points at it for the test."""
    with file_server(policy_blocks.LOGO_FILE.parent) as base:
        url = f"{base}/{policy_blocks.LOGO_FILE.name}"
        monkeypatch.setattr(ResiliencePolicy, "_logo_url", url)
        yield url


@pytest.mark.usefixtures("served_logo")
class TestResiliencePolicyBlock(BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[Block]:
        return ResiliencePolicy


def test_the_block_form_has_drop_downs_for_enums_and_a_list_of_step_policies() -> None:
    schema = ResiliencePolicy.model_json_schema()
    properties = schema["properties"]
    # enums sit in the field itself, so the form labels them with the field's own title
    default_policy = properties["default_failure_policy"]
    assert default_policy["enum"] == [p.value for p in FailurePolicy]
    assert "$ref" not in default_policy
    assert default_policy["title"] == "Default failure policy"
    assert properties["step_policies"]["type"] == "array"
    rule = schema["definitions"]["StepRule"]["properties"]
    assert list(rule)[0] == "match"
    assert {"match", "policy", "retries", "backoff", "critical", "impact", "fallbacks"} <= set(rule)
    assert rule["impact"]["enum"] == [i.value for i in FailureImpact]
    titles = {name: rule[name].get("title") for name in rule}
    assert None not in titles.values(), titles
    assert titles["backoff"] == "Backoff"
    assert titles["circuit_breaker"] == "Circuit breaker"
    # one number per impact, with its default, rather than an empty mapping editor
    weights = properties["impact_weights"]["properties"]
    assert {i: weights[i.value]["default"] for i in FailureImpact} == DEFAULT_IMPACT_WEIGHTS
    assert ResiliencePolicy.get_block_type_slug() == "resilience-policy"


@pytest.fixture
def registered(prefect_server: None) -> None:
    ResiliencePolicy.register_type_and_schema()


def unique(name: str, request: pytest.FixtureRequest) -> str:
    return f"{name}-{request.node.name}".lower().replace("_", "-").replace("[", "-").strip("]")[:60]


@pytest.mark.usefixtures("registered")
def test_save_policy_saves_when_called_from_a_running_event_loop(
    request: pytest.FixtureRequest,
) -> None:
    # a notebook cell, an async app: Prefect's dispatch would hand back a coroutine there
    import asyncio

    name = unique("loop", request)

    async def in_a_loop() -> None:
        policy_blocks.save_policy(name, WorkflowPolicy(max_partial_failures=5))

    asyncio.run(in_a_loop())
    assert policy_blocks.load_block_policy(name).max_partial_failures == 5


@pytest.mark.usefixtures("registered")
def test_save_load_update_history_diff_rollback(request: pytest.FixtureRequest) -> None:
    name = unique("rt", request)
    first = WorkflowPolicy(
        max_partial_failures=2, step_policies={"load_*": {"policy": "continue", "retries": 3}}
    )
    v1 = policy_blocks.save_policy(name, first)
    loaded = policy_blocks.load_block_policy(name)
    assert loaded.max_partial_failures == 2
    (rule,) = loaded.step_policies
    # a stored step policy keeps only what it set, so it still overrides field by field
    assert rule.model_fields_set == {"match", "policy", "retries"}

    second = first.model_copy(update={"max_partial_failures": 7})
    v2 = policy_blocks.save_policy(name, second, note="more room")
    assert (v1.number, v2.number) == (1, 2)
    assert policy_blocks.load_block_policy(name).max_partial_failures == 7
    assert [(v.number, v.note) for v in policy_blocks.history(name)] == [
        (1, "saved"),
        (2, "more room"),
    ]
    text = policy_blocks.diff(name, 1, 2)
    assert "-max_partial_failures: 2" in text and "+max_partial_failures: 7" in text

    v3 = policy_blocks.rollback(name)
    assert v3.number == 3 and v3.note == "rollback to version 1"
    assert policy_blocks.load_block_policy(name).max_partial_failures == 2
    v4 = policy_blocks.rollback(name, to=2)
    assert policy_blocks.load_block_policy(name).max_partial_failures == 7
    assert len(policy_blocks.history(name)) == v4.number == 4
    with pytest.raises(ResilienceConfigError, match="versions 1..4, not 9"):
        policy_blocks.rollback(name, to=9)


@pytest.mark.usefixtures("registered")
def test_an_edit_made_outside_the_package_is_recorded_before_it_is_replaced(
    request: pytest.FixtureRequest,
) -> None:
    name = unique("ui", request)
    policy_blocks.save_policy(name, WorkflowPolicy(max_partial_failures=1))
    block = ResiliencePolicy.load(name)
    block.max_partial_failures = 3  # as the UI would save it
    block.save(name, overwrite=True)
    policy_blocks.rollback(name, to=1)
    assert [v.note for v in policy_blocks.history(name)] == [
        "saved",
        "edited outside",
        "rollback to version 1",
    ]
    assert policy_blocks.history(name)[1].document["max_partial_failures"] == 3


@resilient(policy="fail_fast", default="tolerated")
def sometimes_fatal() -> str:
    raise RuntimeError("down")


@pytest.mark.usefixtures("registered")
def test_a_flow_run_picks_up_a_changed_block_on_its_next_run(
    request: pytest.FixtureRequest,
) -> None:
    name = unique("live", request)
    policy_blocks.save_policy(
        name, WorkflowPolicy(step_policies={"sometimes_fatal": {"policy": "continue"}})
    )

    @resilient_flow(policy=name)
    def configured() -> str:
        return sometimes_fatal()

    assert configured() == "tolerated"
    policy_blocks.save_policy(
        name, WorkflowPolicy(step_policies={"sometimes_fatal": {"policy": "fail_fast"}})
    )
    with pytest.raises(WorkflowTerminated, match="fail_fast"):
        configured()


@pytest.mark.usefixtures("registered")
def test_an_invalid_block_stops_the_run_before_any_step(request: pytest.FixtureRequest) -> None:
    name = unique("bad", request)
    policy_blocks.save_policy(name, WorkflowPolicy())
    block = ResiliencePolicy.load(name)
    # the UI checks types, not our cross-field rules: a cap below the start gets saved
    block.step_policies = [
        {"match": "x", "backoff": {"initial": 10, "max": 1}, "retries": 1}  # type: ignore[list-item]
    ]
    ResiliencePolicy.model_construct(**dict(block)).save(name, overwrite=True)
    started: list[str] = []

    @resilient_flow(policy=name)
    def guarded() -> None:
        started.append("step")

    with pytest.raises(ResilienceConfigError, match=rf"block {name}.*backoff.*below initial"):
        guarded()
    assert started == []


@pytest.mark.usefixtures("registered")
def test_a_missing_block_is_named() -> None:
    @resilient_flow(policy="no-such-policy")
    def orphan() -> None:
        return None

    with pytest.raises(ResilienceConfigError, match="no Resilience Policy block named"):
        orphan()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.usefixtures("registered")
def test_apply_is_idempotent_and_says_what_changed(tmp_path: Path) -> None:
    folder = tmp_path / "blocks"
    folder.mkdir()
    (folder / "production-resilience.yaml").write_text(
        (ROOT / "blocks" / "production-resilience.yaml").read_text()
    )
    write(folder / "nightly.yaml", "max_partial_failures: 1\n")
    first = policy_blocks.apply([folder])
    assert sorted((c.name, c.action) for c in first) == [
        ("nightly", "created"),
        ("production-resilience", "created"),
    ]
    again = policy_blocks.apply([folder])
    assert {c.action for c in again} == {"unchanged"}
    write(folder / "nightly.yaml", "max_partial_failures: 2\n")
    third = {c.name: c for c in policy_blocks.apply([folder])}
    assert third["nightly"].action == "updated"
    assert "-max_partial_failures: 1" in third["nightly"].diff
    assert third["production-resilience"].action == "unchanged"
    seed = policy_blocks.load_block_policy("production-resilience")
    assert seed.default_failure_policy is FailurePolicy.PARTIAL_SUCCESS
    assert seed.step_policies[2].fallbacks == ("log_notification", "queue_for_retry")


@pytest.mark.usefixtures("registered")
def test_applying_a_folder_with_one_bad_file_changes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "blocks"
    folder.mkdir()
    write(folder / "a-good.yaml", "max_partial_failures: 11\n")
    bad = write(folder / "b-bad.yaml", "stepPolicies:\n  x:\n    maxRetries: -1\n")
    with pytest.raises(ResilienceConfigError) as caught:
        policy_blocks.apply([folder])
    assert (caught.value.path, caught.value.line) == (str(bad), 3)
    with pytest.raises(ResilienceConfigError, match="no Resilience Policy block named"):
        policy_blocks.load_block_policy("a-good")


@pytest.mark.usefixtures("registered")
def test_cli_apply_history_diff_rollback(tmp_path: Path) -> None:
    runner = CliRunner(env={"COLUMNS": "200"})
    file = write(tmp_path / "cli-policy.yaml", "max_partial_failures: 1\n")
    result = runner.invoke(app, ["policy", "apply", str(file)])
    assert result.exit_code == 0, result.output
    assert "created cli-policy" in result.output
    write(file, "max_partial_failures: 5\n")
    assert "updated cli-policy" in runner.invoke(app, ["policy", "apply", str(file)]).output
    history = runner.invoke(app, ["policy", "history", "cli-policy"])
    assert history.exit_code == 0 and "applied from cli-policy.yaml" in history.output
    diff = runner.invoke(app, ["policy", "diff", "cli-policy", "1", "2"])
    assert "+max_partial_failures: 5" in diff.output
    rolled = runner.invoke(app, ["policy", "rollback", "cli-policy"])
    assert rolled.exit_code == 0 and "version 3 (rollback to version 1)" in rolled.output
    assert policy_blocks.load_block_policy("cli-policy").max_partial_failures == 1
    missing = runner.invoke(app, ["policy", "rollback", "cli-policy", "--to", "99"])
    assert missing.exit_code == 1 and "not 99" in missing.output
    assert runner.invoke(app, ["policy", "rollback", "cli-policy", "--to", "0"]).exit_code == 2


@pytest.mark.usefixtures("registered")
def test_a_misspelt_setting_in_a_block_document_is_named(request: pytest.FixtureRequest) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import BlockDocumentUpdate

    name = unique("typo", request)
    policy_blocks.save_policy(name, WorkflowPolicy(name=name))
    with get_client(sync_client=True) as client:
        document = client.read_block_document_by_name(name, block_type_slug="resilience-policy")
        client.update_block_document(
            document.id,
            BlockDocumentUpdate(data={**document.data, "maxPartialFailure": 3}),
        )
    with pytest.raises(ResilienceConfigError, match="maxPartialFailure"):
        policy_blocks.load_block_policy(name)


def test_the_default_logo_url_names_the_file_that_ships() -> None:
    shipped = policy_blocks.LOGO_FILE.relative_to(ROOT).as_posix()
    assert policy_blocks.DEFAULT_LOGO_URL.endswith(f"/main/{shipped}")
    assert str(ResiliencePolicy._logo_url) == policy_blocks.DEFAULT_LOGO_URL


def _registered_logo() -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        block_type = client.read_block_type_by_slug("resilience-policy")
    return str(block_type.logo_url)


@pytest.mark.usefixtures("prefect_server")
def test_register_takes_the_logo_url_a_team_serves_and_keeps_it() -> None:
    runner = CliRunner()
    with file_server(policy_blocks.LOGO_FILE.parent) as base:
        url = f"{base}/{policy_blocks.LOGO_FILE.name}"
        result = runner.invoke(app, ["register", "--logo-url", url])
        assert result.exit_code == 0, result.output
        assert _registered_logo() == url
        # what each browser then loads is the image the package ships
        with urllib.request.urlopen(_registered_logo(), timeout=10) as response:
            assert response.read() == policy_blocks.LOGO_FILE.read_bytes()

    # a plain register (a teammate's, an upgrade's) keeps the URL the server has
    assert runner.invoke(app, ["register"]).exit_code == 0
    assert _registered_logo() == url
    # as does the environment variable, for every register of a machine
    other = "https://logos.example.internal/resilience-policy.png"
    result = runner.invoke(app, ["register"], env={"PREFECT_RESILIENCE_LOGO_URL": other})
    assert result.exit_code == 0, result.output
    assert _registered_logo() == other
    # the class keeps its own default: the override was for that registration only
    assert str(ResiliencePolicy._logo_url) == policy_blocks.DEFAULT_LOGO_URL


@pytest.mark.parametrize("bad", ["data:image/png;base64,iVBORw0KGgo=", "logo.png", "ftp://x/y.png"])
def test_register_refuses_a_logo_url_prefect_cannot_keep(bad: str) -> None:
    # refused before any call to the API, so no server is needed
    result = CliRunner().invoke(app, ["register", "--logo-url", bad])
    assert result.exit_code == 1
    assert f"logo URL: {bad!r} is not an http(s) URL" in result.output
    assert "Traceback" not in result.output
