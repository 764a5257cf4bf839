"""Decisions and backoff: pure logic, no server."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prefect.utilities.math import clamped_poisson_interval

from prefect_resilience import (
    CircuitOpen,
    FailureAction,
    ResilienceConfigError,
    RetryAfter,
    StepPolicy,
    decide,
)
from prefect_resilience.decision import exception_names, parse_retry_after, requested_wait
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


# --- retry budgets and requested waits ---------------------------------------------------


def test_a_retry_whose_wait_ends_past_the_budget_is_not_started() -> None:
    step = StepPolicy(
        policy="continue", retries=5, backoff={"initial": 2, "max": 60}, retry_budget=10
    )
    assert decide(step, ConnectionError(), attempt=1, elapsed=7.9).action is FailureAction.RETRY
    refused = decide(step, ConnectionError(), attempt=2, elapsed=6.5)  # wait 4s ends at 10.5s
    assert refused.action is FailureAction.CONTINUE
    assert "retry 2 would start 10.5s after the first attempt's start" in refused.reason
    assert "past retry_budget 10s" in refused.reason and "continue yields" in refused.reason


def test_the_budget_counts_the_longest_wait_jitter_allows() -> None:
    step = StepPolicy(retries=3, backoff={"initial": 4, "max": 4, "jitter": 0.5}, retry_budget=10)
    assert decide(step, OSError(), attempt=1, elapsed=3.9).action is FailureAction.RETRY
    assert decide(step, OSError(), attempt=1, elapsed=4.1).action is FailureAction.TERMINATE


def test_retry_after_waits_the_longer_of_its_seconds_and_the_backoff() -> None:
    step = StepPolicy(retries=3, backoff={"initial": 5, "max": 60, "jitter": 0.3})
    asked_less = decide(step, RetryAfter(2), attempt=1, requested=2)
    assert (asked_less.delay, asked_less.jitter, asked_less.requested) == (5, 0.3, False)
    asked_more = decide(step, RetryAfter(12, "rate limited"), attempt=1, requested=12)
    assert (asked_more.delay, asked_more.jitter, asked_more.requested) == (12, 0.0, True)
    assert "after 12s, as RetryAfter asked" in asked_more.reason


def test_retry_after_is_bounded_by_the_budget() -> None:
    step = StepPolicy(policy="continue", retries=3, retry_budget=20)
    assert decide(step, RetryAfter(15), attempt=1, elapsed=1, requested=15).delay == 15
    over = decide(step, RetryAfter(30), attempt=1, elapsed=1, requested=30)
    assert over.action is FailureAction.CONTINUE and "past retry_budget 20s" in over.reason


def test_retry_after_asks_for_a_retry_whatever_retry_on_lists() -> None:
    step = StepPolicy(retries=2, retry_on=["ConnectionError"], give_up_on=["*Fatal*"])
    assert decide(step, RetryAfter(1), attempt=1, requested=1).action is FailureAction.RETRY
    assert decide(step, ValueError(), attempt=1).action is FailureAction.TERMINATE

    class FatalRetryAfter(RetryAfter):
        pass

    assert decide(step, FatalRetryAfter(1), attempt=1).action is FailureAction.TERMINATE


def test_an_open_circuit_is_never_retried_and_says_so() -> None:
    for retries in (0, 3):
        step = StepPolicy(policy="continue", retries=retries)
        decision = decide(step, CircuitOpen("payments"), attempt=1)
        assert decision.action is FailureAction.CONTINUE
        assert "circuit 'payments' is open: the function was not called" in decision.reason


def test_requested_wait_reads_retry_after_and_http_429_and_503() -> None:
    import httpx
    import requests

    now = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)
    assert requested_wait(RetryAfter(7)) == 7
    assert requested_wait(ValueError()) is None

    def httpx_error(status: int, headers: dict[str, str]) -> httpx.HTTPStatusError:
        request = httpx.Request("GET", "https://api.example/x")
        response = httpx.Response(status, headers=headers, request=request)
        return httpx.HTTPStatusError("err", request=request, response=response)

    assert requested_wait(httpx_error(429, {"Retry-After": "3"})) == 3
    assert (
        requested_wait(httpx_error(503, {"Retry-After": "Thu, 03 Dec 2026 12:00:42 GMT"}), now)
        == 42
    )
    assert requested_wait(httpx_error(500, {"Retry-After": "3"})) is None
    assert requested_wait(httpx_error(429, {})) is None

    response = requests.Response()
    response.status_code, response.headers["Retry-After"] = 429, "9"
    assert requested_wait(requests.HTTPError(response=response)) == 9
    assert requested_wait(requests.HTTPError()) is None  # no response attached


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 1.5 ", 1.5),
        ("Thu, 03 Dec 2026 11:59:00 GMT", 0.0),  # in the past
        ("Thu, 03 Dec 2026 12:01:00 GMT", 60.0),
        ("-5", 0.0),
        ("999999999", 86_400.0),  # at most a day
        ("soon", None),
        ("nan", None),
    ],
)
def test_parse_retry_after(header: str, seconds: float | None) -> None:
    now = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after(header, now) == seconds


def test_retry_after_takes_seconds_and_refuses_nonsense() -> None:
    assert RetryAfter(2.5, "slow down").seconds == 2.5
    assert str(RetryAfter(3, "rate limited")) == "rate limited (retry after 3s)"
    for bad in (-1, float("inf"), "5", True):
        with pytest.raises(ResilienceConfigError) as caught:
            RetryAfter(bad)
        assert caught.value.field == "seconds"
