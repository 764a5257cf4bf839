"""A workflow fitted from its run history, to predict what a policy change would do.

Each resilient step is modelled by what its task runs show: the chance that
attempt k succeeds after k-1 failures (a discrete hazard, from `run_count` and
the final state), the seconds one attempt takes, how many task runs it makes
per flow run, where it sits in the run, and the policy, criticality and impact
the runs applied. `simulate` plays many runs of that model under a workflow
policy, with the package's own `decide`-free rules: the step's policy settles
a failure, `health.HealthLedger` judges the run. So a prediction uses exactly
the rules the real runs use, and only the failure process is estimated.

What the model assumes, and the replay harness (bench/replay.py) measures:
steps fail independently of time, except where a step's first attempts
succeeded significantly less (or more) often in the latest third of its runs
than before (`drift`: its attempt odds are then fitted on that latest third),
and independently of each other except where history
shows a step failing far more often in the runs where an earlier step failed
for good (a co-failure: `depends_on`); an attempt beyond the
last one history shows succeeds as often as the last one it does show
(`hazard`), which is right for transient failures and wrong for outages that
outlast the retries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from prefect_resilience.health import HealthLedger, StepOutcome, StepStatus
from prefect_resilience.policy import (
    FailureAction,
    FailureImpact,
    FailurePolicy,
    StepPolicy,
    WorkflowPolicy,
)

from ._common import (
    FAILED_STATES,
    FINISHED_STATES,
    durations,
    names,
    state_types,
    two_proportion_z,
    utc,
)
from .drift import Drift, detect_drift

MIN_STEP_RUNS = 5
"""A step with fewer finished task runs is not modelled: its rates would be noise."""
MIN_DRIFT_RUNS = 10
"""Runs needed on each side of the split before a step's rate can be said to have moved."""
DEPENDENCE_Z = 3.0
"""How far (in standard errors) a step's failure rate after an earlier step's failure must
exceed its rate otherwise before the model makes it depend on that step."""


@dataclass(frozen=True)
class StepModel:
    """One step as its history shows it."""

    name: str
    runs: int
    """Finished task runs (COMPLETED, FAILED, CRASHED)."""
    reached: tuple[int, ...]
    """reached[k-1]: runs whose attempt k has an outcome."""
    succeeded: tuple[int, ...]
    """succeeded[k-1]: runs whose attempt k succeeded."""
    attempt_s: float
    """Mean seconds one attempt takes: a run's duration over its attempts, over the runs whose
    first attempt succeeded (all runs when none did)."""
    per_run: int
    """Task runs of this step in one flow run (a `.map()` makes several)."""
    offset_s: float
    """Median seconds from the flow run's start to this step's start: the step order."""
    step: StepPolicy
    """The policy the runs applied; retries are the most any failed run used, minus one."""
    fallback_rescue: float = 0.0
    """Share of this step's unrecovered failures a fallback carried (graceful only)."""
    failed_attempt_s: float | None = None
    """Mean seconds a failed attempt takes, over the runs that failed for good (None: as
    `attempt_s`). A dependency that hangs before it fails makes it far longer."""
    depends_on: str | None = None
    """An earlier step whose failures this one follows (a co-failure history shows). Then
    `reached`/`succeeded` count the runs where that step delivered (succeeded, recovered
    or degraded), and `reached_if_down`/`succeeded_if_down` the runs where it did not."""
    reached_if_down: tuple[int, ...] = ()
    succeeded_if_down: tuple[int, ...] = ()
    drift: Drift | None = None
    """Set when the step's first-attempt success moved within the history; `reached` and
    `succeeded` then count only the latest third of its runs (the regime now)."""

    def hazard(self, attempt: int, upstream_down: bool = False) -> float:
        """P(attempt succeeds | every earlier attempt failed), in runs where the step it
        depends on delivered (or, with `upstream_down`, did not).

        Beyond the attempts history shows, the last observed hazard is reused:
        the assumption of independent attempts, stated in the module docstring.
        """
        if upstream_down and self.depends_on is not None:
            return _hazard(self.reached_if_down, self.succeeded_if_down, attempt)
        return _hazard(self.reached, self.succeeded, attempt)

    def failure_rate(self, retries: int | None = None) -> float:
        """Chance that the step fails for good with `retries` (default: its own)."""
        attempts = (self.step.retry_count if retries is None else retries) + 1
        return float(np.prod([1 - self.hazard(k) for k in range(1, attempts + 1)]))

    @property
    def failed_s(self) -> float:
        """Seconds a failed attempt takes (`failed_attempt_s`, else `attempt_s`)."""
        return self.attempt_s if self.failed_attempt_s is None else self.failed_attempt_s

    @property
    def unseen_attempts(self) -> int:
        """Attempts its policy allows beyond the last one its history shows an outcome of."""
        return max(self.step.retry_count + 1 - len(self.reached), 0)

    @property
    def retry_evidence(self) -> int:
        """Runs that reached a retry (attempt 2 or later): what a retry claim rests on."""
        return self.reached[1] if len(self.reached) > 1 else 0


def _hazard(reached: tuple[int, ...], succeeded: tuple[int, ...], attempt: int) -> float:
    shown = [k for k, n in enumerate(reached, start=1) if n > 0]
    if not shown:
        return 0.0
    k = min(attempt, shown[-1])
    while reached[k - 1] == 0:
        k -= 1
    return succeeded[k - 1] / reached[k - 1]


@dataclass(frozen=True)
class WorkflowModel:
    """The steps of one flow, in run order, and what its runs measured."""

    flow_name: str | None
    steps: tuple[StepModel, ...]
    flow_runs: int
    """Finished flow runs the model was fitted on."""
    success_rate: float
    """Observed share of finished flow runs that completed (PartialSuccess included)."""
    duration_s: float
    """Observed mean duration of finished flow runs."""
    skipped: tuple[str, ...] = ()
    """Steps left out, each with the reason."""

    def step(self, name: str) -> StepModel:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def with_step(self, name: str, **changes: Any) -> WorkflowModel:
        """The same workflow with one step changed (its policy, attempt seconds, ...)."""
        steps = tuple(replace(s, **changes) if s.name == name else s for s in self.steps)
        return replace(self, steps=steps)


@dataclass(frozen=True)
class Prediction:
    """What `simulate` expects of a run, averaged over the simulated runs."""

    success_rate: float
    termination_rate: float
    health: float
    step_seconds: float
    """Seconds spent in the modelled steps (attempts and retry delays)."""
    wasted_s: float
    """Seconds spent in attempts that failed (retry delays not included: they are idle)."""
    unavailable: Mapping[str, float] = field(default_factory=dict)
    """Per step: share of runs in which its own work failed for good (a fallback or default
    stood in, or the run stopped)."""


def fit(
    task_runs: pd.DataFrame,
    flow_runs: pd.DataFrame,
    reports: pd.DataFrame | None = None,
    policy: WorkflowPolicy | None = None,
    *,
    min_step_runs: int = MIN_STEP_RUNS,
) -> WorkflowModel:
    """Fit the model from the history frames (see `prefect_resilience.history.History`).

    Only finished runs count. Steps without a recorded policy (plain tasks,
    fallback tasks) are not modelled. Where `policy` (the workflow policy in
    force now) has a rule for a step, the rule's explicit settings override
    what history shows, so a prediction starts from the policy as it is.
    """
    flows = flow_runs[state_types(flow_runs).isin(FINISHED_STATES).fillna(False).to_numpy(bool)]
    flow_names = flows["flow_name"].dropna().unique()
    succeeded = (state_types(flows) == "COMPLETED").to_numpy(bool)
    flow_duration = durations(flows)
    starts = utc(flows["start_time"])
    start_of = dict(zip(flows["flow_run_id"], starts, strict=True))

    runs = task_runs[task_runs["flow_run_id"].isin(start_of)]
    state = state_types(runs)
    runs = runs[state.isin(FINISHED_STATES - {"CANCELLED"}).fillna(False).to_numpy(bool)]
    steps, skipped = [], []
    rescue = _fallback_rescue(reports)
    for name, group in runs.groupby("task_name", sort=False):
        recorded = group["policy"].dropna()
        if recorded.empty:
            skipped.append(f"{name}: no resilience policy recorded (a plain or fallback task)")
            continue
        if len(group) < min_step_runs:
            skipped.append(f"{name}: {len(group)} finished runs, fewer than {min_step_runs}")
            continue
        steps.append(_step_model(str(name), group, start_of, policy, rescue.get(str(name), 0.0)))
    steps.sort(key=lambda s: s.offset_s)
    steps = _with_dependences(steps, runs)
    return WorkflowModel(
        flow_name=str(flow_names[0]) if len(flow_names) == 1 else None,
        steps=tuple(steps),
        flow_runs=len(flows),
        success_rate=float(succeeded.mean()) if len(flows) else float("nan"),
        duration_s=float(flow_duration.mean()) if flow_duration.notna().any() else float("nan"),
        skipped=tuple(skipped),
    )


def _mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else 0.0


def _attempt_counts(group: pd.DataFrame) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per attempt k: the task runs whose attempt k has an outcome, and those it succeeded."""
    attempts = _attempts(group)
    if attempts.empty:
        return (), ()
    failed = state_types(group).isin(FAILED_STATES).to_numpy(bool)
    most = int(attempts.max())
    ended_at = np.bincount(attempts, minlength=most + 2)  # runs whose last attempt was k
    went_past = ended_at[::-1].cumsum()[::-1]  # runs with run_count >= k
    reached = tuple(int(went_past[k]) for k in range(1, most + 1))
    won = np.bincount(attempts[~failed], minlength=most + 1)
    return reached, tuple(int(won[k]) for k in range(1, most + 1))


def _attempts(group: pd.DataFrame) -> pd.Series:
    return pd.to_numeric(group["run_count"], errors="coerce").fillna(0).astype(int).clip(1)


def _step_model(
    name: str,
    group: pd.DataFrame,
    start_of: Mapping[object, pd.Timestamp],
    policy: WorkflowPolicy | None,
    rescue: float,
) -> StepModel:
    attempts = _attempts(group)
    failed = state_types(group).isin(FAILED_STATES).to_numpy(bool)
    most = int(attempts.max())
    first_won = ~failed & (attempts == 1).to_numpy(bool)
    drift, latest = detect_drift(utc(group["start_time"]), first_won, MIN_DRIFT_RUNS)
    reached, succeeded = _attempt_counts(group[latest])
    seconds = (durations(group) / attempts).to_numpy(float)
    attempt_s = _mean(seconds[first_won]) if first_won.any() else _mean(seconds)
    offsets = (utc(group["start_time"]) - group["flow_run_id"].map(start_of)).dt.total_seconds()
    recorded = group.iloc[-1]
    retries = int(attempts[failed].max()) - 1 if failed.any() else most - 1
    step = StepPolicy(
        policy=FailurePolicy(recorded["policy"]),
        critical=bool(recorded["critical"]),
        impact=FailureImpact(recorded["impact"] or FailureImpact.MAJOR),
        retries=retries,
    )
    if policy is not None:
        step = policy.policy_for(name, (), step)
    return StepModel(
        name=name,
        runs=len(group),
        reached=reached,
        succeeded=succeeded,
        attempt_s=attempt_s,
        failed_attempt_s=_mean(seconds[failed]) if failed.any() else None,
        drift=drift,
        per_run=max(1, int(group.groupby("flow_run_id").size().median())),
        offset_s=float(np.nan_to_num(offsets.median())),
        step=step,
        fallback_rescue=rescue,
    )


def _with_dependences(steps: list[StepModel], runs: pd.DataFrame) -> list[StepModel]:
    """The steps, each refitted to depend on the earlier step whose failures it follows.

    Only steps with one task run per flow run are considered. A step depends
    on the earlier step after whose failure (for good) it failed most
    significantly more often than otherwise: at least `DEPENDENCE_Z` standard
    errors apart, with at least `MIN_STEP_RUNS` runs on each side.
    """
    down = (
        runs.assign(_down=state_types(runs).isin(FAILED_STATES).to_numpy(bool))
        .groupby(["flow_run_id", "task_name"])["_down"]
        .any()
        .unstack()
    )
    single = [s for s in steps if s.per_run == 1]
    refitted = {}
    for index, later in enumerate(single):
        scores = [(_co_failure_z(down, e.name, later.name), e.name) for e in single[:index]]
        z, earlier = max(scores, default=(0.0, ""))
        if z < DEPENDENCE_Z:
            continue
        mine = runs[runs["task_name"] == later.name]
        upstream_down = mine["flow_run_id"].map(down[earlier]).eq(True).to_numpy(bool)
        reached, succeeded = _attempt_counts(mine[~upstream_down])
        reached_down, succeeded_down = _attempt_counts(mine[upstream_down])
        refitted[later.name] = replace(
            later,
            depends_on=earlier,
            reached=reached,
            succeeded=succeeded,
            reached_if_down=reached_down,
            succeeded_if_down=succeeded_down,
        )
    return [refitted.get(s.name, s) for s in steps]


def _co_failure_z(down: pd.DataFrame, earlier: str, later: str) -> float:
    """How many standard errors later's failure rate after earlier's failures exceeds the
    rate otherwise, over runs that ran both (0 when either side is too small)."""
    both = down[[earlier, later]].dropna().astype(bool)
    after, otherwise = both[both[earlier]][later], both[~both[earlier]][later]
    if min(len(after), len(otherwise)) < MIN_STEP_RUNS:
        return 0.0
    z = two_proportion_z(otherwise.sum(), len(otherwise), after.sum(), len(after))
    return z if np.isfinite(z) else 0.0


def _fallback_rescue(reports: pd.DataFrame | None) -> dict[str, float]:
    """Per function: degraded / (degraded + unavailable) over the reports that name it."""
    if reports is None or reports.empty:
        return {}
    carried: dict[str, int] = {}
    lost: dict[str, int] = {}
    for degraded, unavailable in zip(reports["degraded"], reports["unavailable"], strict=True):
        for name in names(degraded):
            carried[name] = carried.get(name, 0) + 1
        for name in names(unavailable):
            lost[name] = lost.get(name, 0) + 1
    return {n: carried.get(n, 0) / (carried.get(n, 0) + lost.get(n, 0)) for n in carried}


def simulate(
    model: WorkflowModel, policy: WorkflowPolicy, runs: int = 2000, seed: int = 0
) -> Prediction:
    """Play `runs` runs of the model under `policy`; the same seed replays the same draws.

    Two calls with the same seed share their random draws (common random
    numbers), so the difference between two policies is not sampling noise.
    """
    columns: list[np.ndarray] = []
    seconds: list[np.ndarray] = []
    wasted: list[np.ndarray] = []
    instances: list[StepModel] = []
    undelivered: dict[str, np.ndarray] = {}  # per single step: runs where it did not deliver
    for step in model.steps:
        delays = np.asarray(step.step.retry_delays() or [0.0], dtype=float)
        tries = step.step.retry_count + 1
        hazard = np.array([step.hazard(k) for k in range(1, tries + 1)])
        if step.depends_on in undelivered:
            after = np.array([step.hazard(k, upstream_down=True) for k in range(1, tries + 1)])
            hazard = np.where(undelivered[step.depends_on][:, None], after, hazard)
        for instance in range(step.per_run):
            draws, rescue = _draws(seed, step.name, instance, runs, tries)
            rescue = rescue < step.fallback_rescue
            won = draws[:, :tries] < hazard
            first = np.where(won.any(axis=1), won.argmax(axis=1) + 1, 0)  # 0: never
            used = np.where(first > 0, first, tries)
            waits = np.concatenate([[0.0], np.cumsum(np.resize(delays, max(tries - 1, 0)))])
            lost = np.where(first > 0, first - 1, tries) * step.failed_s
            spent = lost + (first > 0) * step.attempt_s + waits[used - 1]
            columns.append(_statuses(step, first, rescue))
            if step.per_run == 1:
                undelivered[step.name] = columns[-1] >= _TOLERATED
            seconds.append(spent)
            wasted.append(lost)
            instances.append(step)
    if not instances:
        nan = float("nan")
        return Prediction(nan, nan, nan, 0.0, 0.0)
    statuses = np.stack(columns, axis=1)
    patterns, which = np.unique(statuses, axis=0, return_inverse=True)
    judged = np.array([_judge(policy, instances, row) for row in patterns])[which.ravel()]
    stopped, ran, health = judged[:, 0].astype(bool), judged[:, 1], judged[:, 2]
    mask = np.arange(len(instances))[None, :] < ran[:, None]  # steps run before any stop
    per_step = np.stack(seconds, axis=1) * mask
    off: dict[str, float] = {}
    for index, step in enumerate(instances):
        down = (statuses[:, index] >= _DEGRADED) & mask[:, index]
        off[step.name] = max(off.get(step.name, 0.0), float(down.mean()))
    return Prediction(
        success_rate=float(1 - stopped.mean()),
        termination_rate=float(stopped.mean()),
        health=float(health.mean()),
        step_seconds=float(_wall_seconds(per_step, instances).mean()),
        wasted_s=float((np.stack(wasted, axis=1) * mask).sum(axis=1).mean()),
        unavailable=off,
    )


def _draws(
    seed: int, name: str, instance: int, runs: int, tries: int
) -> tuple[np.ndarray, np.ndarray]:
    """One task run's random draws per simulated run: attempt k's in column k, and the
    fallback's. Each step instance has a generator of its own and attempt k's draws come
    k-th, so a policy that changes one step's retries leaves every other draw as it was."""
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    rng = np.random.default_rng([seed, key, instance])
    rescue = rng.random(runs)
    return rng.random((max(tries, 1), runs)).T, rescue


_SUCCEEDED, _RECOVERED, _DEGRADED, _TOLERATED, _FAILED = range(5)
_STATUS = (
    StepStatus.SUCCEEDED,
    StepStatus.RECOVERED,
    StepStatus.DEGRADED,
    StepStatus.TOLERATED,
    StepStatus.FAILED,
)


def _statuses(step: StepModel, first: np.ndarray, rescue: np.ndarray) -> np.ndarray:
    """Each simulated task run's status code, from the attempt that first succeeded."""
    policy = step.step.policy
    gave_up = _FAILED if policy is FailurePolicy.FAIL_FAST else _TOLERATED
    failed = np.full(first.shape, gave_up)
    if policy is FailurePolicy.GRACEFUL_DEGRADATION:
        failed = np.where(rescue, _DEGRADED, _TOLERATED)
    return np.where(first == 1, _SUCCEEDED, np.where(first > 1, _RECOVERED, failed))


def _wall_seconds(per_step: np.ndarray, instances: list[StepModel]) -> np.ndarray:
    """Run time of the modelled steps: instances of one step overlap, steps follow each other."""
    total = np.zeros(per_step.shape[0])
    start = 0
    while start < len(instances):
        end = start
        while end < len(instances) and instances[end].name == instances[start].name:
            end += 1
        total += per_step[:, start:end].max(axis=1)
        start = end
    return total


def _judge(
    policy: WorkflowPolicy, instances: list[StepModel], pattern: np.ndarray
) -> tuple[float, float, float]:
    """The health ledger's verdict on one run pattern: stopped, steps run, health score."""
    ledger = HealthLedger(policy)
    for index, (step, code) in enumerate(zip(instances, pattern, strict=True)):
        status = _STATUS[code]
        action = None
        if status is StepStatus.FAILED:
            action = FailureAction.TERMINATE
        elif status is StepStatus.TOLERATED:
            action = FailureAction.CONTINUE
        ledger.add(
            StepOutcome(
                name=step.name,
                status=status,
                policy=step.step.policy,
                critical=step.step.critical,
                impact=step.step.impact,
                action=action,
            )
        )
        if ledger.stopped_by is not None:
            return 1.0, index + 1, ledger.score
    return 0.0, len(instances), ledger.score
