"""Drift: a failure rate that moves within a history is found, and models fit its latest part."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from prefect_resilience.analytics.drift import detect_drift
from prefect_resilience.analytics.retry_choice import choose_retries
from prefect_resilience.analytics.retry_model import fit_retry_models

T0 = pd.Timestamp("2026-05-04", tz="UTC")


def history(first_success: np.ndarray, seed: int = 0) -> pd.DataFrame:
    """One run per entry, a minute apart: attempt 1 succeeds with the entry's chance, each of
    up to 2 retries with 0.5 (1 s attempts, no wait)."""
    rng = np.random.default_rng(seed)
    counts, states = [], []
    for p in first_success:
        attempts, won = 1, rng.random() < p
        while not won and attempts < 3:
            attempts += 1
            won = rng.random() < 0.5
        counts.append(attempts)
        states.append("COMPLETED" if won else "FAILED")
    start = T0 + pd.to_timedelta(np.arange(len(counts)), unit="min")
    seconds = np.array(counts, dtype=float)
    return pd.DataFrame({
        "task_name": "load", "state_type": states, "run_count": counts, "start_time": start,
        "end_time": start + pd.to_timedelta(seconds, unit="s"), "duration_s": seconds,
        "error_type": [None if s == "COMPLETED" else "ConnectionError" for s in states],
    })  # fmt: skip


def test_a_steady_rate_is_no_drift_and_keeps_every_run() -> None:
    rng = np.random.default_rng(1)
    won = rng.random(600) < 0.8
    drift, fitted = detect_drift(np.arange(600), won, min_runs=20)
    assert drift is None and fitted.all()


def test_a_rate_that_falls_is_a_drift_and_only_the_latest_third_is_fitted() -> None:
    rng = np.random.default_rng(2)
    chance = np.r_[np.full(400, 0.9), np.full(200, 0.5)]
    won = rng.random(600) < chance
    order = rng.permutation(600)  # the runs in any order; `order` says when each started
    drift, fitted = detect_drift(order, won[order], min_runs=20)  # run i started at order[i]
    assert drift is not None and drift.z < -3
    assert drift.earlier_runs == 400 and drift.latest_runs == 200
    assert drift.shift == pytest.approx(-0.4, abs=0.08)
    assert fitted.sum() == 200 and (order[fitted] >= 400).all()
    low, high = drift.widen(0.45, 0.55, point=0.5)
    assert low == pytest.approx(0.5 + drift.shift) and high == 0.55
    # too few runs on a side tell nothing
    assert detect_drift(np.arange(30), won[:30], min_runs=20)[0] is None


def test_retry_model_on_a_degrading_step_fits_the_latest_runs_and_says_so() -> None:
    chance = np.linspace(0.95, 0.45, 900)  # the first attempt fails more and more often
    model = fit_retry_models(history(chance, seed=3))["load"]
    assert model.drift is not None and model.drift.shift < 0
    assert model.hazards.loc[1, "reached"] == 300
    # fitted on the latest third: its attempt-1 rate, not the whole history's
    assert model.hazards.loc[1, "hazard"] == pytest.approx(chance[600:].mean(), abs=0.07)
    low = model.hazards.loc[1, "hazard_low"]
    assert low <= model.hazards.loc[1, "hazard"] + model.drift.shift + 1e-9
    learned = choose_retries(model, 1.0, 100.0).learned
    assert learned is not None and "latest 300" in learned.reason
    # the success interval reaches as far as the rate moving once more by the shift
    assert learned.predicted_success_low < learned.predicted_success - 0.05
    steady = fit_retry_models(history(np.full(900, 0.7), seed=3))["load"]
    assert steady.drift is None and steady.hazards.loc[1, "reached"] == 900
