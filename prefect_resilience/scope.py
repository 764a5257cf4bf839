"""Who hears about the resilient steps of a scope: a flow run, or `collect_outcomes`.

The scope's observer is a context variable, so a future settled later, in
any thread, still reports to the scope it was submitted in.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from prefect_resilience.health import StepOutcome, SuccessRatio
from prefect_resilience.policy import WorkflowPolicy

if TYPE_CHECKING:
    from prefect_resilience.future import ResilientFuture


class StepObserver:
    """Sees what the resilient steps of one scope do."""

    policy: WorkflowPolicy | None = None
    parent: StepObserver | None = None

    def before_step(self, task: Any) -> None:
        """Called before a step starts; may refuse it by raising."""

    def track(self, future: ResilientFuture[Any]) -> None:
        """A future the scope should settle before it ends."""

    def record(self, outcome: StepOutcome) -> None:
        """A step has settled."""

    def record_mapped(self, batch: SuccessRatio, outcome: StepOutcome) -> None:
        """One task run of a `.map()` with a `min_success_ratio` has settled (after `record`)."""


_observer: contextvars.ContextVar[StepObserver | None] = contextvars.ContextVar(
    "prefect_resilience_observer", default=None
)


def current_observer() -> StepObserver | None:
    return _observer.get()


@contextmanager
def observing(observer: StepObserver) -> Iterator[StepObserver]:
    token = _observer.set(observer)
    try:
        yield observer
    finally:
        _observer.reset(token)


class _Collector(StepObserver):
    """Keeps outcomes in a list and passes everything on to the enclosing scope."""

    def __init__(self, parent: StepObserver | None) -> None:
        self.parent = parent
        self.policy = parent.policy if parent else None
        self.outcomes: list[StepOutcome] = []

    def before_step(self, task: Any) -> None:
        if self.parent:
            self.parent.before_step(task)

    def track(self, future: ResilientFuture[Any]) -> None:
        if self.parent:
            self.parent.track(future)

    def record(self, outcome: StepOutcome) -> None:
        self.outcomes.append(outcome)
        if self.parent:
            self.parent.record(outcome)

    def record_mapped(self, batch: SuccessRatio, outcome: StepOutcome) -> None:
        if self.parent:
            self.parent.record_mapped(batch, outcome)


@contextmanager
def collect_outcomes() -> Iterator[list[StepOutcome]]:
    """Gather the `StepOutcome` of every resilient step settled inside the block.

    Futures settled later still report here: they remember the context they
    were submitted in. Outcomes still reach the enclosing resilient flow run.
    """
    collector = _Collector(_observer.get())
    with observing(collector):
        yield collector.outcomes
