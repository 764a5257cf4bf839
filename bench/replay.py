"""Replay harness: are the optimization candidates' predictions right?

Each workload is a real resilient Prefect flow whose steps fail by a known
process (transient, persistent, bursty, slow-degrading, dependent, hanging).
For each workload the harness

1. runs the flow `--runs` times under its starting policy (the history),
2. reads that history back from the Prefect API and asks
   `analytics.candidates.propose` for candidates,
3. applies each candidate on its own (policy patches through `apply_patch`;
   the two code changes, parallelisation and fallback, by the flow variant
   that makes them) and runs the flow `--runs` times again,
4. compares each candidate's predicted gain with the gain realised between
   the two sets of real runs, on the candidate's own metric.

It reports the mean absolute percentage error of the predicted gain, the
share of candidates whose realised gain has the predicted sign, calibration
(of candidates at confidence >= 0.8, the share that realised a gain) and the
realised gain of those. Targets from the originating design: prediction error
under 30% (accuracy over 70%), gain of 15% or more where applied.

    python bench/replay.py [--runs 60] [--workers 3] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from _report import markdown_table, show, write_section  # noqa: E402

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")  # failures are the point here
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
T0 = time.monotonic()
TOLERATED = "tolerated"


@dataclass(frozen=True)
class Step:
    """One step of a workload: how it fails, and the decorator settings it starts with."""

    name: str
    process: str = "ok"
    """ok | transient | persistent | burst | degrading | dependent | hang"""
    p: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.01
    uses_previous: bool = True
    """Takes the previous step's result (a task_inputs link); False lets them overlap."""


@dataclass(frozen=True)
class Workload:
    name: str
    steps: tuple[Step, ...]
    workflow: dict[str, Any] = field(default_factory=dict)
    fallback_for: tuple[str, ...] = ()
    """Steps a realised `fallback` candidate may give a (working) fallback task."""


def _fails(step: Step, run_key: str, run_index: int, previous: Any) -> bool:
    """Whether this attempt of `step` fails, by its workload's failure process."""
    from prefect.runtime import task_run

    attempt = task_run.run_count or 1
    draw = random.Random(f"{run_key}:{step.name}:{attempt}").random()
    per_run = random.Random(f"{run_key}:{step.name}").random()
    if step.process == "transient":
        return draw < step.p
    if step.process == "persistent":
        return per_run < step.p
    if step.process == "burst":  # down for the first `p` share of every 1.5 s
        return (time.monotonic() - T0) % 1.5 < 1.5 * step.p
    if step.process == "degrading":  # failure chance rises with the run's index
        return draw < step.p * min(run_index / 40, 2.0)
    if step.process == "dependent":  # fails whenever the step before it was tolerated
        return previous == TOLERATED or draw < step.p
    if step.process == "hang":  # a broken run hangs, then fails
        if per_run < step.p:
            time.sleep(step.seconds * 20)
            return True
        return False
    return False


def _body(step: Step) -> Callable[..., str]:
    """The step's function; `step` is closed over, not a parameter Prefect would record."""

    def body(run_key: str, run_index: int, previous: Any = None) -> str:
        time.sleep(step.seconds)
        if _fails(step, run_key, run_index, previous):
            raise ConnectionError(f"{step.name}: {step.process} failure")
        return "ok"

    return body


def build_flow(
    workload: Workload,
    flow_name: str,
    policy: Any,
    *,
    parallel: frozenset[str] = frozenset(),
    fallbacks: frozenset[str] = frozenset(),
) -> Callable[..., Any]:
    """The workload as a resilient flow; `parallel` steps are submitted, `fallbacks` get one."""
    from prefect import task

    from prefect_resilience import resilient, resilient_flow

    tasks = {}
    for step in workload.steps:
        body = _body(step)
        settings = dict(step.settings)
        if step.name in fallbacks:
            settings["policy"] = "graceful_degradation"
            settings["fallbacks"] = [task(lambda: "fallback", name=f"{step.name}_fallback")]
        settings.setdefault("default", TOLERATED)
        tasks[step.name] = resilient(body, name=step.name, **settings)

    @resilient_flow(policy=policy, name=flow_name)
    def workload_flow(run_key: str, run_index: int) -> None:
        previous: Any = None
        pending = None
        for step in workload.steps:
            call = tasks[step.name]
            given = (previous,) if step.uses_previous else ()
            if step.name in parallel:
                pending = call.submit(run_key, run_index, *given)
                continue
            result = call(run_key, run_index, *given)
            if pending is not None:
                pending.result(raise_on_failure=False)
                pending = None
            previous = result
        if pending is not None:
            pending.result(raise_on_failure=False)

    return workload_flow


WORKLOADS = [
    Workload("transient-critical", (
        Step("extract", "transient", 0.25, {"policy": "fail_fast", "critical": True}),
        Step("transform", "ok"),
        Step("load", "transient", 0.05, {"policy": "continue", "impact": "minor"}),
    )),
    Workload("transient-tolerated", (
        Step("fetch", "ok", settings={"policy": "fail_fast", "critical": True}),
        Step("enrich", "transient", 0.4, {"policy": "continue", "retries": 1}),
        Step("publish", "ok"),
    )),
    Workload("persistent-retried", (
        Step("fetch", "ok", settings={"policy": "fail_fast", "critical": True}),
        Step("score", "persistent", 0.3,
             {"policy": "continue", "retries": 3, "retry_delay": 0.05}, seconds=0.03),
        Step("publish", "ok"),
    )),
    Workload("bursty-outage", (
        Step("fetch", "burst", 0.3,
             {"policy": "fail_fast", "critical": True, "retries": 1, "retry_delay": 0.1}),
        Step("store", "ok"),
    )),
    Workload("slow-degrading", (
        Step("ingest", "ok", settings={"policy": "fail_fast", "critical": True}),
        Step("validate", "degrading", 0.3, {"policy": "fail_fast", "impact": "major"}),
        Step("report", "ok"),
    )),
    Workload("dependent", (
        Step("lookup", "transient", 0.3, {"policy": "continue", "impact": "minor"}),
        Step("join", "dependent", 0.02, {"policy": "continue", "impact": "major"}),
        Step("save", "ok"),
    )),
    Workload("non-critical-fail-fast", (
        Step("prepare", "ok", settings={"policy": "fail_fast", "critical": True}),
        Step("thumbnail", "persistent", 0.25, {"policy": "fail_fast", "impact": "minor"}),
        Step("index", "ok"),
    )),
    Workload("hanging-failures", (
        Step("call_api", "hang", 0.25, {"policy": "continue", "impact": "minor"}, seconds=0.02),
        Step("save", "ok"),
    )),
    Workload("independent-steps", (
        Step("load_users", "ok", seconds=0.15, uses_previous=False),
        Step("load_orders", "ok", seconds=0.15, uses_previous=False),
        Step("merge", "ok"),
    )),
    Workload("mixed", (
        Step("fetch", "transient", 0.2, {"policy": "fail_fast", "critical": True, "retries": 1}),
        Step("enrich", "persistent", 0.2, {"policy": "continue", "retries": 2}),
        Step("notify", "transient", 0.3, {"policy": "partial_success", "impact": "minor"}),
    ), fallback_for=("notify", "enrich")),
    Workload("rare-failures", (
        Step("a", "transient", 0.01, {"policy": "fail_fast", "critical": True}),
        Step("b", "ok"),
    )),
]  # fmt: skip


def run_many(flow: Callable[..., Any], tag: str, runs: int, workers: int) -> None:
    def one(index: int) -> None:
        flow(f"{tag}:{index}", index, return_state=True)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(runs)))


def observed(flow_name: str) -> tuple[dict[str, float], Any]:
    """The candidate metrics as the real runs show them (read back from the Prefect API),
    and the history they come from."""
    from prefect_resilience.analytics.candidates import realised_metrics
    from prefect_resilience.history import load_history

    history = load_history(flow_name, refresh=True)
    return realised_metrics(history.task_runs, history.flow_runs, history.reports), history


def _resampled(history: Any, rng: np.random.Generator) -> dict[str, float]:
    """The metrics of the same number of flow runs drawn with replacement from `history`."""
    from prefect_resilience.analytics.candidates import realised_metrics, resample_runs

    ids = history.flow_runs["flow_run_id"].to_numpy()
    frames = [history.task_runs, history.flow_runs, history.reports]
    return realised_metrics(*resample_runs(frames, ids, rng))


def realised_interval(
    before: Any, after: Any, metric: str, count: int = 200
) -> tuple[float, float]:
    """A 90% bootstrap interval of the realised gain: both sets of runs resampled."""
    rng = np.random.default_rng(0)
    gains = []
    for _ in range(count):
        b, a = _resampled(before, rng), _resampled(after, rng)
        if b.get(metric):
            gains.append((b[metric] - a.get(metric, 0.0)) / b[metric])
    if not gains:
        return float("nan"), float("nan")
    low, high = np.quantile(gains, [0.05, 0.95])
    return float(low), float(high)


def replay(workload: Workload, runs: int, workers: int, tag: str) -> list[dict[str, Any]]:
    from prefect_resilience import WorkflowPolicy
    from prefect_resilience.analytics.candidates import apply_patch, propose
    from prefect_resilience.history import load_history

    policy = WorkflowPolicy(name=workload.name, **workload.workflow)
    base_name = f"{workload.name}-base-{tag}"
    started = time.perf_counter()
    run_many(build_flow(workload, base_name, policy), f"{tag}:base", runs, workers)
    history = load_history(base_name, refresh=True)
    proposal = propose(history.task_runs, history.flow_runs, history.reports, policy)
    before, base_history = observed(base_name)
    rows = []
    for candidate in proposal.candidates:
        name = f"{workload.name}-{candidate.id}-{tag}"
        if candidate.kind == "parallelisation":
            flow = build_flow(workload, name, policy, parallel=_earlier(workload, candidate.step))
        elif candidate.kind == "fallback":
            if candidate.step not in workload.fallback_for:
                rows.append(
                    _row(workload, candidate, before, None, "no fallback task written", None)
                )
                continue
            flow = build_flow(workload, name, policy, fallbacks=frozenset({candidate.step}))
        else:
            flow = build_flow(workload, name, apply_patch(policy, candidate.patch))
        run_many(flow, f"{tag}:{candidate.id}", runs, workers)
        after, after_history = observed(name)
        interval = realised_interval(base_history, after_history, candidate.metric)
        rows.append(_row(workload, candidate, before, after, "", interval))
    if not proposal.candidates:
        rows.append({
            "workload": workload.name, "kind": "-", "step": "-", "metric": "-",
            "predicted": None, "realised": None, "confidence": None,
            "note": "; ".join(proposal.rejected[:3])[:300] or proposal.note,
        })  # fmt: skip
    print(f"{workload.name}: {len(proposal.candidates)} candidates,"
          f" {time.perf_counter() - started:.0f}s", flush=True)  # fmt: skip
    return rows


def _earlier(workload: Workload, step: str) -> frozenset[str]:
    names = [s.name for s in workload.steps]
    return frozenset({names[names.index(step) - 1]})


def _row(workload: Workload, candidate: Any, before: dict[str, float],
         after: dict[str, float] | None, note: str,
         interval: tuple[float, float] | None) -> dict[str, Any]:  # fmt: skip
    metric = candidate.metric
    realised = None
    if after is not None and before.get(metric):
        realised = (before[metric] - after.get(metric, 0.0)) / before[metric]
    low, high = interval or (float("nan"), float("nan"))
    return {
        "workload": workload.name,
        "kind": candidate.kind,
        "step": candidate.step,
        "metric": metric,
        "before": before.get(metric, 0.0),
        "after": None if after is None else after.get(metric, 0.0),
        "predicted": candidate.gain,
        "realised": realised,
        "realised 90%": f"{low:.2f} .. {high:.2f}" if interval else None,
        "inside": (low <= candidate.gain <= high) if interval else None,
        "confidence": candidate.confidence,
        "note": note,
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    measured = pd.DataFrame([r for r in rows if r.get("realised") is not None])
    if measured.empty:
        return {"candidates measured": 0}
    nonzero = measured[measured["realised"].abs() > 1e-9]
    ape = (nonzero["predicted"] - nonzero["realised"]).abs() / nonzero["realised"].abs()
    confident = measured[measured["confidence"] >= 0.8]
    return {
        "candidates measured": len(measured),
        "MAPE of predicted gain": float(ape.mean()) if len(ape) else float("nan"),
        "median APE": float(ape.median()) if len(ape) else float("nan"),
        "prediction accuracy (1 - MAPE)": float(1 - ape.mean()) if len(ape) else float("nan"),
        "sign agreement": float((np.sign(measured["predicted"]) ==
                                 np.sign(measured["realised"])).mean()),
        "predicted gain inside the realised 90% interval": float(
            measured["inside"].astype(bool).mean()),
        "confidence >= 0.8: candidates": len(confident),
        "calibration (share realising a gain)": float((confident["realised"] > 0).mean())
        if len(confident) else float("nan"),
        "confidence >= 0.8: mean realised gain": float(confident["realised"].mean())
        if len(confident) else float("nan"),
        "confidence >= 0.8: share with gain >= 15%": float((confident["realised"] >= 0.15).mean())
        if len(confident) else float("nan"),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="replay-home-"))
    from prefect.testing.utilities import prefect_test_harness

    chosen = [w for w in WORKLOADS if args.only is None or w.name in args.only]
    rows: list[dict[str, Any]] = []
    tag = f"{int(time.time())}"
    started = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=120):
        for workload in chosen:
            rows.extend(replay(workload, args.runs, args.workers, tag))
    elapsed = time.perf_counter() - started
    summary = summarise(rows)
    columns = ["workload", "kind", "step", "metric", "before", "after", "predicted",
               "realised", "realised 90%", "inside", "confidence", "note"]  # fmt: skip
    table = [[str(_fmt(r.get(c))) for c in columns] for r in rows]
    show("Predicted against realised gain, per candidate", columns, table)
    totals = [[k, str(_fmt(v))] for k, v in summary.items()]
    accuracy = summary.get("prediction accuracy (1 - MAPE)")
    gain = summary.get("confidence >= 0.8: mean realised gain")
    calibration = summary.get("calibration (share realising a gain)")
    targets = [
        ["prediction accuracy > 70% (MAPE < 30%)", str(_fmt(accuracy)),
         _verdict(accuracy, lambda v: v > 0.70)],
        ["gain >= 15% where applied (confidence >= 0.8)", str(_fmt(gain)),
         _verdict(gain, lambda v: v >= 0.15)],
        ["confidence >= 0.8 realises a gain >= 80% of the time", str(_fmt(calibration)),
         _verdict(calibration, lambda v: v >= 0.8)],
    ]  # fmt: skip
    show("Summary", ["measure", "value"], totals)
    show("Targets", ["target", "measured", "verdict"], targets)
    if args.no_write:
        return
    command = "python bench/replay.py " + " ".join(sys.argv[1:])
    text = (
        f"{len(chosen)} workloads, {args.runs} real flow runs per phase on Prefect's test"
        f" server (SQLite), {args.workers} at a time; {elapsed:.0f} s in all. Gains are"
        " relative improvements of each candidate's own metric; realised = between the"
        " baseline runs and the runs with the candidate applied; its 90% interval"
        " resamples both sets of runs (sampling noise at this many runs; it has no width"
        " where no run of a set lost anything, so a predicted 90% against a realised 100%"
        " with no failure left counts as outside)."
        ' "inside": the predicted gain lies in that interval.\n\n'
        + markdown_table(columns, table)
        + "\n\n"
        + markdown_table(["measure", "value"], totals)
        + "\n\n"
        + markdown_table(["target", "measured", "verdict"], targets)
    )
    write_section(
        "replay", "Optimization candidates: predicted against realised (replay)", command, text
    )


def _verdict(value: Any, ok: Callable[[float], bool]) -> str:
    if value is None or value != value:
        return "not measured"
    return "met" if ok(value) else "MISSED"


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.3g}"
    return "-" if value is None else value


if __name__ == "__main__":
    main()
