"""The `prefect-resilience` command, built like Prefect's own CLI (typer and rich).

The policy commands are in `cli_policy`; how every command prints, and fails,
is in `cli_output`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.markup import escape
from rich.table import Table

from prefect_resilience.cli_output import (
    api_failure,
    config_failure,
    console,
    errors,
    fail,
    number,
    talks_to_api,
)
from prefect_resilience.cli_policy import policy_app
from prefect_resilience.cli_simulate import simulate
from prefect_resilience.errors import ResilienceConfigError

app = typer.Typer(
    name="prefect-resilience",
    help="Resilience policies for Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(policy_app, name="policy")


@app.callback()
def _quiet_embedded_server() -> None:
    """Without a PREFECT_API_URL a command runs Prefect's embedded server in this process;
    its usage telemetry then races the command for the SQLite file and prints a
    `database is locked` traceback. It only affects a server this process starts, and
    an explicit setting wins."""
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _since(value: str | None) -> Any:
    """The window start: in the past, or a usage error (exit 2) naming the value."""
    from datetime import UTC, datetime

    from prefect_resilience.history import parse_since

    now = datetime.now(UTC)
    try:
        moment = parse_since(value, now)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--since") from None
    except OverflowError:
        raise typer.BadParameter(f"{value!r} reaches before year 1", param_hint="--since") from None
    if moment is not None and moment >= now:
        raise typer.BadParameter(
            f"{value!r} is not in the past: the window would hold no runs", param_hint="--since"
        )
    return moment


MAX_SPAN_DAYS = 3650


def _span(value: str) -> str:
    """A positive span of time in pandas' form (1D, 12h, 90min), at most ten years."""
    import pandas as pd

    try:
        span = pd.Timedelta(value)
    except (ValueError, OverflowError):
        raise typer.BadParameter(
            f"{value!r} is not a span of time such as 1D, 12h or 90min"
        ) from None
    if not any(c.isalpha() for c in value):
        raise typer.BadParameter(f"{value!r} needs a unit, such as 1D, 12h or 90min")
    if pd.isna(span) or span <= pd.Timedelta(0):
        raise typer.BadParameter(f"{value!r} must be a positive span of time")
    if span > pd.Timedelta(days=MAX_SPAN_DAYS):
        raise typer.BadParameter(f"{value!r} is longer than {MAX_SPAN_DAYS} days")
    return value


def _rich_table(title: str, frame: Any, columns: list[str], index: str) -> Table:
    table = Table(title=title)
    table.add_column(index)
    for column in columns:
        table.add_column(column, justify="right")
    for key, row in frame[columns].iterrows():
        cells = []
        for value in row:
            if isinstance(value, float):
                cells.append(number(value))
            else:
                cells.append(str(value))
        table.add_row(str(key), *cells)
    return table


@app.command("analyze")
@talks_to_api
def analyze_history(
    flow: Annotated[str | None, typer.Option(help="Flow name (default: every flow).")] = None,
    since: Annotated[str, typer.Option(help="Window start: 7d, 12h, 2w or an ISO date.")] = "7d",
    deployment: Annotated[str | None, typer.Option(help="Deployment id.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Flow run tag (repeatable).")] = None,
    recent: Annotated[
        str, typer.Option(help="Recent window for degradation tests.", callback=_span)
    ] = "1D",
    baseline: Annotated[
        str, typer.Option(help="Baseline window before it.", callback=_span)
    ] = "7D",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    html_file: Annotated[
        Path | None, typer.Option("--html", help="Write a self-contained HTML report here.")
    ] = None,
    refresh: Annotated[bool, typer.Option(help="Ignore the local cache.")] = False,
) -> None:
    """Statistics, trends, failure patterns and continuity from Prefect's run history."""
    import json

    from prefect_resilience.analytics.summary import analyze

    history = _read_history(flow, since, deployment, tag or [], refresh, not as_json)
    if history.flow_runs.empty:
        raise _no_runs(flow, since)
    analysis = analyze(
        history.task_runs, history.flow_runs, history.reports, recent=recent, baseline=baseline
    )
    if html_file is not None:
        from prefect_resilience.analytics.html import render_html

        try:
            text = render_html(analysis, history.flow_runs, history.task_runs, history.reports,
                               title=f"Resilience analysis: {flow or 'all flows'}")  # fmt: skip
        except RuntimeError as exc:
            raise fail(str(exc)) from None
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
    degradation = _judged(analysis.degradation)
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
        f"failures by hour of day: chi-square p={number(hour.p_value)} over {hour.failures}"
        f" failures in {hour.runs} runs"
        if hour.failures
        else "no failures to place in time"
    )
    if html_file is not None:
        console.print(f"HTML report: {html_file}")


def _judged(degradation: Any) -> Any:
    """The degradation table with its verdict in words where a window had no runs."""
    if degradation.empty:
        return degradation
    empty = (degradation["recent_runs"] == 0) | (degradation["baseline_runs"] == 0)
    verdict = degradation["degraded"].map({True: "yes", False: "no"}).astype(object)
    return degradation.assign(degraded=verdict.where(~empty, "not enough runs"))


def _read_history(flow: str | None, since: str, deployment: str | None, tags: list[str],
                  refresh: bool, progress: bool) -> Any:  # fmt: skip
    """Run history for a command; exit 1 with a clear message if the API cannot be read."""
    from prefect_resilience.history import load_history

    try:
        return load_history(
            flow, since=_since(since), deployment_id=deployment, tags=tags,
            refresh=refresh, progress=progress,
        )  # fmt: skip
    except (OSError, httpx.HTTPError) as exc:
        raise api_failure(exc, "read run history from the Prefect API") from None


def _no_runs(flow: str | None, since: str) -> typer.Exit:
    """'No runs match', with the flows of a close name when the name matches none."""
    close = _close_flow_names(flow) if flow else []
    hint = f"; flows with a close name: {', '.join(close)}" if close else ""
    return fail(f"flow {flow or '(any)'}, since {since}{hint}", "no runs match")


def _close_flow_names(flow: str) -> list[str]:
    """Flow names on the server close to `flow` (a function name `daily_etl` finds the flow
    `daily-etl`); none when the name is one of them or the server cannot say."""
    import difflib

    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            names = [f.name for f in client.read_flows(limit=200)]
    except (OSError, httpx.HTTPError):
        return []
    if flow in names:
        return []
    same = [n for n in names if n.replace("_", "-").lower() == flow.replace("_", "-").lower()]
    return same or difflib.get_close_matches(flow, names, n=3, cutoff=0.6)


def publish_compliance(report: Any, subject: str, flow_run_id: Any = None) -> bool:
    """Write a compliance report as artifacts of the flow run this runs in; False if none.

    The flow run is Prefect's current one: the run context, or PREFECT__FLOW_RUN_ID
    when the command runs as a step of a deployment's flow run. A markdown artifact
    holds the report, a table artifact the figures, both keyed per analysed flow so
    the Prefect UI keeps their history.
    """
    import json

    from prefect.runtime import flow_run

    from prefect_resilience.report import artifact_key, create_artifact

    flow_run_id = flow_run_id or flow_run.id
    if not flow_run_id:
        return False
    title = f"Compliance with the design's targets: {subject}"
    markdown, table = report.to_markdown(title), json.dumps(report.rows())
    create_artifact(artifact_key("compliance", subject), "markdown", markdown, title, flow_run_id)
    create_artifact(artifact_key("compliance-table", subject), "table", table, title, flow_run_id)
    return True


@app.command("compliance")
@talks_to_api
def compliance_report(
    flow: Annotated[str | None, typer.Option(help="Flow name (default: every flow).")] = None,
    since: Annotated[str, typer.Option(help="Window start: 30d, 12h, 2w or an ISO date.")] = "30d",
    deployment: Annotated[str | None, typer.Option(help="Deployment id.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Flow run tag (repeatable).")] = None,
    min_sample: Annotated[
        int, typer.Option(help="Fewer samples than this: not enough data.", min=1, max=1_000_000)
    ] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    refresh: Annotated[bool, typer.Option(help="Ignore the local cache.")] = False,
) -> None:
    """The design's targets (BR-WF-541, BR-ORCH-011, ...) measured from run history.

    Each target shows its measured value, 95% interval, sample size and pass,
    miss or not enough data; a missed target is shown as missed. Run inside a
    flow run, the report is also published as artifacts of that run.
    """
    import json

    from prefect_resilience.compliance import Status, evaluate

    history = _read_history(flow, since, deployment, tag or [], refresh, not as_json)
    if history.flow_runs.empty:
        raise _no_runs(flow, since)
    report = evaluate(history.flow_runs, history.task_runs, history.reports, min_sample=min_sample)
    subject = flow or "all-flows"
    published = publish_compliance(report, subject)
    if as_json:
        print(json.dumps({**report.to_json(), "published": published}, indent=2))
        return
    console.print(
        f"[bold]{flow or 'all flows'}[/bold] since {since}: {report.finished_flow_runs} finished"
        f" flow runs ({report.in_progress} in progress, left out)"
    )
    table = Table(title="the design's targets, from run history")
    for column in ("id", "claim", "target", "measured", "95% interval", "n", "status"):
        table.add_column(column, justify="right" if column in ("measured", "n") else "left")
    style = {Status.PASS: "green", Status.MISS: "bold red", Status.NOT_ENOUGH_DATA: "yellow"}
    for r in report.results:
        label = "MISSED" if r.status is Status.MISS else r.status.value
        table.add_row(r.id, r.claim, r.target, r.measured_text, r.interval_text,
                      f"{r.sample_size} {r.sample_unit}",
                      f"[{style[r.status]}]{label}[/{style[r.status]}]")  # fmt: skip
    console.print(table)
    missed = report.missed
    if missed:
        console.print(
            f"[bold red]{len(missed)} target{'s' if len(missed) != 1 else ''} missed:[/bold red] "
            + ", ".join(f"{r.id} {r.claim} ({r.measured_text}, target {r.target})" for r in missed),
            soft_wrap=True,
        )
    console.print(
        "not answerable from run history: "
        + ", ".join(f"{n.id} ({n.claim})" for n in report.not_from_history),
        soft_wrap=True,
        style="dim",
    )
    if published:
        console.print("published as artifacts of this flow run")


@app.command("optimize")
@talks_to_api
def optimize_flow(
    flow: Annotated[str, typer.Option(help="Flow name.")],
    policy: Annotated[
        str | None,
        typer.Option("--policy", help="The Resilience Policy block the flow runs with."),
    ] = None,
    since: Annotated[str, typer.Option(help="Window start: 30d, 12h, 2w or an ISO date.")] = "30d",
    apply: Annotated[
        str | None,
        typer.Option("--apply", help="Write this candidate of the latest proposal to --policy."),
    ] = None,
    bootstrap: Annotated[
        int, typer.Option(min=10, max=1000, help="Bootstrap replicates behind each confidence.")
    ] = 40,
    learn_retries: Annotated[
        bool,
        typer.Option(
            "--learn-retries", help="Learn retries for the --policy steps with retries: auto."
        ),
    ] = False,
    budget: Annotated[
        float, typer.Option(min=0.001, help="Time budget per step for learned retries, seconds.")
    ] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    refresh: Annotated[bool, typer.Option(help="Ignore the local cache.")] = False,
) -> None:
    """Propose 3-5 measured changes from a flow's history, or apply one to its policy block."""
    import json

    from prefect_resilience import optimize
    from prefect_resilience.analytics.candidates import propose
    from prefect_resilience.blocks import load_block_policy

    if learn_retries:
        if policy is None:
            raise typer.BadParameter(
                "--learn-retries needs --policy, the block to write", param_hint="--learn-retries"
            )
        try:
            version, said = optimize.learn_retries(
                flow, policy, time_budget_s=budget, since=_since(since), refresh=refresh
            )
        except ResilienceConfigError as exc:
            raise config_failure(exc) from None
        for step, what in said.items():
            console.print(f"{step}: {what}", soft_wrap=True)
        if version is None:
            console.print(f"{policy}: unchanged, nothing new was learned")
        else:
            console.print(f"{policy}: saved version {version.number} ({version.note})")
        return
    if apply is not None:
        if policy is None:
            raise typer.BadParameter(
                "--apply needs --policy, the block to write", param_hint="--apply"
            )
        try:
            version = optimize.apply_candidate(flow, apply, policy)
        except ResilienceConfigError as exc:
            raise config_failure(exc) from None
        console.print(f"{policy}: saved version {version.number} ({version.note})")
        console.print(f"undo with: prefect-resilience policy rollback {policy}")
        return
    try:
        current = load_block_policy(policy) if policy else None
    except ResilienceConfigError as exc:
        raise config_failure(exc) from None
    history = _read_history(flow, since, None, [], refresh, not as_json)
    if history.flow_runs.empty:
        raise _no_runs(flow, since)
    proposal = propose(
        history.task_runs, history.flow_runs, history.reports, current, bootstrap=bootstrap
    )
    optimize.publish_proposal(proposal, policy, optimize.fingerprint(current) if current else None)
    if as_json:
        print(json.dumps(proposal.to_json(), indent=2))
        return
    from rich.markdown import Markdown

    console.print(Markdown(optimize.to_markdown(proposal, policy)))
    if policy and any(c.applicable for c in proposal.candidates):
        console.print(
            f"apply one with: prefect-resilience optimize --flow {flow!r}"
            f" --policy {policy} --apply ID"
        )


@app.command("scale")
@talks_to_api
def scale_flow(
    flow: Annotated[str | None, typer.Option(help="Flow name (default: every flow).")] = None,
    since: Annotated[str, typer.Option(help="History to forecast from: 28d, 2w, a date.")] = "28d",
    period: Annotated[str, typer.Option(help="Forecast period.", callback=_span)] = "1h",
    horizon: Annotated[int, typer.Option(min=1, max=24 * 14, help="Periods ahead.")] = 24,
    refresh: Annotated[bool, typer.Option(help="Ignore the local cache.")] = False,
) -> None:
    """Forecast runs and task-seconds; recommend a work-pool limit and task-runner width."""
    from prefect_resilience.analytics.scaling import recommend_scaling

    history = _read_history(flow, since, None, [], refresh, True)
    if history.flow_runs.empty:
        raise _no_runs(flow, since)
    advice = recommend_scaling(history.flow_runs, history.task_runs, period=period, horizon=horizon)
    if not advice.ok:
        console.print(f"no recommendation: {advice.reason}", soft_wrap=True)
        return
    for forecast in (advice.runs_forecast, advice.task_seconds_forecast):
        values = forecast.values
        console.print(
            f"{forecast.series}: next {horizon} x {period} total {values['forecast'].sum():.1f}"
            f" ({values['low'].sum():.1f} .. {values['high'].sum():.1f}), model"
            f" {forecast.model} chosen on {forecast.history_periods} periods"
        )
    console.print(f"work-pool concurrency limit: {advice.concurrency_limit}")
    for line in advice.reasoning:
        console.print(f"- {line}", soft_wrap=True)


@app.command("register")
@talks_to_api
def register_blocks(
    logo_url: Annotated[
        str | None,
        typer.Option(
            envvar="PREFECT_RESILIENCE_LOGO_URL",
            help="http(s) URL the UI loads the block type's logo from: where you serve"
            " the package's assets/resilience-policy.png (default: the project's repository).",
        ),
    ] = None,
) -> None:
    """Register the Resilience Policy block type with the Prefect server."""
    from prefect_resilience.blocks import register_block_type

    try:
        register_block_type(logo_url)
    except ResilienceConfigError as exc:
        raise config_failure(exc) from None
    console.print("registered block type: Resilience Policy (resilience-policy)")


app.command("simulate")(simulate)

report_app = typer.Typer(help="Run reports kept on this machine.", no_args_is_help=True)
app.add_typer(report_app, name="report")


@report_app.command("upload")
@talks_to_api
def upload_reports() -> None:
    """Publish reports kept locally while the Prefect API was unreachable, and the
    reports of runs whose process was killed (from their step journals).

    Exit 1 if any stays behind; it is kept for the next try.
    """
    from prefect_resilience.local_store import pending_dir
    from prefect_resilience.pending import upload_pending

    summary = upload_pending()
    for path, reason in summary.failed:
        errors.print(
            f"[red]failed:[/red] {escape(str(path))}: {escape(str(reason))}",
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        f"{len(summary.uploaded)} uploaded, {len(summary.recovered)} reported from step journals,"
        f" {len(summary.running)} still running, {len(summary.failed)} failed ({pending_dir()})",
        highlight=False,
        soft_wrap=True,
    )
    if summary.failed:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
