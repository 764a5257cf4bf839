"""Self-optimization: propose, apply what clears the bar, and roll back what made things worse.

Each run of this flow looks at one flow's recent history and its Resilience
Policy block, then does one of these, recorded as an artifact
(`resilience-self-optimization-<flow>`) with its reasons and figures:

- **evaluate** the change it applied last time: once enough runs ran under
  it, compare the candidate's metric over those runs with the same metric over
  the runs before the change; worse (by more than two standard errors of the
  difference, plus the model's own backtest error for failed-run rates) rolls
  the block back to the version before the change;
- **wait**, when the last change has too few runs under it to judge;
- **apply** the best candidate whose confidence and predicted gain clear the
  thresholds (default: 0.8 and 15%, the originating design's BR-ORCH-001);
- **nothing**, saying why, when no candidate clears them.

    python flows/self_optimization.py --flow seed-scenario --policy seed-scenario
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger

from prefect_resilience import blocks, optimize
from prefect_resilience.analytics.candidates import MIN_FLOW_RUNS, propose
from prefect_resilience.analytics.evidence import realised_metrics
from prefect_resilience.history import load_history, parse_since
from prefect_resilience.report import artifact_key, create_artifact

DECISION_TYPE = "resilience-self-optimization"


def last_decision(flow_name: str) -> dict[str, Any] | None:
    return optimize.latest_artifact_data(artifact_key("self-optimization", flow_name))


def record(flow_name: str, decision: dict[str, Any]) -> dict[str, Any]:
    """Keep the decision as a keyed artifact: its versions are the loop's log."""
    create_artifact(
        artifact_key("self-optimization", flow_name),
        DECISION_TYPE,
        decision,
        f"{decision['action']}: {decision['reason']}",
    )
    get_run_logger().info("%s: %s", decision["action"], decision["reason"])
    return decision


def _metrics(flow_name: str, since: datetime, until: datetime | None = None) -> dict[str, float]:
    history = load_history(flow_name, since=since, until=until, refresh=True)
    return realised_metrics(history.task_runs, history.flow_runs, history.reports)


def worse_by(metric: str, before: float, runs_before: int, runs_after: float) -> float:
    """How much worse a metric must get before it is worse and not sampling noise.

    Rates (failure_rate, lost:<step>): two standard errors of the difference of
    two proportions. Seconds and health loss: a tenth of the value before.
    """
    if metric == "failure_rate" or metric.startswith("lost:"):
        p = min(max(before, 1 / max(runs_before, 1)), 1.0)
        return 2 * (p * (1 - p) * (1 / max(runs_before, 1) + 1 / max(runs_after, 1))) ** 0.5
    return 0.1 * abs(before)


def evaluate(flow_name: str, block: str, applied: dict[str, Any]) -> dict[str, Any] | None:
    """Judge the last applied change; None when it has been judged already."""
    at = datetime.fromisoformat(applied["applied_at"])
    after = _metrics(flow_name, at)
    if after["flow_runs"] < applied["runs_needed"]:
        return {
            **applied,
            "action": "wait",
            "reason": f"{after['flow_runs']:.0f} runs since candidate {applied['candidate']}"
            f" was applied; {applied['runs_needed']} are needed to judge it",
        }
    metric, before = applied["metric"], applied["before"]
    now = after.get(metric, 0.0)
    margin = worse_by(metric, before, applied["runs_before"], after["flow_runs"])
    margin += applied["model_error"] if metric == "failure_rate" else 0.0
    judged = {
        "candidate": applied["candidate"],
        "metric": metric,
        "before": before,
        "after": now,
        "runs_after": after["flow_runs"],
        "margin": margin,
        "predicted_gain": applied["predicted_gain"],
        "realised_gain": (before - now) / before if before else None,
    }
    if now > before + margin:
        version = blocks.rollback(block, to=applied["version_before"])
        return {
            **judged,
            "action": "rolled back",
            "reason": f"{metric} went from {before:.4g} to {now:.4g} under candidate"
            f" {applied['candidate']}; block {block} is back at version"
            f" {applied['version_before']} (saved as version {version.number})",
        }
    return {
        **judged,
        "action": "kept",
        "reason": f"{metric} went from {before:.4g} to {now:.4g} under candidate"
        f" {applied['candidate']}: kept",
    }


@flow(name="resilience-self-optimization")
def self_optimize(
    flow_name: str,
    policy_block: str,
    window: str = "7d",
    min_confidence: float = 0.8,
    min_gain: float = 0.15,
    bootstrap: int = 40,
) -> dict[str, Any]:
    """One turn of the loop for `flow_name`, whose runs load `policy_block`."""
    previous = last_decision(flow_name)
    if previous and previous.get("action") in ("applied", "wait"):
        judged = evaluate(flow_name, policy_block, previous)
        if judged is not None:  # pragma: no branch
            record(flow_name, judged)
            if judged["action"] in ("wait", "rolled back"):  # next: runs under this policy
                return judged
    now = datetime.now(UTC)
    since = parse_since(window, now) or now - timedelta(days=7)
    if previous and previous.get("applied_at"):  # judge only runs under the current policy
        since = max(since, datetime.fromisoformat(previous["applied_at"]))
    policy = blocks.load_block_policy(policy_block)
    history = load_history(flow_name, since=since, refresh=True)
    proposal = propose(
        history.task_runs, history.flow_runs, history.reports, policy, bootstrap=bootstrap
    )
    optimize.publish_proposal(proposal, policy_block, optimize.fingerprint(policy))
    chosen = [
        c
        for c in proposal.candidates
        if c.applicable and c.confidence >= min_confidence and c.gain >= min_gain
    ]
    if not chosen:
        seen = "; ".join(
            f"{c.id} {c.kind} {c.step}: gain {c.gain:+.1%}, confidence {c.confidence:.2f}"
            + ("" if c.applicable else ", a code change")
            for c in proposal.candidates
        )
        reason = (
            f"no policy patch with confidence >= {min_confidence} and predicted gain >="
            f" {min_gain:.0%} among {len(proposal.candidates)} candidates"
            + (f" ({seen})" if seen else f": {proposal.note}")
        )
        return record(flow_name, {"action": "nothing", "reason": reason})
    best = chosen[0]
    version_before = blocks.record_ui_edit(policy_block) or blocks.history(policy_block)[-1]
    version = optimize.apply_candidate(flow_name, best.id, policy_block)
    observed = realised_metrics(history.task_runs, history.flow_runs, history.reports)
    return record(
        flow_name,
        {
            "action": "applied",
            "reason": f"candidate {best.id} ({best.kind} {best.step}): predicted {best.metric}"
            f" gain {best.gain:+.1%} at confidence {best.confidence:.2f}",
            "candidate": best.id,
            "kind": best.kind,
            "step": best.step,
            "metric": best.metric,
            "before": observed.get(best.metric, 0.0),
            "predicted_gain": best.gain,
            "confidence": best.confidence,
            "model_error": max(
                0.0, (proposal.backtest_error or 0.0) - (proposal.backtest_noise or 0.0)
            ),
            "runs_before": int(observed["flow_runs"]),
            "runs_needed": max(MIN_FLOW_RUNS, int(observed["flow_runs"]) // 2),
            "version_before": version_before.number,
            "version_after": version.number,
            "applied_at": datetime.now(UTC).isoformat(),
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flow", required=True, help="The flow to optimize.")
    parser.add_argument("--policy", required=True, help="Its Resilience Policy block.")
    parser.add_argument("--window", default="7d")
    args = parser.parse_args()
    print(self_optimize(args.flow, args.policy, args.window))
