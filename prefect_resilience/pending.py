"""Reports kept on this machine until the Prefect API takes them.

A run's report that the API did not take is kept in a local pending file, and
each settled step of a run is appended to a local step journal, so a flow
process killed outright leaves what it had finished. `upload_pending` (the
CLI's `report upload`) publishes both later; a Prefect runner's crash hook
rebuilds a report from a journal at once (`journal_report`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

from prefect.logging import get_logger

from prefect_resilience.local_store import (
    JOURNAL_SUFFIX,
    JournalRecord,
    keep_pending,
    pending_dir,
    pending_reports,
    read_journal,
)
from prefect_resilience.report import (
    PartialSuccessResult,
    RunStatus,
    get_report,
    publish,
    run_status,
)

logger = get_logger("prefect_resilience")


def publish_or_keep(report: PartialSuccessResult) -> bool:
    """Publish a report; when the API does not take it, keep it in a local pending file.

    True when the report is safe (published or kept). The run's ending never
    depends on it: the API may be down while the run itself is fine.
    """
    try:
        publish(report)
        return True
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    try:
        path = keep_pending(report)
    except OSError as exc:
        logger.error(
            "the resilience report of flow run %s is lost: the Prefect API did not take it"
            " (%s) and it could not be kept locally (%s)",
            report.flow_run_id,
            error,
            exc,
        )
        return False
    logger.warning(
        "could not write the resilience report of flow run %s to the Prefect API (%s);"
        " kept it in %s: upload it with `prefect-resilience report upload`",
        report.flow_run_id,
        error,
        path,
    )
    return True


def journal_report(record: JournalRecord, status: RunStatus, message: str) -> PartialSuccessResult:
    """A report rebuilt from a step journal, whose steps carry their attempts."""
    return record.report(status, f"{message} (report rebuilt from the step journal)")


@dataclass
class UploadSummary:
    """What `upload_pending` did with each local file."""

    uploaded: list[Path] = field(default_factory=list)  # pending reports now in Prefect
    recovered: list[UUID] = field(default_factory=list)  # runs reported from their journal
    running: list[Path] = field(default_factory=list)  # journals of runs still going
    failed: list[tuple[Path, str]] = field(default_factory=list)  # kept, with the reason


def upload_pending(directory: Path | None = None) -> UploadSummary:
    """Publish the reports kept locally, and the reports of runs whose process died.

    A pending report is published as artifacts of its flow run, then deleted.
    A step journal whose flow run has ended, or whose process is gone from
    this host while Prefect still shows the run Running (a SIGKILL with no
    runner to notice), becomes a report; such a run is first set `Crashed`,
    as a runner would have. Journals of live processes are left alone. Files
    that fail are kept, with the reason in the summary.
    """
    directory = directory or pending_dir()
    summary = UploadSummary()
    for path in pending_reports(directory):
        try:
            publish(PartialSuccessResult.model_validate_json(path.read_text(encoding="utf-8")))
        except Exception as exc:
            summary.failed.append((path, f"{type(exc).__name__}: {exc}"))
            continue
        path.unlink(missing_ok=True)
        summary.uploaded.append(path)
    for path in sorted(directory.glob(f"*{JOURNAL_SUFFIX}")):
        try:
            record = read_journal(path)
            recovered = _recover(record)
        except Exception as exc:
            summary.failed.append((path, f"{type(exc).__name__}: {exc}"))
            continue
        if recovered:
            summary.recovered.append(record.flow_run_id)
        else:
            summary.running.append(path)
    return summary


def _recover(record: JournalRecord) -> bool:
    """Report a run from its journal if the run is over; False if it may still be going."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(record.flow_run_id)
        state = run.state
        if state is None or not state.is_final():
            if record.process_alive() is not False:
                return False
            message = (
                f"the flow process (pid {record.pid} on {record.host}) ended without reporting;"
                " marked Crashed by prefect-resilience report upload"
            )
            state = client.set_flow_run_state(run.id, Crashed(message=message)).state or state
        elif get_report(run.id) is not None:  # reported; only the journal was left behind
            record.path.unlink(missing_ok=True)
            return True
    if state is not None and state.is_crashed():
        status = RunStatus.CRASHED
    elif state is not None and state.is_completed():
        status = run_status(record.outcomes, record.report(RunStatus.COMPLETED, "").health)
    else:
        status = RunStatus.FAILED
    message = (state.message if state is not None else None) or "the flow process ended"
    publish(journal_report(record, status, message))
    record.path.unlink(missing_ok=True)
    return True
