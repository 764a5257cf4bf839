"""Optimization candidates and the workflow model, on history frames built here (no server).

Each history is generated from a known failure process, so the expected
hazards, rates and candidate kinds follow from the process, not from the code.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import pandas as pd
import pytest

from prefect_resilience.analytics.candidates import MIN_FLOW_RUNS, apply_patch, propose
from prefect_resilience.analytics.evidence import realised_metrics
from prefect_resilience.analytics.model import fit, simulate
from prefect_resilience.history import FLOW_RUN_COLUMNS, REPORT_COLUMNS, TASK_RUN_COLUMNS
from prefect_resilience.policy import FailurePolicy, StepPolicy, WorkflowPolicy

T0 = pd.Timestamp("2026-03-02 00:00", tz="UTC")


def history(
    steps: list[dict[str, Any]], runs: int, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Flow runs of sequential steps. A step dict: name, policy, retries, p (per-attempt
    failure chance), persistent (p is per run: every attempt fails), critical, impact,
    follows (a step whose failure makes every attempt of this one fail), hang (seconds each
    attempt of a run that fails for good takes; 1 otherwise)."""
    rng = random.Random(seed)
    flows, tasks, reports = [], [], []
    for i in range(runs):
        flow_id = str(uuid.UUID(int=rng.getrandbits(128)))
        start = T0 + pd.Timedelta(minutes=10 * i)
        clock, stopped, lost = start, False, []
        for step in steps:
            if stopped:
                break
            broken = step.get("persistent") and rng.random() < step["p"]
            broken = broken or step.get("follows") in lost  # fails whenever that step did
            attempts, ok = 0, False
            while attempts <= step.get("retries", 0):
                attempts += 1
                if not broken and (step.get("persistent") or rng.random() >= step["p"]):
                    ok = True
                    break
            seconds = attempts * (1.0 if ok else step.get("hang", 1.0))
            tasks.append({
                "task_run_id": str(uuid.UUID(int=rng.getrandbits(128))), "flow_run_id": flow_id,
                "flow_name": "etl", "task_name": step["name"], "task_run_name": step["name"],
                "task_key": step["name"], "state_type": "COMPLETED" if ok else "FAILED",
                "state_name": "Completed" if ok else "Failed", "run_count": attempts,
                "start_time": clock, "end_time": clock + pd.Timedelta(seconds=seconds),
                "duration_s": seconds, "tags": [], "policy": step["policy"],
                "critical": step.get("critical", False), "impact": step.get("impact", "major"),
                "error_type": None if ok else "ConnectionError", "error_message": None,
                "upstream": [],
            })  # fmt: skip
            clock += pd.Timedelta(seconds=seconds + 0.5)
            if not ok:
                lost.append(step["name"])
                stopped = step["policy"] == "fail_fast"
        flows.append({
            "flow_run_id": flow_id, "flow_name": "etl", "deployment_id": None,
            "state_type": "FAILED" if stopped else "COMPLETED",
            "state_name": "Failed" if stopped else "Completed", "start_time": start,
            "end_time": clock, "duration_s": (clock - start).total_seconds(), "tags": [],
        })  # fmt: skip
        reports.append({
            "flow_run_id": flow_id, "overall_status": "failed" if stopped else "completed",
            "health_score": 1 - len(lost) / len(steps), "stopped_by": None, "working": [],
            "degraded": [], "unavailable": lost, "tolerated": [],
        })  # fmt: skip
    return (
        pd.DataFrame(tasks, columns=TASK_RUN_COLUMNS),
        pd.DataFrame(flows, columns=FLOW_RUN_COLUMNS),
        pd.DataFrame(reports, columns=REPORT_COLUMNS),
    )


def test_fit_counts_attempts_as_a_discrete_hazard() -> None:
    tasks, flows, _ = history([{"name": "a", "policy": "continue", "p": 0.0}], 10)
    outcomes = [(1, "COMPLETED")] * 6 + [(2, "COMPLETED")] * 2 + [(2, "FAILED")] * 2
    tasks["run_count"] = [n for n, _ in outcomes]
    tasks["state_type"] = [s for _, s in outcomes]
    step = fit(tasks, flows, min_step_runs=1).step("a")
    assert step.reached == (10, 4)
    assert step.succeeded == (6, 2)
    assert step.hazard(1) == pytest.approx(0.6)
    assert step.hazard(2) == pytest.approx(0.5)
    assert step.hazard(3) == pytest.approx(0.5)  # beyond the data: the last hazard seen
    assert step.step.retries == 1  # the failed runs used 2 attempts
    assert step.failure_rate() == pytest.approx(0.4 * 0.5)
    assert step.failure_rate(2) == pytest.approx(0.4 * 0.5 * 0.5)


def test_simulation_reproduces_a_known_success_rate() -> None:
    steps = [{"name": "db", "policy": "fail_fast", "critical": True, "p": 0.4, "retries": 1}]
    tasks, flows, reports = history(steps, 400, seed=3)
    model = fit(tasks, flows, reports)
    hazard = model.step("db").hazard(1)
    predicted = simulate(model, WorkflowPolicy(), runs=4000, seed=1)
    expected = 1 - (1 - hazard) * (1 - model.step("db").hazard(2))
    assert predicted.success_rate == pytest.approx(expected, abs=0.02)
    assert predicted.termination_rate == pytest.approx(1 - predicted.success_rate)
    # and the same model predicts what the history shows, within sampling error
    assert predicted.success_rate == pytest.approx(model.success_rate, abs=0.05)


def test_same_seed_same_prediction() -> None:
    tasks, flows, reports = history([{"name": "a", "policy": "continue", "p": 0.3}], 50)
    model = fit(tasks, flows, reports)
    assert simulate(model, WorkflowPolicy(), seed=7) == simulate(model, WorkflowPolicy(), seed=7)


def test_too_little_history_gives_no_candidate_and_says_why() -> None:
    steps = [{"name": "db", "policy": "fail_fast", "critical": True, "p": 0.5, "retries": 1}]
    tasks, flows, reports = history(steps, MIN_FLOW_RUNS - 1)
    proposal = propose(tasks, flows, reports)
    assert proposal.candidates == []
    assert f"at least {MIN_FLOW_RUNS}" in proposal.note


def test_transient_failures_get_more_retries_with_a_confident_prediction() -> None:
    steps = [
        {"name": "extract", "policy": "fail_fast", "critical": True, "p": 0.3, "retries": 1},
        {"name": "load", "policy": "continue", "p": 0.0},
    ]
    tasks, flows, reports = history(steps, 200, seed=1)
    proposal = propose(tasks, flows, reports, bootstrap=30)
    tuning = [c for c in proposal.candidates if c.kind == "retry_tuning"]
    assert len(tuning) == 1
    candidate = tuning[0]
    assert candidate.step == "extract"
    assert candidate.patch["retries"] > 1
    assert candidate.metric == "failure_rate"
    # the true failed-run rate is 0.3**2 = 0.09 now and 0.3**(r+1) after
    assert candidate.before["failure_rate"] == pytest.approx(0.09, abs=0.04)
    true_gain = 1 - 0.3 ** (candidate.patch["retries"] - 1)
    assert candidate.gain == pytest.approx(true_gain, abs=0.15)
    assert candidate.confidence >= 0.8
    low, high = candidate.gain_interval
    assert low <= candidate.gain <= high
    assert candidate.roi > 1  # re-runs avoided outweigh one verification run


def test_retries_that_never_recover_are_proposed_for_removal() -> None:
    steps = [
        {"name": "score", "policy": "continue", "p": 0.3, "persistent": True, "retries": 2},
    ]
    tasks, flows, reports = history(steps, 120, seed=2)
    proposal = propose(tasks, flows, reports, bootstrap=30)
    kinds = {c.kind: c for c in proposal.candidates}
    assert "retry_tuning" not in kinds
    removal = kinds["retry_removal"]
    assert removal.patch == {"match": "score", "retries": 0}
    assert removal.metric == "wasted_s"
    # a broken run spends 3 one-second attempts; without retries only 1: 2/3 saved
    assert removal.gain == pytest.approx(2 / 3, abs=0.05)


def test_never_retried_steps_get_no_retry_claim() -> None:
    steps = [{"name": "thumb", "policy": "fail_fast", "impact": "minor", "p": 0.3}]
    tasks, flows, reports = history(steps, 100, seed=4)
    proposal = propose(tasks, flows, reports, bootstrap=20)
    assert "retry_tuning" not in {c.kind for c in proposal.candidates}
    assert any("never retried" in reason for reason in proposal.rejected)
    relax = next(c for c in proposal.candidates if c.kind == "policy_relaxation")
    assert relax.patch == {"match": "thumb", "policy": "continue"}
    assert relax.after["failure_rate"] == pytest.approx(0.0)
    assert relax.gain == pytest.approx(1.0)


def test_critical_steps_are_never_relaxed() -> None:
    steps = [{"name": "db", "policy": "fail_fast", "critical": True, "p": 0.3}]
    tasks, flows, reports = history(steps, 100, seed=5)
    proposal = propose(tasks, flows, reports, bootstrap=20)
    assert "policy_relaxation" not in {c.kind for c in proposal.candidates}


def test_parallelisation_needs_sequential_steps_without_a_data_link() -> None:
    steps = [
        {"name": "users", "policy": "continue", "p": 0.0},
        {"name": "orders", "policy": "continue", "p": 0.0},
    ]
    tasks, flows, reports = history(steps, 40, seed=6)
    proposal = propose(tasks, flows, reports, bootstrap=20)
    (parallel,) = [c for c in proposal.candidates if c.kind == "parallelisation"]
    assert parallel.patch is None and "submit" in parallel.code_change
    assert not parallel.applicable
    assert parallel.before["duration_s"] - parallel.after["duration_s"] == pytest.approx(1.0)
    # once `orders` takes the result of `users`, they cannot overlap
    first = tasks[tasks["task_name"] == "users"].set_index("flow_run_id")["task_run_id"]
    linked = tasks["task_name"] == "orders"
    tasks.loc[linked, "upstream"] = tasks.loc[linked, "flow_run_id"].map(lambda f: [first[f]])
    proposal = propose(tasks, flows, reports, bootstrap=20)
    assert "parallelisation" not in {c.kind for c in proposal.candidates}


def test_apply_patch_puts_the_step_first_with_the_settings_it_had() -> None:
    policy = WorkflowPolicy.model_validate(
        {
            "max_partial_failures": 2,
            "step_policies": [
                {"match": "load_*", "policy": "continue", "retries": 1, "impact": "minor"},
                {"match": "other", "retries": 4},
            ],
        }
    )
    patched = apply_patch(policy, {"match": "load_users", "retries": 3})
    effective = patched.policy_for("load_users")
    assert effective.retries == 3
    assert effective.policy is FailurePolicy.CONTINUE  # kept from the glob rule
    assert effective.impact.value == "minor"
    assert patched.policy_for("load_orders").retries == 1  # the glob still applies elsewhere
    assert patched.max_partial_failures == 2
    again = apply_patch(patched, {"match": "load_users", "policy": "fail_fast"})
    assert [r.match for r in again.step_policies] == ["load_users", "load_*", "other"]
    assert again.policy_for("load_users").retries == 3


def test_realised_metrics_count_real_outcomes() -> None:
    steps = [{"name": "a", "policy": "fail_fast", "p": 0.0}]
    tasks, flows, reports = history(steps, 4)
    flows.loc[0, "state_type"] = "FAILED"
    tasks.loc[0, ["state_type", "run_count", "duration_s"]] = ["FAILED", 2, 2.0]
    metrics = realised_metrics(tasks, flows, reports)
    assert metrics["flow_runs"] == 4
    assert metrics["failure_rate"] == pytest.approx(0.25)
    assert metrics["lost:a"] == pytest.approx(0.25)
    assert metrics["wasted_s"] == pytest.approx(2.0 / 4)


def test_a_step_policy_rule_overrides_what_history_shows() -> None:
    steps = [{"name": "a", "policy": "continue", "p": 0.2, "retries": 1}]
    tasks, flows, reports = history(steps, 40)
    policy = WorkflowPolicy(step_policies=[{"match": "a", "retries": 3}])
    assert fit(tasks, flows, reports, policy).step("a").step.retries == 3
    assert fit(tasks, flows, reports).step("a").step == StepPolicy(
        policy="continue", retries=1, impact="major", critical=False
    )


AUTO = {
    "auto_retries_max": 5,
    "step_policies": [
        {"match": "extract", "retries": "auto", "policy": "fail_fast"},
        {"match": "load", "retries": "auto"},
    ],
    "learned_retries": {
        "extract": {"retries": 4, "backoff": {"initial": 1, "factor": 2, "max": 8}, "n": 120},
        "load": {"retries": 7, "n": 50},
    },
}


def test_auto_retries_use_the_learned_values_within_bounds() -> None:
    policy = WorkflowPolicy.model_validate(AUTO)
    extract = policy.policy_for("extract", declared=StepPolicy(retries=1, retry_delay=3))
    assert extract.retries == 4
    assert extract.retry_delays() == [1.0, 2.0, 4.0, 8.0]  # the learned backoff replaced 3s


def test_auto_retries_fall_back_to_the_declared_ones() -> None:
    policy = WorkflowPolicy.model_validate(AUTO)
    # learned 7 is outside the bounds 0..5: the decorator's 2 applies
    assert policy.policy_for("load", declared=StepPolicy(retries=2)).retries == 2
    nothing_learned = WorkflowPolicy.model_validate({**AUTO, "learned_retries": {}})
    declared = StepPolicy(retries=1, retry_delay=3)
    resolved = nothing_learned.policy_for("extract", declared=declared)
    assert (resolved.retries, resolved.retry_delays()) == (1, [3.0])


def test_auto_retries_are_refused_where_nothing_is_learned() -> None:
    from prefect_resilience import resilient
    from prefect_resilience.errors import ResilienceConfigError

    with pytest.raises(ResilienceConfigError, match="retries='auto' belongs in a workflow"):
        resilient(retries="auto")(lambda: None)
    with pytest.raises(ResilienceConfigError, match="auto_retries_min 5 is above"):
        from prefect_resilience.policy_documents import load_policy

        load_policy({"auto_retries_min": 5, "auto_retries_max": 1})


def test_a_backoff_is_learned_where_longer_waits_recovered_more_often() -> None:
    # an outage that outlasts a quick retry: half the runs retried at once, half after 10 s
    steps = [{"name": "fetch", "policy": "fail_fast", "critical": True, "p": 0.0, "retries": 1}]
    tasks, flows, reports = history(steps, 240, seed=8)
    rng = random.Random(8)
    for i in tasks.index:
        wait = 10.0 if i % 2 else 0.0
        first_ok = rng.random() >= 0.4
        retry_ok = rng.random() >= (0.1 if wait else 0.9)
        attempts, ok = (1, True) if first_ok else (2, retry_ok)
        start = tasks.at[i, "start_time"]
        tasks.loc[i, ["run_count", "duration_s", "state_type"]] = [
            attempts,
            float(attempts),
            "COMPLETED" if ok else "FAILED",
        ]
        tasks.at[i, "end_time"] = start + pd.Timedelta(seconds=attempts + wait * (attempts - 1))
        if not ok:
            flows.loc[flows["flow_run_id"] == tasks.at[i, "flow_run_id"], "state_type"] = "FAILED"
    proposal = propose(tasks, flows, reports, bootstrap=30)
    (backoff,) = [c for c in proposal.candidates if c.kind == "backoff_tuning"]
    assert backoff.step == "fetch" and backoff.metric == "failure_rate"
    assert backoff.patch["backoff"]["initial"] >= 5  # waits long enough for the outage to end
    assert backoff.evidence["recovery_basis"] == "elapsed"
    # now about 0.4 * (0.9 + 0.1) / 2 = 20% of runs fail; a long wait leaves about 0.4 * 0.1
    assert backoff.before["failure_rate"] == pytest.approx(0.2, abs=0.07)
    assert backoff.after["failure_rate"] < 0.1
    assert backoff.gain > 0.5 and backoff.confidence >= 0.8


def test_a_change_within_the_noise_of_its_runs_is_held_back_with_the_runs_it_needs() -> None:
    steps = [
        {"name": "extract", "policy": "fail_fast", "critical": True, "p": 0.3},
        {"name": "notify", "policy": "continue", "impact": "minor", "p": 0.3},
    ]
    # a fallback for notify moves flow health a little, while extract's failures move it a lot
    tasks, flows, reports = history(steps, 30, seed=3)
    proposal = propose(tasks, flows, reports, bootstrap=20)
    assert "fallback" not in {c.kind for c in proposal.candidates}
    (held,) = [r for r in proposal.rejected if r.startswith("fallback notify: held back")]
    assert "within the noise of 30 runs before and 30 after" in held
    needed = int(held.rsplit("about ", 1)[1].split()[0])
    assert needed > 30
    # with enough runs the same change stands out and is proposed (30 runs overstate its
    # gain, about 8% of health loss, so the runs they ask for are a lower bound)
    tasks, flows, reports = history(steps, 1000, seed=3)
    proposal = propose(tasks, flows, reports, bootstrap=20)
    assert "fallback" in {c.kind for c in proposal.candidates}
    assert not [r for r in proposal.rejected if "held back" in r]


def test_a_step_that_fails_after_an_earlier_ones_failures_is_modelled_as_depending_on_it() -> None:
    steps = [
        {"name": "lookup", "policy": "continue", "impact": "minor", "p": 0.3},
        {"name": "join", "policy": "continue", "p": 0.05, "follows": "lookup"},
        {"name": "save", "policy": "continue", "p": 0.3},
    ]
    tasks, flows, reports = history(steps, 300, seed=8)
    model = fit(tasks, flows, reports)
    join = model.step("join")
    assert join.depends_on == "lookup"
    assert join.hazard(1) == pytest.approx(0.95, abs=0.04)  # its own failures
    assert join.hazard(1, upstream_down=True) == 0.0  # after lookup failed, always
    assert model.step("save").depends_on is None  # independent failures stay independent
    observed = realised_metrics(tasks, flows, reports)
    predicted = simulate(model, WorkflowPolicy(), runs=4000, seed=1)
    assert predicted.unavailable["join"] == pytest.approx(observed["lost:join"], abs=0.05)
    # a fallback that always carries lookup leaves join only its own failures
    carried = model.with_step(
        "lookup", step=StepPolicy(policy=FailurePolicy.GRACEFUL_DEGRADATION), fallback_rescue=1.0
    )
    rescued = simulate(carried, WorkflowPolicy(), runs=4000, seed=1)
    assert rescued.unavailable["join"] == pytest.approx(1 - join.hazard(1), abs=0.02)


def test_attempts_that_hang_before_failing_are_timed_apart_and_a_timeout_saves_them() -> None:
    steps = [{"name": "call_api", "policy": "continue", "impact": "minor", "p": 0.3, "hang": 20.0}]
    tasks, flows, reports = history(steps, 100, seed=9)
    model = fit(tasks, flows, reports)
    step = model.step("call_api")
    assert step.attempt_s == pytest.approx(1.0) and step.failed_attempt_s == pytest.approx(20.0)
    observed = realised_metrics(tasks, flows, reports)
    predicted = simulate(model, WorkflowPolicy(), runs=4000, seed=1)
    assert predicted.wasted_s == pytest.approx(observed["wasted_s"], rel=0.15)
    proposal = propose(tasks, flows, reports, bootstrap=20)
    (timeout,) = [c for c in proposal.candidates if c.kind == "timeout"]
    limit = timeout.patch["timeout"]
    assert limit == pytest.approx(1.5)  # 1.5 x the slowest successful attempt
    # each failed attempt now ends at the limit instead of after 20 s
    assert timeout.gain == pytest.approx(1 - limit / 20.0, abs=0.02)


def test_a_step_whose_failures_grew_is_fitted_on_its_latest_runs() -> None:
    steps = [{"name": "validate", "policy": "continue", "p": 0.05}]
    early = history(steps, 600, seed=10)
    late = history([{**steps[0], "p": 0.4}], 300, seed=11)
    later = pd.Timedelta(days=30)  # the second history starts after the first ends
    for frame in late:
        for column in ("start_time", "end_time"):
            if column in frame:
                frame[column] = frame[column] + later
    tasks, flows, reports = (
        pd.concat(pair, ignore_index=True) for pair in zip(early, late, strict=True)
    )
    step = fit(tasks, flows, reports).step("validate")
    assert step.drift is not None and step.drift.shift < -0.2
    assert step.drift.latest_runs == 300
    assert step.hazard(1) == pytest.approx(0.6, abs=0.1)  # the regime now, not 0.83 overall
    assert fit(*early).step("validate").drift is None
