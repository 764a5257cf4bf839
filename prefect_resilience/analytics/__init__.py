"""Resilience analytics over run history: pure functions of pandas frames, no Prefect.

The history module turns the Prefect API's task runs, flow runs and
resilience reports into three frames; everything here reads only those
frames (see each function for the columns it needs), so it is tested on
synthetic data and never needs a server. It imports nothing from Prefect;
of the package, only `model`, `evidence` and `candidates` import its pure `policy` and
`health` rules (a prediction judges simulated runs by the rules real runs
use), and they are imported as submodules, not from here.

Conventions throughout:

- only finished runs count (COMPLETED, FAILED, CRASHED, CANCELLED); a run in
  progress has no outcome yet;
- a failure is FAILED or CRASHED; CANCELLED is finished but not a failure;
- every rate comes with the n it was computed over; a rate over nothing is
  NaN with n = 0, never a made-up 0;
- a duration is unknown when negative or when `end_time < start_time`;
- a period without runs is a gap, not a period without failures;
- a frame that lacks a column a function needs raises a ValueError naming it.
"""

from ._common import FAILED_STATES, FINISHED_STATES, wilson_interval
from .continuity import CRITICAL_RULES, continuity_metrics, function_uptime
from .patterns import (
    Concentration,
    TimeConcentration,
    co_failures,
    failure_patterns,
    message_template,
    time_concentration,
)
from .retry_choice import LearnedRetries, RetryChoice, choose_retries
from .retry_model import RetryModel, fit_retry_models
from .scaling import ScalingRecommendation, backtest_forecast, forecast_series, recommend_scaling
from .statistics import retry_recovery, step_statistics
from .trends import FailureTrend, detect_degradation, failure_trend

__all__ = [
    "CRITICAL_RULES",
    "FAILED_STATES",
    "FINISHED_STATES",
    "Concentration",
    "FailureTrend",
    "LearnedRetries",
    "RetryChoice",
    "RetryModel",
    "ScalingRecommendation",
    "TimeConcentration",
    "backtest_forecast",
    "choose_retries",
    "co_failures",
    "continuity_metrics",
    "detect_degradation",
    "failure_patterns",
    "failure_trend",
    "fit_retry_models",
    "forecast_series",
    "function_uptime",
    "message_template",
    "recommend_scaling",
    "retry_recovery",
    "step_statistics",
    "time_concentration",
    "wilson_interval",
]
