"""Resilience analytics over run history: pure functions of pandas frames, no Prefect.

The history module turns the Prefect API's task runs, flow runs and
resilience reports into three frames; everything here reads only those
frames (see each function for the columns it needs), so it is tested on
synthetic data and never needs a server. The subpackage imports nothing from
Prefect nor from the rest of `prefect_resilience`.

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
from .statistics import retry_recovery, step_statistics
from .trends import FailureTrend, detect_degradation, failure_trend

__all__ = [
    "CRITICAL_RULES",
    "FAILED_STATES",
    "FINISHED_STATES",
    "Concentration",
    "FailureTrend",
    "TimeConcentration",
    "co_failures",
    "continuity_metrics",
    "detect_degradation",
    "failure_patterns",
    "failure_trend",
    "function_uptime",
    "message_template",
    "retry_recovery",
    "step_statistics",
    "time_concentration",
    "wilson_interval",
]
