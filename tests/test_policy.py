"""Policy models and documents: the seed's YAML loads as written, precedence holds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from prefect_resilience import (
    Backoff,
    FailureImpact,
    FailurePolicy,
    ResilienceConfigError,
    StepPolicy,
    WorkflowPolicy,
    load_policy,
)
from tests.conftest import DATA, ROOT

SEED = ROOT.parent / "shared" / "seed" / "resilient-workflow-engine-design.md"


def seed_yaml_blocks() -> list[str]:
    text = SEED.read_text(encoding="utf-8")
    return re.findall(r"```yaml\n(.*?)```", text, flags=re.S)


@pytest.mark.skipif(not SEED.exists(), reason="the originating design is not beside the repo")
def test_shipped_documents_are_the_seed_text_verbatim() -> None:
    blocks = seed_yaml_blocks()
    shipped = [
        (ROOT / "blocks" / "production-resilience.yaml").read_text(),
        (DATA / "seed-steps.yaml").read_text(),
    ]
    for text in shipped:
        assert text in blocks


def test_seed_workflow_config_loads_to_expected_models() -> None:
    policy = load_policy(ROOT / "blocks" / "production-resilience.yaml")
    assert policy.name == "production-resilience"
    assert policy.default_failure_policy is FailurePolicy.PARTIAL_SUCCESS
    assert policy.max_partial_failures == 5
    assert policy.critical_step_ratio == 0.8
    assert policy.termination_threshold == 0.10
    assert [rule.match for rule in policy.step_policies] == [
        "database_operations",
        "monitoring_checks",
        "notifications",
    ]
    db, monitoring, notifications = policy.step_policies
    assert (db.policy, db.critical, db.retries, db.retry_delay) == (
        FailurePolicy.FAIL_FAST,
        True,
        3,
        5.0,
    )
    assert (monitoring.policy, monitoring.critical, monitoring.retries) == (
        FailurePolicy.CONTINUE,
        False,
        1,
    )
    assert notifications.policy is FailurePolicy.GRACEFUL_DEGRADATION
    assert notifications.fallbacks == ("log_notification", "queue_for_retry")


def test_seed_step_annotations_load_to_expected_models() -> None:
    policy = load_policy(DATA / "seed-steps.yaml")
    db = policy.policy_for("critical_database_setup")
    assert (db.policy, db.critical, db.retries, db.retry_delay) == (
        FailurePolicy.FAIL_FAST,
        True,
        3,
        10.0,
    )
    analytics = policy.policy_for("optional-analytics-setup")
    assert (analytics.policy, analytics.impact) == (FailurePolicy.CONTINUE, FailureImpact.MINOR)
    notify = policy.policy_for("user_notification")
    assert notify.fallbacks == ("email_fallback", "queue_notification")


def test_snake_case_and_camel_case_are_the_same_policy() -> None:
    camel = load_policy(
        "defaultFailurePolicy: continue\nmaxPartialFailures: 2\n"
        "stepPolicies:\n  load_*:\n    failurePolicy: partial_success\n    maxRetries: 2\n"
        "    retryDelay: 500ms\n    isCritical: true\n    failureImpact: minor\n"
    )
    snake = load_policy(
        "default_failure_policy: continue\nmax_partial_failures: 2\n"
        "step_policies:\n  - match: load_*\n    failure_policy: partial_success\n"
        "    max_retries: 2\n    retry_delay: 0.5\n    is_critical: true\n"
        "    failure_impact: minor\n"
    )
    assert camel == snake
    assert camel.step_policies[0].retry_delay == 0.5


def test_policy_for_matches_globs_and_tags_in_declared_order() -> None:
    policy = WorkflowPolicy(
        default_failure_policy="continue",
        step_policies=[
            {"match": "tag:payments", "policy": "fail_fast"},
            {"match": "load_*", "policy": "partial_success", "retries": 2},
            {"match": "load_users", "policy": "fail_fast"},
        ],
    )
    assert policy.policy_for("load_users").policy is FailurePolicy.PARTIAL_SUCCESS
    assert policy.policy_for("load_users", tags={"payments"}).policy is FailurePolicy.FAIL_FAST
    assert policy.policy_for("other").policy is FailurePolicy.CONTINUE


def test_workflow_rule_overrides_decorator_settings_field_by_field() -> None:
    declared = StepPolicy(policy="continue", retries=1, critical=True, default=7)
    policy = WorkflowPolicy(step_policies={"fetch": {"retries": 4}})
    effective = policy.policy_for("fetch", declared=declared)
    assert effective.retries == 4
    assert (effective.policy, effective.critical, effective.default) == (
        FailurePolicy.CONTINUE,
        True,
        7,
    )


def test_a_rules_null_settings_are_left_to_the_decorator() -> None:
    # Prefect's block form writes null for each optional setting left empty
    declared = StepPolicy(timeout=5, backoff={"initial": 2, "max": 8}, default=[])
    policy = WorkflowPolicy(
        step_policies=[
            {"match": "fetch", "retries": 3, "timeout": None, "backoff": None, "default": None}
        ]
    )
    (rule,) = policy.step_policies
    assert rule.model_fields_set == {"match", "retries", "default"}
    effective = policy.policy_for("fetch", declared=declared)
    assert (effective.retries, effective.timeout) == (3, 5.0)
    assert effective.backoff == Backoff(initial=2, max=8)
    # `default` is a value, and a rule may make it None
    assert effective.default is None


def test_a_step_rules_schema_offers_no_defaults_to_fill_in() -> None:
    # what a rule leaves out is the decorator's: a form must not fill in the model's defaults
    schema = WorkflowPolicy.model_json_schema()["$defs"]["StepRule"]
    properties = schema["properties"]
    assert list(properties)[0] == "match"
    assert [name for name, field in properties.items() if "default" in field] == []
    for name, field in properties.items():
        options = field.get("anyOf", [])
        if {"type": "null"} in options:
            assert options[0] == {"type": "null"}, name
            # the model's "empty: off" is the decorator's meaning; in a rule, empty is not set
            assert "mpty:" not in field["description"], (name, field["description"])
        if name != "match":
            assert field["description"].endswith("Not set: the decorator's."), name


def test_declared_policy_beats_workflow_default() -> None:
    policy = WorkflowPolicy(default_failure_policy="partial_success")
    assert policy.policy_for("x", declared=StepPolicy(policy="fail_fast")).policy == "fail_fast"
    assert policy.policy_for("x", declared=StepPolicy()).policy == "partial_success"


def test_overriding_the_delay_scheme_replaces_the_other_one() -> None:
    declared = StepPolicy(retries=3, retry_delay=2)
    merged = declared.merged({"backoff": {"initial": 1, "max": 4}})
    assert merged.retry_delay is None and merged.backoff == Backoff(initial=1, max=4)


def test_retry_delays_are_capped_exponential_and_at_most_fifty() -> None:
    step = StepPolicy(retries=80, backoff={"initial": 1, "factor": 2, "max": 10})
    delays = step.retry_delays()
    assert len(delays) == 50
    assert delays[:5] == [1, 2, 4, 8, 10]
    assert max(delays) == 10


def test_durations_accept_units() -> None:
    step = StepPolicy(retries=3, retry_delay=["500ms", "2s", "1m"], timeout="1h")
    assert step.retry_delay == [0.5, 2.0, 60.0]
    assert step.timeout == 3600.0


def test_load_policy_accepts_a_path_object_text_and_mapping(tmp_path: Path) -> None:
    file = tmp_path / "p.yml"
    file.write_text("default_failure_policy: continue\n")
    assert load_policy(file).default_failure_policy is FailurePolicy.CONTINUE
    assert load_policy(str(file)).default_failure_policy is FailurePolicy.CONTINUE
    assert load_policy({"defaultFailurePolicy": "continue"}).default_failure_policy == "continue"
    assert load_policy("defaultFailurePolicy: continue").default_failure_policy == "continue"


def test_a_spec_without_its_header_reads_as_the_document_would() -> None:
    policy = load_policy(
        "metadata:\n  name: prod\nspec:\n  maxPartialFailures: 2\n"
        "  stepPolicies:\n    db:\n      maxRetries: 3\n"
    )
    assert policy.name == "prod" and policy.max_partial_failures == 2
    assert policy.step_policies[0].retries == 3
    assert load_policy("spec:\n  criticalStepRatio: 0.8\n").critical_step_ratio == 0.8


def test_a_bad_setting_in_a_headerless_spec_names_its_line() -> None:
    with pytest.raises(ResilienceConfigError) as caught:
        load_policy("spec:\n  stepPolicies:\n    db:\n      maxRetries: -1\n")
    assert caught.value.line == 4 and "spec.stepPolicies.db.maxRetries" in str(caught.value)


def test_round_two_settings_load_from_yaml_in_both_spellings() -> None:
    camel = load_policy(
        """
        stepPolicies:
          - match: fetch_*
            retryBudget: 30s
            minSuccessRatio: 0.9
            circuitBreaker: {name: payments, failureThreshold: 3, resetAfter: 2m, window: 45s}
        """
    )
    snake = load_policy(
        {
            "step_policies": [
                {
                    "match": "fetch_*",
                    "retry_budget": 30,
                    "min_success_ratio": 0.9,
                    "circuit_breaker": {
                        "name": "payments",
                        "failure_threshold": 3,
                        "reset_after": 120,
                        "window": 45,
                    },
                }
            ]
        }
    )
    assert camel == snake
    step = camel.policy_for("fetch_prices")
    assert step.retry_budget == 30.0 and step.min_success_ratio == 0.9
    assert step.circuit_breaker is not None
    assert (step.circuit_breaker.name, step.circuit_breaker.failure_threshold) == ("payments", 3)
    assert (step.circuit_breaker.reset_after, step.circuit_breaker.window) == (120.0, 45.0)


def test_a_rule_replaces_the_decorators_breaker_and_keeps_its_budget() -> None:
    declared = StepPolicy(retries=2, retry_budget=10, circuit_breaker={"name": "a"})
    policy = load_policy({"step_policies": [{"match": "s", "circuitBreaker": {"name": "b"}}]})
    step = policy.policy_for("s", declared=declared)
    assert step.retry_budget == 10 and step.circuit_breaker is not None
    assert step.circuit_breaker.name == "b" and step.circuit_breaker.failure_threshold == 5
