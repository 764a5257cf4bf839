"""The originating design's scenario as a Prefect flow, with failure injection.

Critical database setup (fail_fast, 3 retries with capped backoff), optional
analytics setup (continue, minor impact), user notification (graceful
degradation: email, then queue), and monitoring checks per region
(continue). `failure_rate` makes step attempts fail on purpose; `seed` makes
a run repeatable; `fail_steps` makes every attempt of the named steps fail
(globs on `step` or `step:item`, e.g. `monitoring_checks:eu`).

    python flows/seed_scenario.py --failure-rate 0.3 --seed 7
    python flows/seed_scenario.py --failure-rate 0 --fail-step user_notification

The run's policy is `SCENARIO_POLICY`, or the Resilience Policy block named by
the environment variable RESILIENCE_POLICY (set per deployment in
flows/prefect.yaml), read when each run starts.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import random

from prefect import get_run_logger, task, unmapped
from prefect.runtime import task_run

from prefect_resilience import WorkflowPolicy, register_fallback, resilient, resilient_flow


class InjectedFailure(ConnectionError):
    """A failure made on purpose by the scenario's failure injection."""


def maybe_fail(
    step: str, failure_rate: float, seed: int | None, fail_steps: list[str] | None = None
) -> None:
    """Fail this attempt if `step` is in `fail_steps`, else with probability `failure_rate`.

    `step` is a step name, or `name:item` for one run of a mapped step; a
    pattern in `fail_steps` matches either. The random draw is per (seed,
    step, attempt), so a seeded run is repeatable.
    """
    name = step.split(":", 1)[0]
    if any(fnmatch.fnmatchcase(step, p) or fnmatch.fnmatchcase(name, p) for p in fail_steps or ()):
        raise InjectedFailure(
            f"{step}: failure injected by fail_steps (attempt {task_run.run_count})"
        )
    if failure_rate <= 0:
        return
    draw = random.Random(f"{seed}:{step}:{task_run.run_count}").random()
    if draw < failure_rate:
        raise InjectedFailure(f"{step}: injected failure (attempt {task_run.run_count})")


@resilient(
    policy="fail_fast",
    critical=True,
    impact="critical",
    retries=3,
    backoff={"initial": 0.05, "factor": 2, "max": 0.2, "jitter": 0.1},
)
def critical_database_setup(
    failure_rate: float = 0.0, seed: int | None = None, fail_steps: list[str] | None = None
) -> str:
    maybe_fail("critical_database_setup", failure_rate, seed, fail_steps)
    return "schema ready"


@resilient(policy="continue", impact="minor", default="analytics disabled")
def optional_analytics_setup(
    failure_rate: float = 0.0, seed: int | None = None, fail_steps: list[str] | None = None
) -> str:
    maybe_fail("optional_analytics_setup", failure_rate, seed, fail_steps)
    return "analytics ready"


@task
def email_fallback(
    user: str,
    failure_rate: float = 0.0,
    seed: int | None = None,
    fail_steps: list[str] | None = None,
) -> str:
    maybe_fail("email_fallback", failure_rate, seed, fail_steps)
    return f"emailed {user}"


@task
def queue_notification(user: str) -> str:
    return f"queued a notification for {user}"


# The seed's fallback actions (`fallbackActions: [{type: log_notification}, ...]` in
# blocks/production-resilience.yaml), registered by name: a policy document may name
# only fallbacks the code made available, never a module to import.
@register_fallback("log_notification")
@task
def log_notification(user: str = "") -> str:
    get_run_logger().warning("notification for %s not sent; logged instead", user or "a user")
    return "notification logged"


@register_fallback("queue_for_retry")
@task
def queue_for_retry(user: str = "") -> str:
    return f"queued a notification for {user or 'a user'} to retry later"


@resilient(
    fallbacks=[email_fallback, queue_notification],
    retries=1,
    retry_delay=0.05,
    default="not notified",
)
def user_notification(
    user: str,
    failure_rate: float = 0.0,
    seed: int | None = None,
    fail_steps: list[str] | None = None,
) -> str:
    maybe_fail("user_notification", failure_rate, seed, fail_steps)
    return f"pushed to {user}"


@resilient(policy="continue", impact="negligible", retries=1, default="unknown")
def monitoring_checks(
    region: str,
    failure_rate: float = 0.0,
    seed: int | None = None,
    fail_steps: list[str] | None = None,
) -> str:
    maybe_fail(f"monitoring_checks:{region}", failure_rate, seed, fail_steps)
    return f"{region} healthy"


SCENARIO_POLICY = WorkflowPolicy(
    name="seed-scenario",
    max_partial_failures=3,
    critical_step_ratio=0.8,
)


@resilient_flow(policy=os.environ.get("RESILIENCE_POLICY") or SCENARIO_POLICY, name="seed-scenario")
def seed_scenario(
    failure_rate: float = 0.0, seed: int | None = None, fail_steps: list[str] | None = None
) -> dict[str, object]:
    database = critical_database_setup(failure_rate, seed, fail_steps)
    analytics = optional_analytics_setup.submit(failure_rate, seed, fail_steps)
    notified = user_notification.submit("ada", failure_rate, seed, fail_steps)
    regions = monitoring_checks.map(["us", "eu", "ap"], failure_rate, seed, unmapped(fail_steps))
    return {
        "database": database,
        "analytics": analytics.result(),
        "notification": notified.result(),
        "monitoring": regions.result(),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--failure-rate", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--fail-step", action="append", default=[], metavar="GLOB")
    args = parser.parse_args()
    state = seed_scenario(args.failure_rate, args.seed, args.fail_step, return_state=True)
    print(f"{state.name}: {state.message or ''}")
