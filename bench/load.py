"""Load: many concurrent resilient flow runs against plain Prefect, on PostgreSQL or on
Prefect's production topology.

`--topology postgres`: a throwaway PostgreSQL cluster and one `prefect server
start` on it (tests/servers.py). `--topology redis`: Prefect's production
topology (tests/topology.py): PostgreSQL, Redis for messaging, two API servers
with `--no-services` behind haproxy and a services process. In batches, N flow
runs of a 20-step flow (load_flows.py) run at once: driver processes (this
script with `driver`) each run their share of the runs in threads, each thread
one flow run (`prefect.flow_engine.run_flow`, what a worker's flow-run process
does). Batches alternate (ABBA order over rounds) between the flow in plain
Prefect and as a `@resilient_flow`. Failures are injected by seed, so each run's
expected steps, report and final state are known beforehand; after each batch
the server is read back and every run, report, step outcome and task run is
checked against them. `--knee` adds one batch per variant at each larger size,
to find where throughput stops growing.

    python load.py [--runs 200] [--concurrency RUNS] [--processes 4] [--rounds 2]
    python load.py --topology redis --knee 300,400
    python load.py --runs 20 --rounds 1 --no-write     # a smoke run

Exit status 1 if any check failed (the figures are still written).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _report import markdown_table, show, write_section  # noqa: E402
from load_flows import (  # noqa: E402
    CRITICAL_STEP_RATIO,
    FAILURES,
    FLOWS,
    MAX_PARTIAL_FAILURES,
    RETRIES,
    STEPS,
    TASK_RUNNER_WORKERS,
    Plan,
    plan,
)
from prefect import tags  # noqa: E402
from prefect.flow_engine import run_flow  # noqa: E402

from tests.topology import LOST_STREAM, count_dropped  # noqa: E402

# words of the package's warnings that a report or a record is at risk (any logger)
TROUBLE = ("could not", "is lost", "given up", "kept it in", "EventsWorker' failed")
# the state types a task run of these flows ends in
FINAL_STATES = ["COMPLETED", "FAILED"]


# --- what a batch runs against ------------------------------------------------------------


@dataclass
class Target:
    """The servers batches run against: the address clients use, and the server-side logs."""

    topology: str  # "postgres" (one server) or "redis" (Prefect's production topology)
    server: Any  # tests.servers.PrefectServer: the address and settings clients use
    logs: Callable[[], list[Path]]
    versions: str = ""

    def log_sizes(self) -> dict[Path, int]:
        return {log: log.stat().st_size for log in self.logs() if log.exists()}

    def logged_since(self, sizes: dict[Path, int]) -> str:
        """What the server-side logs gained since `sizes` were taken."""
        texts = []
        for log in self.logs():
            with contextlib.suppress(OSError):
                texts.append(log.read_bytes()[sizes.get(log, 0) :].decode(errors="replace"))
        return "\n".join(texts)


@contextlib.contextmanager
def serving(topology: str, work_dir: Path) -> Iterator[Target]:
    """Start the servers of `topology` with throwaway data; stop them all on the way out."""
    from tests.servers import postgres_bin_dir, postgres_cluster, prefect_server
    from tests.topology import topology as production_topology

    if topology == "redis":
        with production_topology(api_servers=2, home=work_dir / "topology") as top:
            target = Target(topology, top.server, top.logs)
            redis = _version(["redis-server", "--version"]).split(" v=")[-1].split()[0]
            target.versions = f"Redis {redis}, 2 API servers behind haproxy"
            yield _with_versions(target, postgres_bin_dir())
    else:
        with postgres_cluster() as pg, prefect_server(pg.url) as server:
            yield _with_versions(Target(topology, server, lambda: [server.log]), postgres_bin_dir())


def _with_versions(target: Target, pg_bin: Path | None) -> Target:
    prefect = target.server.request("GET", "/admin/version")
    pg = _version([str(Path(str(pg_bin)) / "postgres"), "--version"])
    target.versions = ", ".join(v for v in (f"Prefect server {prefect}", pg, target.versions) if v)
    return target


def _version(command: list[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True).stdout.strip()


# --- a driver process: its share of one batch, each run in a thread ---------------------


def drive(args: argparse.Namespace) -> None:
    """Run this driver's seeds at once once the go file exists; write what happened."""
    flow_fn = FLOWS[args.variant]
    seeds = [int(s) for s in args.seeds.split(",")]
    timings = _time_report_calls()
    # warm-up: imports, connections, task registration, outside the batch's tag
    with tags("load-warmup"):
        run_flow(flow_fn, parameters={"seed": -1, "pause": args.pause}, return_type="state")
    for calls in timings.values():
        calls.clear()  # only the batch's runs
    Path(args.ready).touch()
    while not Path(args.go).exists():
        time.sleep(0.02)

    def one(seed: int) -> dict[str, Any]:
        record: dict[str, Any] = {"seed": seed, "started": time.time()}
        began = time.perf_counter()
        try:
            with tags(args.tag):
                state = run_flow(
                    flow_fn, parameters={"seed": seed, "pause": args.pause}, return_type="state"
                )
            record.update(
                flow_run_id=str(state.state_details.flow_run_id),
                state_type=state.type.value,
                state_name=state.name,
            )
        except BaseException as exc:  # the run could not be run to a final state
            record["error"] = f"{type(exc).__name__}: {exc}"[:500]
        record["seconds"] = time.perf_counter() - began
        record["ended"] = time.time()
        return record

    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        records = list(pool.map(one, seeds))
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (EventsWorker, APILogWorker):
        service.drain_all(timeout=120)
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.out).write_text(
        json.dumps({"runs": records, "maxrss_mb": maxrss_mb, "timings": timings})
    )


def _time_report_calls() -> dict[str, list[float]]:
    """Time the call at the end of a resilient run that writes its report to the API
    (`publish_or_keep`), wrapped in the run tracker's module namespace with a timer
    that calls straight through."""
    import prefect_resilience.tracker as tracker_module

    timings: dict[str, list[float]] = {"publish_or_keep": []}
    for name, calls in timings.items():
        original = getattr(tracker_module, name)

        def timed(*a: Any, _original: Any = original, _calls: Any = calls, **k: Any) -> Any:
            began = time.perf_counter()
            try:
                return _original(*a, **k)
            finally:
                _calls.append(time.perf_counter() - began)

        setattr(tracker_module, name, timed)
    return timings


# --- the main process: servers, batches, checks --------------------------------------------


@dataclass
class Batch:
    """One batch of one variant, and what the checks found."""

    variant: str
    seeds: list[int]
    level: str  # batches of one level (a round, or a knee size) are compared
    records: list[dict[str, Any]] = field(default_factory=list)
    wall: float = 0.0
    load_before: float = 0.0
    driver_rss_mb: list[float] = field(default_factory=list)
    server_runs: int = 0
    peak_server: int = 0
    server_seconds: list[float] = field(default_factory=list)
    states: Counter[str] = field(default_factory=Counter)
    reports: int = 0
    step_outcomes: int = 0
    planned_outcomes: int = 0
    task_runs: int = 0
    task_runs_final: int = 0
    messages_dropped: int = 0
    lost_streams: int = 0
    pool_timeouts: int = 0
    reports_inexact: int = 0
    prefect_findings: list[str] = field(default_factory=list)
    planned_task_runs: int = 0
    task_runs_lag: float | None = None
    attempts_unknown: int = 0
    reports_with_unknown: int = 0
    pending_files: int = 0
    journals_left: int = 0
    warnings: Counter[str] = field(default_factory=Counter)
    errors_logged: int = 0
    timings: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def client_seconds(self) -> list[float]:
        return [r["seconds"] for r in self.records]

    def fail(self, message: str) -> None:
        self.failures.append(f"{self.variant}: {message}")

    @property
    def runs(self) -> int:
        return len(self.seeds)

    @property
    def runs_per_minute(self) -> float:
        return self.runs / self.wall * 60 if self.wall else float("nan")

    @property
    def task_runs_missing(self) -> int:
        """Planned task runs Prefect has no final record of."""
        return self.planned_task_runs - self.task_runs_final


def _peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end at t closes before a start at t)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = active = 0
    for _, delta in events:
        active += delta
        peak = max(peak, active)
    return peak


def _read_all(read: Any, page: int = 200) -> list[Any]:
    items: list[Any] = []
    while True:
        chunk = read(limit=page, offset=len(items))
        items += chunk
        if len(chunk) < page:
            return items


def run_batch(
    target: Target,
    variant: str,
    seeds: list[int],
    level: str,
    tag: str,
    args: argparse.Namespace,
    work_dir: Path,
) -> Batch:
    """Start the drivers, release them at once, wait, and collect their records."""
    server = target.server
    batch = Batch(variant, seeds, level)
    directory = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=work_dir))
    log_sizes = target.log_sizes()  # the servers' logs from here on are this batch's
    go = directory / "go"
    shares = [seeds[p :: args.processes] for p in range(args.processes)]
    shares = [share for share in shares if share]
    threads = math.ceil(min(args.concurrency, len(seeds)) / len(shares))
    drivers = []
    for p, share in enumerate(shares):
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "driver",
            "--variant",
            variant,
            "--seeds",
            ",".join(map(str, share)),
            "--tag",
            tag,
            "--threads",
            str(threads),
            "--pause",
            str(args.pause),
            "--ready",
            str(directory / f"ready-{p}"),
            "--go",
            str(go),
            "--out",
            str(directory / f"out-{p}.json"),
        ]
        log = (directory / f"driver-{p}.log").open("wb")
        drivers.append(
            subprocess.Popen(command, env=server.env(), stdout=log, stderr=subprocess.STDOUT)
        )
    deadline = time.monotonic() + 300
    while not all((directory / f"ready-{p}").exists() for p in range(len(shares))):
        if any(d.poll() is not None for d in drivers) or time.monotonic() > deadline:
            _stop(drivers)
            raise RuntimeError(f"a driver did not get ready; logs in {directory}")
        time.sleep(0.1)
    batch.load_before = os.getloadavg()[0]
    go.touch()
    for driver in drivers:
        try:
            driver.wait(timeout=args.batch_timeout)
        except subprocess.TimeoutExpired:
            batch.fail(f"a driver ran over {args.batch_timeout}s and was stopped")
            _stop(drivers)
    for p, driver in enumerate(drivers):
        out = directory / f"out-{p}.json"
        if driver.returncode != 0 or not out.exists():
            batch.fail(f"driver {p} exited {driver.returncode}; log: {directory}/driver-{p}.log")
            continue
        data = json.loads(out.read_text())
        batch.records += data["runs"]
        batch.driver_rss_mb.append(data["maxrss_mb"])
        for name, calls in data["timings"].items():
            batch.timings.setdefault(name, []).extend(calls)
    for p in range(len(shares)):
        text = (directory / f"driver-{p}.log").read_text(errors="replace")
        for line in text.splitlines():
            parts = [part.strip() for part in line.split("|", 2)]
            ours = len(parts) == 3 and parts[2].startswith("prefect.prefect_resilience")
            trouble = any(marker in line for marker in TROUBLE)
            if ours and parts[1] == "ERROR" and not trouble:
                batch.errors_logged += 1  # a termination rule fired (checked against the plan)
            elif trouble or (ours and parts[1] in ("WARNING", "ERROR")):
                batch.warnings[parts[-1][:200]] += 1
    if batch.records:
        batch.wall = max(r["ended"] for r in batch.records) - min(
            r["started"] for r in batch.records
        )
    batch.records.sort(key=lambda r: r["seed"])
    check_batch(server, batch, tag, seeds, args)
    logged = target.logged_since(log_sizes)
    batch.messages_dropped = count_dropped(logged)
    batch.lost_streams = logged.count(LOST_STREAM)
    batch.pool_timeouts = logged.count("QueuePool limit")
    return batch


def _stop(drivers: list[subprocess.Popen[bytes]]) -> None:
    for driver in drivers:
        if driver.poll() is None:
            driver.kill()
            driver.wait()


def check_batch(
    server: Any,
    batch: Batch,
    tag: str,
    seeds: list[int],
    args: argparse.Namespace,
) -> None:
    """Read the batch back from the server and compare every run with its plan."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterType,
        FlowRunFilter,
        FlowRunFilterTags,
    )

    from prefect_resilience.report import REPORT_TYPE, PartialSuccessResult

    plans = {seed: plan(seed) for seed in seeds}
    by_tag = {"tags": {"all_": [tag]}}
    errors = [r for r in batch.records if "error" in r]
    for record in errors[:5]:
        batch.fail(f"seed {record['seed']}: the run raised {record['error']}")
    if len(errors) > 5:
        batch.fail(f"{len(errors) - 5} more runs raised")

    # Prefect records task runs from events: wait until it has all of them in a final
    # state, or until its counts stop moving (events it dropped never arrive)
    batch.planned_task_runs = sum(p.task_runs for p in plans.values())
    final = {"flow_runs": by_tag, "task_runs": {"state": {"type": {"any_": FINAL_STATES}}}}
    started = last_change = time.monotonic()
    counts: tuple[Any, Any] = (None, None)
    while True:
        seen = (
            server.request("POST", "/task_runs/count", {"flow_runs": by_tag}),
            server.request("POST", "/task_runs/count", final),
        )
        now = time.monotonic()
        if seen != counts:
            counts, last_change = seen, now
        if (
            counts[1] >= batch.planned_task_runs
            or now - last_change > args.record_settle
            or now - started > args.record_wait
        ):
            break
        time.sleep(1)
    batch.task_runs, batch.task_runs_final = int(counts[0]), int(counts[1])
    if batch.task_runs_final == batch.planned_task_runs == batch.task_runs:
        batch.task_runs_lag = now - started
    else:
        batch.prefect_findings.append(
            f"{batch.variant}: Prefect recorded {batch.task_runs} of {batch.planned_task_runs}"
            f" task runs, {batch.task_runs_final} in a final state; the counts stopped"
            f" moving {now - last_change:.0f}s before the check ended ({now - started:.0f}s)"
        )
    run_filter = FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]))
    with get_client(sync_client=True) as client:
        flow_runs = _read_all(
            lambda limit, offset: client.read_flow_runs(
                flow_run_filter=run_filter, limit=limit, offset=offset
            )
        )
        artifacts = _read_all(
            lambda limit, offset: client.read_artifacts(
                artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=[REPORT_TYPE])),
                flow_run_filter=run_filter,
                limit=limit,
                offset=offset,
            )
        )
    batch.server_runs = len(flow_runs)
    if batch.server_runs != batch.runs:
        batch.fail(f"{batch.server_runs} flow runs on the server, {batch.runs} launched")
    intervals = [
        (r.start_time.timestamp(), r.end_time.timestamp())
        for r in flow_runs
        if r.start_time and r.end_time
    ]
    batch.peak_server = _peak_overlap(intervals)
    batch.server_seconds = [e - s for s, e in intervals]

    reports: dict[str, list[PartialSuccessResult]] = {}
    for artifact in artifacts:
        reports.setdefault(str(artifact.flow_run_id), []).append(
            PartialSuccessResult.model_validate(artifact.data)
        )
    batch.reports = len(artifacts)
    home_pending = server.home / "prefect-resilience" / "pending"
    ours = {str(r["flow_run_id"]) for r in batch.records if "flow_run_id" in r}
    left = [p for p in home_pending.glob("*") if p.name.split(".")[0] in ours]
    batch.pending_files = sum(not p.name.endswith(".steps.jsonl") for p in left)
    batch.journals_left = len(left) - batch.pending_files
    if batch.pending_files or batch.journals_left:
        batch.fail(
            f"{batch.pending_files} reports kept locally, {batch.journals_left} step journals"
            f" left in {home_pending}"
        )

    seen_seeds = set()
    for run in flow_runs:
        seed = int(run.parameters["seed"])
        seen_seeds.add(seed)
        expected = plans[seed]
        batch.planned_outcomes += expected.reached
        state = run.state
        name = state.name if state else "no state"
        batch.states[name] += 1
        resilient_variant = batch.variant == "resilient"
        want = expected.final if resilient_variant else "Completed"
        want_type = "FAILED" if want == "Failed" else "COMPLETED"
        if state is None or state.type.value != want_type or name != want:
            batch.fail(f"seed {seed}: final state {name}, expected {want}")
        if resilient_variant and not check_report(
            batch, seed, expected, reports.get(str(run.id), [])
        ):
            batch.reports_inexact += 1
    missing = sorted(set(seeds) - seen_seeds)
    if missing:
        batch.fail(f"no flow run on the server for seeds {missing[:10]}")
    if batch.variant == "resilient" and batch.reports != batch.server_runs:
        batch.fail(f"{batch.reports} reports for {batch.server_runs} flow runs")


def check_report(batch: Batch, seed: int, expected: Plan, reports: list[Any]) -> bool:
    """One report per run; its steps, statuses, attempts, status and rule as planned."""
    failures = len(batch.failures)
    if len(reports) != 1:
        batch.fail(f"seed {seed}: {len(reports)} reports")
        if not reports:
            return False
    report = reports[0]
    batch.step_outcomes += len(report.steps)
    if len(report.steps) != expected.reached:
        batch.fail(f"seed {seed}: {len(report.steps)} step outcomes, {expected.reached} planned")
    unknown = 0
    got = []
    for outcome in report.steps:
        status, attempts = outcome.status.value, outcome.attempts
        if attempts is None:
            unknown += 1
            # without Prefect's record of attempts a recovered step reads as succeeded
            status = "recovered?" if status == "succeeded" else status
        got.append((outcome.name, status, attempts))
    batch.attempts_unknown += unknown
    batch.reports_with_unknown += bool(unknown)
    want = sorted(expected.steps)
    matched = _match(sorted(got, key=lambda t: (t[0], t[1].rstrip("?"))), want)
    if not matched:
        batch.fail(f"seed {seed}: steps {sorted(got)} but planned {want}")
    if report.overall_status.value != expected.report_status:
        batch.fail(f"seed {seed}: report {report.overall_status.value}, planned {expected.final}")
    rule = report.health.stopped_by.value if report.health.stopped_by else None
    if rule != expected.rule:
        batch.fail(f"seed {seed}: stopped by {rule}, planned {expected.rule}")
    return len(batch.failures) == failures


def _match(got: list[tuple[str, str, int | None]], want: list[tuple[str, str, int]]) -> bool:
    """Same steps; statuses and attempts equal, except where attempts are unknown."""
    if len(got) != len(want):
        return False
    pool = Counter(want)
    for name, status, attempts in got:
        if attempts is not None:
            candidates = [(name, status, attempts)]
        elif status == "recovered?":
            candidates = [(name, "succeeded", 1), (name, "recovered", RETRIES + 1)]
        else:
            candidates = [(name, status, 1), (name, status, RETRIES + 1)]
        hit = next((c for c in candidates if pool[c] > 0), None)
        if hit is None:
            return False
        pool[hit] -= 1
    return True


# --- reporting -----------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _levels(args: argparse.Namespace) -> Iterator[tuple[str, int, list[str]]]:
    """(level, runs, variants in order): ABBA rounds at --runs, then one pair per knee size."""
    variants = ["plain", "resilient"]
    for r in range(args.rounds):
        yield f"round {r + 1}", args.runs, variants if r % 2 == 0 else variants[::-1]
    for k, runs in enumerate(args.knee):
        yield f"{runs} runs", runs, variants if (args.rounds + k) % 2 == 0 else variants[::-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", choices=["postgres", "redis"], default="postgres")
    parser.add_argument("--runs", type=int, default=200, help="flow runs per batch")
    parser.add_argument(
        "--concurrency", type=int, help="most runs in flight at once (default: all)"
    )
    parser.add_argument("--processes", type=int, default=4, help="driver processes per batch")
    parser.add_argument("--rounds", type=int, default=2, help="batches per variant (ABBA)")
    parser.add_argument(
        "--knee",
        default="",
        help="comma-separated larger batch sizes, one batch per variant each, to find the knee",
    )
    parser.add_argument("--pause", type=float, default=0.1, help="seconds each step sleeps")
    parser.add_argument("--seed", type=int, default=8000, help="base of the per-run seeds")
    parser.add_argument(
        "--record-wait", type=float, default=120, help="most s to wait for Prefect's records"
    )
    parser.add_argument(
        "--record-settle",
        type=float,
        default=30,
        help="stop waiting for Prefect's records once their counts are still for this many s",
    )
    parser.add_argument("--batch-timeout", type=float, default=900)
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    parser.add_argument("--keep", help="keep the drivers' and servers' logs in this directory")
    sub = parser.add_subparsers(dest="command")
    drv = sub.add_parser("driver", help="(internal) run a share of one batch")
    for name in ("variant", "seeds", "tag", "ready", "go", "out"):
        drv.add_argument(f"--{name}", required=True)
    drv.add_argument("--threads", type=int, required=True)
    drv.add_argument("--pause", type=float, required=True)
    args = parser.parse_args()
    if args.command == "driver":
        drive(args)
        return
    # a SIGTERM unwinds like Ctrl-C, so the servers started here are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.concurrency = args.concurrency or max([args.runs, *_sizes(args.knee)])
    args.knee = _sizes(args.knee)

    plans = [plan(args.seed * 1000 + r) for r in range(args.runs)]
    finals = Counter(p.final for p in plans)
    print(f"planned final states per batch of {args.runs}: {dict(finals)}")
    batches: list[Batch] = []
    started = time.monotonic()
    with (
        _work_dir(args.keep) as work_dir,
        serving(args.topology, work_dir) as target,
        target.server.settings(),
    ):
        for level, runs, variants in _levels(args):
            for variant in variants:
                # the same seeds in every batch of a size: each variant sees the same draws
                seeds = [args.seed * 1000 + r for r in range(runs)]
                tag = f"load-{len(batches) + 1}-{variant}"
                batch = run_batch(target, variant, seeds, level, tag, args, work_dir)
                batches.append(batch)
                print(
                    f"batch {len(batches)} {variant} ({level}): {batch.server_runs} runs in"
                    f" {batch.wall:.1f}s, peak {batch.peak_server} at once,"
                    f" {len(batch.failures)} check failures"
                )
    total = time.monotonic() - started
    report(args, target, batches, finals, plans, total)


@contextlib.contextmanager
def _work_dir(keep: str | None) -> Iterator[Path]:
    """The batches' files (drivers' logs, and the topology's servers' logs): kept in `keep`."""
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep)
        return
    with tempfile.TemporaryDirectory(prefix="load-bench-") as work_dir:
        yield Path(work_dir)


def _sizes(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n.strip()]


def load_lines(target: Target, batches: list[Batch]) -> list[str]:
    """One line per resilient batch, its throughput against the plain batch of its level."""
    where = "redis topology" if target.topology == "redis" else "one server on PostgreSQL"
    lines = []
    for b in batches:
        plain = [p for p in batches if p.variant == "plain" and p.level == b.level]
        if b.variant != "resilient" or not plain:
            continue
        lines.append(
            f"load on {where}: {b.runs} runs, {b.messages_dropped} dropped messages,"
            f" {b.task_runs_missing} task runs missing, {b.reports_inexact} reports inexact,"
            f" throughput ratio {b.runs_per_minute / plain[0].runs_per_minute:.2f}"
        )
    return lines


def knee(levels: list[tuple[int, float]]) -> int | None:
    """The batch size after which throughput grew by less than 5%; None: still growing."""
    for (size, rate), (_, next_rate) in zip(levels, levels[1:], strict=False):
        if next_rate < rate * 1.05:
            return size
    return None


def report(
    args: argparse.Namespace,
    target: Target,
    batches: list[Batch],
    finals: Counter[str],
    plans: list[Plan],
    total: float,
) -> None:
    tables = [_batch_table(batches), _report_table(batches), _ratio_table(batches)]
    tables.append(_knee_table(batches))
    titles = ["batches", "resilient batches: reports", "against plain Prefect", "by batch size"]
    for title, (columns, rows) in zip(titles, tables, strict=True):
        if rows:
            show(title, columns, rows)
    lines = load_lines(target, batches)
    failures = [f for b in batches for f in b.failures]
    findings = [f for b in batches for f in b.prefect_findings]
    for line in lines:
        print(line)
    for finding in findings:
        print("PREFECT", finding)
    for failure in failures:
        print("CHECK FAILED", failure)
    warnings = Counter[str]()
    for b in batches:
        warnings.update(b.warnings)
    for line, count in warnings.most_common(10):
        print(f"WARNING x{count}: {line}")
    print(f"total {total:.0f}s; {len(failures)} check failures")
    if not args.no_write:
        body = _docs_body(args, target, batches, finals, plans, tables, lines)
        body += _docs_findings(failures, findings, warnings)
        key, title = (
            ("load-redis", "Load on Prefect's production topology (Redis, 2 API servers)")
            if target.topology == "redis"
            else ("load", "Load: concurrent resilient runs on PostgreSQL")
        )
        write_section(key, title, _command(args), body)
        print(f"wrote docs/benchmarks.md (section {key})")
    if failures:
        sys.exit(1)


Table = tuple[list[str], list[list[str]]]


def _batch_table(batches: list[Batch]) -> Table:
    columns = [
        "batch",
        "variant (level)",
        "runs launched / on server",
        "peak runs at once (server)",
        "wall s",
        "runs/min",
        "task runs/s",
        "median run s (client / server)",
        "final states",
        "task runs recorded (final) / planned",
        "recorded after s",
        "messages dropped (servers' logs)",
        "check failures",
        "load avg before",
    ]
    rows = [
        [
            str(number),
            f"{b.variant} ({b.level})",
            f"{b.runs} / {b.server_runs}",
            str(b.peak_server),
            f"{b.wall:.1f}",
            f"{b.runs_per_minute:.0f}",
            f"{b.task_runs / b.wall:.1f}" if b.wall else "n/a",
            f"{_median(b.client_seconds):.1f} / {_median(b.server_seconds):.1f}",
            ", ".join(f"{k} {v}" for k, v in sorted(b.states.items())),
            f"{b.task_runs} ({b.task_runs_final}) / {b.planned_task_runs}",
            f"{b.task_runs_lag:.1f}" if b.task_runs_lag is not None else "never",
            f"{b.messages_dropped:,}"
            + (f" ({b.lost_streams} streams lost)" * bool(b.lost_streams)),
            str(len(b.failures)),
            f"{b.load_before:.2f}",
        ]
        for number, b in enumerate(batches, 1)
    ]
    return columns, rows


def _report_table(batches: list[Batch]) -> Table:
    columns = [
        "batch",
        "reports / runs",
        "reports inexact",
        "step outcomes / planned",
        "attempts unknown: steps (reports)",
        "report publish s: median / max",
        "terminations logged / planned",
        "package warnings",
    ]
    rows = []
    for number, b in enumerate(batches, 1):
        if b.variant != "resilient":
            continue
        publish = b.timings.get("publish_or_keep", [])
        terminations = sum(plan(s).rule is not None for s in b.seeds)
        rows.append(
            [
                str(number),
                f"{b.reports} / {b.server_runs}",
                str(b.reports_inexact),
                f"{b.step_outcomes} / {b.planned_outcomes}",
                f"{b.attempts_unknown} ({b.reports_with_unknown})",
                f"{_median(publish):.2f} / {max(publish, default=float('nan')):.2f}",
                f"{b.errors_logged} / {terminations}",
                str(sum(b.warnings.values())),
            ]
        )
    return columns, rows


def _ratio_table(batches: list[Batch]) -> Table:
    """Resilient against plain at the --runs size (the rounds), medians over batches."""
    rounds = [b for b in batches if b.level.startswith("round")]
    plain = [b for b in rounds if b.variant == "plain"]
    resilient = [b for b in rounds if b.variant == "resilient"]
    if not plain or not resilient:
        return ["measure", "resilient / plain"], []
    measures: list[tuple[str, Callable[[list[Batch]], float]]] = [
        ("throughput (runs/min)", lambda bs: _median([b.runs_per_minute for b in bs])),
        ("batch wall time", lambda bs: _median([b.wall for b in bs])),
        (
            "median flow run, client (run_flow call)",
            lambda bs: _median([x for b in bs for x in b.client_seconds]),
        ),
        (
            "median flow run, server (start to end time)",
            lambda bs: _median([x for b in bs for x in b.server_seconds]),
        ),
    ]
    rows = [[label, f"{m(resilient) / m(plain):.2f}"] for label, m in measures]
    return ["measure", "resilient / plain"], rows


def _knee_table(batches: list[Batch]) -> Table:
    """Throughput by batch size (all runs started together), plain and resilient."""
    columns = ["runs at once", "plain runs/min", "resilient runs/min", "ratio", "check failures"]
    sizes = sorted({b.runs for b in batches})
    if len(sizes) < 2:
        return columns, []
    rows = []
    for size in sizes:
        rate = {
            v: _median([b.runs_per_minute for b in batches if b.runs == size and b.variant == v])
            for v in ("plain", "resilient")
        }
        failures = sum(len(b.failures) for b in batches if b.runs == size)
        rows.append(
            [
                str(size),
                f"{rate['plain']:.0f}",
                f"{rate['resilient']:.0f}",
                f"{rate['resilient'] / rate['plain']:.2f}",
                str(failures),
            ]
        )
    return columns, rows


def _command(args: argparse.Namespace) -> str:
    command = (
        f"cd bench && ../.venv/bin/python load.py --topology {args.topology} --runs {args.runs}"
        f" --processes {args.processes} --rounds {args.rounds} --pause {args.pause}"
        f" --seed {args.seed}"
    )
    return command + (f" --knee {','.join(map(str, args.knee))}" if args.knee else "")


def _docs_body(
    args: argparse.Namespace,
    target: Target,
    batches: list[Batch],
    finals: Counter[str],
    plans: list[Plan],
    tables: list[Table],
    lines: list[str],
) -> str:
    rss = [x for b in batches for x in b.driver_rss_mb]
    processes = min(args.processes, args.runs)
    where = (
        "Prefect's production topology on localhost (`tests/topology.py`: PostgreSQL; Redis"
        " for messaging, event ordering, lease storage and the docket; two"
        " `prefect server start --no-services` API servers behind haproxy; one"
        " `prefect server services start`)"
        if target.topology == "redis"
        else "`prefect server start` on a throwaway PostgreSQL cluster on localhost"
        " (`tests/servers.py`)"
    )
    rates = [
        (size, _median([b.runs_per_minute for b in batches if b.runs == size]))
        for size in sorted({b.runs for b in batches})
    ]
    found = knee(rates)
    knee_text = (
        f"Throughput stopped growing past {found} runs at once (the next size added less"
        " than 5%): that is the knee on this machine."
        if found
        else "Throughput still grew at the largest size tried: the knee is beyond it."
    )
    (batch_table, report_table, ratio_table, knee_table) = tables
    return f"""{args.runs} flow runs of a {STEPS}-step flow per batch, started together, against
{where}; {target.versions}. {processes} driver processes each run their share of a batch
in threads, one flow run per thread (`prefect.flow_engine.run_flow`, what a worker's
flow-run process runs), released at once after each driver has done one warm-up run.
`peak runs at once` is the most flow runs Running at the same instant by the server's own
start and end times. Plain and resilient batches alternate, ABBA over {args.rounds}
round(s), all with the same seeds, so both see the same injected failures: `resilient`
is the flow as `@resilient_flow`, `plain` the same flow in plain Prefect.

Steps 0-4 and 15-19 are called directly, 5-9 `.submit()`ted, 10-14 are one task
`.map()`ped (`ThreadPoolTaskRunner(max_workers={TASK_RUNNER_WORKERS})`); each sleeps
{args.pause} s. Policies: 0 and 15 `fail_fast`, critical; 4 `partial_success`, critical;
`continue` 1, 5, 8, 16, 19; `partial_success` 2, 6, 9, 18; `graceful_degradation` with a
fallback task 3, 7, 10-14, 17. Workflow policy `max_partial_failures={MAX_PARTIAL_FAILURES}`,
`critical_step_ratio={CRITICAL_STEP_RATIO}`; every step `retries={RETRIES}`, no delay. For
each (run seed, step) a pure function of the seed makes the step fail every attempt
({FAILURES["permanent"]:.0%}), fail its first attempt only ({FAILURES["transient"]:.0%}) or
succeed; a fallback fails with probability {FAILURES["fallback"]:.0%}. From the draws, each
run's steps (name, status, attempts), fallback task runs, termination rule and final state
are worked out beforehand, independently of the package (`plan()` in `load_flows.py`):
per batch of {args.runs} {", ".join(f"{k} {v}" for k, v in sorted(finals.items()))},
{sum(p.reached for p in plans)} step outcomes. The plain flow runs the same steps, calls the
same fallback by hand when a step failed for good, catches every failure, stops where the
resilient run is planned to stop, and ends `Completed`.

Checked after each batch, read back from the server (a mismatch fails the benchmark):
flow runs on the server = runs launched; each final state as planned (plain:
`Completed`); for the resilient flow one report per run, each report's steps, statuses,
attempts, status and termination rule as planned (a report that differs in any of these
is *inexact*); no report kept locally and no step journal left.

Also read, as findings about Prefect rather than checks of the package: how many of the
planned task runs (primary and fallback) Prefect recorded in a final state (the rest are
*missing*), waiting until the counts stop moving for {args.record_settle:.0f} s; and how
many messages the servers' logs say were dropped (the in-memory broker's `Subscription
queue is full, dropping message`; the event services' `dropping N events` after their
write retries; with Redis, `Failed to read from stream` counts streams lost, not messages).

{(chr(10) * 2).join(lines)}

{markdown_table(*batch_table)}

{markdown_table(*report_table) if report_table[1] else ""}

`report publish` is the writing of a report's three artifacts, timed in the drivers by a
wrapper that calls straight through.

Resilient against plain Prefect at {args.runs} runs, same servers, same seeds (medians over
batches and runs); the goal is within 5% (a ratio of at least 0.95 for throughput, at
most 1.05 for times):

{markdown_table(*ratio_table) if ratio_table[1] else "(no plain batch)"}

{markdown_table(*knee_table) if knee_table[1] else ""}

{knee_text if knee_table[1] else ""}

Driver processes peaked at {min(rss, default=0):.0f}-{max(rss, default=0):.0f} MB resident
each. The servers' database pools (SQLAlchemy, Prefect's default 5 + 10 overflow) timed out
{sum(b.pool_timeouts for b in batches)} time(s).
"""


def _docs_findings(failures: list[str], findings: list[str], warnings: Counter[str]) -> str:
    text = f"\nCheck failures: {len(failures)}.\n"
    if failures:
        text += "\n" + "\n".join(f"- {f}" for f in failures[:20]) + "\n"
    if findings:
        text += "\nPrefect's records:\n\n" + "\n".join(f"- {f}" for f in findings) + "\n"
    if warnings:
        text += "\nWarnings about reports or records in the drivers' logs:\n\n" + "\n".join(
            f"- {count} x `{line}`" for line, count in warnings.most_common(8)
        )
    return text


if __name__ == "__main__":
    main()
