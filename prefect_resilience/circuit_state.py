"""The state of a circuit breaker and its transitions, as pure logic.

A breaker is `closed` (calls go through; failures for good within the
window are remembered), `open` (calls fail at once with `CircuitOpen`) or
`half_open` (one trial call is out; the others still fail at once). The
glue (`circuit`) keeps this state in a Prefect Variable and changes it under
a lock; everything here is a function of the state, the breaker's settings
and the time, so it is tested without a server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from prefect_resilience.policy import CircuitBreaker

MAX_REASON = 300


class Circuit(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Admission(StrEnum):
    """What a call may do: go through, try as the trial (once claimed), or fail at once."""

    CALL = "call"
    TRIAL = "trial"
    REFUSE = "refuse"


@dataclass(frozen=True)
class CircuitState:
    """One breaker's state; times are seconds since the epoch."""

    state: Circuit = Circuit.CLOSED
    failures: tuple[float, ...] = ()
    """Failures for good while closed, oldest first, within the window."""
    opened_at: float | None = None
    trial_at: float | None = None
    """When the trial call of a half-open breaker was let through."""
    reason: str = ""

    def admit(self, breaker: CircuitBreaker, now: float) -> Admission:
        """Whether a call may go through now; TRIAL is only a chance, to claim under the lock.

        An open breaker lets a trial through `reset_after` seconds after it
        opened; a trial that has not reported within `reset_after` seconds is
        presumed lost (its process died), and another is let through.
        """
        if self.state is Circuit.CLOSED:
            return Admission.CALL
        since = self.trial_at if self.state is Circuit.HALF_OPEN else self.opened_at
        if since is None or now >= since + breaker.reset_after:
            return Admission.TRIAL
        return Admission.REFUSE

    def with_trial(self, now: float) -> CircuitState:
        return replace(self, state=Circuit.HALF_OPEN, trial_at=now)

    def with_failure(
        self, breaker: CircuitBreaker, now: float, *, trial: bool, what: str
    ) -> tuple[CircuitState, Circuit | None]:
        """The state after a failure for good, and `OPEN` when this failure opened it.

        Failures of calls let through before the breaker opened are not
        counted again once it is open; a failed trial opens it anew.
        """
        if trial and self.state is Circuit.HALF_OPEN:
            reason = f"the trial call failed ({what})"
            return _opened(now, reason), Circuit.OPEN
        if self.state is not Circuit.CLOSED:
            return self, None
        failures = (*(t for t in self.failures if t > now - breaker.window), now)
        if len(failures) < breaker.failure_threshold:
            return replace(self, failures=failures[-breaker.failure_threshold :]), None
        reason = f"{len(failures)} failures within {breaker.window:g}s; the last: {what}"
        return _opened(now, reason), Circuit.OPEN

    def with_success(self, *, trial: bool) -> tuple[CircuitState, Circuit | None]:
        """The state after a call delivered, and `CLOSED` when this success closed it."""
        if trial and self.state is Circuit.HALF_OPEN:
            return CircuitState(reason="the trial call succeeded"), Circuit.CLOSED
        return self, None

    # --- as a Prefect Variable's value (readable in the UI) ----------------------------

    def to_value(self, breaker: CircuitBreaker) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "failures": [_iso(t) for t in self.failures],
            "opened_at": _iso(self.opened_at),
            "trial_at": _iso(self.trial_at),
            "reason": self.reason[:MAX_REASON],
            "failure_threshold": breaker.failure_threshold,
            "window_seconds": breaker.window,
            "reset_after_seconds": breaker.reset_after,
        }

    @classmethod
    def from_value(cls, value: Any) -> CircuitState:
        """Read a stored value; one edited by hand into nonsense reads as closed.

        Setting `state` to `closed` in the UI is how an operator closes a breaker.
        """
        if not isinstance(value, Mapping):
            return cls()
        try:
            state = Circuit(value.get("state", "closed"))
            failures = tuple(t for t in map(_epoch, value.get("failures") or ()) if t is not None)
        except (TypeError, ValueError):
            return cls()
        opened_at, trial_at = _epoch(value.get("opened_at")), _epoch(value.get("trial_at"))
        if state is Circuit.CLOSED:
            return cls(failures=failures, reason=str(value.get("reason") or ""))
        return cls(state, (), opened_at, trial_at, str(value.get("reason") or ""))


def _opened(now: float, reason: str) -> CircuitState:
    return CircuitState(Circuit.OPEN, (), now, None, reason)


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()


def _epoch(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
