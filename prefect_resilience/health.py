"""What happened to each step, and how healthy a run is because of it.

Pure data and logic: a `StepOutcome` is produced by the Prefect glue for every
finished resilient step; the run's health is computed from outcomes alone.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from prefect_resilience.policy import FailureAction, FailureImpact, FailurePolicy


class StepStatus(StrEnum):
    """How a step ended, from the run's point of view.

    `succeeded`: first attempt; `recovered`: after retries; `degraded`: a
    fallback supplied the result; `tolerated`: failed, its default was used;
    `failed`: failed and not tolerated.
    """

    SUCCEEDED = "succeeded"
    RECOVERED = "recovered"
    DEGRADED = "degraded"
    TOLERATED = "tolerated"
    FAILED = "failed"

    @property
    def delivered(self) -> bool:
        """Whether the step's own work, or a fallback's, produced its result."""
        return self in (StepStatus.SUCCEEDED, StepStatus.RECOVERED, StepStatus.DEGRADED)


class StepOutcome(BaseModel):
    """The record of one finished resilient step.

    `attempts` and `duration` come from Prefect's task run (`run_count`,
    `total_run_time`); they are None until read from the API.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    task_run_id: UUID | None = None
    status: StepStatus
    policy: FailurePolicy
    critical: bool = False
    impact: FailureImpact = FailureImpact.MAJOR
    attempts: int | None = None
    action: FailureAction | None = None
    reason: str = ""
    exception_type: str | None = None
    exception_message: str | None = None
    fallback_used: str | None = None
    fallback_task_run_id: UUID | None = None
    duration: float | None = None
    finished: datetime | None = None
