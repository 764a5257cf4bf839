"""End to end, as a user runs it: a server, a work pool, `prefect deploy`, a worker, runs.

`prefect server start` (on SQLite, then on PostgreSQL), then Prefect's production
topology (PostgreSQL, Redis, two API servers behind haproxy, a services process and
two workers; tests/topology.py), a process work pool,
the policy blocks applied with `prefect-resilience policy apply`, the
deployments of flows/prefect.yaml made with `prefect deploy --all`, and
`prefect worker start` (one, or two on the topology) running every flow run in a
process of its own. Runs
are triggered through the API; final states and reports are read back from it.
Then the seed scenario's policy block is edited while the same worker keeps
running, and the next run follows the edited policy.

Everything started here is stopped on the way out, also when the test fails
(see tests/servers.py).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.servers import (
    BIN,
    PrefectServer,
    PrefectWorker,
    postgres_bin_dir,
    postgres_cluster,
    prefect_cli,
    prefect_server,
    prefect_worker,
)
from tests.topology import SBIN_PATH, topology

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ROOT / "flows"
POLICY_FILES = [
    ROOT / "blocks" / "seed-scenario.yaml",
    ROOT / "blocks" / "production-resilience.yaml",
]
POOL = "process-pool"  # the pool flows/prefect.yaml deploys to
SEED = "seed-scenario/seed-scenario"
PIPELINE = "data-pipeline/data-pipeline"
DASK = "dask-pipeline/dask-pipeline"
RUN_TIMEOUT = 150.0

# analytics fails and is tolerated (continue); the notification fails, so does its
# email fallback, and the queue fallback carries it (graceful_degradation)
DEGRADING = ["optional_analytics_setup", "user_notification", "email_fallback"]


@pytest.fixture(params=["sqlite", "postgresql", "redis-topology"])
def deployment(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[PrefectServer, list[PrefectWorker]]]:
    """A server (or the topology) on the given database, the flows deployed, and workers."""
    with contextlib.ExitStack() as stack:
        if request.param != "sqlite" and postgres_bin_dir() is None:
            pytest.skip(
                "PostgreSQL binaries are missing (apt-get install postgresql; .ci/run does)"
            )
        top = None
        if request.param == "redis-topology":
            if not shutil.which("redis-server") or not shutil.which("haproxy", path=SBIN_PATH):
                pytest.skip("redis-server or haproxy is missing (apt-get install; .ci/run does)")
            top = stack.enter_context(topology(2, home=tmp_path / "topology"))
            server = top.server
        else:
            database_url = None
            if request.param == "postgresql":
                database_url = stack.enter_context(postgres_cluster()).url
            server = stack.enter_context(
                prefect_server(database_url, home=tmp_path / "prefect-home")
            )
        # as a user would, with the CLI; independent steps overlap (each CLI call is a
        # few seconds of imports on a small machine)
        with ThreadPoolExecutor(2) as pool:
            pool_made = pool.submit(
                prefect_cli, server, "work-pool", "create", POOL, "--type", "process"
            )
            applied = pool.submit(
                prefect_cli,
                server,
                "policy",
                "apply",
                *map(str, POLICY_FILES),
                executable=BIN / "prefect-resilience",
            )
            pool_made.result()
            deployed = pool.submit(prefect_cli, server, "deploy", "--all", "--no-prompt", cwd=FLOWS)
            workers = [
                stack.enter_context(prefect_worker(server, POOL, cwd=tmp_path, name=f"w{i}"))
                for i in range(1 if top is None else 2)
            ]
            applied.result()
            deployed.result()
        yield server, workers


def trigger(deployment_name: str, parameters: dict[str, Any] | None = None) -> Any:
    """Create a flow run of a deployment through the API; the worker picks it up."""
    from prefect.deployments import run_deployment

    return run_deployment(deployment_name, parameters=parameters or {}, timeout=0)


def wait_final(flow_run_id: Any, workers: list[PrefectWorker]) -> Any:
    """The flow run once it is in a final state (its state read from the API)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + RUN_TIMEOUT
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            if time.monotonic() > deadline:
                pytest.fail(
                    f"flow run {flow_run_id} still {run.state.name if run.state else None}"
                    f" after {RUN_TIMEOUT:.0f}s; worker logs:\n"
                    + "\n".join(w.log.read_text(errors="replace")[-3000:] for w in workers)
                )
            time.sleep(0.5)


def report_of(run: Any) -> Any:
    """The run's structured report, and a check that its markdown artifact is there too."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
    )

    from prefect_resilience import get_report

    report = get_report(run.id)
    assert report is not None, f"run {run.name} ({run.state.name}) has no resilience report"
    assert report.flow_run_id == run.id
    with get_client(sync_client=True) as client:
        markdown = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                type=ArtifactFilterType(any_=["markdown"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]),
            )
        )
    assert len(markdown) == 1 and markdown[0].type == "markdown"
    assert f"# {report.flow_name}: {report.overall_status.value}" in markdown[0].data
    return report


def run_counts(run: Any, timeout: float = 30.0) -> dict[str, list[int]]:
    """Attempts per task (Prefect's run_count), once Prefect has recorded every task run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            task_runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
            )
            if all(t.state is not None and t.state.is_final() for t in task_runs) or (
                time.monotonic() > deadline
            ):
                break
            time.sleep(0.5)
    counts: dict[str, list[int]] = {}
    for task_run in task_runs:
        counts.setdefault(task_run.name.rsplit("-", 1)[0], []).append(task_run.run_count)
    return counts


@pytest.mark.timeout(480)
def test_deployed_flows_end_as_their_policies_say(
    deployment: tuple[PrefectServer, list[PrefectWorker]],
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    from prefect_resilience import RunStatus, StepStatus, TerminationRule, WorkflowPolicy, blocks

    server, workers = deployment
    with server.settings():
        with get_client(sync_client=True) as client:
            deployed = {
                (d.name, d.work_pool_name, d.job_variables["env"]["RESILIENCE_POLICY"])
                for d in client.read_deployments()
            }
        assert deployed == {
            ("seed-scenario", POOL, "seed-scenario"),
            ("data-pipeline", POOL, "production-resilience"),
            ("dask-pipeline", POOL, "production-resilience"),
        }

        # --- several runs at once through the one worker -----------------------------
        started = {
            "clean": trigger(SEED),
            "partial": trigger(SEED, {"fail_steps": DEGRADING}),
            "fail_fast": trigger(SEED, {"fail_steps": ["critical_database_setup"]}),
            "pipeline": trigger(PIPELINE, {"fail_steps": ["extract:part-2"]}),
            "dask": trigger(DASK, {"partitions": 4, "fail_steps": ["refresh_dashboard"]}),
        }
        runs = {key: wait_final(run.id, workers) for key, run in started.items()}
        reports = {key: report_of(run) for key, run in runs.items()}

        clean = runs["clean"]
        assert clean.state.type is StateType.COMPLETED and clean.state.name == "Completed"
        assert reports["clean"].overall_status is RunStatus.COMPLETED
        assert reports["clean"].health.health_score == 1.0
        assert len(reports["clean"].successful_steps) == 6

        partial = runs["partial"]
        assert partial.state.type is StateType.COMPLETED and partial.state.name == "PartialSuccess"
        report = reports["partial"]
        assert report.overall_status is RunStatus.PARTIAL_SUCCESS
        assert [(s.name, s.fallback_used) for s in report.degraded_steps] == [
            ("user_notification", "queue_notification")
        ]
        assert report.business_impact.tolerated_functions == ["optional_analytics_setup"]
        assert report.business_impact.degraded_functions == ["user_notification"]

        failed = runs["fail_fast"]
        assert failed.state.type is StateType.FAILED
        report = reports["fail_fast"]
        assert report.overall_status is RunStatus.TERMINATED
        assert report.health.stopped_by is TerminationRule.FAIL_FAST
        assert [s.name for s in report.failed_steps] == ["critical_database_setup"]
        # the block's 3 retries ran as Prefect's own: 4 attempts on one task run
        assert run_counts(failed)["critical_database_setup"] == [4]

        # the pipeline under the production-resilience block: one partition lost
        pipeline = runs["pipeline"]
        assert pipeline.state.name == "PartialSuccess"
        assert reports["pipeline"].business_impact.unavailable_functions == ["extract"]
        assert [s.name for s in reports["pipeline"].failed_steps] == ["extract"]

        # the Dask variant, deployed the same way: a tolerated step only
        dask = runs["dask"]
        assert dask.state.type is StateType.COMPLETED and dask.state.name == "Completed"
        assert reports["dask"].business_impact.tolerated_functions == ["refresh_dashboard"]
        assert {s.name for s in reports["dask"].steps} >= {"extract", "transform", "load"}

        # --- edit the block; the running worker's next run obeys the edit ------------
        document = blocks.policy_document(blocks.load_block_policy("seed-scenario"))
        for rule in document["step_policies"]:
            if rule["match"] == "optional_analytics_setup":
                rule["policy"] = "fail_fast"
        blocks.save_policy(
            "seed-scenario",
            WorkflowPolicy.model_validate(document),
            note="e2e: analytics is now required",
        )

        after = wait_final(trigger(SEED, {"fail_steps": DEGRADING}).id, workers)
        # a worker that was already running ran it: still up, and its log names the run
        assert all(w.process.poll() is None for w in workers)
        assert any(str(after.id) in w.log.read_text(errors="replace") for w in workers)
        assert after.state.type is StateType.FAILED
        report = report_of(after)
        assert report.overall_status is RunStatus.TERMINATED
        assert report.health.stopped_by is TerminationRule.FAIL_FAST
        analytics = [s for s in report.steps if s.name == "optional_analytics_setup"]
        assert [(s.status, s.policy.value) for s in analytics] == [(StepStatus.FAILED, "fail_fast")]
        assert [v.note for v in blocks.history("seed-scenario")][-1] == (
            "e2e: analytics is now required"
        )
