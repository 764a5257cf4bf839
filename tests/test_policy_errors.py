"""Bad input: each case is a ResilienceConfigError naming the field, the path and the line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefect_resilience import ResilienceConfigError, load_policy, resilient


@pytest.mark.parametrize(
    ("text", "field", "line", "words"),
    [
        (
            "stepPolicies:\n  db:\n    failurePolicy: sometimes\n",
            "stepPolicies.db.failurePolicy",
            3,
            "'fail_fast'",
        ),
        (
            "stepPolicies:\n  db:\n    failureImpact: huge\n",
            "stepPolicies.db.failureImpact",
            3,
            "'critical'",
        ),
        (
            "stepPolicies:\n  db:\n    maxRetries: -2\n",
            "stepPolicies.db.maxRetries",
            3,
            "greater than or equal to 0",
        ),
        ("stepPolicies:\n  db:\n    retries: three\n", "stepPolicies.db.retries", 3, "integer"),
        (
            "stepPolicies:\n  db:\n    backoff:\n      initial: 10\n      max: 2\n",
            "stepPolicies.db.backoff",
            4,
            "below initial",
        ),
        (
            "stepPolicies:\n  db:\n    policy: continue\n    fallbacks: [cache]\n",
            "stepPolicies.db",
            3,
            "never run",
        ),
        (
            "stepPolicies:\n  db:\n    retryDelay: soon\n",
            "stepPolicies.db.retryDelay",
            3,
            "not a duration",
        ),
        (
            "stepPolicies:\n  db:\n    isCritical: perhaps\n",
            "stepPolicies.db.isCritical",
            3,
            "boolean",
        ),
        ("maxPartialFailures: 1\ncolour: blue\n", "colour", 2, "unknown setting"),
        ("criticalStepRatio: 1.5\n", "criticalStepRatio", 1, "less than or equal to 1"),
        (
            "stepPolicies:\n  db:\n    retries: 1\n    maxRetries: 2\n",
            "stepPolicies.db",
            3,
            "name the same setting",
        ),
        (
            "kind: WorkflowResilienceConfig\napiVersion: v1\nmetadata: {}\nspec: {}\n",
            "metadata.name",
            3,
            "required",
        ),
        (
            "kind: Deployment\napiVersion: v1\nmetadata: {name: x}\nspec: {}\n",
            "kind",
            1,
            "WorkflowResilienceConfig",
        ),
    ],
)
def test_bad_documents_name_field_path_and_line(
    tmp_path: Path, text: str, field: str, line: int, words: str
) -> None:
    file = tmp_path / "policy.yaml"
    file.write_text(text)
    with pytest.raises(ResilienceConfigError) as caught:
        load_policy(file)
    error = caught.value
    assert (error.field, error.path, error.line) == (field, str(file), line)
    assert words in str(error)
    assert str(error).startswith(f"{file}, line {line}: {field}: ")


@pytest.mark.parametrize("text", ["- just\n- a list\n", "42\n", "'a string'\n", "", "null\n"])
def test_a_document_that_is_not_a_mapping_is_refused(text: str) -> None:
    with pytest.raises(ResilienceConfigError, match="must be a mapping"):
        load_policy(text + "\n# text, not a path\n")


def test_yaml_syntax_errors_give_the_line(tmp_path: Path) -> None:
    file = tmp_path / "broken.yaml"
    file.write_text("stepPolicies:\n  db:\n    retries: [1, 2\n")
    with pytest.raises(ResilienceConfigError) as caught:
        load_policy(file)
    assert caught.value.path == str(file)
    assert caught.value.line is not None and caught.value.line >= 3
    assert "not valid YAML" in str(caught.value)


def test_yaml_tags_that_build_python_objects_are_refused() -> None:
    with pytest.raises(ResilienceConfigError, match="not valid YAML"):
        load_policy("stepPolicies: !!python/object/apply:os.system ['true']\n")


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ResilienceConfigError, match="no such policy file") as caught:
        load_policy(missing)
    assert caught.value.path == str(missing)


def test_several_problems_are_all_listed() -> None:
    with pytest.raises(ResilienceConfigError) as caught:
        load_policy("stepPolicies:\n  db:\n    retries: -1\n    impact: huge\n")
    message = str(caught.value)
    assert message.startswith("2 problems:")
    assert "line 3: stepPolicies.db.retries" in message
    assert "line 4: stepPolicies.db.impact" in message


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        load_policy("retries: 1\n# a step setting at workflow level\n")


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"policy": "sometimes"}, "policy", "'fail_fast'"),
        ({"impact": "huge"}, "impact", "'critical'"),
        ({"retries": -1}, "retries", "greater than or equal to 0"),
        ({"backoff": {"initial": 5, "max": 1}}, "backoff", "below initial"),
        ({"policy": "continue", "fallbacks": [len]}, "fallbacks", "never run"),
        ({"policy": "graceful_degradation", "fallbacks": [42]}, "fallbacks", "callable"),
        ({"retries": "many"}, "retries", "integer"),
        ({"policy": "graceful_degradation", "fallbacks": [print]}, "fallbacks", "cannot make"),
        ({"retry_budget": -1}, "retry_budget", "greater than or equal to 0"),
        ({"retry_budget": 0}, "retry_budget", "greater than 0"),
        ({"retry_budget": "soon"}, "retry_budget", "not a duration"),
        ({"min_success_ratio": 1.5}, "min_success_ratio", "less than or equal to 1"),
        ({"min_success_ratio": -0.1}, "min_success_ratio", "greater than or equal to 0"),
        (
            {"circuit_breaker": {"name": "api", "failure_threshold": 0}},
            "circuit_breaker.failure_threshold",
            "greater than or equal to 1",
        ),
        ({"circuit_breaker": {"name": "Payments API"}}, "circuit_breaker.name", "pattern"),
        (
            {"circuit_breaker": {"name": "api", "reset_after": -5}},
            "circuit_breaker.reset_after",
            "greater than",
        ),
        ({"circuit_breaker": {"failure_threshold": 3}}, "circuit_breaker.name", "required"),
        ({"circuit_breaker": {"name": "api", "colour": 1}}, "circuit_breaker.colour", "unknown"),
    ],
)
def test_bad_decorator_arguments_name_the_field(kwargs: dict, field: str, words: str) -> None:
    with pytest.raises(ResilienceConfigError) as caught:

        @resilient(**kwargs)
        def step(x: int) -> int:
            return x

    assert caught.value.field == field
    assert words in str(caught.value)


def test_a_fallback_that_needs_a_parameter_the_step_lacks_is_refused() -> None:
    def needs_y(y: int) -> int:
        return y

    with pytest.raises(ResilienceConfigError, match="requires parameter 'y'"):

        @resilient(fallbacks=[needs_y])
        def step(x: int) -> int:
            return x


# --- fuzzing: whatever the text, only ResilienceConfigError ---------------------------------

yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 100),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["fail_fast", "continue", "5s", "critical", "graceful_degradation"]),
)
keys = st.sampled_from(
    [
        "policy",
        "failurePolicy",
        "retries",
        "maxRetries",
        "retryDelay",
        "backoff",
        "isCritical",
        "failureImpact",
        "fallbackActions",
        "default",
        "timeout",
        "retry_on",
        "match",
        "initial",
        "max",
        "jitter",
        "factor",
        "stepPolicies",
        "spec",
        "kind",
        "apiVersion",
        "metadata",
        "name",
        "steps",
        "resilience",
        "id",
        "maxPartialFailures",
        "criticalStepRatio",
        "impactWeights",
        "unknown",
    ]
)
documents = st.recursive(
    yaml_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_structured_document_loads_or_raises_config_error(doc: object) -> None:
    text = yaml.safe_dump(doc) + "\n# fuzz\n"
    try:
        load_policy(text)
    except ResilienceConfigError as error:
        assert str(error)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_loads_or_raises_config_error(text: str) -> None:
    try:
        load_policy(text + "\n")
    except ResilienceConfigError as error:
        assert str(error)
