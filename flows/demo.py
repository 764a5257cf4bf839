"""The main job: every failure policy at work on a real Prefect server.

Run with `make demo` (Prefect's embedded SQLite server, no setup) or
`python flows/demo.py`. Steps fail on purpose; the table shows what each
policy made of its failure, with attempts read back from Prefect.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from prefect import flow, task
from rich.console import Console
from rich.table import Table

from prefect_resilience import StepOutcome, collect_outcomes, resilient, with_run_details

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


@flow(name="resilience-demo", log_prints=False)
def resilience_demo() -> tuple[dict[str, Any], list[StepOutcome]]:
    with collect_outcomes() as outcomes:
        results: dict[str, Any] = {"database": critical_database_setup()}
        results["analytics"] = optional_analytics_setup.submit().result()
        results["notification"] = user_notification("ada")
        results["monitoring"] = monitoring_checks.map(["us", "eu", "ap"]).result()
        results["cleanup"] = cleanup()
    return results, with_run_details(outcomes)


STATUS_STYLE = {
    "succeeded": "green",
    "recovered": "green",
    "degraded": "yellow",
    "tolerated": "yellow",
    "failed": "red",
}


def show(results: dict[str, Any], outcomes: list[StepOutcome], console: Console) -> None:
    table = Table(title="What each policy made of its step", show_lines=True)
    for column in ("step", "policy", "status", "attempts", "action", "why"):
        table.add_column(column, overflow="fold")
    for o in outcomes:
        style = STATUS_STYLE[o.status.value]
        table.add_row(
            o.name,
            o.policy.value,
            f"[{style}]{o.status.value}[/{style}]",
            "?" if o.attempts is None else str(o.attempts),
            o.action.value if o.action else "-",
            o.reason or "first attempt succeeded",
        )
    console.print(table)
    console.print("[bold]Values the flow received:[/bold]")
    for name, value in results.items():
        console.print(f"  {name}: {value!r}")


def main() -> None:
    console = Console(width=max(Console().width, 150))
    started = time.perf_counter()
    with console.status("Running the resilience demo on Prefect's embedded server..."):
        results, outcomes = resilience_demo()
    show(results, outcomes, console)
    console.print(f"[dim]Finished in {time.perf_counter() - started:.1f}s[/dim]")


if __name__ == "__main__":
    main()
