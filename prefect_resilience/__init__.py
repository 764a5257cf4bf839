"""Resilience for Prefect 3 flows: failure policies, capped retries, fallbacks, health.

Add `@resilient` to a task, a policy to a flow, and get per-step failure
policies that run on Prefect's own retries, states and task runs.

The package is lazy: a name is imported from its module on first use, so the
pure modules (`policy`, `decision`, `health`, `analytics`) load without Prefect.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("prefect-resilience")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

# each public name and the module that defines it
_EXPORTS: dict[str, str] = {
    "ResiliencePolicy": "blocks",
    "FailureDecision": "decision",
    "decide": "decision",
    "CircuitOpen": "errors",
    "ResilienceConfigError": "errors",
    "RetryAfter": "errors",
    "UnknownFallbackError": "fallbacks",
    "allow_fallback_imports": "fallbacks",
    "register_fallback": "fallbacks",
    "LoopResult": "flow",
    "LowHealthDecision": "tracker",
    "WorkflowTerminated": "tracker",
    "current_health": "tracker",
    "resilient_flow": "flow",
    "resilient_loop": "flow",
    "StepOutcome": "health",
    "StepStatus": "health",
    "TerminationRule": "health",
    "WorkflowHealth": "health",
    "Backoff": "policy",
    "CircuitBreaker": "policy",
    "FailureAction": "policy",
    "FailureImpact": "policy",
    "FailurePolicy": "policy",
    "StepPolicy": "policy",
    "StepRule": "policy",
    "WorkflowPolicy": "policy",
    "load_policy": "policy_documents",
    "BusinessImpact": "report",
    "PartialSuccessResult": "report",
    "RunStatus": "report",
    "get_report": "report",
    "ResilientFuture": "future",
    "ResilientTask": "task",
    "collect_outcomes": "scope",
    "resilient": "task",
}

__all__ = [
    "__version__",
    "Backoff",
    "BusinessImpact",
    "CircuitBreaker",
    "CircuitOpen",
    "FailureAction",
    "FailureDecision",
    "FailureImpact",
    "FailurePolicy",
    "LoopResult",
    "LowHealthDecision",
    "PartialSuccessResult",
    "ResilienceConfigError",
    "ResiliencePolicy",
    "ResilientFuture",
    "ResilientTask",
    "RetryAfter",
    "RunStatus",
    "StepOutcome",
    "StepPolicy",
    "StepRule",
    "StepStatus",
    "TerminationRule",
    "UnknownFallbackError",
    "WorkflowHealth",
    "WorkflowPolicy",
    "WorkflowTerminated",
    "allow_fallback_imports",
    "collect_outcomes",
    "current_health",
    "decide",
    "get_report",
    "load_policy",
    "register_fallback",
    "resilient",
    "resilient_flow",
    "resilient_loop",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prefect_resilience' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"prefect_resilience.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:
    from prefect_resilience.blocks import ResiliencePolicy
    from prefect_resilience.decision import FailureDecision, decide
    from prefect_resilience.errors import CircuitOpen, ResilienceConfigError, RetryAfter
    from prefect_resilience.fallbacks import (
        UnknownFallbackError,
        allow_fallback_imports,
        register_fallback,
    )
    from prefect_resilience.flow import LoopResult, resilient_flow, resilient_loop
    from prefect_resilience.future import ResilientFuture
    from prefect_resilience.health import StepOutcome, StepStatus, TerminationRule, WorkflowHealth
    from prefect_resilience.policy import (
        Backoff,
        CircuitBreaker,
        FailureAction,
        FailureImpact,
        FailurePolicy,
        StepPolicy,
        StepRule,
        WorkflowPolicy,
    )
    from prefect_resilience.policy_documents import load_policy
    from prefect_resilience.report import (
        BusinessImpact,
        PartialSuccessResult,
        RunStatus,
        get_report,
    )
    from prefect_resilience.scope import collect_outcomes
    from prefect_resilience.task import ResilientTask, resilient
    from prefect_resilience.tracker import LowHealthDecision, WorkflowTerminated, current_health
