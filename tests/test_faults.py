"""Faults a resilient run must survive, each against the real Prefect test server.

- the API refuses the report and the events mid-run (an HTTP proxy in front of
  the server fails those routes): the run still ends right, the report waits in
  a user-only pending file, and `report upload` publishes it later;
- the flow process is terminated (SIGTERM) or killed (SIGKILL, bare or under a
  Prefect runner): the run ends `Crashed` with a report of what had finished;
- a Dask worker dies mid-step: that step fails and its policy applies;
- the policy block is deleted or invalid at run start: a clear error before any
  step, or the declared fallback policy, recorded in the report.

Flows killed or cut off from the API run in their own process, as in
production; they are defined here at module level so that process (and a
runner, by entrypoint) can import them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect import flow, runtime
from typer.testing import CliRunner

from prefect_resilience import (
    ResilienceConfigError,
    ResiliencePolicy,
    RunStatus,
    StepStatus,
    WorkflowPolicy,
    get_report,
    resilient,
    resilient_flow,
)
from prefect_resilience.cli import app
from prefect_resilience.local_store import StepJournal, read_journal
from prefect_resilience.pending import upload_pending
from tests.conftest import ROOT
from tests.scenarios import Boom, fetch
from tests.servers import serving

pytestmark = pytest.mark.usefixtures("prefect_server")

# --- flows for other processes -----------------------------------------------------------


@resilient(policy="continue", default=None)
def extract() -> str:
    return "rows"


@resilient(policy="continue", default=None)
def transform() -> str:
    return "clean rows"


@resilient(policy="continue", default=None)
def enrich() -> str:
    raise Boom("enrichment service down")


@resilient(policy="continue", default=None)
def hang(ready: str) -> None:
    """Say where to send the signal, then wait for it."""
    Path(ready).write_text(
        json.dumps({"pid": os.getpid(), "flow_run_id": str(runtime.flow_run.id)})
    )
    time.sleep(120)


@resilient_flow(name="faults-interruptible")
def interruptible(ready: str) -> None:
    extract()
    transform()
    enrich()  # tolerated under continue
    hang(ready)  # killed here
    extract()


@resilient_flow(name="faults-outage")
def outage() -> dict:
    return {"a": fetch("a"), "b": fetch("b", fail=True)}  # b degrades: PartialSuccess


def _env(home: Path, api_url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(home), **extra}


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


def _python(code: str, env: dict[str, str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def _wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return json.loads(path.read_text())
        if process.poll() is not None:
            raise AssertionError(f"process ended early:\n{process.stdout.read()}")
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"no {path.name} within {timeout}s:\n{process.communicate()[0]}")


def _state(client: Any, flow_run_id: Any, until: Any = None, timeout: float = 60) -> Any:
    """The flow run's state, once `until(state)` holds (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        state = client.read_flow_run(flow_run_id).state
        if until is None or until(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def _task_runs(client: Any, flow_run_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _assert_reports_what_finished(report: Any) -> None:
    assert report.overall_status is RunStatus.CRASHED
    assert report.successful_steps == ["extract", "transform"]
    assert report.business_impact.tolerated_functions == ["enrich"]
    assert [s.name for s in report.steps] == ["extract", "transform", "enrich"]  # no `hang`


# --- the API refuses the report and the events --------------------------------------------


class _Gateway(ThreadingHTTPServer):
    """An HTTP proxy to the Prefect API that answers `status` on the routes it is told to
    fail (504: as a gateway whose upstream cannot be reached), the first `times` requests
    to them or all; everything else is forwarded."""

    daemon_threads = True

    def __init__(
        self, upstream: str, failing: str, status: int = 504, times: int | None = None
    ) -> None:
        super().__init__(("127.0.0.1", 0), _GatewayHandler)
        self.origin = re.sub(r"(https?://[^/]+).*", r"\1", upstream)
        self.failing = re.compile(failing)
        self.status, self.times = status, times
        self.refused: list[str] = []
        self.client = httpx.Client(timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api"


_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "upgrade", "accept-encoding"}


class _GatewayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Gateway

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        gateway = self.server
        if gateway.failing.search(self.path) and (
            gateway.times is None or len(gateway.refused) < gateway.times
        ):
            gateway.refused.append(f"{self.command} {self.path}")
            self.send_response(gateway.status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        upstream = self.server.client.request(
            self.command, self.server.origin + self.path, content=body, headers=headers
        )
        self.send_response(upstream.status_code)
        for key, value in upstream.headers.items():
            if key.lower() not in _HOP | {"content-length", "content-encoding"}:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(upstream.content)))
        self.end_headers()
        self.wfile.write(upstream.content)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _serving(failing: str, **options: Any) -> Iterator[_Gateway]:
    server = _Gateway(_api_url(), failing, **options)
    try:
        with serving(server):
            yield server
    finally:
        server.client.close()


@pytest.fixture
def gateway() -> Iterator[_Gateway]:
    with _serving(r"^/api/(artifacts|events)") as server:
        yield server


def _run_outage(home: Path, gateway: _Gateway) -> tuple[str, UUID]:
    """Run `outage` in a process whose API is the gateway: its output and flow run id."""
    process = _python(
        "from tests.test_faults import outage\n"
        "state = outage(return_state=True)\n"
        "print('RUN', state.state_details.flow_run_id, state.name)",
        _env(home, gateway.url),
    )
    output = process.communicate(timeout=180)[0]
    assert process.returncode == 0, output
    found = re.search(r"^RUN (\S+) PartialSuccess$", output, re.M)
    assert found, output
    return output, UUID(found.group(1))


def test_a_report_the_api_fails_for_a_moment_is_published(tmp_path: Path, client: Any) -> None:
    # a database restarting behind the API: its server answers 500, which Prefect's
    # client does not retry; the package writes the report again a moment later
    home = tmp_path / "home"
    with _serving(r"^/api/artifacts/$", status=500, times=2) as flaky:
        output, flow_run_id = _run_outage(home, flaky)
    assert flaky.refused == ["POST /api/artifacts/"] * 2
    report = get_report(flow_run_id)
    assert report is not None and report.overall_status is RunStatus.PARTIAL_SUCCESS
    assert "kept it in" not in output
    assert not list((home / "prefect-resilience" / "pending").glob("*.json"))


def test_an_unreachable_api_keeps_the_ending_and_the_report_waits_for_upload(
    gateway: _Gateway, tmp_path: Path, client: Any
) -> None:
    home = tmp_path / "home"
    output, flow_run_id = _run_outage(home, gateway)
    # the artifact writes and the event stream were refused; the run still ended right
    assert any(r.startswith("POST /api/artifacts/") for r in gateway.refused)
    assert any("/api/events/in" in r for r in gateway.refused)
    assert _state(client, flow_run_id).name == "PartialSuccess"
    assert get_report(flow_run_id) is None

    pending = home / "prefect-resilience" / "pending"
    kept = pending / f"{flow_run_id}.json"
    assert f"kept it in {kept}" in output
    assert (_mode(pending), _mode(kept)) == (0o700, 0o600)
    assert sorted(p.name for p in pending.iterdir()) == [kept.name]  # its journal is gone

    # `report upload` while the API is still unreachable: nothing lost, exit 1
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    cli = CliRunner()
    with temporary_settings({PREFECT_HOME: str(home), PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        down = cli.invoke(app, ["report", "upload"])
    assert down.exit_code == 1, down.output
    assert "0 uploaded" in down.output and "1 failed" in down.output
    assert kept.exists()

    # and once the API is back
    with temporary_settings({PREFECT_HOME: str(home)}):
        up = cli.invoke(app, ["report", "upload"])
    assert up.exit_code == 0, up.output
    assert "1 uploaded" in up.output
    assert not kept.exists()
    report = get_report(flow_run_id)
    assert report.overall_status is RunStatus.PARTIAL_SUCCESS
    assert report.successful_steps == ["fetch"]
    assert [(s.name, s.fallback_used) for s in report.degraded_steps] == [("fetch", "from_cache")]


# --- the flow process is terminated or killed ----------------------------------------------


def _start_interruptible(tmp_path: Path) -> tuple[subprocess.Popen[str], dict, Path]:
    home = tmp_path / "home"
    ready = tmp_path / "ready.json"
    process = _python(
        f"from tests.test_faults import interruptible\ninterruptible({str(ready)!r})",
        _env(home, _api_url()),
    )
    return process, _wait_for(ready, process), home


def test_sigterm_crashes_the_run_and_its_report_says_what_had_finished(
    tmp_path: Path, client: Any
) -> None:
    process, ready, home = _start_interruptible(tmp_path)
    os.kill(process.pid, signal.SIGTERM)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == -signal.SIGTERM, output
    state = _state(client, ready["flow_run_id"])
    assert state.is_crashed(), state
    report = get_report(ready["flow_run_id"])
    _assert_reports_what_finished(report)
    assert "TerminationSignal" in report.message
    assert list((home / "prefect-resilience" / "pending").iterdir()) == []


def test_sigkill_leaves_a_journal_that_upload_turns_into_a_crashed_report(
    tmp_path: Path, client: Any
) -> None:
    process, ready, home = _start_interruptible(tmp_path)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)  # reaped: its pid is gone
    journal = home / "prefect-resilience" / "pending" / f"{ready['flow_run_id']}.steps.jsonl"
    assert _mode(journal) == 0o600
    # nothing in the process could act: Prefect still shows the run Running
    assert _state(client, ready["flow_run_id"]).is_running()

    summary = upload_pending(journal.parent)
    assert summary.recovered == [UUID(ready["flow_run_id"])] and not summary.failed
    assert not journal.exists()
    state = _state(client, ready["flow_run_id"])
    assert state.is_crashed() and f"pid {ready['pid']}" in state.message
    _assert_reports_what_finished(get_report(ready["flow_run_id"]))


def test_sigkill_under_a_runner_is_reported_by_the_crash_hook(tmp_path: Path, client: Any) -> None:
    from prefect.deployments import run_deployment

    home = tmp_path / "home"
    ready = tmp_path / "ready.json"
    name = f"faults-serve-{os.getpid()}"
    runner = _python(
        f"from tests.test_faults import interruptible\ninterruptible.serve(name={name!r})",
        _env(home, _api_url(), PREFECT_RUNNER_POLL_FREQUENCY="1"),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                client.read_deployment_by_name(f"faults-interruptible/{name}")
                break
            except Exception:
                if runner.poll() is not None or time.monotonic() > deadline:
                    output = runner.communicate()[0]
                    raise AssertionError(f"runner did not serve:\n{output}") from None
                time.sleep(0.3)
        run_deployment(f"faults-interruptible/{name}", parameters={"ready": str(ready)}, timeout=0)
        started = _wait_for(ready, runner)
        assert started["pid"] != runner.pid  # the runner runs each flow in its own process
        os.kill(started["pid"], signal.SIGKILL)
        state = _state(client, started["flow_run_id"], until=lambda s: s.is_final())
        assert state.is_crashed(), state
        deadline = time.monotonic() + 30
        while (report := get_report(started["flow_run_id"])) is None:
            assert time.monotonic() < deadline, "the runner's crash hook wrote no report"
            time.sleep(0.3)
    finally:
        os.killpg(runner.pid, signal.SIGKILL)
        runner.communicate(timeout=30)
    _assert_reports_what_finished(report)
    assert "rebuilt from the step journal" in report.message
    assert list((home / "prefect-resilience" / "pending").iterdir()) == []


def test_a_journal_cut_short_by_the_kill_still_reads(tmp_path: Path) -> None:
    from prefect.settings import PREFECT_HOME, temporary_settings

    from prefect_resilience import StepOutcome

    with temporary_settings({PREFECT_HOME: str(tmp_path)}):
        journal = StepJournal.open(UUID(int=1), "cut", WorkflowPolicy(degraded_credit=0.25))
    outcome = StepOutcome(name="a", status=StepStatus.DEGRADED, policy="graceful_degradation")
    journal.step(outcome)
    journal.close()
    with journal.path.open("a") as handle:
        handle.write('{"kind":"step","outcome":{"name":"b","sta')  # the write the kill cut
    record = read_journal(journal.path)
    assert [o.name for o in record.outcomes] == ["a"]
    assert record.report(RunStatus.CRASHED, "killed").health.health_score == 0.25
    journal.path.write_text("not a journal\n")
    with pytest.raises(ValueError, match="not a step journal"):
        read_journal(journal.path)


@flow(name="faults-journalled")
def journalled() -> None:
    pass


def test_upload_reports_runs_another_actor_ended_and_leaves_live_ones(
    tmp_path: Path, client: Any
) -> None:
    from prefect.settings import PREFECT_HOME, temporary_settings
    from prefect.states import Crashed, Running

    from prefect_resilience import StepOutcome

    step = StepOutcome(name="load", status=StepStatus.SUCCEEDED, policy="fail_fast")
    runs = {}
    with temporary_settings({PREFECT_HOME: str(tmp_path)}):
        for label in ("ended", "live"):
            run = client.create_flow_run(journalled, state=Running())
            journal = StepJournal.open(run.id, "faults-journalled", WorkflowPolicy())
            journal.step(step)
            journal.close()  # this process (alive) wrote both journals
            runs[label] = run.id
    # e.g. Prefect's zombie automation, or a worker that runs no hooks, ended this one
    client.set_flow_run_state(runs["ended"], Crashed(message="no heartbeat"), force=True)

    summary = upload_pending(tmp_path / "prefect-resilience" / "pending")
    assert summary.recovered == [runs["ended"]] and not summary.failed
    assert [p.name for p in summary.running] == [f"{runs['live']}.steps.jsonl"]
    report = get_report(runs["ended"])
    assert report.overall_status is RunStatus.CRASHED and report.successful_steps == ["load"]
    assert report.message.startswith("no heartbeat")
    assert get_report(runs["live"]) is None and _state(client, runs["live"]).is_running()


# --- a Dask worker dies mid-step -----------------------------------------------------------


def _die_mid_step() -> None:
    time.sleep(1)  # long enough for the worker to tell Prefect the task run is Running
    os.kill(os.getpid(), signal.SIGKILL)  # the Dask worker process dies


@resilient(policy="continue", default="lost")
def tolerant_step(x: int) -> str:
    if x == 1:
        _die_mid_step()
    return f"done {x}"


@resilient(policy="fail_fast")
def vital_step() -> str:
    _die_mid_step()
    return "never"


def test_a_dying_dask_worker_fails_its_step_and_the_step_policy_applies(client: Any) -> None:
    pytest.importorskip("prefect_dask")
    import dask
    from prefect_dask import DaskTaskRunner

    runner = DaskTaskRunner(
        cluster_kwargs={"n_workers": 2, "processes": True, "threads_per_worker": 1}
    )

    @resilient_flow(name="faults-dask", task_runner=runner)
    def on_dask() -> list[str]:
        tolerated = tolerant_step.map([0, 1, 2]).result()
        assert tolerated == ["done 0", "lost", "done 2"]
        vital_step.submit().result()
        return tolerated

    # Dask re-runs a task whose worker died on another worker `allowed-failures` times
    # (default 3) before it gives up with KilledWorker; 0 gives up at once
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        state = on_dask(return_state=True)
    assert state.is_failed() and "terminated by rule fail_fast" in state.message
    report = get_report(state.state_details.flow_run_id)
    by_status = sorted((s.name, s.status.value, s.exception_type) for s in report.steps)
    assert by_status == [
        ("tolerant_step", "succeeded", None),
        ("tolerant_step", "succeeded", None),
        ("tolerant_step", "tolerated", "KilledWorker"),
        ("vital_step", "failed", "KilledWorker"),
    ]
    lost = [s.task_run_id for s in report.steps if s.exception_type == "KilledWorker"]
    for task_run_id in lost:  # Prefect no longer shows them Running for ever
        assert client.read_task_run(task_run_id).state.is_crashed()
    assert len(lost) == 2


# --- the policy block is deleted or invalid at run start -----------------------------------

started: list[str] = []


@resilient(policy="fail_fast")
def guarded_step() -> str:
    started.append("guarded_step")
    raise Boom("step failed")


SAFE = WorkflowPolicy(
    name="safe", step_policies={"guarded_step": {"policy": "continue", "default": "safe"}}
)


def _deleted_block(client: Any, name: str) -> None:
    ResiliencePolicy.from_policy(WorkflowPolicy()).save(name, overwrite=True)
    client.delete_block_document(ResiliencePolicy.load(name)._block_document_id)


def _invalid_block(client: Any, name: str) -> None:
    from prefect.client.schemas.actions import BlockDocumentUpdate

    ResiliencePolicy.from_policy(WorkflowPolicy()).save(name, overwrite=True)
    block_id = ResiliencePolicy.load(name)._block_document_id
    # the API stores what it is sent, as a UI or script could send it
    client.update_block_document(
        block_id, BlockDocumentUpdate(data={"max_partial_failures": -3}, merge_existing_data=True)
    )


BROKEN = {
    "deleted": (_deleted_block, "no Resilience Policy block named '{name}'"),
    "invalid": (_invalid_block, "block {name}.max_partial_failures: Input should be greater"),
}


@pytest.mark.parametrize("fallback", [None, SAFE], ids=["no-fallback", "fallback"])
@pytest.mark.parametrize("fault", list(BROKEN))
def test_a_deleted_or_invalid_block_fails_before_any_step_or_uses_the_fallback(
    fault: str, fallback: WorkflowPolicy | None, client: Any, request: pytest.FixtureRequest
) -> None:
    ResiliencePolicy.register_type_and_schema()
    name = re.sub(r"[^a-z0-9-]+", "-", f"faults-{request.node.callspec.id}".lower())
    breaks, problem = BROKEN[fault]
    breaks(client, name)
    problem = problem.format(name=name)
    started.clear()

    @resilient_flow(policy=name, fallback_policy=fallback, name=f"faults-block-{fault}")
    def nightly() -> str:
        return guarded_step()

    state = nightly(return_state=True)
    flow_run_id = state.state_details.flow_run_id
    report = get_report(flow_run_id)
    if fallback is None:
        assert state.is_failed() and problem in state.message
        with pytest.raises(ResilienceConfigError, match=re.escape(problem)):
            state.result()
        assert started == [] and _task_runs(client, flow_run_id) == []
        assert report.overall_status is RunStatus.FAILED and problem in report.message
        assert report.policy.source == f"block {name}"
    else:
        assert state.is_completed() and state.result() == "safe"
        assert started == ["guarded_step"]
        assert report.policy.source == "object safe"
        assert report.policy.fallback_reason.startswith(f"block {name} could not be loaded")
        assert problem in report.policy.fallback_reason


def test_a_fallback_that_cannot_load_either_names_both(tmp_path: Path) -> None:
    started.clear()

    @resilient_flow(policy="faults-never-saved", fallback_policy=tmp_path / "missing.yaml")
    def doubly() -> str:
        return guarded_step()

    with pytest.raises(ResilienceConfigError) as raised:
        doubly()
    message = str(raised.value)
    assert message.startswith("fallback_policy: block faults-never-saved could not be loaded")
    assert "missing.yaml" in message and started == []
    with pytest.raises(ResilienceConfigError, match="fallback_policy"):
        resilient_flow(fallback_policy=42)(lambda: None)


def test_a_killed_process_nobody_reaped_counts_as_ended(tmp_path: Path) -> None:
    """Its parent died with it, and a container's first process may never reap it."""
    import socket
    import uuid

    from prefect_resilience.local_store import JournalRecord

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    record = JournalRecord(
        tmp_path / "j", uuid.uuid4(), "f", WorkflowPolicy(), child.pid, socket.gethostname()
    )
    assert record.process_alive() is True
    os.kill(child.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert record.process_alive() is False  # a zombie: not yet waited for, but over
    child.wait()
    assert record.process_alive() is False
