"""Dask fan-out: a future passed between tasks must not block, resilient as plain.

One upstream step sleeps `--upstream` seconds; `--fanout` downstream steps each
take its future and sleep `--sleep` seconds, on a local Dask cluster
(`DaskTaskRunner`, 2 workers x 2 threads). Per variant (plain `@task` in a
`@flow`, `@resilient` in a `@resilient_flow`), in interleaved rounds, two times:
how long submitting the downstream steps takes (a future that blocked on
`submit` would make this the upstream's sleep), and the flow's wall time.
Goal (issue 12): resilient within 10% of plain on both.

    python dask_fanout.py [--rounds 3] [--fanout 8] [--upstream 1.0] [--sleep 0.2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from _report import markdown_table, show, write_section
from prefect import flow, task
from prefect.testing.utilities import prefect_test_harness
from prefect_dask import DaskTaskRunner

from prefect_resilience import resilient, resilient_flow

RUNNER = {"cluster_kwargs": {"n_workers": 2, "threads_per_worker": 2, "processes": True}}


def upstream_body(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def downstream_body(value: float, seconds: float) -> float:
    time.sleep(seconds)
    return value + seconds


plain_up = task(upstream_body, name="upstream")
plain_down = task(downstream_body, name="downstream")
resilient_up = resilient(policy="continue", default=0.0, name="upstream")(upstream_body)
resilient_down = resilient(policy="continue", default=0.0, name="downstream")(downstream_body)


def _fan_out(up: Any, down: Any, fanout: int, upstream: float, sleep: float) -> dict[str, float]:
    started = time.perf_counter()
    first = up.submit(upstream)
    downstream = [down.submit(first, sleep) for _ in range(fanout)]
    submitted = time.perf_counter() - started
    values = [f.result() for f in downstream]
    assert values == [upstream + sleep] * fanout, values
    return {"submit": submitted, "wall": time.perf_counter() - started}


@flow(task_runner=DaskTaskRunner(**RUNNER))
def plain_fanout(fanout: int, upstream: float, sleep: float) -> dict[str, float]:
    return _fan_out(plain_up, plain_down, fanout, upstream, sleep)


@resilient_flow(task_runner=DaskTaskRunner(**RUNNER))
def resilient_fanout(fanout: int, upstream: float, sleep: float) -> dict[str, float]:
    return _fan_out(resilient_up, resilient_down, fanout, upstream, sleep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fanout", type=int, default=8)
    parser.add_argument("--upstream", type=float, default=1.0)
    parser.add_argument("--sleep", type=float, default=0.2)
    args = parser.parse_args()
    flows = {"plain": plain_fanout, "resilient": resilient_fanout}
    times: dict[str, dict[str, list[float]]] = {v: {"submit": [], "wall": []} for v in flows}
    with prefect_test_harness(server_startup_timeout=120):
        for round_index in range(args.rounds):
            order = list(flows) if round_index % 2 == 0 else list(reversed(flows))
            for variant in order:
                measured = flows[variant](args.fanout, args.upstream, args.sleep)
                for key, value in measured.items():
                    times[variant][key].append(value)
    median = {v: {k: statistics.median(x) for k, x in t.items()} for v, t in times.items()}
    columns = ["measure", "plain s", "resilient s", "resilient / plain", "goal <= 1.10"]
    rows = []
    for key, label in (("submit", "submitting the fan-out"), ("wall", "flow wall time")):
        plain, res = median["plain"][key], median["resilient"][key]
        if key == "submit":  # tiny times: judged against the upstream sleep a block would cost
            ratio = (res - plain) / args.upstream + 1
            verdict = "met" if ratio <= 1.10 else "MISSED"
            shown = f"{ratio:.3f} (difference / upstream sleep + 1)"
        else:
            ratio = res / plain
            verdict = "met" if ratio <= 1.10 else "MISSED"
            shown = f"{ratio:.3f}"
        rows.append([label, f"{plain:.3f}", f"{res:.3f}", shown, verdict])
    title = (
        f"Dask fan-out: 1 upstream ({args.upstream:g} s) -> {args.fanout} downstream"
        f" ({args.sleep:g} s), medians of {args.rounds} rounds"
    )
    show(title, columns, rows)
    body = (
        f"{title}, on a local Dask cluster (2 worker processes x 2 threads). Submitting"
        " the downstream steps, each given the upstream's future, returns at once for both"
        " variants when futures do not block; a blocking future would cost the upstream's"
        " sleep, so that row compares the difference with the sleep.\n\n"
        + markdown_table(columns, rows)
    )
    command = (
        f"cd bench && ../.venv/bin/python dask_fanout.py --rounds {args.rounds}"
        f" --fanout {args.fanout} --upstream {args.upstream:g} --sleep {args.sleep:g}"
    )
    write_section("dask-fanout", "Dask fan-out: futures passed between tasks", command, body)


if __name__ == "__main__":
    main()
