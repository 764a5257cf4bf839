"""What to do about one failure: retry, fall back, continue, degrade or terminate.

Pure logic over a `StepPolicy`, the exception and the attempt number. Prefect
asks it before each retry (through `retry_condition_fn`); the step asks it
once the retries are over. Every decision carries the reason it was taken.
"""

from __future__ import annotations

import fnmatch
import math
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from prefect_resilience.errors import CircuitOpen, RetryAfter
from prefect_resilience.policy import MAX_DELAY_SECONDS, FailureAction, FailurePolicy, StepPolicy


@dataclass(frozen=True)
class FailureDecision:
    """One decision about one failure.

    `delay` is the nominal wait before a retry, in seconds; with jitter the
    actual wait is drawn by Prefect and never exceeds delay * (1 + jitter).
    `requested` says the delay is the wait the failure asked for
    (`requested_wait`), longer than the backoff's. `fallback` names the
    fallback to run next.
    """

    action: FailureAction
    reason: str
    delay: float | None = None
    jitter: float = 0.0
    fallback: str | None = None
    cause: str = ""
    requested: bool = False

    @property
    def consequence(self) -> str:
        """The reason without its cause: what the policy does about the failure."""
        return self.reason.removeprefix(f"{self.cause}; ") if self.cause else self.reason


def exception_names(error: BaseException | type[BaseException] | None) -> list[str]:
    """Names an exception answers to: each class in its MRO, short and qualified."""
    if error is None:
        return []
    cls = error if isinstance(error, type) else type(error)
    names = []
    for klass in cls.__mro__:
        if klass is object:
            continue
        names.append(klass.__name__)
        names.append(f"{klass.__module__}.{klass.__qualname__}")
    return names


def _first_match(names: list[str], patterns: tuple[str, ...]) -> str | None:
    for pattern in patterns:
        if any(fnmatch.fnmatchcase(name, pattern) for name in names):
            return pattern
    return None


def describe(error: BaseException | None) -> str:
    return type(error).__name__ if error is not None else "a Failed state"


def retry_refusal(step: StepPolicy, error: BaseException | None) -> str | None:
    """Why this error must not be retried, whatever the attempt, or None when it may be.

    An open circuit is never retried; `RetryAfter` asks for a retry, so
    `retry_on` does not filter it out (`give_up_on` still can).
    """
    if isinstance(error, CircuitOpen):
        return f"circuit {error.circuit!r} is open: the function was not called"
    names = exception_names(error)
    given_up = _first_match(names, step.give_up_on)
    if given_up:
        return f"give_up_on {given_up!r} matches it"
    if (
        step.retry_on
        and not isinstance(error, RetryAfter)
        and not _first_match(names, step.retry_on)
    ):
        return f"not in retry_on {list(step.retry_on)}"
    return None


def next_retry(
    step: StepPolicy,
    error: BaseException | None,
    attempt: int,
    *,
    elapsed: float | None = None,
    requested: float | None = None,
) -> FailureDecision | str:
    """The retry after failed attempt `attempt` (1-based), or why none is started.

    `requested` is the wait the failure asked for (`requested_wait`): the wait
    is the larger of it and the backoff delay, and a requested wait that wins
    is not jittered. `elapsed` is the seconds since the first attempt's start:
    with a `retry_budget`, a retry whose wait could end after the budget (at
    the most jitter allows) is not started.
    """
    refusal = retry_refusal(step, error)
    if refusal is not None and (isinstance(error, CircuitOpen) or attempt <= step.retry_count):
        return refusal
    if attempt > step.retry_count:
        if step.retries:
            return f"{step.retries} {'retry' if step.retries == 1 else 'retries'} exhausted"
        return "no retries configured"
    delays = step.retry_delays()
    wait = delays[min(attempt, len(delays)) - 1] if delays else 0.0
    jitter, asked = step.jitter, ""
    if requested is not None and requested > wait:
        wait, jitter, asked = requested, 0.0, f", as {describe(error)} asked"
    latest = wait * (1 + jitter)
    budget = step.retry_budget
    if budget is not None and elapsed is not None and elapsed + latest > budget:
        return (
            f"retry {attempt} would start {elapsed + latest:.1f}s after the first attempt's"
            f" start, past retry_budget {budget:g}s"
        )
    cause = f"attempt {attempt} failed with {describe(error)}"
    return FailureDecision(
        FailureAction.RETRY,
        f"{cause}; retry {attempt} of {step.retries} after {wait:g}s{asked}",
        delay=wait,
        jitter=jitter,
        cause=cause,
        requested=bool(asked),
    )


def decide(
    step: StepPolicy,
    error: BaseException | None,
    attempt: int,
    fallbacks_tried: int = 0,
    *,
    retries_over: str | None = None,
    elapsed: float | None = None,
    requested: float | None = None,
) -> FailureDecision:
    """Decide about the failure of `attempt` (1-based) of a step.

    Retries come first (`next_retry`); once they are exhausted or refused,
    the step's failure policy decides. Under `graceful_degradation`,
    `fallbacks_tried` says how many fallbacks have already failed.
    `retries_over` says why no retry is left when that was decided elsewhere
    (by the retry condition while the task ran, or the task's own condition):
    the policy then decides at once.
    """
    if retries_over is None:
        retry = next_retry(step, error, attempt, elapsed=elapsed, requested=requested)
        if isinstance(retry, FailureDecision):
            return retry
        retries_over = retry
    return _policy_decision(step, f"{describe(error)}; {retries_over}", fallbacks_tried)


def requested_wait(error: BaseException | None, now: datetime | None = None) -> float | None:
    """The seconds a failure asks to wait before the next attempt, if it asks.

    `RetryAfter` asks in code; an HTTP 429 or 503 asks with its `Retry-After`
    header (seconds, or a date), read from `httpx.HTTPStatusError` and
    `requests.HTTPError` where those libraries are in use. At most a day.
    """
    if isinstance(error, RetryAfter):
        return min(error.seconds, MAX_DELAY_SECONDS)
    response = _http_response(error)
    if response is None or getattr(response, "status_code", None) not in (429, 503):
        return None
    headers = getattr(response, "headers", None)
    value = headers.get("Retry-After") if headers is not None else None
    return parse_retry_after(value, now) if isinstance(value, str) else None


def _http_response(error: BaseException | None) -> Any:
    """The response of an HTTP error of httpx or requests (only if already imported)."""
    for module, name in (("httpx", "HTTPStatusError"), ("requests", "HTTPError")):
        kind = getattr(sys.modules.get(module), name, None)
        if isinstance(kind, type) and isinstance(error, kind):
            return getattr(error, "response", None)
    return None


def parse_retry_after(value: str, now: datetime | None = None) -> float | None:
    """A `Retry-After` header in seconds from `now`: delay-seconds or an HTTP-date.

    A date in the past is 0; a value that is neither is None (ignored).
    """
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_DELAY_SECONDS)


def _policy_decision(step: StepPolicy, why: str, fallbacks_tried: int) -> FailureDecision:
    policy = step.policy
    if policy is FailurePolicy.FAIL_FAST:
        return FailureDecision(
            FailureAction.TERMINATE, f"{why}; fail_fast stops the run", cause=why
        )
    if policy is FailurePolicy.CONTINUE:
        return FailureDecision(
            FailureAction.CONTINUE, f"{why}; continue yields the default", cause=why
        )
    if policy is FailurePolicy.GRACEFUL_DEGRADATION and fallbacks_tried < len(step.fallbacks):
        fallback = step.fallbacks[fallbacks_tried]
        return FailureDecision(
            FailureAction.FALLBACK,
            f"{why}; trying fallback {fallbacks_tried + 1} of {len(step.fallbacks)}: {fallback}",
            fallback=fallback,
            cause=why,
        )
    consequence = f"{policy.value} yields the default, function unavailable"
    if policy is FailurePolicy.GRACEFUL_DEGRADATION and step.fallbacks:
        consequence = f"all {len(step.fallbacks)} fallbacks failed; {consequence}"
    return FailureDecision(FailureAction.DEGRADE, f"{why}; {consequence}", cause=why)
