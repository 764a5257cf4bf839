"""What a run keeps on this machine: its step journal, and its report when the API
did not take it. Both live under `<PREFECT_HOME>/prefect-resilience/pending/`,
readable by the user only.

A *step journal* (`<flow_run_id>.steps.jsonl`) is what a running flow appends
each settled step to, so that a process killed outright still leaves what it
had finished; a *pending report* (`<flow_run_id>.json`) is a report that
publishing failed to write. `pending.upload_pending` publishes both later.
`open_private` is the one place this package creates a private file.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from pydantic import ValidationError

from prefect_resilience.health import HealthLedger, StepOutcome
from prefect_resilience.policy import WorkflowPolicy
from prefect_resilience.report import (
    LoopReport,
    PartialSuccessResult,
    PolicyUsed,
    RunStatus,
    artifact_key,
    build_report,
)

logger = logging.getLogger("prefect_resilience.report")

PENDING_SUFFIX = ".json"
JOURNAL_SUFFIX = ".steps.jsonl"


def pending_dir() -> Path:
    """Where reports the API did not take, and the journals of running flows, are kept."""
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value()) / "prefect-resilience" / "pending"


def private_dir(path: Path) -> Path:
    """A directory only its user can enter (0700), made with its parents if missing.

    `mkdir`'s mode is masked by the umask and ignored when the directory exists,
    hence the explicit `chmod`.
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def open_private(path: Path, flags: int) -> int:
    """Open (creating it) a file only its user can read (0600), in a 0700 directory.

    The one place this package creates private files: reports, journals and run
    history can hold sensitive data (step names, error messages).
    """
    private_dir(path.parent)
    fd = os.open(path, flags | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
    return fd


def write_private(path: Path, text: str) -> Path:
    """Write a file atomically (a temporary file, then a rename), readable by its user only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_TRUNC), "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return path


def keep_pending(report: PartialSuccessResult) -> Path:
    """Keep a report the API did not take, for `prefect-resilience report upload`."""
    name = str(report.flow_run_id or f"{artifact_key('run', report.flow_name)}-{os.getpid()}")
    return write_private(pending_dir() / f"{name}{PENDING_SUFFIX}", report.model_dump_json())


def pending_reports(directory: Path | None = None) -> list[Path]:
    directory = directory or pending_dir()
    return sorted(p for p in directory.glob(f"*{PENDING_SUFFIX}") if not p.name.startswith("."))


def journal_path(flow_run_id: UUID | str) -> Path:
    return pending_dir() / f"{flow_run_id}{JOURNAL_SUFFIX}"


class StepJournal:
    """A run's settled steps, appended one JSON line each to a user-only local file.

    A flow process killed outright (SIGKILL, the kernel's OOM killer) runs no
    more Python: no hook, no report. The journal is what is left: each line
    goes to the kernel in one unbuffered `write` as its step settles. The
    report is rebuilt from it by the `on_crashed` hook that a Prefect runner
    or process worker calls, or by `prefect-resilience report upload`. A
    journal that cannot be written is given up with a warning, never failing
    the run.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def open(
        cls,
        flow_run_id: UUID,
        flow_name: str,
        policy: WorkflowPolicy,
        policy_used: PolicyUsed | None = None,
    ) -> StepJournal:
        """Start the journal of a run (raises OSError when the file cannot be made)."""
        path = journal_path(flow_run_id)
        journal = cls(path, open_private(path, os.O_WRONLY | os.O_APPEND))
        header = {
            "kind": "run",
            "flow_run_id": str(flow_run_id),
            "flow_name": flow_name,
            # the settings health is computed from; step rules can hold any Python default
            "policy": policy.model_dump(mode="json", exclude={"step_policies"}),
            "policy_used": policy_used.model_dump(mode="json") if policy_used else None,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(UTC).isoformat(),
        }
        journal._write(json.dumps(header))
        return journal

    def step(self, outcome: StepOutcome) -> None:
        self._write(f'{{"kind":"step","outcome":{outcome.model_dump_json()}}}')

    def loop(self, loop: LoopReport) -> None:
        self._write(f'{{"kind":"loop","loop":{loop.model_dump_json()}}}')

    def _write(self, line: str) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, (line + "\n").encode())
        except OSError as exc:
            logger.warning("step journal %s given up: %s", self.path, exc)
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        """The run's report is safe elsewhere: the journal is no longer needed."""
        self.close()
        self.path.unlink(missing_ok=True)


@dataclass
class JournalRecord:
    """What a step journal holds: the run, its policy, and the steps it had settled."""

    path: Path
    flow_run_id: UUID
    flow_name: str
    policy: WorkflowPolicy
    pid: int
    host: str
    policy_used: PolicyUsed | None = None
    outcomes: list[StepOutcome] = field(default_factory=list)
    loops: list[LoopReport] = field(default_factory=list)

    def process_alive(self) -> bool | None:
        """Whether the run's process still exists: None when it ran on another host."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's process now holds that id
            return True
        return not _is_zombie(self.pid)

    def report(self, status: RunStatus, message: str) -> PartialSuccessResult:
        """The run's report as far as the journal goes (its health recomputed from it)."""
        ledger = HealthLedger(self.policy)
        for outcome in self.outcomes:
            ledger.add(outcome)
        return build_report(
            flow_run_id=self.flow_run_id,
            flow_name=self.flow_name,
            outcomes=self.outcomes,
            health=ledger.health(),
            status=status,
            message=message,
            loops=self.loops,
            finished=datetime.now(UTC),
            policy=self.policy_used,
        )


def read_journal(path: Path) -> JournalRecord:
    """Read a step journal; a last line cut short by the kill is skipped.

    Raises ValueError naming the file when it is not a journal.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0])
        record = JournalRecord(
            path=path,
            flow_run_id=UUID(header["flow_run_id"]),
            flow_name=header["flow_name"],
            policy=WorkflowPolicy.model_validate(header["policy"]),
            pid=int(header["pid"]),
            host=str(header["host"]),
            policy_used=PolicyUsed.model_validate(header["policy_used"])
            if header.get("policy_used")
            else None,
        )
    except (IndexError, ValueError, KeyError, TypeError, ValidationError) as exc:
        raise ValueError(f"{path}: not a step journal ({exc})") from None
    for number, line in enumerate(lines[1:], start=2):
        try:
            entry = json.loads(line)
            if entry["kind"] == "step":
                record.outcomes.append(StepOutcome.model_validate(entry["outcome"]))
            elif entry["kind"] == "loop":
                record.loops.append(LoopReport.model_validate(entry["loop"]))
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            if number < len(lines):  # only the last line may be cut short
                raise ValueError(f"{path}, line {number}: not a journal entry ({exc})") from None
    return record


def _is_zombie(pid: int) -> bool:
    """A killed process nobody reaped yet (its parent died too, and the container's
    first process does not reap orphans) still answers signal 0, but it is over."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (not Linux), or gone since
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]
