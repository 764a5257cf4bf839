"""The replay harness's own invariants (bench/replay.py), in its short mode.

The accuracy of the predictions is a benchmark (docs/benchmarks.md), not a test;
what is tested here is what makes that figure worth reading: every run goes
through `python -m prefect.engine` in a process of its own and ends in a final
state, and run i of a candidate sees the same failure draws as run i of the
baseline, so the realised gain is measured run by run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

pytestmark = pytest.mark.timeout(300)


def _attempts(history: Any, step: str) -> dict[int, int]:
    """The step's attempts by the run's index."""
    import replay

    ids = {run_id: index for index, run_id in replay._by_index(history).items()}
    runs = history.task_runs[history.task_runs["task_name"] == step]
    return {ids[r]: int(c) for r, c in zip(runs["flow_run_id"], runs["run_count"], strict=True)}


def test_candidate_runs_see_their_baseline_runs_draws(prefect_server: None) -> None:
    import replay
    from replay_workloads import WORKLOADS_BY_NAME

    from prefect_resilience import WorkflowPolicy
    from prefect_resilience.analytics.candidates import apply_patch

    workload = WORKLOADS_BY_NAME["transient-tolerated"]  # enrich: each attempt fails at 0.4
    policy = WorkflowPolicy(name=workload.name)
    more = apply_patch(policy, {"match": "enrich", "retries": 3})
    runs, seed = 6, 11
    histories = []
    for name, chosen in (("base", policy), ("more", more)):
        variant = {
            "workload": workload.name,
            "flow_name": f"replay-test-{name}",
            "policy": chosen.model_dump(mode="json", exclude_unset=True),
        }
        replay.run_many(variant, f"replay-test:{name}", runs, workers=2, seed=seed)
        histories.append(replay.observed(variant["flow_name"])[1])
    base, after = histories
    assert sorted(replay._by_index(base)) == sorted(replay._by_index(after)) == list(range(runs))
    # the decorator's retries=1 gives 2 attempts; the patch 4; the draws are common:
    # the baseline took a second attempt exactly where the candidate's first failed
    base_attempts, after_attempts = _attempts(base, "enrich"), _attempts(after, "enrich")
    assert set(base_attempts.values()) <= {1, 2} and max(after_attempts.values()) <= 4
    assert base_attempts == {i: min(n, 2) for i, n in after_attempts.items()}

    low, high = replay.paired_interval(base, after, "wasted_s", count=50)
    assert low <= high or (low != low and high != high)  # finite and ordered, or no loss
