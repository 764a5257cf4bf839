"""Decisions and backoff: pure logic, no server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prefect.utilities.math import clamped_poisson_interval

from prefect_resilience import FailureAction, StepPolicy, decide
from prefect_resilience.decision import exception_names
from prefect_resilience.policy import MAX_RETRIES


class Throttled(ConnectionError):
    pass


def test_retry_until_exhausted_then_the_policy_decides() -> None:
    step = StepPolicy(policy="continue", retries=2, backoff={"initial": 1, "max": 10})
    first = decide(step, ValueError("x"), attempt=1)
    second = decide(step, ValueError("x"), attempt=2)
    last = decide(step, ValueError("x"), attempt=3)
    assert (first.action, first.delay) == (FailureAction.RETRY, 1)
    assert (second.action, second.delay) == (FailureAction.RETRY, 2)
    assert last.action is FailureAction.CONTINUE
    assert "retries exhausted" in last.reason and "continue" in last.reason


@pytest.mark.parametrize(
    ("policy", "action"),
    [
        ("fail_fast", FailureAction.TERMINATE),
        ("continue", FailureAction.CONTINUE),
        ("partial_success", FailureAction.DEGRADE),
        ("graceful_degradation", FailureAction.DEGRADE),
    ],
)
def test_each_policy_decides_its_action(policy: str, action: FailureAction) -> None:
    assert decide(StepPolicy(policy=policy), RuntimeError(), attempt=1).action is action


def test_graceful_degradation_walks_the_fallbacks_in_order() -> None:
    step = StepPolicy(policy="graceful_degradation", fallbacks=["cache", "queue"])
    decisions = [decide(step, RuntimeError(), attempt=1, fallbacks_tried=n) for n in range(3)]
    assert [(d.action, d.fallback) for d in decisions] == [
        (FailureAction.FALLBACK, "cache"),
        (FailureAction.FALLBACK, "queue"),
        (FailureAction.DEGRADE, None),
    ]
    assert "all 2 fallbacks failed" in decisions[-1].reason


def test_give_up_on_stops_retries_and_says_why() -> None:
    step = StepPolicy(retries=3, give_up_on=["ValueError"])
    decision = decide(step, ValueError("bad input"), attempt=1)
    assert decision.action is FailureAction.TERMINATE
    assert "give_up_on 'ValueError'" in decision.reason


def test_retry_on_matches_the_class_hierarchy_and_globs() -> None:
    step = StepPolicy(retries=3, retry_on=["ConnectionError"])
    assert decide(step, Throttled(), attempt=1).action is FailureAction.RETRY
    assert decide(step, KeyError("k"), attempt=1).action is FailureAction.TERMINATE
    qualified = StepPolicy(retries=3, retry_on=["tests.test_decision.*"])
    assert decide(qualified, Throttled(), attempt=1).action is FailureAction.RETRY


def test_a_failed_state_without_exception_is_retried_unless_retry_on_is_set() -> None:
    assert decide(StepPolicy(retries=1), None, attempt=1).action is FailureAction.RETRY
    only = StepPolicy(retries=1, retry_on=["OSError"])
    assert decide(only, None, attempt=1).action is FailureAction.TERMINATE


def test_exception_names_cover_short_and_qualified_names() -> None:
    names = exception_names(Throttled())
    assert "Throttled" in names and "tests.test_decision.Throttled" in names
    assert "ConnectionError" in names and "builtins.OSError" in names


def test_fixed_delays_repeat_the_last_one_like_prefect() -> None:
    step = StepPolicy(retries=4, retry_delay=[1, 5])
    assert [decide(step, None, attempt=a).delay for a in (1, 2, 3, 4)] == [1, 5, 5, 5]


backoffs = st.builds(
    dict,
    initial=st.floats(0, 30),
    factor=st.floats(1, 5),
    extra=st.floats(0, 300),
    jitter=st.floats(0, 2),
    retries=st.integers(0, MAX_RETRIES),  # more is refused (test_policy_errors)
)


@given(backoffs)
def test_backoff_is_capped_bounded_in_count_and_monotone(b: dict) -> None:
    step = StepPolicy(
        retries=b["retries"],
        backoff={
            "initial": b["initial"],
            "factor": b["factor"],
            "max": b["initial"] + b["extra"],
            "jitter": b["jitter"],
        },
    )
    delays = step.retry_delays()
    cap = step.backoff.max
    assert len(delays) == min(b["retries"], 50)
    assert all(d <= cap for d in delays)
    assert all(a <= b_ for a, b_ in zip(delays, delays[1:], strict=False))
    # Prefect draws the actual wait from the nominal one; it never passes cap * (1 + jitter)
    for delay in delays[:5]:
        if delay > 0 and step.jitter > 0:
            drawn = clamped_poisson_interval(delay, clamping_factor=step.jitter)
            assert drawn <= cap * (1 + step.jitter) + 1e-9
