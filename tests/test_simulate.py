"""`simulate`: a written policy's predicted effect against the one in force."""

from __future__ import annotations

import pytest

from prefect_resilience.policy import WorkflowPolicy
from prefect_resilience.policy_documents import load_policy
from prefect_resilience.simulate import compare_policies
from tests.test_optimization import history

STEPS = [
    {"name": "db", "policy": "fail_fast", "critical": True, "p": 0.3, "retries": 2},
    {"name": "report", "policy": "continue", "p": 0.1, "retries": 0},
]


def _policy(db_retries: int) -> WorkflowPolicy:
    return load_policy(
        "stepPolicies:\n"
        f"  - match: db\n    policy: fail_fast\n    critical: true\n    retries: {db_retries}\n"
    )


def test_more_retries_on_a_transient_step_predict_fewer_terminations() -> None:
    tasks, flows, reports = history(STEPS, 120, seed=5)
    result = compare_policies(tasks, flows, reports, _policy(0), _policy(3), bootstrap=20)
    assert result.flow_runs == 120
    effects = {e.metric: e for e in result.effects}
    termination = effects["termination_rate"]
    # one attempt fails about 30% of the time; four fail together about 1% of the time
    assert termination.now == pytest.approx(0.3, abs=0.1)
    assert termination.proposed < 0.05
    assert (
        termination.change_low
        <= termination.proposed - termination.now
        <= (termination.change_high)
    )
    assert termination.change_high < 0  # the interval excludes no change
    assert effects["wasted_s"].proposed >= effects["wasted_s"].now
    text = result.to_text("etl-policy", "tuned.yaml")
    assert "runs terminated" in text and "PartialSuccess rate: not predicted" in text


def test_the_same_policy_predicts_no_change() -> None:
    tasks, flows, reports = history(STEPS, 60, seed=2)
    result = compare_policies(tasks, flows, reports, _policy(1), _policy(1), bootstrap=10)
    assert all(e.now == e.proposed and e.change_low == e.change_high == 0 for e in result.effects)


def test_too_little_history_says_how_much_is_needed() -> None:
    tasks, flows, reports = history(STEPS, 8, seed=1)
    result = compare_policies(tasks, flows, reports, _policy(0), _policy(3))
    assert result.effects == []
    assert "8 finished flow runs; at least 20 are needed" in result.to_text("a", "b")


def test_retries_a_step_never_made_are_an_open_question_not_a_promise() -> None:
    # thumb fails for good in 25% of runs, every attempt (persistent), and was never retried
    steps = [{"name": "thumb", "policy": "fail_fast", "p": 0.25, "persistent": True}]
    tasks, flows, reports = history(steps, 100, seed=6)
    now = load_policy("stepPolicies:\n  - match: thumb\n    policy: fail_fast\n")
    retried = load_policy(
        "stepPolicies:\n  - match: thumb\n    policy: fail_fast\n    retries: 1\n"
    )
    result = compare_policies(tasks, flows, reports, now, retried, bootstrap=20)
    assert result.unseen == ["thumb (1)"]
    termination = {e.metric: e for e in result.effects}["termination_rate"]
    # as often as attempt 1 succeeded, a retry would cut terminations by three quarters ...
    assert termination.proposed - termination.now < -0.1
    # ... and if the failures are persistent it cuts none: the interval holds both
    # (exactly: attempt 1 gets the same draws whether one attempt is played or two)
    assert termination.change_low < -0.1 and termination.change_high == 0.0
    assert "never tried in this history: attempts beyond thumb (1)" in result.to_text("a", "b")
