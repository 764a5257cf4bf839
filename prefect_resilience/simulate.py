"""What-if for a policy a person wrote: its predicted effect against the policy in force.

The same model the optimizer's candidates use (`analytics.model`): fitted on
the flow's history once under each policy (a policy's step rules override
what the history shows a step did), then both played with the same random
draws, so the difference is the policies' and not sampling noise. Intervals
come from refitting on the flow runs resampled with replacement (the
bootstrap), as the candidates' do; `n` is the finished flow runs behind them.

What the model cannot say is said, not guessed: PartialSuccess needs per-step
outcomes the model does not play (it plays failures for good, fallbacks and
termination), so its rate is not predicted. And where the proposed policy
gives a step more attempts than its history ever made, whether those attempts
succeed is unknown (a failure may be persistent): the prediction takes them
to succeed as often as the last attempt seen, and each interval is stretched
to also hold the case where they never succeed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from prefect_resilience.analytics._common import FINISHED_STATES, state_types
from prefect_resilience.analytics.candidates import MIN_FLOW_RUNS
from prefect_resilience.analytics.evidence import resample_runs
from prefect_resilience.analytics.model import Prediction, WorkflowModel, fit, simulate
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
    unseen: list[str] = field(default_factory=list)
    """Steps the proposed policy gives more attempts than history shows, as 'step (k)'."""

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
        if self.unseen:
            lines.append(
                f"- never tried in this history: attempts beyond {', '.join(self.unseen)};"
                " predicted as succeeding as often as the last attempt seen, and each interval"
                " also holds the case where they never succeed (a persistent failure)"
            )
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
    models = _fit_pair(task_runs, finished, reports, now, proposed)
    point = _play(models, now, proposed, runs, seed)
    unseen = [f"{s.name} ({len(s.reached)})" for s in models[1].steps if s.unseen_attempts]
    worst = (
        _play([_unseen_attempts_fail(m) for m in models], now, proposed, runs, seed)
        if unseen
        else point
    )
    rng = np.random.default_rng(seed)
    ids = finished["flow_run_id"].to_numpy()
    changes: dict[str, list[float]] = {metric: [] for metric in METRICS}
    for _ in range(bootstrap):
        tasks, flows = resample_runs([task_runs, finished], ids, rng)
        refitted = _fit_pair(tasks, flows, reports, now, proposed)
        before, after = _play(refitted, now, proposed, runs, seed)
        for metric in METRICS:
            changes[metric].append(getattr(after, metric) - getattr(before, metric))
    effects = []
    for metric in METRICS:
        other = float(getattr(worst[1], metric) - getattr(worst[0], metric))
        low, high = np.quantile(changes[metric], [0.05, 0.95])
        effects.append(
            Effect(
                metric,
                float(getattr(point[0], metric)),
                float(getattr(point[1], metric)),
                min(float(low), other),
                max(float(high), other),
            )
        )
    return PolicyComparison(len(finished), effects, unseen=unseen)


def _unseen_attempts_fail(model: WorkflowModel) -> WorkflowModel:
    """The model with every attempt beyond those its history shows failing."""
    steps = []
    for s in model.steps:
        extra = s.unseen_attempts
        if extra:
            s = replace(s, reached=s.reached + (1,) * extra, succeeded=s.succeeded + (0,) * extra)
            if s.depends_on is not None:
                s = replace(
                    s,
                    reached_if_down=s.reached_if_down + (1,) * extra,
                    succeeded_if_down=s.succeeded_if_down + (0,) * extra,
                )
        steps.append(s)
    return replace(model, steps=tuple(steps))


def _fit_pair(
    task_runs: pd.DataFrame,
    flow_runs: pd.DataFrame,
    reports: pd.DataFrame | None,
    now: WorkflowPolicy,
    proposed: WorkflowPolicy,
) -> list[WorkflowModel]:
    """The history's model under each policy (a policy's rules override what it shows)."""
    return [fit(task_runs, flow_runs, reports, policy) for policy in (now, proposed)]


def _play(
    models: list[WorkflowModel],
    now: WorkflowPolicy,
    proposed: WorkflowPolicy,
    runs: int,
    seed: int,
) -> tuple[Prediction, Prediction]:
    """Both models played under their policies with the same draws."""
    return simulate(models[0], now, runs, seed), simulate(models[1], proposed, runs, seed)
