"""Optimization candidates: concrete policy or code changes, each with a measured prediction.

`propose` fits `model.WorkflowModel` to a flow's history and tries, per step,
the changes below; each is predicted by simulating the workflow under the
current policy and under the changed one with the same random draws.

- retry_tuning: more retries where retries recover failures.
- retry_removal: no retries where retries never recovered anything.
- backoff_tuning: the retries and backoff the retry model learns where retries
  after longer waits recovered more often (an outage that ends).
- policy_relaxation: `continue` for a non-critical `fail_fast` step whose
  failures stop runs.
- fallback: `graceful_degradation` with a fallback task for a tolerated step
  that keeps failing (needs code: the fallback task).
- timeout: a per-attempt timeout where failed attempts hang far beyond a
  successful one.
- parallelisation: two steps that always ran one after the other with no data
  passing between them (from `task_inputs`), submitted together instead.

Definitions (docs/optimization.md has them with reasons):

- gain: the relative improvement of the candidate's metric (failed-run rate,
  seconds lost in failed attempts, run duration, or health loss).
- benefit and cost, in compute seconds per 100 runs: a failed run costs one
  re-run of mean duration; seconds saved count as benefit, seconds added as
  cost, plus one mean run duration to verify the change. ROI = benefit / cost.
- confidence: the share of bootstrap replicates (flow runs resampled, the model
  refitted, the change predicted again) in which the change improves its
  metric by more than the model's own error: its backtest error on held-out
  runs beyond what sampling noise of those runs explains (for failed-run
  rates). It is a share of resamples, so it reflects sample sizes and interval
  widths; no constant stands in for it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from prefect_resilience.policy import FailureImpact, FailurePolicy, StepPolicy, WorkflowPolicy

from ._common import FAILED_STATES, FINISHED_STATES, durations, state_types, utc
from .evidence import backtest_error, measurement_noise, resample_runs
from .model import Prediction, StepModel, WorkflowModel, fit, simulate
from .retry_choice import choose_retries
from .retry_model import fit_retry_models

MIN_FLOW_RUNS = 20
"""Fewer finished flow runs than this support no claim at all."""
MIN_RETRY_EVIDENCE = 10
"""Runs that reached a retry needed before saying retries never help."""
MIN_FAILURE_RATE = 0.02
"""A step failing for good less often than this is not worth a change."""
VIABLE_CONFIDENCE = 0.5
"""A candidate below this confidence is reported as rejected, with its figures."""
TELL_Z = 1.645
"""A predicted change must exceed this many standard errors of the difference that
as many runs after the change as history has before could measure (one-sided 95%)."""
MAX_RETRIES = 10
BACKOFF_EXTRA_S = 60.0
"""A learned backoff may make a step's worst case this much longer than its schedule now."""


@dataclass(frozen=True)
class Candidate:
    """One proposed change, its predicted effect, ROI, confidence and evidence."""

    id: str
    kind: str
    step: str
    summary: str
    metric: str
    """failure_rate (of flow runs), lost:<step> (share of runs in which the step's own work
    failed for good), wasted_s, duration_s or health_loss (1 - health)."""
    before: dict[str, float]
    after: dict[str, float]
    gain: float
    """Predicted relative improvement of `metric`: (before - after) / before."""
    gain_interval: tuple[float, float]
    benefit_s: float
    cost_s: float
    roi: float
    confidence: float
    patch: dict[str, Any] | None = None
    """A step rule to merge into the workflow policy's step_policies (None: code change)."""
    code_change: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def applicable(self) -> bool:
        """Whether the change is a policy patch that `optimize --apply` can write."""
        return self.patch is not None and self.code_change is None

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=_plain))


@dataclass(frozen=True)
class Proposal:
    """The candidates for one flow, the ones rejected and why, and the model's own error."""

    flow_name: str | None
    flow_runs: int
    candidates: list[Candidate]
    rejected: list[str]
    backtest_error: float | None
    """|predicted - observed| failed-run rate on the latest third of runs, fitted on the rest."""
    backtest_noise: float | None = None
    """One standard error of the observed rate on that third: what sampling alone explains."""
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=_plain))


def _plain(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return str(value)


@dataclass(frozen=True)
class _Change:
    kind: str
    step: str
    summary: str
    metric: str
    patch: dict[str, Any] | None = None
    code_change: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


def propose(
    task_runs: pd.DataFrame,
    flow_runs: pd.DataFrame,
    reports: pd.DataFrame | None = None,
    policy: WorkflowPolicy | None = None,
    *,
    limit: int = 5,
    bootstrap: int = 40,
    runs: int = 2000,
    seed: int = 0,
) -> Proposal:
    """The best `limit` viable candidates for one flow's history, best ROI first.

    `policy` is the workflow policy in force (the block's); patches are
    relative to it. Fewer than `MIN_FLOW_RUNS` finished flow runs give no
    candidate, and the proposal says so.
    """
    policy = policy or WorkflowPolicy()
    model = fit(task_runs, flow_runs, reports, policy)
    if model.flow_runs < MIN_FLOW_RUNS:
        return Proposal(
            model.flow_name,
            model.flow_runs,
            [],
            [],
            None,
            note=f"{model.flow_runs} finished flow runs; at least {MIN_FLOW_RUNS} are needed"
            " before any change can be predicted",
        )
    error, noise = backtest_error(task_runs, flow_runs, reports, policy, runs=runs, seed=seed)
    floor = max(0.0, error - noise) if error is not None and noise is not None else 0.0
    rejected = list(model.skipped)
    changes = [
        *_policy_changes(model, rejected),
        *_backoffs(task_runs, model, rejected),
        *_timeouts(task_runs, model, rejected),
        *_parallel_pairs(task_runs, model),
    ]
    replicates = _replicates(task_runs, flow_runs, reports, policy, bootstrap, seed)
    spread = measurement_noise(task_runs, flow_runs, reports, bootstrap, seed)
    scored = []
    for change in changes:
        candidate = _score(change, model, policy, replicates, floor, runs, seed)
        if candidate.gain <= 0:
            rejected.append(
                f"{change.kind} {change.step}: predicted no gain ({candidate.gain:+.1%})"
            )
        elif candidate.confidence < VIABLE_CONFIDENCE:
            rejected.append(
                f"{change.kind} {change.step}: confidence {candidate.confidence:.2f} is under"
                f" {VIABLE_CONFIDENCE} (predicted gain {candidate.gain:+.1%})"
            )
        elif (held := _held_back(candidate, spread, model.flow_runs)) is not None:
            rejected.append(held)
        else:
            scored.append(candidate)
    scored.sort(key=lambda c: (-c.roi, -c.confidence, c.id))
    note = ""
    if len(scored) < 3:
        note = (
            f"{len(scored)} viable candidate(s): the history supports no more"
            " (see rejected for each change that was tried and why it was not kept)"
        )
    rejected.append(
        "caching: not proposed; Prefect keeps no task parameter values in its history, so"
        " repeated identical inputs cannot be seen"
    )
    return Proposal(model.flow_name, model.flow_runs, scored[:limit], rejected, error, noise, note)


# --- the changes tried -------------------------------------------------------------------


def _policy_changes(model: WorkflowModel, rejected: list[str]) -> Iterable[_Change]:
    for step in model.steps:
        now = step.step
        failing = step.failure_rate()
        if failing < MIN_FAILURE_RATE:
            continue
        evidence = _attempt_evidence(step)
        recovered_later = sum(step.succeeded[1:])
        if recovered_later == 0 and step.retry_evidence >= MIN_RETRY_EVIDENCE:
            if now.retries:
                yield _Change(
                    "retry_removal",
                    step.name,
                    f"drop the {now.retries} retries of {step.name}: in"
                    f" {step.retry_evidence} runs that retried, no retry ever succeeded",
                    "wasted_s",
                    patch={"match": step.name, "retries": 0},
                    evidence=evidence,
                )
        elif step.retry_evidence == 0:
            rejected.append(
                f"retry_tuning {step.name}: never retried in this history, so whether a retry"
                " would succeed cannot be estimated (failures may be persistent); set"
                f" retries: 1 on {step.name} for a while to measure it"
            )
        else:
            retries = _retries_wanted(step)
            if retries > now.retry_count:
                extrapolated = retries + 1 > len(step.reached)
                fail_fast = now.policy is FailurePolicy.FAIL_FAST
                yield _Change(
                    "retry_tuning",
                    step.name,
                    f"raise the retries of {step.name} from {now.retries} to {retries}",
                    "failure_rate" if fail_fast else f"lost:{step.name}",
                    patch={"match": step.name, "retries": retries},
                    evidence={
                        **evidence,
                        "assumption": "attempts beyond those seen succeed as often as the"
                        " last one seen"
                        if extrapolated
                        else None,
                    },
                )
        if (
            now.policy is FailurePolicy.FAIL_FAST
            and not now.critical
            and now.impact is not FailureImpact.CRITICAL
        ):
            yield _Change(
                "policy_relaxation",
                step.name,
                f"let runs continue when {step.name} fails (it is not critical but fail_fast"
                f" stops the run in {failing:.1%} of its runs)",
                "failure_rate",
                patch={"match": step.name, "policy": "continue"},
                evidence=evidence,
            )
        if now.policy in (FailurePolicy.CONTINUE, FailurePolicy.PARTIAL_SUCCESS):
            yield _Change(
                "fallback",
                step.name,
                f"give {step.name} a fallback task under graceful_degradation: it fails for"
                f" good in {failing:.1%} of its runs; the prediction is an upper bound (the"
                " fallback always succeeds)",
                "health_loss",
                patch={"match": step.name, "policy": "graceful_degradation"},
                code_change=f"write a fallback task for {step.name} and pass it in"
                f" @resilient(fallbacks=[...]) on {step.name}",
                evidence=evidence,
            )
    if not model.steps:
        rejected.append("no step has enough finished runs with a recorded policy to model")


def _retries_wanted(step: StepModel) -> int:
    """The fewest retries that get 90% of what up to MAX_RETRIES could recover."""
    now = step.step.retry_count
    best = step.failure_rate(MAX_RETRIES)
    reachable = step.failure_rate(now) - best
    if reachable <= 0:
        return now
    for retries in range(now + 1, MAX_RETRIES + 1):
        if step.failure_rate(now) - step.failure_rate(retries) >= 0.9 * reachable:
            return retries
    return MAX_RETRIES


def _attempt_evidence(step: StepModel) -> dict[str, Any]:
    return {
        "task_runs": step.runs,
        "attempts": [
            {"attempt": k, "reached": n, "succeeded": s}
            for k, (n, s) in enumerate(zip(step.reached, step.succeeded, strict=True), 1)
        ],
        "failure_rate": step.failure_rate(),
        "policy": step.step.policy.value,
        "retries": step.step.retries,
    }


def _backoffs(
    task_runs: pd.DataFrame, model: WorkflowModel, rejected: list[str]
) -> Iterable[_Change]:
    """A learned backoff where retries after longer waits recovered more often.

    Only where the history holds retries after different waits and their
    success differs significantly (`retry_model.DelayEvidence.matters`); the
    schedule's worst case may take at most `BACKOFF_EXTRA_S` more than now.
    """
    retried = [s for s in model.steps if s.step.retries and s.retry_evidence]
    if not retried:
        return
    models = fit_retry_models(task_runs, steps=[s.name for s in retried])
    for step in retried:
        fitted = models.get(step.name)
        if fitted is None:
            continue
        if not fitted.delay.matters:
            rejected.append(f"backoff_tuning {step.name}: {fitted.delay.reason}")
            continue
        now = step.step.retry_delays()
        budget = (step.step.retry_count + 1) * step.attempt_s + sum(now) + BACKOFF_EXTRA_S
        choice = choose_retries(fitted, step.attempt_s, budget, bounds=(0, MAX_RETRIES))
        learned = choice.learned
        if learned is None or learned.backoff is None:
            rejected.append(f"backoff_tuning {step.name}: {choice.reason}")
            continue
        backoff = {k: round(v, 3) for k, v in learned.backoff.items()}
        yield _Change(
            "backoff_tuning",
            step.name,
            f"retry {step.name} {learned.retries} times with backoff {backoff}: retries after"
            f" longer waits recovered more often ({fitted.delay.reason})",
            "failure_rate" if step.step.policy is FailurePolicy.FAIL_FAST else f"lost:{step.name}",
            patch={"match": step.name, "retries": learned.retries, "backoff": backoff},
            evidence={
                **_attempt_evidence(step),
                "predicted_step_success": learned.predicted_success,
                "predicted_step_success_interval": [
                    learned.predicted_success_low,
                    learned.predicted_success_high,
                ],
                "recovery_basis": learned.basis,
            },
        )


def _timeouts(
    task_runs: pd.DataFrame, model: WorkflowModel, rejected: list[str]
) -> Iterable[_Change]:
    """A timeout where failed attempts run far longer than successful ones ever do."""
    runs = _finished(task_runs)
    per_attempt = durations(runs) / pd.to_numeric(runs["run_count"]).clip(lower=1)
    failed = state_types(runs).isin(FAILED_STATES).to_numpy(bool)
    for step in model.steps:
        mine = (runs["task_name"] == step.name).to_numpy(bool)
        good, bad = per_attempt[mine & ~failed].dropna(), per_attempt[mine & failed].dropna()
        if len(good) < MIN_RETRY_EVIDENCE or len(bad) < 3:
            continue
        limit = float(good.quantile(0.99)) * 1.5
        slow = bad[bad > limit]
        if len(slow) < 3:
            continue
        yield _Change(
            "timeout",
            step.name,
            f"time out each attempt of {step.name} after {limit:.3g}s: successful attempts"
            f" take at most {good.max():.3g}s, while {len(slow)} failed ones ran longer. It saves"
            " time only where Prefect can interrupt the attempt (an async task, or a sync one"
            " called directly in the flow's main thread); a sync task in a worker thread is"
            " marked TimedOut but runs on",
            "wasted_s",
            patch={"match": step.name, "timeout": round(limit, 3)},
            evidence={
                "successful_attempts": len(good),
                "p99_successful_s": float(good.quantile(0.99)),
                "failed_attempts": len(bad),
                "failed_attempts_over_limit": len(slow),
                "seconds_over_limit": float((slow - limit).sum()),
            },
        )


def _parallel_pairs(task_runs: pd.DataFrame, model: WorkflowModel) -> Iterable[_Change]:
    """Neighbouring steps that ran one after the other though neither used the other's result."""
    runs = _finished(task_runs)
    start, end = utc(runs["start_time"]), utc(runs["end_time"])
    frame = pd.DataFrame(
        {
            "flow": runs["flow_run_id"],
            "name": runs["task_name"],
            "id": runs["task_run_id"].astype(str),
            "start": start,
            "end": end,
            "up": runs["upstream"],
        }
    )
    for first, second in zip(model.steps, model.steps[1:], strict=False):
        if first.per_run != 1 or second.per_run != 1:
            continue
        a = frame[frame["name"] == first.name].set_index("flow")
        b = frame[frame["name"] == second.name].set_index("flow")
        both = a.join(b, lsuffix="_a", rsuffix="_b", how="inner").dropna(
            subset=["start_a", "end_a", "start_b", "end_b"]
        )
        if len(both) < MIN_FLOW_RUNS:
            continue
        sequential = (both["start_b"] >= both["end_a"]).mean()
        linked = sum(
            str(i) in {str(u) for u in (up if isinstance(up, list | tuple) else [])}
            for i, up in zip(both["id_a"], both["up_b"], strict=True)
        )
        if sequential < 0.95 or linked:
            continue
        overlap = np.minimum(
            (both["end_a"] - both["start_a"]).dt.total_seconds(),
            (both["end_b"] - both["start_b"]).dt.total_seconds(),
        )
        yield _Change(
            "parallelisation",
            second.name,
            f"submit {first.name} and {second.name} together: in {len(both)} runs"
            f" {second.name} always waited for {first.name} but never used its result",
            "duration_s",
            code_change=f"in the flow, call {first.name}.submit(...) and"
            f" {second.name}.submit(...) before waiting on either future (neither takes the"
            " other's result: no task_inputs link between them in any run)",
            evidence={
                "runs_together": len(both),
                "sequential_share": float(sequential),
                "mean_overlap_s": float(overlap.mean()),
                "saving_s": overlap.to_list(),
            },
        )


def _finished(task_runs: pd.DataFrame) -> pd.DataFrame:
    keep = state_types(task_runs).isin(FINISHED_STATES - {"CANCELLED"}).fillna(False)
    return task_runs[keep.to_numpy(bool)]


# --- prediction, ROI and confidence ----------------------------------------------------


def _replicates(
    task_runs: pd.DataFrame,
    flow_runs: pd.DataFrame,
    reports: pd.DataFrame | None,
    policy: WorkflowPolicy,
    count: int,
    seed: int,
) -> list[WorkflowModel]:
    """Models refitted on flow runs resampled with replacement (the bootstrap)."""
    rng = np.random.default_rng(seed)
    finished = flow_runs[state_types(flow_runs).isin(FINISHED_STATES).fillna(False).to_numpy(bool)]
    ids = finished["flow_run_id"].to_numpy()
    models = []
    for _ in range(count):
        tasks, flows = resample_runs([task_runs, finished], ids, rng)
        models.append(fit(tasks, flows, reports, policy))
    return models


def _score(
    change: _Change,
    model: WorkflowModel,
    policy: WorkflowPolicy,
    replicates: list[WorkflowModel],
    error: float,
    runs: int,
    seed: int,
) -> Candidate:
    """Predict the change on the model and on every bootstrap replicate that has its step."""
    evidence = dict(change.evidence)
    if change.kind == "parallelisation":
        savings = np.asarray(evidence.pop("saving_s"), dtype=float)
        before = {"duration_s": model.duration_s}
        after = {"duration_s": model.duration_s - float(savings.mean())}
        rng = np.random.default_rng(seed)
        means = np.array([rng.choice(savings, len(savings)).mean() for _ in replicates])
        deltas, gains = means, means / model.duration_s
        floor = 0.0
    else:
        effect = _effect(change, policy, runs, seed, model)
        before, after = effect(model)
        pairs = [effect(m) for m in replicates if _models_step(m, change.step)]
        deltas = np.array([b[change.metric] - a[change.metric] for b, a in pairs])
        gains = np.array([_gain(change.metric, b, a) for b, a in pairs])
        floor = error if change.metric == "failure_rate" else 0.0
    confidence = float(np.mean(deltas > floor)) if len(deltas) else 0.0
    low, high = np.nanquantile(gains, [0.05, 0.95]) if len(gains) else (np.nan, np.nan)
    benefit, cost = _benefit_cost(model, before, after)
    evidence = {k: v for k, v in evidence.items() if v is not None}
    return Candidate(
        id=_candidate_id(change),
        kind=change.kind,
        step=change.step,
        summary=change.summary,
        metric=change.metric,
        before=before,
        after=after,
        gain=_gain(change.metric, before, after),
        gain_interval=(float(low), float(high)),
        benefit_s=benefit,
        cost_s=cost,
        roi=benefit / cost if cost > 0 else float("inf"),
        confidence=confidence,
        patch=change.patch,
        code_change=change.code_change,
        evidence={
            **evidence,
            "flow_runs": model.flow_runs,
            "bootstrap_replicates": len(deltas),
            "confidence_floor": floor,
        },
    )


def _held_back(candidate: Candidate, noise: dict[str, float], runs: int) -> str | None:
    """Why a candidate is held back, or None: its effect must stand out from noise.

    Two tests. Its predicted 90% interval must exclude no gain, and the change
    it predicts in its metric must exceed `TELL_Z` standard errors of what as
    many runs again as history holds could measure (the noise of `runs` runs
    before and `runs` after). The reason names the runs that would be enough.
    """
    low, high = candidate.gain_interval
    delta = candidate.before[candidate.metric] - candidate.after[candidate.metric]
    spread = noise.get(candidate.metric, float("nan")) * np.sqrt(2)
    said = f"{candidate.kind} {candidate.step}: held back, predicted gain {candidate.gain:+.1%}"
    if np.isfinite(low) and low <= 0:
        needed = runs * ((high - low) / 2 / candidate.gain) ** 2
        return (
            f"{said}, but its 90% interval ({low:+.1%} .. {high:+.1%}) includes no gain at"
            f" {runs} runs; about {int(np.ceil(needed))} runs would tell it from noise"
        )
    if np.isfinite(spread) and delta > 0 and delta <= TELL_Z * spread:
        needed = runs * (TELL_Z * spread / delta) ** 2
        return (
            f"{said}, but a change of {delta:.3g} in {candidate.metric} is within the noise of"
            f" {runs} runs before and {runs} after (standard error {spread:.3g}); about"
            f" {int(np.ceil(needed))} runs each would tell it"
        )
    return None


def _models_step(model: WorkflowModel, name: str) -> bool:
    return any(s.name == name for s in model.steps)


def _effect(
    change: _Change, policy: WorkflowPolicy, runs: int, seed: int, base_model: WorkflowModel
) -> Callable[[WorkflowModel], tuple[dict[str, float], dict[str, float]]]:
    """The metrics of a model as it is and with the change, from the same random draws."""
    patch = {k: v for k, v in (change.patch or {}).items() if k != "match"}
    rng = np.random.default_rng(seed)

    def draw(model: WorkflowModel) -> float:
        """The step's success under the learned backoff: the point estimate for the model
        itself, a draw from its interval for each bootstrap replicate."""
        point = change.evidence["predicted_step_success"]
        if model is base_model:
            return point
        low, high = change.evidence["predicted_step_success_interval"]
        return float(np.clip(rng.normal(point, max(high - low, 0.0) / 3.92), 0.0, 1.0))

    def effect(model: WorkflowModel) -> tuple[dict[str, float], dict[str, float]]:
        changed = model.with_step(change.step, step=model.step(change.step).step.merged(patch))
        if change.kind == "fallback":  # the upper bound: the fallback always carries the step
            changed = changed.with_step(change.step, fallback_rescue=1.0)
        if change.kind == "timeout":
            changed = _with_timeout(changed, change)
        if change.kind == "backoff_tuning":
            changed = _with_success(changed, change, draw(model))
        base = simulate(model, policy, runs, seed)
        return _metrics(model, base, base), _metrics(
            model, base, simulate(changed, policy, runs, seed)
        )

    return effect


def _with_success(model: WorkflowModel, change: _Change, success: float) -> WorkflowModel:
    """The step with attempts that reach `success` over its new retries.

    Its first attempt keeps the hazard history shows; each retry gets the same
    hazard, chosen so that all its attempts together succeed with `success`
    (the retry model's prediction under the learned backoff).
    """
    step = model.step(change.step)
    tries = step.step.retry_count + 1
    first = step.hazard(1)
    left = (1 - success) / (1 - first) if first < 1 else 0.0
    later = 1 - min(max(left, 0.0), 1.0) ** (1 / max(tries - 1, 1)) if tries > 1 else 0.0
    scale = 1_000_000  # counts standing for exact hazards
    reached = tuple([scale] * tries)
    succeeded = (round(first * scale), *[round(later * scale)] * (tries - 1))
    return model.with_step(change.step, reached=reached, succeeded=succeeded)


def _with_timeout(model: WorkflowModel, change: _Change) -> WorkflowModel:
    """Failed attempts cut at the limit: the seconds they ran over it are no longer spent."""
    step = model.step(change.step)
    saved = change.evidence["seconds_over_limit"] / max(change.evidence["failed_attempts"], 1)
    return model.with_step(change.step, failed_attempt_s=max(step.failed_s - saved, 0.0))


def _metrics(model: WorkflowModel, base: Prediction, p: Prediction) -> dict[str, float]:
    """The candidate metrics; a run's duration moves by what the modelled steps gain or lose."""
    return {
        "failure_rate": 1 - p.success_rate,
        "termination_rate": p.termination_rate,
        "health_loss": 1 - p.health,
        "wasted_s": p.wasted_s,
        "step_seconds": p.step_seconds,
        "duration_s": model.duration_s + p.step_seconds - base.step_seconds,
        **{f"lost:{name}": share for name, share in p.unavailable.items()},
    }


def _gain(metric: str, before: dict[str, float], after: dict[str, float]) -> float:
    """Relative improvement: (before - after) / before; 0 when there is nothing to improve."""
    base = before[metric]
    if not base or not np.isfinite(base):
        return 0.0
    return float((base - after[metric]) / base)


def _benefit_cost(
    model: WorkflowModel, before: dict[str, float], after: dict[str, float]
) -> tuple[float, float]:
    """Compute seconds per 100 runs: re-runs avoided and seconds saved, against seconds added.

    A failed run costs one re-run of mean duration, a function left unavailable
    one re-run of its step; the change itself costs one mean run duration, to
    verify it.
    """
    run = model.duration_s if np.isfinite(model.duration_s) else 0.0
    if "failure_rate" in before:
        terms = [
            (before["failure_rate"] - after["failure_rate"]) * run * 100,
            (before["step_seconds"] - after["step_seconds"]) * 100,
            *(
                (before[key] - after[key]) * model.step(key[len("lost:") :]).attempt_s * 100
                for key in before
                if key.startswith("lost:")
            ),
        ]
    else:
        terms = [(before["duration_s"] - after["duration_s"]) * 100]
    benefit = sum(t for t in terms if t > 0)
    cost = -sum(t for t in terms if t < 0) + run
    return float(benefit), float(cost)


def _candidate_id(change: _Change) -> str:
    text = json.dumps([change.kind, change.step, change.patch, change.code_change], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def apply_patch(policy: WorkflowPolicy, patch: dict[str, Any]) -> WorkflowPolicy:
    """The workflow policy with `patch` (a step rule) applied to its step.

    The rule that matched the step before takes the patch's settings and is
    moved first, under the step's own name, so it wins over any glob (the
    first matching rule applies); the other rules are kept as they are.
    """
    name = patch["match"]
    rules = [r.explicit() for r in policy.step_policies]
    matched = policy.rule_for(name)
    kept = [
        r
        for r, rule in zip(rules, policy.step_policies, strict=True)
        if not (rule is matched and rule.match == name)
    ]
    given = matched.explicit() if matched else {}
    settings = StepPolicy.model_validate({k: v for k, v in given.items() if k != "match"})
    updated = {"match": name, **settings.merged(patch).explicit()}
    document = policy.model_dump(exclude={"step_policies"}, exclude_unset=True)
    return WorkflowPolicy.model_validate({**document, "step_policies": [updated, *kept]})
