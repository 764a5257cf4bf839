"""A circuit breaker's transitions as pure logic: no server."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from prefect_resilience import CircuitBreaker
from prefect_resilience.circuit_state import Admission, Circuit, CircuitState

BREAKER = CircuitBreaker(name="api", failure_threshold=3, reset_after=30, window=60)


def fail(
    state: CircuitState, at: float, trial: bool = False
) -> tuple[CircuitState, Circuit | None]:
    return state.with_failure(BREAKER, at, trial=trial, what="ConnectionError: down")


def test_it_opens_on_the_threshold_th_failure_within_the_window() -> None:
    state = CircuitState()
    for at in (0.0, 10.0):
        state, opened = fail(state, at)
        assert opened is None and state.admit(BREAKER, at) is Admission.CALL
    state, opened = fail(state, 20.0)
    assert opened is Circuit.OPEN and state.state is Circuit.OPEN and state.opened_at == 20.0
    assert state.reason == "3 failures within 60s; the last: ConnectionError: down"


def test_failures_older_than_the_window_do_not_count() -> None:
    state = CircuitState()
    for at in (0.0, 50.0, 100.0):  # never three within 60 s
        state, opened = fail(state, at)
        assert opened is None
    assert state.failures == (50.0, 100.0)


def test_an_open_breaker_refuses_then_lets_one_trial_through_after_reset_after() -> None:
    state = CircuitState(Circuit.OPEN, opened_at=100.0)
    assert state.admit(BREAKER, 129.9) is Admission.REFUSE
    assert state.admit(BREAKER, 130.0) is Admission.TRIAL
    trial = state.with_trial(130.0)
    assert trial.state is Circuit.HALF_OPEN and trial.admit(BREAKER, 131.0) is Admission.REFUSE
    assert trial.admit(BREAKER, 160.0) is Admission.TRIAL  # the trial was lost


def test_the_trials_outcome_closes_or_reopens_it() -> None:
    trial = CircuitState(Circuit.OPEN, opened_at=0.0).with_trial(30.0)
    closed, change = trial.with_success(trial=True)
    assert change is Circuit.CLOSED and closed == CircuitState(reason="the trial call succeeded")
    reopened, change = fail(trial, 31.0, trial=True)
    assert change is Circuit.OPEN and reopened.opened_at == 31.0
    assert reopened.admit(BREAKER, 60.0) is Admission.REFUSE


def test_calls_let_through_before_it_opened_change_nothing_later() -> None:
    opened = CircuitState(Circuit.OPEN, opened_at=5.0, reason="x")
    assert fail(opened, 6.0) == (opened, None)
    assert opened.with_success(trial=False) == (opened, None)
    half = opened.with_trial(40.0)
    assert half.with_success(trial=False) == (half, None)


def test_a_closed_breaker_remembers_at_most_threshold_failures() -> None:
    state = CircuitState(failures=(1.0, 2.0))
    assert fail(state, 3.0)[0].state is Circuit.OPEN


def test_the_stored_value_reads_back_and_nonsense_reads_as_closed() -> None:
    for state in (
        CircuitState(failures=(1.5, 2.25)),
        CircuitState(Circuit.OPEN, opened_at=1000.0, reason="3 failures"),
        CircuitState(Circuit.HALF_OPEN, opened_at=1000.0, trial_at=1030.5),
    ):
        value = state.to_value(BREAKER)
        assert value["failure_threshold"] == 3
        assert CircuitState.from_value(value) == state
    for nonsense in (None, "open", {"state": "ajar"}, {"failures": "many"}):
        assert CircuitState.from_value(nonsense) == CircuitState()
    # an operator closes a breaker in the UI by setting its state to closed
    assert CircuitState.from_value({"state": "closed", "opened_at": "x"}).state is Circuit.CLOSED


@given(st.lists(st.floats(min_value=0, max_value=1000), max_size=30))
def test_it_opens_exactly_when_threshold_failures_fall_within_one_window(
    times: list[float],
) -> None:
    state, opened_at = CircuitState(), None
    for at in sorted(times):
        state, change = fail(state, at)
        if change is Circuit.OPEN:
            opened_at = at
            break
    ordered = sorted(times)
    expected = next(
        (at for i, at in enumerate(ordered) if i >= 2 and ordered[i - 2] > at - BREAKER.window),
        None,
    )
    assert opened_at == expected
