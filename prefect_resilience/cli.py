"""The `prefect-resilience` command, built like Prefect's own CLI (typer and rich)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import httpx
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


def _since(value: str | None) -> Any:
    from prefect_resilience.history import parse_since

    try:
        return parse_since(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _rich_table(title: str, frame: Any, columns: list[str], index: str) -> Table:
    table = Table(title=title)
    table.add_column(index)
    for column in columns:
        table.add_column(column, justify="right")
    for key, row in frame[columns].iterrows():
        cells = []
        for value in row:
            if isinstance(value, float):
                cells.append("-" if value != value else f"{value:.3g}")
            else:
                cells.append(str(value))
        table.add_row(str(key), *cells)
    return table


@app.command("analyze")
def analyze_history(
    flow: Annotated[str | None, typer.Option(help="Flow name (default: every flow).")] = None,
    since: Annotated[str, typer.Option(help="Window start: 7d, 12h, 2w or an ISO date.")] = "7d",
    deployment: Annotated[str | None, typer.Option(help="Deployment id.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Flow run tag (repeatable).")] = None,
    recent: Annotated[str, typer.Option(help="Recent window for degradation tests.")] = "1D",
    baseline: Annotated[str, typer.Option(help="Baseline window before it.")] = "7D",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    html_file: Annotated[
        Path | None, typer.Option("--html", help="Write a self-contained HTML report here.")
    ] = None,
    refresh: Annotated[bool, typer.Option(help="Ignore the local cache.")] = False,
) -> None:
    """Statistics, trends, failure patterns and continuity from Prefect's run history."""
    import json

    from prefect_resilience.analytics.summary import analyze
    from prefect_resilience.history import load_history

    try:
        history = load_history(
            flow, since=_since(since), deployment_id=deployment, tags=tag or [],
            refresh=refresh, progress=not as_json,
        )  # fmt: skip
    except (OSError, httpx.HTTPError) as exc:
        from prefect.settings import PREFECT_API_URL

        errors.print(
            f"[red]error:[/red] cannot read run history from the Prefect API at"
            f" {PREFECT_API_URL.value() or '(embedded server)'}: {exc}",
            soft_wrap=True,
        )
        raise typer.Exit(1) from None
    if history.flow_runs.empty:
        errors.print(f"no runs match: flow {flow or '(any)'}, since {since}", soft_wrap=True)
        raise typer.Exit(1)
    analysis = analyze(
        history.task_runs, history.flow_runs, history.reports, recent=recent, baseline=baseline
    )
    if html_file is not None:
        from prefect_resilience.analytics.html import render_html

        try:
            text = render_html(analysis, history.flow_runs, history.task_runs, history.reports,
                               title=f"Resilience analysis: {flow or 'all flows'}")  # fmt: skip
        except RuntimeError as exc:
            errors.print(f"[red]error:[/red] {exc}", soft_wrap=True)
            raise typer.Exit(1) from None
        html_file.write_text(text, encoding="utf-8")
    if as_json:
        print(json.dumps(analysis.to_json(), indent=2))
        return
    console.print(
        f"[bold]{flow or 'all flows'}[/bold] since {since}: {analysis.flow_runs} flow runs,"
        f" {analysis.task_runs} task runs"
    )
    console.print(_rich_table("continuity", analysis.continuity, [
        "n_finished", "completion_rate", "partial_success_rate", "termination_rate",
        "critical_failure_rate", "mttr_s"], "flow"))  # fmt: skip
    if not analysis.steps.empty:
        console.print(_rich_table("steps (failure rate with 95% Wilson interval)", analysis.steps, [
            "runs", "failure_rate", "failure_rate_low", "failure_rate_high", "attempts_mean",
            "recovered_by_retry", "p50_s", "p95_s", "wasted_retry_s"], "step"))  # fmt: skip
    degradation = analysis.degradation
    if not degradation.empty:
        console.print(_rich_table(
            f"degradation: last {recent} against the {baseline} before", degradation,
            ["recent_runs", "recent_rate", "baseline_runs", "baseline_rate", "p_value",
             "degraded"], "step"))  # fmt: skip
    if not analysis.patterns.empty:
        console.print(_rich_table("failure patterns", analysis.patterns.head(10).set_index(
            "task_name"), ["error_type", "template", "failures", "share"], "step"))  # fmt: skip
    hour = analysis.concentration.hour
    console.print(
        f"failures by hour of day: chi-square p={hour.p_value:.3g} over {hour.failures}"
        f" failures in {hour.runs} runs"
        if hour.failures
        else "no failures to place in time"
    )
    if html_file is not None:
        console.print(f"HTML report: {html_file}")


@app.command("register")
def register_blocks() -> None:
    """Register the Resilience Policy block type with the Prefect server."""
    from prefect_resilience.blocks import ResiliencePolicy

    ResiliencePolicy.register_type_and_schema()
    console.print("registered block type: Resilience Policy (resilience-policy)")


if __name__ == "__main__":
    app()
