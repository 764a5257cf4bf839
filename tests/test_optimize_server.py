"""Optimization against a real Prefect server: propose, apply, refuse stale, self-optimize.

One flow with a step that fails transiently builds a real history; the CLI
proposes from it, applies a candidate to the flow's policy block, refuses a
candidate once the block changed, and the self-optimization flow applies a
change, keeps it while it helps and rolls it back once runs get worse.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from typing import Any

import pytest
from prefect import task
from prefect.runtime import task_run
from typer.testing import CliRunner

from prefect_resilience import WorkflowPolicy, resilient, resilient_flow
from prefect_resilience.blocks import ResiliencePolicy, history, load_block_policy, save_policy
from prefect_resilience.cli import app
from tests.conftest import ROOT

runner = CliRunner(env={"COLUMNS": "200"})
FLOW = "optimize-me"
BLOCK = "optimize-me-policy"


def make_flow(chance: Callable[[], float]) -> Any:
    """A two-step flow loading BLOCK; `chance()` is each attempt's failure chance, read live."""

    @resilient(name="flaky_extract", policy="fail_fast", critical=True, retries=1)
    def flaky_extract(key: str) -> str:
        draw = random.Random(f"{key}:{task_run.run_count}").random()
        if draw < chance():
            raise ConnectionError("upstream refused the connection")
        return "rows"

    @task(name="store")
    def store(rows: str) -> str:
        return rows

    @resilient_flow(policy=BLOCK, name=FLOW)
    def optimize_me(key: str) -> str:
        return store(flaky_extract(key))

    return optimize_me


def run(flow: Any, prefix: str, count: int) -> None:
    for i in range(count):
        flow(f"{prefix}-{i}", return_state=True)


@pytest.fixture(scope="module")
def built(prefect_server: None) -> dict[str, Any]:
    ResiliencePolicy.register_type_and_schema()
    save_policy(BLOCK, WorkflowPolicy(name=BLOCK), note="initial")
    failure = {"chance": 0.4}
    flow = make_flow(lambda: failure["chance"])
    # 80 runs: at 40, raising the retries (failed runs 9% -> 0.5%) is within the noise of
    # 40 runs before and 40 after, and the proposal holds it back (test_optimization.py)
    run(flow, "history", 80)
    return {"flow": flow, "failure": failure}


def test_optimize_proposes_applies_and_refuses_a_stale_candidate(built: dict[str, Any]) -> None:
    result = runner.invoke(app, ["optimize", "--flow", FLOW, "--policy", BLOCK, "--json"])
    assert result.exit_code == 0, result.output
    import json

    proposal = json.loads(result.output)
    assert proposal["flow_runs"] == 80
    tuning = [c for c in proposal["candidates"] if c["kind"] == "retry_tuning"]
    assert len(tuning) == 1, proposal
    candidate = tuning[0]
    assert candidate["step"] == "flaky_extract"
    assert candidate["patch"]["retries"] > 1
    assert 0 < candidate["confidence"] <= 1
    versions_before = len(history(BLOCK))

    applied = runner.invoke(
        app, ["optimize", "--flow", FLOW, "--policy", BLOCK, "--apply", candidate["id"]]
    )
    assert applied.exit_code == 0, applied.output
    assert f"saved version {versions_before + 1}" in applied.output
    policy = load_block_policy(BLOCK)
    assert policy.policy_for("flaky_extract").retries == candidate["patch"]["retries"]
    assert history(BLOCK)[-1].note.startswith(f"optimize {candidate['id']}")

    # the block changed since the proposal (the apply itself changed it): refused
    again = runner.invoke(
        app, ["optimize", "--flow", FLOW, "--policy", BLOCK, "--apply", candidate["id"]]
    )
    assert again.exit_code == 1
    assert "changed since the proposal" in again.output

    unknown = runner.invoke(app, ["optimize", "--flow", FLOW, "--policy", BLOCK, "--apply", "nope"])
    assert unknown.exit_code == 1
    assert "not in the latest proposal" in unknown.output
    save_policy(BLOCK, WorkflowPolicy(name=BLOCK), note="reset for the next test")


def test_optimize_usage_errors() -> None:
    assert runner.invoke(app, ["optimize"]).exit_code == 2  # --flow is required
    no_block = runner.invoke(app, ["optimize", "--flow", FLOW, "--apply", "abc"])
    assert no_block.exit_code == 2 and "--policy" in no_block.output
    assert runner.invoke(app, ["optimize", "--flow", FLOW, "--bootstrap", "1"]).exit_code == 2


def test_self_optimization_applies_keeps_and_rolls_back(built: dict[str, Any]) -> None:
    sys.path.insert(0, str(ROOT / "flows"))
    from self_optimization import last_decision, self_optimize

    save_policy(BLOCK, WorkflowPolicy(name=BLOCK), note="start of the loop")
    start = len(history(BLOCK))
    first = self_optimize(FLOW, BLOCK, window="1d", bootstrap=20)
    assert first["action"] == "applied", first
    assert first["version_before"] == start
    assert load_block_policy(BLOCK).policy_for("flaky_extract").retries > 1

    waiting = self_optimize(FLOW, BLOCK, window="1d", bootstrap=20)
    assert waiting["action"] == "wait"

    # the upstream breaks for good: runs under the change get worse, so it is undone
    built["failure"]["chance"] = 1.0
    run(built["flow"], "broken", first["runs_needed"])
    judged = self_optimize(FLOW, BLOCK, window="1d", bootstrap=20)
    assert judged["action"] == "rolled back", judged
    assert judged["metric"] == "failure_rate"
    assert judged["after"] > judged["before"]
    assert judged["realised_gain"] < 0
    assert last_decision(FLOW)["action"] == "rolled back"
    assert load_block_policy(BLOCK).rule_for("flaky_extract") is None  # the decorator decides
    assert history(BLOCK)[-1].note == f"rollback to version {start}"


def test_learned_retries_are_saved_only_from_enough_history(prefect_server: None) -> None:
    ResiliencePolicy.register_type_and_schema()
    block = "learn-me-policy"
    rules = {"step_policies": [{"match": "often_down", "retries": "auto"}]}
    save_policy(block, WorkflowPolicy.model_validate({"name": block, **rules}), note="initial")

    @resilient(name="often_down", policy="continue", retries=2, default="down")
    def often_down(key: str) -> str:
        if random.Random(f"{key}:{task_run.run_count}").random() < 0.7:
            raise ConnectionError("down")
        return "up"

    @resilient_flow(policy=block, name="learn-me")
    def learn_me(key: str) -> str:
        return often_down(key)

    run(learn_me, "few", 8)
    few = runner.invoke(
        app, ["optimize", "--flow", "learn-me", "--policy", block, "--learn-retries"]
    )
    assert few.exit_code == 0, few.output
    assert "unchanged, nothing new was learned" in few.output
    assert "keeps its declared retries" in few.output
    assert load_block_policy(block).learned_retries == {}

    run(learn_me, "more", 40)
    learned = runner.invoke(
        app, ["optimize", "--flow", "learn-me", "--policy", block, "--learn-retries"]
    )
    assert learned.exit_code == 0, learned.output
    assert history(block)[-1].note == "learned retries from learn-me"
    policy = load_block_policy(block)
    values = policy.learned_retries["often_down"]
    assert values.n == 48
    assert 0 <= values.retries <= 10
    assert 0 < values.predicted_success <= 1
    assert policy.policy_for("often_down").retries == values.retries

    save_policy("no-auto-policy", WorkflowPolicy(name="no-auto-policy"), note="initial")
    no_auto = runner.invoke(
        app, ["optimize", "--flow", "learn-me", "--policy", "no-auto-policy", "--learn-retries"]
    )
    assert no_auto.exit_code == 1
    assert "retries: auto" in no_auto.output


def test_scale_says_when_the_history_is_too_short(built: dict[str, Any]) -> None:
    result = runner.invoke(app, ["scale", "--flow", FLOW])
    assert result.exit_code == 0, result.output
    assert "no recommendation" in result.output and "history" in result.output
    assert runner.invoke(app, ["scale", "--flow", FLOW, "--horizon", "0"]).exit_code == 2
    assert runner.invoke(app, ["scale", "--flow", FLOW, "--period", "-1h"]).exit_code == 2
