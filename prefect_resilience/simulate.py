"""What-if for a policy a person wrote: its predicted effect against the policy in force.

The same model the optimizer's candidates use (`analytics.model`): fitted on
the flow's history once under each policy (a policy's step rules override
what the history shows a step did), then both played with the same random
draws, so the difference is the policies' and not sampling noise. Intervals
come from refitting on the flow runs resampled with replacement (the
bootstrap), as the candidates' do; `n` is the finished flow runs behind them.

What the model cannot say is said, not guessed: PartialSuccess needs per-step
outcomes the model does not play (it plays failures for good, fallbacks and
termination), so its rate is not predicted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from prefect_resilience.analytics._common import FINISHED_STATES, state_types
from prefect_resilience.analytics.candidates import MIN_FLOW_RUNS, resample_runs
from prefect_resilience.analytics.model import Prediction, fit, simulate
from prefect_resilience.policy import WorkflowPolicy

METRICS = {
    "termination_rate": "runs terminated",
    "success_rate": "runs completed (PartialSuccess included)",
    "health": "mean health",
    "wasted_s": "seconds in failed attempts per run",
    "step_seconds": "seconds in the steps per run (run time)",
}


@dataclass(frozen=True)
class Effect:
    """One measure under the policy in force and under the proposed one."""

    metric: str
    now: float
    proposed: float
    change_low: float
    change_high: float
    """The 90% bootstrap interval of proposed - now."""


@dataclass(frozen=True)
class PolicyComparison:
    """The proposed policy's predicted effect, or why there is none."""

    flow_runs: int
    effects: list[Effect]
    reason: str = ""

    def to_text(self, now_name: str, proposed_name: str) -> str:
        if not self.effects:
            return f"no prediction: {self.reason}"
        lines = [
            f"predicted from {self.flow_runs} finished flow runs;"
            f" {now_name} (in force) against {proposed_name}, 90% intervals of the change:",
        ]
        for e in self.effects:
            lines.append(
                f"- {METRICS[e.metric]}: {_show(e.metric, e.now)} -> {_show(e.metric, e.proposed)}"
                f" (change {_show(e.metric, e.proposed - e.now, sign=True)};"
                f" {_show(e.metric, e.change_low, sign=True)} .."
                f" {_show(e.metric, e.change_high, sign=True)})"
            )
        lines.append("- PartialSuccess rate: not predicted (the model does not play it)")
        return "\n".join(lines)


def _show(metric: str, value: float, sign: bool = False) -> str:
    plus = "+" if sign else ""
    if metric.endswith("_rate"):
        return f"{value * 100:{plus}.1f}%"
    return f"{value:{plus}.3g}" + ("s" if metric.endswith(("_s", "seconds")) else "")


def compare_policies(
    task_runs: pd.DataFrame,
    flow_runs: pd.DataFrame,
    reports: pd.DataFrame | None,
    now: WorkflowPolicy,
    proposed: WorkflowPolicy,
    *,
    bootstrap: int = 40,
    runs: int = 2000,
    seed: int = 0,
) -> PolicyComparison:
    """Predict `proposed` against `now` from one flow's history (the frames of `history`)."""
    finished = flow_runs[state_types(flow_runs).isin(FINISHED_STATES).fillna(False).to_numpy(bool)]
    if len(finished) < MIN_FLOW_RUNS:
        return PolicyComparison(
            len(finished),
            [],
            f"{len(finished)} finished flow runs; at least {MIN_FLOW_RUNS} are needed",
        )
    point = _pair(task_runs, finished, reports, now, proposed, runs, seed)
    rng = np.random.default_rng(seed)
    ids = finished["flow_run_id"].to_numpy()
    changes: dict[str, list[float]] = {metric: [] for metric in METRICS}
    for _ in range(bootstrap):
        tasks, flows = resample_runs([task_runs, finished], ids, rng)
        before, after = _pair(tasks, flows, reports, now, proposed, runs, seed)
        for metric in METRICS:
            changes[metric].append(getattr(after, metric) - getattr(before, metric))
    effects = [
        Effect(
            metric,
            float(getattr(point[0], metric)),
            float(getattr(point[1], metric)),
            float(np.quantile(changes[metric], 0.05)),
            float(np.quantile(changes[metric], 0.95)),
        )
        for metric in METRICS
    ]
    return PolicyComparison(len(finished), effects)


def _pair(
    task_runs: pd.DataFrame,
    flow_runs: pd.DataFrame,
    reports: pd.DataFrame | None,
    now: WorkflowPolicy,
    proposed: WorkflowPolicy,
    runs: int,
    seed: int,
) -> tuple[Prediction, Prediction]:
    """Both policies played on the same history with the same draws."""
    before = simulate(fit(task_runs, flow_runs, reports, now), now, runs, seed)
    after = simulate(fit(task_runs, flow_runs, reports, proposed), proposed, runs, seed)
    return before, after
