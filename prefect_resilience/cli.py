"""The `prefect-resilience` command, built like Prefect's own CLI (typer and rich)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from prefect_resilience.errors import ResilienceConfigError
from prefect_resilience.policy import WorkflowPolicy, load_policy

app = typer.Typer(
    name="prefect-resilience",
    help="Resilience policies for Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
)
policy_app = typer.Typer(help="Check and inspect workflow policies.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")

console = Console()
errors = Console(stderr=True)


def _load(path: Path) -> WorkflowPolicy:
    try:
        return load_policy(path)
    except ResilienceConfigError as exc:
        errors.print(f"[red]invalid:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


@policy_app.command("validate")
def validate(
    files: Annotated[list[Path], typer.Argument(help="YAML policy documents to check.")],
) -> None:
    """Check policy documents; exit 1 naming the field and line of each problem."""
    for path in files:
        policy = _load(path)
        console.print(
            f"[green]valid:[/green] {path} ({policy.name or 'unnamed'},"
            f" {len(policy.step_policies)} step policies)",
            soft_wrap=True,
        )


@policy_app.command("show")
def show(path: Annotated[Path, typer.Argument(help="A YAML policy document.")]) -> None:
    """Show a workflow policy as it loads: thresholds and each step policy."""
    policy = _load(path)
    console.print(f"[bold]{policy.name or path}[/bold]")
    console.print(f"default failure policy: {policy.default_failure_policy.value}")
    for label, value in (
        ("max partial failures", policy.max_partial_failures),
        ("critical step ratio", policy.critical_step_ratio),
        ("termination threshold", policy.termination_threshold),
    ):
        console.print(f"{label}: {'off' if value is None else value}")
    table = Table(title="step policies (first match wins)")
    for column in ("match", "policy", "retries", "delays (s)", "critical", "impact", "fallbacks"):
        table.add_column(column)
    for rule in policy.step_policies:
        explicit = rule.explicit()
        delays = rule.retry_delays()
        table.add_row(
            rule.match,
            rule.policy.value if "policy" in explicit else "(default)",
            str(rule.retries) if "retries" in explicit else "-",
            ", ".join(f"{d:g}" for d in delays[:5]) + (" ..." if len(delays) > 5 else ""),
            "yes" if rule.critical else "no",
            rule.impact.value,
            ", ".join(rule.fallbacks) or "-",
        )
    console.print(table)


def _fail(exc: ResilienceConfigError) -> typer.Exit:
    errors.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


@policy_app.command("apply")
def apply_policies(
    paths: Annotated[list[Path], typer.Argument(help="Policy files or folders (e.g. blocks/).")],
) -> None:
    """Create or update a Resilience Policy block per file; unchanged ones are left alone.

    Every file is checked first: one bad file changes nothing.
    """
    from prefect_resilience import blocks

    try:
        blocks.ResiliencePolicy.register_type_and_schema()
        changes = blocks.apply(paths)
    except ResilienceConfigError as exc:
        raise _fail(exc) from None
    for change in changes:
        style = {"created": "green", "updated": "yellow", "unchanged": "dim"}[change.action]
        console.print(f"[{style}]{change.action}[/{style}] {change.name} ({change.path})")
        if change.diff:
            console.print(change.diff, highlight=False, markup=False, soft_wrap=True)


@policy_app.command("history")
def show_history(name: Annotated[str, typer.Argument(help="Block name.")]) -> None:
    """List the recorded versions of a Resilience Policy block."""
    from prefect_resilience import blocks

    try:
        blocks.record_ui_edit(name)
        versions = blocks.history(name)
    except ResilienceConfigError as exc:
        raise _fail(exc) from None
    if not versions:
        raise _fail(ResilienceConfigError(f"no recorded versions of policy {name!r}"))
    table = Table(title=f"versions of {name}")
    for column in ("version", "saved", "note"):
        table.add_column(column)
    for v in versions:
        table.add_row(str(v.number), f"{v.created:%Y-%m-%d %H:%M:%S}" if v.created else "?", v.note)
    console.print(table)


@policy_app.command("diff")
def show_diff(
    name: Annotated[str, typer.Argument(help="Block name.")],
    a: Annotated[int, typer.Argument(help="Older version.", min=1)],
    b: Annotated[int, typer.Argument(help="Newer version.", min=1)],
) -> None:
    """Show what changed between two versions of a policy."""
    from prefect_resilience import blocks

    try:
        text = blocks.diff(name, a, b)
    except ResilienceConfigError as exc:
        raise _fail(exc) from None
    console.print(text or "no difference", highlight=False, markup=False, soft_wrap=True)


@policy_app.command("rollback")
def roll_back(
    name: Annotated[str, typer.Argument(help="Block name.")],
    to: Annotated[
        int | None, typer.Option(help="Version to return to (default: previous).", min=1)
    ] = None,
) -> None:
    """Save an earlier version again, as a new version (nothing is lost)."""
    from prefect_resilience import blocks

    try:
        version = blocks.rollback(name, to)
    except ResilienceConfigError as exc:
        raise _fail(exc) from None
    console.print(f"{name}: saved version {version.number} ({version.note})")


@app.command("register")
def register_blocks() -> None:
    """Register the Resilience Policy block type with the Prefect server."""
    from prefect_resilience.blocks import ResiliencePolicy

    ResiliencePolicy.register_type_and_schema()
    console.print("registered block type: Resilience Policy (resilience-policy)")


if __name__ == "__main__":
    app()
