"""`prefect-resilience simulate`: what a policy a person wrote would do, before it is deployed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prefect_resilience.cli_output import config_failure, console, talks_to_api
from prefect_resilience.errors import ResilienceConfigError
from prefect_resilience.policy import WorkflowPolicy


def _policy(source: str) -> WorkflowPolicy:
    """A policy file (a path that exists, or ends in .yaml/.yml), else a block of that name."""
    from prefect_resilience.blocks import load_block_policy
    from prefect_resilience.policy_documents import load_policy

    if Path(source).exists() or source.endswith((".yaml", ".yml")):
        return load_policy(Path(source))
    return load_block_policy(source)


def _in_force(proposed: WorkflowPolicy, current: str | None) -> tuple[WorkflowPolicy, str]:
    """The policy in force: `--current`, else the block the proposed file is a version of,
    else the default workflow policy."""
    from prefect_resilience.blocks import load_block_policy

    if current:
        return _policy(current), current
    if proposed.name:
        try:
            return load_block_policy(proposed.name), f"block {proposed.name}"
        except ResilienceConfigError as exc:
            if "no Resilience Policy block named" not in str(exc):
                raise
    return WorkflowPolicy(), "the default policy"


@talks_to_api
def simulate(
    flow: Annotated[str, typer.Option("--flow", help="Flow name.")],
    policy: Annotated[
        str, typer.Option("--policy", help="The policy to try: a YAML file or a block name.")
    ],
    current: Annotated[
        str | None,
        typer.Option(
            "--current",
            help="The policy in force (file or block); default: the block the --policy file"
            " names, else the default policy.",
        ),
    ] = None,
    since: Annotated[str, typer.Option(help="History window: 30d, 12h, 2w or a date.")] = "30d",
    bootstrap: Annotated[int, typer.Option(min=10, max=1000, help="Bootstrap replicates.")] = 40,
    refresh: Annotated[bool, typer.Option(help="Ignore the local cache.")] = False,
) -> None:
    """Predict what a policy would do against the one in force, from the flow's history.

    The optimizer's model, fitted under each policy and played with the same
    draws: termination and completion rates, health, seconds lost to failed
    attempts and run time, each with a 90% interval of the change and its n.
    """
    from prefect_resilience.cli import _no_runs

    try:
        proposed = _policy(policy)
        now, now_name = _in_force(proposed, current)
    except ResilienceConfigError as exc:
        raise config_failure(exc) from None
    text = predicted_effect(flow, now, now_name, proposed, policy, since, bootstrap, refresh)
    if text is None:
        raise _no_runs(flow, since)
    console.print(text, highlight=False, markup=False)


def predicted_effect(
    flow: str,
    now: WorkflowPolicy,
    now_name: str,
    proposed: WorkflowPolicy,
    proposed_name: str,
    since: str = "30d",
    bootstrap: int = 40,
    refresh: bool = False,
) -> str | None:
    """The prediction as text, from the flow's history; None when the flow has no runs."""
    from prefect_resilience.cli import _read_history
    from prefect_resilience.simulate import compare_policies

    history = _read_history(flow, since, None, [], refresh, False)
    if history.flow_runs.empty:
        return None
    comparison = compare_policies(
        history.task_runs, history.flow_runs, history.reports, now, proposed, bootstrap=bootstrap
    )
    return comparison.to_text(now_name, proposed_name)
