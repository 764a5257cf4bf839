"""A Prefect flow that analyses run history on a schedule and publishes it as artifacts.

    python flows/resilience_monitor.py --flow seed-scenario --since 7d          # once
    python flows/resilience_monitor.py --flow seed-scenario --serve "0 * * * *"  # hourly

Each run writes a markdown summary and tables (continuity, steps, failure
patterns) as artifacts keyed per analysed flow, so the Prefect UI keeps their
history; and the compliance report (the design's targets, from the history
since `compliance_since`, each passed, missed or short of data) as a markdown
and a table artifact.
"""

from __future__ import annotations

import argparse

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from prefect_resilience.analytics.summary import analyze, to_markdown
from prefect_resilience.cli import publish_compliance
from prefect_resilience.compliance import evaluate
from prefect_resilience.history import load_history, parse_since
from prefect_resilience.report import artifact_key


@flow(name="resilience-monitor")
def resilience_monitor(
    flow_name: str | None = None,
    since: str = "7d",
    recent: str = "1D",
    baseline: str = "7D",
    compliance_since: str = "30d",
) -> dict:
    """Analyse the history of `flow_name` (or every flow) and publish the results."""
    history = load_history(flow_name, since=parse_since(since))
    analysis = analyze(
        history.task_runs, history.flow_runs, history.reports, recent=recent, baseline=baseline
    )
    subject = flow_name or "all-flows"
    title = f"Resilience analysis: {subject}, since {since}"
    create_markdown_artifact(
        to_markdown(analysis, title), key=artifact_key("analysis", subject), description=title
    )
    summary = analysis.to_json()
    for kind, rows in (("continuity", summary["continuity"]), ("step-stats", summary["steps"])):
        if rows:
            create_table_artifact(rows, key=artifact_key(kind, subject))
    logger = get_run_logger()
    logger.info(
        "analysed %s flow runs and %s task runs (%s fetched from the API)",
        analysis.flow_runs,
        analysis.task_runs,
        history.fetched_flow_runs,
    )
    longer = load_history(flow_name, since=parse_since(compliance_since))
    compliance = evaluate(longer.flow_runs, longer.task_runs, longer.reports)
    publish_compliance(compliance, subject)
    missed = compliance.missed
    if missed:
        logger.warning(
            "%s of the design's targets missed: %s",
            len(missed),
            ", ".join(f"{r.id} {r.claim} {r.measured_text} (target {r.target})" for r in missed),
        )
    summary["compliance"] = compliance.to_json()
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flow", default=None)
    parser.add_argument("--since", default="7d")
    parser.add_argument("--compliance-since", default="30d")
    parser.add_argument("--serve", metavar="CRON", default=None)
    args = parser.parse_args()
    if args.serve:
        resilience_monitor.serve(
            name=f"monitor-{args.flow or 'all'}",
            cron=args.serve,
            parameters={
                "flow_name": args.flow,
                "since": args.since,
                "compliance_since": args.compliance_since,
            },
        )
    else:
        resilience_monitor(args.flow, args.since, compliance_since=args.compliance_since)
