"""The main job: every failure policy at work on a real Prefect server.

Run with `make demo` (Prefect's embedded SQLite server, no setup) or
`python flows/demo.py`. Steps fail on purpose: the first table shows what each
policy made of its failure, with attempts read back from Prefect; the second
runs the originating design's scenario with injected failures, one row per
run; then come the latest run's report as Prefect stores it, the analysis of
that history, the changes `optimize` proposes from it, and what the policies
do beyond retries against a rate-limited, flaky partner API.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time
from typing import Any

from partner_api import INVENTORY_BREAKER, partner_api
from prefect import task
from rich.console import Console
from rich.markdown import Markdown
from rich.progress import Progress
from rich.table import Table
from seed_scenario import SCENARIO_POLICY, seed_scenario

from prefect_resilience import PartialSuccessResult, circuit, get_report, resilient, resilient_flow
from prefect_resilience.analytics.candidates import propose
from prefect_resilience.analytics.summary import analyze
from prefect_resilience.analytics.summary import to_markdown as analysis_markdown
from prefect_resilience.history import load_history, parse_since
from prefect_resilience.optimize import to_markdown as proposal_markdown
from prefect_resilience.report import to_markdown

_db_attempts = itertools.count(1)


@resilient(
    policy="fail_fast",
    critical=True,
    impact="critical",
    retries=3,
    backoff={"initial": 0.2, "factor": 2, "max": 1, "jitter": 0.2},
)
def critical_database_setup() -> str:
    """Flaky twice, then up: recovered by Prefect retries with capped backoff."""
    if next(_db_attempts) < 3:
        raise ConnectionError("database not accepting connections yet")
    return "schema ready"


@resilient(policy="continue", impact="minor", default="analytics off")
def optional_analytics_setup() -> str:
    raise TimeoutError("analytics endpoint timed out")


@task
def email_fallback(user: str) -> str:
    raise ConnectionError(f"SMTP refused the message to {user}")


@task
def queue_notification(user: str) -> str:
    return f"notification to {user} queued for later"


@resilient(fallbacks=[email_fallback, queue_notification], default="not notified")
def user_notification(user: str) -> str:
    raise RuntimeError("push service unavailable")


@resilient(
    policy="partial_success",
    impact="major",
    retries=1,
    retry_delay=0.1,
    give_up_on=[PermissionError],
    default=[],
)
def monitoring_checks(region: str) -> list[str]:
    if region == "eu":
        raise PermissionError(f"no credentials for monitoring in {region}")
    return [f"{region}: ok"]


@resilient(policy="fail_fast", impact="negligible")
def cleanup() -> str:
    return "temp files removed"


@resilient_flow(name="resilience-demo")
def resilience_demo() -> dict[str, Any]:
    results: dict[str, Any] = {"database": critical_database_setup()}
    results["analytics"] = optional_analytics_setup.submit().result()
    results["notification"] = user_notification("ada")
    results["monitoring"] = monitoring_checks.map(["us", "eu", "ap"]).result()
    results["cleanup"] = cleanup()
    return results


STATUS_STYLE = {
    "succeeded": "green",
    "recovered": "green",
    "completed": "green",
    "degraded": "yellow",
    "tolerated": "yellow",
    "partial_success": "yellow",
    "failed": "red",
    "terminated": "red",
    "crashed": "red",
}


def styled(value: str) -> str:
    style = STATUS_STYLE.get(value, "white")
    return f"[{style}]{value}[/{style}]"


def show_steps(report: PartialSuccessResult, console: Console) -> None:
    table = Table(title="1. What each policy made of its step", show_lines=True)
    for column in ("step", "policy", "status", "attempts", "action", "why"):
        table.add_column(column, overflow="fold")
    for o in report.steps:
        table.add_row(
            o.name,
            o.policy.value,
            styled(o.status.value),
            "?" if o.attempts is None else str(o.attempts),
            o.action.value if o.action else "-",
            o.reason or "first attempt succeeded",
        )
    console.print(table)


def run_history(console: Console, runs: int, failure_rate: float) -> PartialSuccessResult:
    """Run the seed scenario with injected failures; one table row per run."""
    table = Table(
        title=f"2. The seed scenario, {runs} runs, each step attempt failing with p={failure_rate}"
    )
    for column in ("run", "final state", "health", "delivered", "degraded", "failed", "rule"):
        table.add_column(column)
    latest = None
    with Progress(console=console, transient=True) as progress:
        job = progress.add_task("running the scenario", total=runs)
        for seed in range(1, runs + 1):
            state = seed_scenario(failure_rate, seed, return_state=True)
            latest = get_report(state.state_details.flow_run_id)
            h = latest.health
            table.add_row(
                str(seed),
                f"{state.name} ({styled(latest.overall_status.value)})",
                f"{h.health_score:.2f}",
                f"{h.completed + h.degraded}/{h.total}",
                str(h.degraded),
                str(h.failed),
                h.stopped_by.value if h.stopped_by else "-",
            )
            progress.advance(job)
    console.print(table)
    return latest


def beyond_retries(console: Console) -> None:
    """The partner API of flows/partner_api.py: RetryAfter and a retry budget, a mapped batch
    with min_success_ratio, and a circuit breaker that outlives the run that opened it."""
    circuit.reset(INVENTORY_BREAKER)
    table = Table(title="6. Beyond retries: a rate-limited, flaky partner API", show_lines=True)
    for column in ("run", "final state", "what the policies did"):
        table.add_column(column, overflow="fold")
    runs: list[tuple[str, dict[str, Any]]] = [
        ("quote service says 429, retry after 1s, once", {"rate_limited_for": 1}),
        ("quote service says 429 for 6 attempts", {"rate_limited_for": 6}),
        ("2 of 10 SKUs have no price", {"broken_skus": 2}),
        ("3 of 10 SKUs have no price", {"broken_skus": 3}),
        ("inventory API down", {"outage": True}),
        ("inventory API still down, next run", {"outage": True}),
    ]
    for label, parameters in runs:
        state = partner_api(**parameters, return_state=True)
        report = get_report(state.state_details.flow_run_id)
        table.add_row(label, f"{state.name} ({styled(report.overall_status.value)})",
                      _what_happened(report))  # fmt: skip
    console.print(table)
    state = circuit.read_state(INVENTORY_BREAKER)
    console.print(
        f"Circuit breaker {INVENTORY_BREAKER!r} (Prefect Variable"
        f" {circuit.state_variable(INVENTORY_BREAKER)!r}): {state.state.value}, {state.reason}"
    )


def _what_happened(report: PartialSuccessResult) -> str:
    quote = next((o for o in report.steps if o.name == "fetch_quote"), None)
    stock = [o for o in report.steps if o.name == "inventory"]
    lines = []
    if quote is not None:
        lines.append(f"fetch_quote: {quote.status.value} after {quote.attempts} attempt(s)")
    if report.health.stopped_by is not None:
        lines.append(report.message)
    if stock:
        skipped = sum(o.exception_type == "CircuitOpen" for o in stock)
        lines.append(
            f"inventory: {len(stock) - skipped} call(s) reached the API,"
            f" {skipped} short-circuited; values from "
            + ", ".join(sorted({o.fallback_used or "the API" for o in stock}))
        )
    return "\n".join(lines)


def quiet_prefect_console() -> None:
    """Keep the terminal for the tables: Prefect's run logs still go to its API and UI."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    for logger in [logging.getLogger(), *loggers]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(logging.CRITICAL)


def main() -> None:
    quiet_prefect_console()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--failure-rate", type=float, default=0.5)
    args = parser.parse_args()
    console = Console(width=max(Console().width, 150))
    started = time.perf_counter()
    with console.status("Starting Prefect's embedded server and running every policy..."):
        state = resilience_demo(return_state=True)
    report = get_report(state.state_details.flow_run_id)
    show_steps(report, console)
    console.print(f"Final state: [bold]{state.name}[/bold]  {state.message or ''}")
    console.print("Values the flow received:")
    for name, value in state.result().items():
        console.print(f"  {name}: {value!r}")
    latest = run_history(console, args.runs, args.failure_rate)
    console.rule("3. The latest run's report (the resilience-report artifact)")
    console.print(Markdown(to_markdown(latest)))
    console.rule("4. What the run history says (prefect-resilience analyze --flow seed-scenario)")
    history = load_history("seed-scenario", since=parse_since("1d"))
    analysis = analyze(history.task_runs, history.flow_runs, history.reports)
    console.print(Markdown(analysis_markdown(analysis, "seed-scenario, last day")))
    console.rule("5. Proposed changes (prefect-resilience optimize --flow seed-scenario)")
    with console.status("Simulating each change on a model fitted to the history..."):
        proposal = propose(
            history.task_runs, history.flow_runs, history.reports, SCENARIO_POLICY, bootstrap=30
        )
    console.print(Markdown(proposal_markdown(proposal)))
    beyond_retries(console)
    console.print(f"[dim]Finished in {time.perf_counter() - started:.1f}s[/dim]")


if __name__ == "__main__":
    main()
