"""Optimization against a Prefect server: propose from real history, apply, roll back.

A proposal is published as a keyed Prefect artifact (`resilience-proposal-<flow>`)
with the fingerprint of the policy it was computed for. Applying a candidate
reads that artifact, refuses when the policy block has changed since (the
prediction was made for another policy), and saves the patched policy as a
new block version (`blocks.save_policy`), so `policy rollback` undoes it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from prefect_resilience.analytics.candidates import Proposal, apply_patch
from prefect_resilience.blocks import (
    PolicyVersion,
    load_block_policy,
    policy_document,
    save_policy,
)
from prefect_resilience.errors import ResilienceConfigError
from prefect_resilience.history import load_history
from prefect_resilience.policy import WorkflowPolicy
from prefect_resilience.report import artifact_key, create_artifact

PROPOSAL_TYPE = "resilience-proposal"


def fingerprint(policy: WorkflowPolicy) -> str:
    """A short hash of a policy's normal form: equal policies, equal fingerprints."""
    text = json.dumps(policy_document(policy), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def publish_proposal(proposal: Proposal, block: str | None, policy_fingerprint: str | None) -> None:
    """Keep the proposal as keyed artifacts: markdown for people, data for `apply_candidate`."""
    flow = proposal.flow_name or "flow"
    data = {"block": block, "fingerprint": policy_fingerprint, "proposal": proposal.to_json()}
    description = f"Optimization candidates for {flow}"
    create_artifact(artifact_key("proposal", flow), PROPOSAL_TYPE, data, description)
    create_artifact(
        artifact_key("candidates", flow), "markdown", to_markdown(proposal, block), description
    )


def latest_artifact_data(key: str) -> dict[str, Any] | None:
    """The data of the newest version of a keyed artifact, if it holds a mapping."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    return found[0].data if found and isinstance(found[0].data, dict) else None


def latest_proposal(flow_name: str) -> dict[str, Any] | None:
    """The newest published proposal for a flow, as its artifact data."""
    return latest_artifact_data(artifact_key("proposal", flow_name))


def apply_candidate(flow_name: str, candidate_id: str, block: str) -> PolicyVersion:
    """Write candidate `candidate_id` of the flow's latest proposal into `block`, as a version."""
    published = latest_proposal(flow_name)
    if published is None:
        raise ResilienceConfigError(
            f"no proposal for flow {flow_name!r}: run `prefect-resilience optimize --flow"
            f" {flow_name} --policy {block}` first",
            field="apply",
        )
    candidates = {c["id"]: c for c in published["proposal"]["candidates"]}
    candidate = candidates.get(candidate_id)
    if candidate is None:
        known = ", ".join(candidates) or "none"
        raise ResilienceConfigError(
            f"candidate {candidate_id!r} is not in the latest proposal for {flow_name!r}"
            f" (candidates: {known})",
            field="apply",
        )
    if candidate["patch"] is None or candidate["code_change"] is not None:
        raise ResilienceConfigError(
            f"candidate {candidate_id} ({candidate['kind']}) is a code change, not a policy"
            f" patch: {candidate['code_change']}",
            field="apply",
        )
    current = load_block_policy(block)
    made_for = published.get("block")
    if made_for != block or published.get("fingerprint") != fingerprint(current):
        why = (
            f"the latest proposal for {flow_name!r} was made for "
            + (f"policy block {made_for!r}" if made_for else "no policy block")
            if made_for != block
            else f"policy block {block!r} changed since the proposal was made"
        )
        raise ResilienceConfigError(
            f"{why}; its predictions do not hold for {block!r}. Run"
            f" `prefect-resilience optimize --flow {flow_name} --policy {block}` again",
            field="apply",
        )
    patched = apply_patch(current, candidate["patch"])
    note = f"optimize {candidate_id}: {candidate['kind']} {candidate['step']}"
    return save_policy(block, patched, note=note)


def to_markdown(proposal: Proposal, against: str | None = None) -> str:
    """The candidates as a markdown table with their predictions, then what was rejected.

    `against` names the policy block the predictions were made against, if any.
    """
    lines = [
        f"# Optimization candidates: {proposal.flow_name or 'flow'}",
        "",
        f"{proposal.flow_runs} finished flow runs. {_backtest(proposal)}",
        "",
        _baseline(against),
    ]
    if proposal.note:
        lines += ["", proposal.note]
    if proposal.candidates:
        lines += [
            "",
            "| id | kind | step | metric | now | predicted | gain (90% interval) | ROI |"
            " confidence |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for c in proposal.candidates:
            low, high = c.gain_interval
            lines.append(
                f"| {c.id} | {c.kind} | {c.step} | {c.metric} | {_number(c.before[c.metric])}"
                f" | {_number(c.after[c.metric])} | {c.gain:+.1%} ({low:+.1%} .. {high:+.1%})"
                f" | {_number(c.roi)} | {c.confidence:.2f} |"
            )
        lines += ["", *(f"- **{c.id}**: {c.summary}" for c in proposal.candidates)]
    if proposal.rejected:
        lines += ["", "## Not proposed", "", *(f"- {r}" for r in proposal.rejected)]
    return "\n".join(lines) + "\n"


def _backtest(proposal: Proposal) -> str:
    """How well the model predicted the latest third of the runs, or why that is unknown."""
    if proposal.backtest_error is None:
        return (
            "No backtest of the model yet: it is fitted on the earlier two thirds of the runs"
            " and checked on the latest third, and each part needs at least 10 finished runs"
            f" (30 in all; this history has {proposal.flow_runs})."
        )
    noise = (
        f"; sampling noise alone gives about ±{_number(proposal.backtest_noise)}"
        if proposal.backtest_noise is not None
        else ""
    )
    return (
        "Model backtest error (failed-run rate on the latest third of runs):"
        f" {_number(proposal.backtest_error)}{noise}."
    )


def _baseline(against: str | None) -> str:
    """What the predictions are relative to, and why `--policy` changes them."""
    if against:
        return (
            f"Predicted against policy block `{against}`: the model runs the flow under its"
            " step rules (retries, fallbacks, criticality) and termination rules, and each"
            " candidate is a change to that block."
        )
    return (
        "Predicted against the default workflow policy (no `--policy` given): no termination"
        " rules and no step rules, so a step's retries and fallbacks are only what its runs"
        " show. Against the block the flow runs with, the same history gives other gains,"
        " ROI and confidence (its rules change which runs fail, and what a candidate"
        " changes); pass `--policy NAME` for those, and to apply one."
    )


def _number(value: float | None) -> str:
    if value is None or value != value:
        return "n/a"
    if value == float("inf"):
        return "∞"
    return f"{value:.3g}"


def learn_retries(
    flow_name: str,
    block: str,
    *,
    time_budget_s: float = 60.0,
    since: datetime | None = None,
    refresh: bool = False,
) -> tuple[PolicyVersion | None, dict[str, str]]:
    """Learn retries for every step whose rule in `block` says `retries: auto`, and save them.

    Per step: the retries (and backoff, where history shows that the delay
    matters) that maximise the predicted success within `time_budget_s`, inside
    the policy's `auto_retries_min`..`auto_retries_max`. A step with too little history keeps what
    it had (learned values, or the declared retries). Returns the new block
    version (None when nothing was learned) and, per step, what happened.
    """
    import numpy as np

    from prefect_resilience.analytics._common import durations
    from prefect_resilience.analytics.retry_choice import choose_retries
    from prefect_resilience.analytics.retry_model import fit_retry_models
    from prefect_resilience.policy import Backoff, LearnedRetry

    policy = load_block_policy(block)
    auto = [rule for rule in policy.step_policies if rule.retries == "auto"]
    if not auto:
        raise ResilienceConfigError(
            f"no step policy in block {block!r} has retries: auto; nothing to learn",
            field="retries",
        )
    history = load_history(flow_name, since=since, refresh=refresh)
    runs = history.task_runs
    names = sorted({n for n in runs["task_name"].dropna().unique() if policy.rule_for(n) in auto})
    models = fit_retry_models(runs, steps=names)
    learned = dict(policy.learned_retries)
    said: dict[str, str] = {}
    for name in names:
        model = models.get(name)
        if model is None:
            said[name] = "no finished runs"
            continue
        own = runs[runs["task_name"] == name]
        seconds = durations(own) / own["run_count"].clip(lower=1)
        rule = policy.rule_for(name)
        choice = choose_retries(
            model,
            float(np.nan_to_num(seconds.mean())),
            time_budget_s,
            bounds=policy.auto_retry_bounds,
            declared=rule.backoff if rule is not None else None,
        )
        if choice.learned is None:
            kept = "keeps its learned values" if name in learned else "keeps its declared retries"
            said[name] = f"{choice.reason}; {kept}"
            continue
        found = choice.learned
        learned[name] = LearnedRetry(
            retries=found.retries,
            backoff=Backoff(**found.backoff) if found.backoff else None,
            predicted_success=found.predicted_success,
            n=found.n,
            fitted_at=found.fitted_at,
        )
        said[name] = (
            f"{found.retries} retries, predicted success {found.predicted_success:.1%}"
            f" from {found.n} runs"
        )
    if learned == policy.learned_retries:
        return None, said
    document = policy.model_dump(exclude_unset=True, exclude={"learned_retries"})
    updated = WorkflowPolicy.model_validate({**document, "learned_retries": learned})
    return save_policy(block, updated, note=f"learned retries from {flow_name}"), said
