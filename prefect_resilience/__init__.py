"""Resilience for Prefect 3 flows: failure policies, capped retries, fallbacks, health.

Add `@resilient` to a task, a policy to a flow, and get per-step failure
policies that run on Prefect's own retries, states and task runs.
"""

from prefect_resilience.blocks import ResiliencePolicy
from prefect_resilience.decision import FailureDecision, decide
from prefect_resilience.errors import ResilienceConfigError
from prefect_resilience.flow import (
    LoopResult,
    LowHealthDecision,
    WorkflowTerminated,
    current_health,
    resilient_flow,
    resilient_loop,
)
from prefect_resilience.health import StepOutcome, StepStatus, TerminationRule, WorkflowHealth
from prefect_resilience.policy import (
    Backoff,
    FailureAction,
    FailureImpact,
    FailurePolicy,
    StepPolicy,
    StepRule,
    WorkflowPolicy,
    load_policy,
)
from prefect_resilience.report import (
    BusinessImpact,
    PartialSuccessResult,
    RunStatus,
    get_report,
)
from prefect_resilience.task import (
    ResilientFuture,
    ResilientTask,
    collect_outcomes,
    resilient,
    with_run_details,
)

__all__ = [
    "Backoff",
    "BusinessImpact",
    "LoopResult",
    "LowHealthDecision",
    "PartialSuccessResult",
    "RunStatus",
    "TerminationRule",
    "WorkflowHealth",
    "WorkflowTerminated",
    "current_health",
    "get_report",
    "resilient_flow",
    "resilient_loop",
    "FailureAction",
    "FailureDecision",
    "FailureImpact",
    "FailurePolicy",
    "ResilienceConfigError",
    "ResiliencePolicy",
    "ResilientFuture",
    "ResilientTask",
    "StepOutcome",
    "StepPolicy",
    "StepRule",
    "StepStatus",
    "WorkflowPolicy",
    "collect_outcomes",
    "decide",
    "load_policy",
    "resilient",
    "with_run_details",
]
