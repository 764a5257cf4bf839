"""What `optimize` says about its own numbers: the backtest, and what they are relative to."""

from __future__ import annotations

from prefect_resilience.analytics.candidates import Proposal
from prefect_resilience.optimize import to_markdown


def test_a_missing_backtest_is_explained_in_words() -> None:
    text = to_markdown(Proposal("etl", 24, [], [], None))
    assert "n/a" not in text and "±" not in text
    assert "No backtest of the model yet" in text and "this history has 24" in text


def test_a_backtest_gives_its_error_and_noise() -> None:
    text = to_markdown(Proposal("etl", 60, [], [], 0.0312, 0.0101))
    assert "backtest error (failed-run rate on the latest third of runs): 0.0312" in text
    assert "about ±0.0101" in text


def test_it_says_what_the_predictions_are_relative_to() -> None:
    without = to_markdown(Proposal("etl", 60, [], [], 0.03, 0.01))
    assert "default workflow policy (no `--policy` given)" in without
    assert "pass `--policy NAME`" in without
    against = to_markdown(Proposal("etl", 60, [], [], 0.03, 0.01), "etl-policy")
    assert "Predicted against policy block `etl-policy`" in against
    assert "default workflow policy" not in against
