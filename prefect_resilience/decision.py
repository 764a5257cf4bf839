"""What to do about one failure: retry, fall back, continue, degrade or terminate.

Pure logic over a `StepPolicy`, the exception and the attempt number. Prefect
asks it before each retry (through `retry_condition_fn`); the step asks it
once the retries are over. Every decision carries the reason it was taken.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from prefect_resilience.policy import FailureAction, FailurePolicy, StepPolicy


@dataclass(frozen=True)
class FailureDecision:
    """One decision about one failure.

    `delay` is the nominal wait before a retry, in seconds; with jitter the
    actual wait is drawn by Prefect and never exceeds delay * (1 + jitter).
    `fallback` names the fallback to run next.
    """

    action: FailureAction
    reason: str
    delay: float | None = None
    jitter: float = 0.0
    fallback: str | None = None
    cause: str = ""

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
    """Why this error must not be retried, or None when it may be."""
    names = exception_names(error)
    given_up = _first_match(names, step.give_up_on)
    if given_up:
        return f"{describe(error)} matches give_up_on {given_up!r}"
    if step.retry_on and not _first_match(names, step.retry_on):
        return f"{describe(error)} is not in retry_on {list(step.retry_on)}"
    return None


def decide(
    step: StepPolicy,
    error: BaseException | None,
    attempt: int,
    fallbacks_tried: int = 0,
    *,
    retries_over: str | None = None,
) -> FailureDecision:
    """Decide about the failure of `attempt` (1-based) of a step.

    Retries come first; once they are exhausted or refused, the step's failure
    policy decides. Under `graceful_degradation`, `fallbacks_tried` says how
    many fallbacks have already failed. `retries_over` says why no retry is
    left although the policy would allow one (the task's own retry condition
    declined it): the policy then decides at once.
    """
    what = describe(error)
    if retries_over is not None:
        why = f"{what}; {retries_over}"
    elif attempt <= step.retry_count:
        refusal = retry_refusal(step, error)
        if refusal is None:
            delays = step.retry_delays()
            delay = delays[min(attempt, len(delays)) - 1] if delays else 0.0
            cause = f"attempt {attempt} failed with {what}"
            return FailureDecision(
                FailureAction.RETRY,
                f"{cause}; retry {attempt} of {step.retries} after {delay:g}s",
                delay=delay,
                jitter=step.jitter,
                cause=cause,
            )
        why = refusal
    elif step.retries:
        why = f"{what}; {step.retries} {'retry' if step.retries == 1 else 'retries'} exhausted"
    else:
        why = f"{what}; no retries configured"
    return _policy_decision(step, why, fallbacks_tried)


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
