"""The run's honest account: what worked, what degraded, what is unavailable.

`build_report` is pure; `publish` writes the report as Prefect artifacts (a
markdown summary, a table of steps, and the structured report itself) and
`get_report` reads it back from the API. When the API cannot take a report,
`local_store` keeps it on the machine.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from prefect_resilience.health import StepOutcome, StepStatus, WorkflowHealth
from prefect_resilience.policy import FailureAction

logger = logging.getLogger("prefect_resilience.report")

REPORT_TYPE = "resilience-report"


class RunStatus(StrEnum):
    COMPLETED = "completed"
    PARTIAL_SUCCESS = "partial_success"
    TERMINATED = "terminated"
    FAILED = "failed"
    CRASHED = "crashed"


class ContinuityStatus(StrEnum):
    MAINTAINED = "maintained"
    DEGRADED = "degraded"
    INTERRUPTED = "interrupted"


class BusinessImpact(BaseModel):
    """Functions (task names) by what their runs delivered.

    `working_functions` are the functions still working; the originating
    design called them `critical_functions`, which is accepted when read and
    kept as a read-only alias. A function with several runs takes its worst:
    unavailable over degraded over tolerated over working.
    """

    working_functions: list[str] = Field(
        default=[], validation_alias=AliasChoices("working_functions", "critical_functions")
    )
    degraded_functions: list[str] = []
    unavailable_functions: list[str] = []
    tolerated_functions: list[str] = []
    overall_health_score: float = 1.0

    @property
    def critical_functions(self) -> list[str]:
        """The originating design's name for `working_functions`."""
        return self.working_functions


class StepFailure(BaseModel):
    name: str
    task_run_id: UUID | None = None
    status: StepStatus
    action: FailureAction | None = None
    reason: str = ""
    exception_type: str | None = None
    exception_message: str | None = None
    fallback_used: str | None = None


class LoopReport(BaseModel):
    """A `resilient_loop`: its iterations and how long its condition took."""

    name: str
    iterations: int
    condition_met: bool
    seconds: float
    iteration_seconds_p50: float
    iteration_seconds_max: float
    condition_ms_p50: float
    condition_ms_max: float


class PolicyUsed(BaseModel):
    """The workflow policy a run ran under, and why, when it is the declared fallback."""

    source: str  # "block <name>", "file <path>", "object", "defaults"
    name: str | None = None
    fallback_reason: str | None = None  # set when the run's own policy could not be loaded


class PartialSuccessResult(BaseModel):
    """The report of one resilient flow run."""

    model_config = ConfigDict(frozen=True)

    flow_run_id: UUID | None
    flow_name: str
    overall_status: RunStatus
    continuity_status: ContinuityStatus
    message: str = ""
    successful_steps: list[str] = []
    degraded_steps: list[StepFailure] = []
    failed_steps: list[StepFailure] = []
    business_impact: BusinessImpact
    health: WorkflowHealth
    recommendations: list[str] = []
    loops: list[LoopReport] = []
    steps: list[StepOutcome] = []
    finished: datetime | None = None
    policy: PolicyUsed | None = None


_RANK = {"working": 0, "tolerated": 1, "degraded": 2, "unavailable": 3}


def _function_state(outcome: StepOutcome) -> str:
    if outcome.status.delivered:
        return "degraded" if outcome.status is StepStatus.DEGRADED else "working"
    if outcome.action is FailureAction.CONTINUE:
        return "tolerated"
    return "unavailable"


def business_impact(outcomes: list[StepOutcome], health: WorkflowHealth) -> BusinessImpact:
    worst: dict[str, str] = {}
    for outcome in outcomes:
        state = _function_state(outcome)
        if _RANK[state] >= _RANK.get(worst.get(outcome.name, "working"), 0):
            worst[outcome.name] = state
    by_state: dict[str, list[str]] = {state: [] for state in _RANK}
    for name, state in worst.items():
        by_state[state].append(name)
    return BusinessImpact(
        working_functions=sorted(by_state["working"]),
        degraded_functions=sorted(by_state["degraded"]),
        unavailable_functions=sorted(by_state["unavailable"]),
        tolerated_functions=sorted(by_state["tolerated"]),
        overall_health_score=health.health_score,
    )


def run_status(outcomes: list[StepOutcome], health: WorkflowHealth) -> RunStatus:
    """Completed unless a step degraded or became unavailable (DESIGN's table).

    A step tolerated under `continue` does not make the run partial: that
    policy says its failure does not matter. It still lowers the health score.
    """
    if health.stopped_by is not None:
        return RunStatus.TERMINATED
    if any(_function_state(o) in ("degraded", "unavailable") for o in outcomes):
        return RunStatus.PARTIAL_SUCCESS
    return RunStatus.COMPLETED


def build_report(
    *,
    flow_run_id: UUID | None,
    flow_name: str,
    outcomes: list[StepOutcome],
    health: WorkflowHealth,
    status: RunStatus,
    message: str = "",
    loops: list[LoopReport] | None = None,
    finished: datetime | None = None,
    policy: PolicyUsed | None = None,
) -> PartialSuccessResult:
    continuity = {
        RunStatus.COMPLETED: ContinuityStatus.MAINTAINED,
        RunStatus.PARTIAL_SUCCESS: ContinuityStatus.DEGRADED,
    }.get(status, ContinuityStatus.INTERRUPTED)
    impact = business_impact(outcomes, health)
    if status is RunStatus.PARTIAL_SUCCESS and not message:
        message = (
            f"health {health.health_score:.2f}; degraded: "
            f"{', '.join(impact.degraded_functions) or 'none'}; unavailable: "
            f"{', '.join(impact.unavailable_functions) or 'none'}"
        )

    def failure(o: StepOutcome) -> StepFailure:
        return StepFailure(
            name=o.name,
            task_run_id=o.task_run_id,
            status=o.status,
            action=o.action,
            reason=o.reason,
            exception_type=o.exception_type,
            exception_message=o.exception_message,
            fallback_used=o.fallback_used,
        )

    return PartialSuccessResult(
        flow_run_id=flow_run_id,
        flow_name=flow_name,
        overall_status=status,
        continuity_status=continuity,
        message=message,
        successful_steps=[
            o.name for o in outcomes if o.status in (StepStatus.SUCCEEDED, StepStatus.RECOVERED)
        ],
        degraded_steps=[failure(o) for o in outcomes if o.status is StepStatus.DEGRADED],
        failed_steps=[failure(o) for o in outcomes if not o.status.delivered],
        business_impact=impact,
        health=health,
        recommendations=health.recommendations,
        loops=loops or [],
        steps=outcomes,
        finished=finished,
        policy=policy,
    )


# --- rendering -------------------------------------------------------------------------


def artifact_key(kind: str, flow_name: str) -> str:
    """A key in Prefect's allowed form (lowercase letters, digits, dashes), per flow."""
    slug = re.sub(r"[^a-z0-9]+", "-", flow_name.lower()).strip("-") or "flow"
    return f"resilience-{kind}-{slug}"[:100].rstrip("-")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: PartialSuccessResult) -> str:
    h = report.health
    impact = report.business_impact
    lines = [
        f"# {report.flow_name}: {report.overall_status.value}",
        "",
        f"**Health** {h.health_score:.2f} · **continuity** {report.continuity_status.value}"
        f" · {h.total} steps: {h.completed} succeeded, {h.degraded} degraded, {h.failed} failed"
        f" ({h.critical_failures} critical)",
    ]
    if report.message:
        lines += ["", f"> {report.message}"]
    if report.policy is not None and report.policy.fallback_reason:
        lines += [
            "",
            f"**Policy**: the declared fallback ({report.policy.source}), because"
            f" {report.policy.fallback_reason}",
        ]
    lines += ["", "## Business impact", ""]
    for label, names in (
        ("Working", impact.working_functions),
        ("Degraded", impact.degraded_functions),
        ("Unavailable", impact.unavailable_functions),
        ("Failed, tolerated", impact.tolerated_functions),
    ):
        lines.append(f"- **{label}**: {', '.join(names) if names else 'none'}")
    if report.degraded_steps or report.failed_steps:
        lines += ["", "## Steps that did not simply succeed", ""]
        lines += ["| step | status | action | reason |", "|---|---|---|---|"]
        for step in [*report.degraded_steps, *report.failed_steps]:
            action = step.action.value if step.action else "-"
            lines.append(
                f"| {_cell(step.name)} | {step.status.value} | {action} | {_cell(step.reason)} |"
            )
    if report.loops:
        lines += ["", "## Loops", ""]
        lines += [
            "| loop | iterations | condition met | seconds | condition ms p50 / max |",
            "|---|---|---|---|---|",
        ]
        for loop in report.loops:
            lines.append(
                f"| {_cell(loop.name)} | {loop.iterations} | {loop.condition_met} |"
                f" {loop.seconds:.2f} | {loop.condition_ms_p50:.3f} / {loop.condition_ms_max:.3f} |"
            )
    if report.recommendations:
        lines += ["", "## Recommendations", ""]
        lines += [f"- {r}" for r in report.recommendations]
    return "\n".join(lines) + "\n"


def to_table(report: PartialSuccessResult) -> list[dict[str, Any]]:
    return [
        {
            "step": o.name,
            "status": o.status.value,
            "policy": o.policy.value,
            "attempts": o.attempts,
            "action": o.action.value if o.action else None,
            "fallback": o.fallback_used,
            "critical": o.critical,
            "impact": o.impact.value,
            "seconds": None if o.duration is None else round(o.duration, 3),
            "reason": o.reason,
        }
        for o in report.steps
    ]


# --- Prefect artifacts ----------------------------------------------------------------


def publish(report: PartialSuccessResult) -> None:
    """Write the report as three artifacts of the flow run (on its page in the UI): the
    markdown summary, a table of steps and the structured report."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    # unkeyed: a keyed artifact locks its key's row in Prefect's artifact collection until
    # its write commits, so concurrent runs of one flow queue on it; at 200 runs at once
    # on the Redis topology a report took a median of 30-59 s to write with two keys,
    # about 22 s with one, and the run's ending waits for it
    common = {"flow_run_id": report.flow_run_id}
    artifacts = [
        ArtifactCreate(
            type="markdown",
            data=to_markdown(report),
            description=f"Resilience report: {report.overall_status.value}",
            **common,
        ),
        ArtifactCreate(
            type="table",
            data=json.dumps(to_table(report)),
            description="Each resilient step of the run",
            **common,
        ),
        ArtifactCreate(
            type=REPORT_TYPE,
            data=report.model_dump(mode="json"),
            description="The structured report, read back by prefect_resilience.get_report",
            **common,
        ),
    ]
    # at once: a run's ending waits for its report, so for one round trip, not three (in a
    # run, get_client gives the run's own client, shared by the threads). Each thread runs
    # in a copy of this context, so Prefect's settings context (the API URL the events of
    # an artifact go to) holds there too.
    contexts = [contextvars.copy_context() for _ in artifacts]
    with get_client(sync_client=True) as client, ThreadPoolExecutor(len(artifacts)) as pool:
        list(
            pool.map(
                lambda context, artifact: context.run(create_riding_through, client, artifact),
                contexts,
                artifacts,
            )
        )


# Pauses before writing an artifact again after the API failed it for a moment. Prefect's
# client retries 502, 503 and dropped connections itself, but not a 500, which its server
# answers while its database restarts (asyncpg's ConnectionRefusedError), nor a refused
# connection on a client's first request: without these a report is kept pending.
WRITE_RETRY_DELAYS = (1.0, 2.0, 4.0)


def create_riding_through(client: Any, artifact: Any) -> Any:
    """`client.create_artifact`, tried again over a few seconds when the API failed it
    with a server error or could not be reached; other errors pass through at once."""
    for pause in (*WRITE_RETRY_DELAYS, None):
        try:
            return client.create_artifact(artifact)
        except Exception as exc:
            if pause is None or not _transient(exc):
                raise
            logger.debug("the API failed an artifact write (%s); again in %.0fs", exc, pause)
            time.sleep(pause)


def _transient(exc: Exception) -> bool:
    """A server error (5xx) or a connection that failed: worth a second try."""
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


def create_artifact(
    key: str, kind: str, data: Any, description: str, flow_run_id: Any = None
) -> bool:
    """A keyed artifact of `flow_run_id`, or of the flow run this runs in (its run context,
    or PREFECT__FLOW_RUN_ID in a deployment's process); unattached outside any flow run.
    Returns whether it is attached to a flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate
    from prefect.runtime import flow_run

    run_id = flow_run_id or flow_run.id
    artifact = ArtifactCreate(
        key=key, type=kind, data=data, description=description, flow_run_id=run_id
    )
    with get_client(sync_client=True) as client:
        create_riding_through(client, artifact)
    return run_id is not None


def get_report(flow_run_id: UUID | str) -> PartialSuccessResult | None:
    """The report of a flow run, read back from the Prefect API (None if it has none)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
    )
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(str(flow_run_id))]),
                type=ArtifactFilterType(any_=[REPORT_TYPE]),
            ),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    if not artifacts:
        return None
    return PartialSuccessResult.model_validate(artifacts[0].data)
