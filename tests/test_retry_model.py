"""The adaptive-retry model on hand-built task runs: no server, no Prefect run.

Each frame is small enough that the expected hazard, recovery curve and
recommendation can be worked out by hand; the docstring of each test says how.
"""

from __future__ import annotations

import importlib.util
import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from scipy import optimize

from prefect_resilience.analytics import retry_recovery
from prefect_resilience.analytics.retry_choice import LearnedRetries, choose_retries
from prefect_resilience.analytics.retry_model import ANY_ERROR, fit_retry_models, retry_hazards
from prefect_resilience.policy import Backoff
from tests.standalone import run_standalone

T0 = pd.Timestamp("2024-03-04 00:00", tz="UTC")
FITTED = datetime(2024, 4, 1, tzinfo=UTC)


def runs(rows: list[tuple[str, int, int]], step: str = "load", **columns: list) -> pd.DataFrame:
    """Task runs from (state, run_count, how many) with one-minute-apart starts, 1 s per attempt.

    The kinds of run are spread evenly over the history (a stationary one): listed one kind
    after another in time, they would show a failure rate that moves, which is a drift.
    """
    states, counts, place = [], [], []
    for state, run_count, times in rows:
        states += [state] * times
        counts += [run_count] * times
        place += [(i + 0.5) / times for i in range(times)]
    rank = np.argsort(np.argsort(place, kind="stable"), kind="stable")
    start = T0 + pd.to_timedelta(rank, unit="min")
    frame = pd.DataFrame(
        {
            "task_name": step,
            "state_type": states,
            "run_count": counts,
            "start_time": start,
            "end_time": start + pd.to_timedelta(np.array(counts, dtype=float), unit="s"),
            "duration_s": np.array(counts, dtype=float),
            "error_type": [None if s == "COMPLETED" else "ConnectionError" for s in states],
        }
    )
    for name, values in columns.items():
        frame[name] = values
    return frame


# --- hazards ----------------------------------------------------------------------------------


def test_hazards_by_hand_with_censoring_and_cancelled_runs() -> None:
    """7 finished runs: 3 succeed at 1, 1 fails its only attempt, 3 go on to attempt 2.

    h1 = 3/7. At attempt 2 the cancelled run has no outcome: reached 2, one
    succeeded, h2 = 1/2; success within 2 attempts = 1 - (4/7)(1/2) = 5/7.
    The RUNNING run and the run that never ran (run_count 0) count nowhere.
    """
    frame = runs(
        [("COMPLETED", 1, 3), ("FAILED", 1, 1), ("COMPLETED", 2, 1), ("FAILED", 2, 1),
         ("CANCELLED", 2, 1), ("RUNNING", 1, 1), ("PENDING", 0, 1)]
    )  # fmt: skip
    table = retry_hazards(frame).loc[("load", ANY_ERROR)]
    assert table["reached"].tolist() == [7, 2]
    assert table["succeeded"].tolist() == [3, 1]
    assert table["hazard"].tolist() == pytest.approx([3 / 7, 1 / 2])
    assert table["success_by"].tolist() == pytest.approx([3 / 7, 5 / 7])
    assert (table["hazard_low"] < table["hazard"]).all()
    assert (table["hazard"] < table["hazard_high"]).all()
    # the same counts as the existing per-attempt recovery table
    recovery = retry_recovery(frame).loc["load"]
    assert recovery["reached"].tolist() == table["reached"].tolist()
    assert recovery["succeeded"].tolist() == table["succeeded"].tolist()


def test_hazards_per_error_type_follow_the_failure_before_each_retry() -> None:
    """Retry k is grouped by the error of attempt k-1.

    run A: ConnectionError, TimeoutError, then success at 3;
    run B: ConnectionError, success at 2; run C: ConnectionError twice, FAILED at 2.
    (ConnectionError, 2): A fails, B succeeds, C fails -> 1 of 3.
    (TimeoutError, 3): A succeeds -> 1 of 1.
    """
    frame = runs(
        [("COMPLETED", 3, 1), ("COMPLETED", 2, 1), ("FAILED", 2, 1)],
        attempt_errors=[
            ["ConnectionError", "TimeoutError"],
            ["ConnectionError"],
            ["ConnectionError", "ConnectionError"],
        ],
    )
    table = retry_hazards(frame, by_error=True)
    assert table.index.tolist() == [
        ("load", "ConnectionError", 2),
        ("load", "TimeoutError", 3),
    ]
    assert table["reached"].tolist() == [3, 1]
    assert table["succeeded"].tolist() == [1, 1]
    model = fit_retry_models(frame, min_runs=1, fitted_at=FITTED)["load"]
    assert model.by_error.loc[("ConnectionError", 2), "hazard"] == pytest.approx(1 / 3)
    assert model.final_errors.to_dict() == {"ConnectionError": 1}


def test_per_error_hazards_need_the_attempt_errors_column() -> None:
    frame = runs([("COMPLETED", 2, 1)])
    with pytest.raises(ValueError, match="attempt_errors"):
        retry_hazards(frame, by_error=True)
    frame["attempt_errors"] = ["ConnectionError"]  # a string, not a list per run
    with pytest.raises(ValueError, match="attempt_errors"):
        retry_hazards(frame, by_error=True)


def test_a_missing_column_is_named() -> None:
    with pytest.raises(ValueError, match="run_count"):
        fit_retry_models(pd.DataFrame({"task_name": ["a"], "state_type": ["FAILED"]}))


def test_empty_one_run_and_all_in_progress_give_no_claim() -> None:
    empty = runs([])
    assert retry_hazards(empty).empty
    assert fit_retry_models(empty) == {}
    assert fit_retry_models(runs([("RUNNING", 1, 5), ("PENDING", 0, 5)])) == {}
    one = fit_retry_models(runs([("COMPLETED", 1, 1)]), fitted_at=FITTED)["load"]
    choice = choose_retries(one, 1.0, 60.0)
    assert choice.learned is None
    assert "only 1 finished runs" in choice.reason


# --- choosing retries ----------------------------------------------------------------------------


def halving_history() -> pd.DataFrame:
    """100 runs: 50 succeed at attempt 1, 25 at attempt 2, 25 fail all 3 attempts.

    h1 = 50/100, h2 = 25/50, h3 = 0/25; nothing is known about attempt 4.
    """
    return runs([("COMPLETED", 1, 50), ("COMPLETED", 2, 25), ("FAILED", 3, 25)])


def test_choose_retries_maximises_success_within_the_budget() -> None:
    """0 retries: 0.5; 1: 1 - 0.5 * 0.5 = 0.75; 2: still 0.75 (h3 = 0), so 1 retry, which is
    cheaper: expected time 1 s + 0.5 * 1 s = 1.5 s, worst case 2 s."""
    model = fit_retry_models(halving_history(), fitted_at=FITTED)["load"]
    choice = choose_retries(model, per_attempt_seconds=1.0, time_budget_s=100.0)
    learned = choice.learned
    assert learned is not None, choice.reason
    assert learned.retries == 1
    assert learned.backoff is None and learned.basis == "attempts"
    assert learned.predicted_success == pytest.approx(0.75)
    assert learned.predicted_success_low < 0.75 < learned.predicted_success_high
    assert learned.expected_time_s == pytest.approx(1.5)
    assert learned.worst_case_time_s == pytest.approx(2.0)
    assert learned.n == 100 and learned.bounds == (0, 10)
    assert [e["reached"] for e in learned.evidence] == [100, 50]
    # the data reach attempt 3 only: more retries are never offered
    assert choice.candidates["retries"].max() == 2
    assert "delay cannot be learned" in learned.reason


def test_the_budget_and_the_declared_delays_limit_the_retries() -> None:
    model = fit_retry_models(halving_history(), fitted_at=FITTED)["load"]
    tight = choose_retries(model, 1.0, time_budget_s=1.5).learned
    assert tight is not None and tight.retries == 0
    assert tight.predicted_success == pytest.approx(0.5)
    # a declared 10 s backoff: one retry takes 1 + 10 + 1 = 12 s at worst
    slow = Backoff(initial=10, factor=2, max=15)
    assert choose_retries(model, 1.0, 11.9, declared=slow).learned.retries == 0
    learned = choose_retries(model, 1.0, 12.0, declared=slow).learned
    assert learned.retries == 1 and learned.worst_case_time_s == pytest.approx(12.0)
    assert learned.expected_time_s == pytest.approx(1 + 0.5 * 11)
    nothing = choose_retries(model, 1.0, 0.5)
    assert nothing.learned is None and "fits 0.5 s" in nothing.reason


def test_too_little_data_gives_no_recommendation_and_says_why() -> None:
    model = fit_retry_models(halving_history(), min_runs=60, fitted_at=FITTED)["load"]
    choice = choose_retries(model, 1.0, 100.0)
    assert choice.learned is None
    assert "only 50 runs" in choice.reason and "need 60" in choice.reason
    model = fit_retry_models(halving_history(), fitted_at=FITTED)["load"]
    choice = choose_retries(model, 1.0, 100.0, bounds=(3, 5))
    assert choice.learned is None and "at most 2 retries" in choice.reason
    with pytest.raises(ValueError, match="bounds"):
        choose_retries(model, 1.0, 100.0, bounds=(5, 3))


def test_learned_retries_round_trip_through_json() -> None:
    model = fit_retry_models(halving_history(), fitted_at=FITTED)["load"]
    learned = choose_retries(model, 1.0, 100.0).learned
    text = json.dumps(learned.to_dict())
    again = LearnedRetries.from_dict(json.loads(text))
    assert again == learned
    assert again.fitted_at == FITTED
    broken = learned.to_dict() | {"retries": "three"}
    with pytest.raises(ValueError, match="'retries'"):
        LearnedRetries.from_dict(broken)
    with pytest.raises(ValueError, match="bounds"):
        LearnedRetries.from_dict(learned.to_dict() | {"retries": 11})


# --- the delay ----------------------------------------------------------------------------------


def waits_history() -> pd.DataFrame:
    """20 runs succeed at once; 80 fail attempt 1 and retry once, half after 1 s, half after 16 s.

    After 1 s 4 of 40 recover; after 16 s 36 of 40. Attempts take 1 s, so a run
    recovered at attempt 2 ran 2 s over a wall time of 3 s (or 18 s): 1 (or 16) s
    from its first failure to its second attempt. The interval-censored
    likelihood p1^4 (p16 + p_inf)^36 (p1 + p16)^36 p_inf^4 separates: its maximum
    is p1 = 0.1, p_inf = 0.1, p16 = 0.8, so F(1) = 0.1 and F(16) = 0.9.
    """
    rows = [("COMPLETED", 1, 1, 20), ("COMPLETED", 2, 1, 4), ("FAILED", 2, 1, 36),
            ("COMPLETED", 2, 16, 36), ("FAILED", 2, 16, 4)]  # fmt: skip
    frame = runs([(state, k, n) for state, k, _, n in rows])
    waits = np.concatenate([[wait] * n for *_, wait, n in rows]).astype(float)
    waits[:20] = 0.0
    frame["end_time"] = frame["start_time"] + pd.to_timedelta(frame["duration_s"] + waits, unit="s")
    return frame


def test_the_wait_is_learned_when_two_wait_levels_differ() -> None:
    model = fit_retry_models(waits_history(), fitted_at=FITTED)["load"]
    assert model.delay.learnable and model.delay.matters
    levels = model.delay.levels
    assert levels.index.tolist() == [1.0, 16.0]
    assert levels["success_rate"].tolist() == pytest.approx([0.1, 0.9])
    curve = model.recovery
    assert curve.table.index.tolist() == [1.0, 16.0]
    assert curve.table["recovered_share"].tolist() == pytest.approx([0.1, 0.9], abs=1e-6)
    assert curve.never_share == pytest.approx(0.1, abs=1e-6)
    assert curve.supported_s == 16.0  # 40 runs still retrying at 16 s; none beyond


def test_turnbull_matches_the_likelihood_maximum() -> None:
    """The EM estimate equals a direct numerical maximum of the same likelihood."""
    model = fit_retry_models(waits_history(), fitted_at=FITTED)["load"]

    def minus_log_likelihood(x: np.ndarray) -> float:
        p1, p16 = x
        p_inf = 1 - p1 - p16
        if min(p1, p16, p_inf) <= 0:
            return 1e9
        return -(4 * np.log(p1) + 36 * np.log(p16 + p_inf) + 36 * np.log(p1 + p16)
                 + 4 * np.log(p_inf))  # fmt: skip

    best = optimize.minimize(minus_log_likelihood, [0.3, 0.3], method="Nelder-Mead",
                             options={"xatol": 1e-9, "fatol": 1e-12})  # fmt: skip
    shares = model.recovery.table["recovered_share"].to_numpy()
    assert shares[0] == pytest.approx(best.x[0], abs=1e-4)
    assert shares[1] == pytest.approx(best.x[0] + best.x[1], abs=1e-4)


def test_a_learned_wait_chooses_the_backoff() -> None:
    """h1 = 0.2. One retry after 16 s: 0.2 + 0.8 * F(16) = 0.92; after 1 s only 0.28, and
    retrying every 1 s stays at F(1) (no recovery was seen between 1 and 16 s). Two retries
    of 16 s add nothing (F is not extrapolated beyond 16 s), so one retry: expected time
    1 + 0.8 * (16 + 1) = 14.6 s, worst case 18 s."""
    model = fit_retry_models(waits_history(), fitted_at=FITTED)["load"]
    choice = choose_retries(
        model, 1.0, 100.0, bounds=(0, 3), delay_options=[(1, 1, 1), (16, 1, 16)]
    )
    learned = choice.learned
    assert learned is not None, choice.reason
    assert learned.basis == "elapsed"
    assert learned.backoff == {"initial": 16.0, "factor": 1.0, "max": 16.0}
    assert learned.retries == 1
    assert learned.predicted_success == pytest.approx(0.92, abs=1e-5)
    assert learned.expected_time_s == pytest.approx(14.6, abs=1e-4)
    assert learned.worst_case_time_s == pytest.approx(18.0)
    fast = choice.candidates.query("initial == 1 and retries == 3")["predicted_success"]
    assert fast.iloc[0] == pytest.approx(0.28, abs=1e-5)
    # 16 s does not fit a 10 s budget: the best within it is a 1 s retry
    within = choose_retries(model, 1.0, 10.0, bounds=(0, 3), delay_options=[(1, 1, 1), (16, 1, 16)])
    assert within.learned.backoff["initial"] == 1.0
    assert within.learned.predicted_success == pytest.approx(0.28, abs=1e-5)


def test_one_wait_level_keeps_the_declared_backoff() -> None:
    frame = waits_history()
    frame = frame[frame["end_time"] - frame["start_time"] < pd.Timedelta(seconds=10)]
    model = fit_retry_models(frame, fitted_at=FITTED)["load"]
    assert not model.delay.learnable and model.recovery is None
    assert "cannot be learned" in model.delay.reason
    learned = choose_retries(model, 1.0, 100.0).learned
    assert learned.backoff is None and learned.basis == "attempts"


def test_without_times_the_delay_cannot_be_learned() -> None:
    frame = waits_history().drop(columns=["start_time", "end_time", "duration_s"])
    model = fit_retry_models(frame, fitted_at=FITTED)["load"]
    assert not model.delay.learnable
    assert "no retried run with known start, end and run time" in model.delay.reason


# --- purity ------------------------------------------------------------------------------------


def test_the_module_runs_where_prefect_cannot_be_imported() -> None:
    printed = run_standalone(
        """
        module = importlib.import_module("standalone_analytics.retry_model")
        import pandas as pd
        runs = pd.DataFrame({"task_name": ["a"] * 3, "state_type": ["FAILED", "COMPLETED",
                             "COMPLETED"], "run_count": [2, 2, 1]})
        print(module.retry_hazards(runs)["reached"].tolist())
        """
    )
    assert printed == "[3, 2]"
    assert importlib.util.find_spec("prefect_resilience.analytics.retry_model") is not None
