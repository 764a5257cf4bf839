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


if __name__ == "__main__":
    app()
