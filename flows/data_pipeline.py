"""A data pipeline that fans out with `.map()`: one extract and transform per partition.

`discover_partitions` lists the partitions (fail_fast, critical, retried);
`extract` reads each one (partial_success: a partition that cannot be read is
left out, reported unavailable, and the run ends `PartialSuccess`);
`transform` reshapes each partition's rows (fail_fast: a bug must stop the
run); `load` writes what arrived (fail_fast, critical); `refresh_dashboard`
is a nicety (continue). Under `PIPELINE_POLICY` a run that loses more than 3
partitions is terminated by the `max_partial_failures` rule.

Failure injection as in seed_scenario.py: `failure_rate` and `seed`, or
`fail_steps` globs on `step` or `step:item` (`extract:part-2`, `load`).

    python flows/data_pipeline.py
    python flows/data_pipeline.py --fail-step extract:part-2

The run's policy is `PIPELINE_POLICY`, or the Resilience Policy block named
by the environment variable RESILIENCE_POLICY (set per deployment in
flows/prefect.yaml), read when each run starts.
"""

from __future__ import annotations

import argparse
import os
import random

from prefect import Flow, unmapped
from seed_scenario import maybe_fail

from prefect_resilience import WorkflowPolicy, resilient, resilient_flow

QUICK_BACKOFF = {"initial": 0.05, "factor": 2, "max": 0.2, "jitter": 0.1}


@resilient(policy="fail_fast", critical=True, impact="critical", retries=2, backoff=QUICK_BACKOFF)
def discover_partitions(
    partitions: int,
    failure_rate: float = 0.0,
    seed: int | None = None,
    fail_steps: list[str] | None = None,
) -> list[str]:
    maybe_fail("discover_partitions", failure_rate, seed, fail_steps)
    return [f"part-{i}" for i in range(partitions)]


@resilient(policy="partial_success", impact="major", retries=2, backoff=QUICK_BACKOFF, default=[])
def extract(
    partition: str,
    rows: int,
    failure_rate: float = 0.0,
    seed: int | None = None,
    fail_steps: list[str] | None = None,
) -> list[dict[str, object]]:
    maybe_fail(f"extract:{partition}", failure_rate, seed, fail_steps)
    values = random.Random(partition)
    return [
        {"partition": partition, "id": i, "amount": round(values.uniform(1, 100), 2)}
        for i in range(rows)
    ]


@resilient(policy="fail_fast", impact="major")
def transform(
    partition: str,
    records: list[dict[str, object]],
    failure_rate: float = 0.0,
    seed: int | None = None,
    fail_steps: list[str] | None = None,
) -> list[dict[str, object]]:
    maybe_fail(f"transform:{partition}", failure_rate, seed, fail_steps)
    return [{**r, "amount_cents": round(float(r["amount"]) * 100)} for r in records]


@resilient(policy="fail_fast", critical=True, impact="critical", retries=1, retry_delay=0.05)
def load(
    batches: list[list[dict[str, object]]],
    failure_rate: float = 0.0,
    seed: int | None = None,
    fail_steps: list[str] | None = None,
) -> int:
    maybe_fail("load", failure_rate, seed, fail_steps)
    return sum(len(batch) for batch in batches)


@resilient(policy="continue", impact="negligible", default="dashboard not refreshed")
def refresh_dashboard(
    loaded: int,
    failure_rate: float = 0.0,
    seed: int | None = None,
    fail_steps: list[str] | None = None,
) -> str:
    maybe_fail("refresh_dashboard", failure_rate, seed, fail_steps)
    return f"dashboard shows {loaded} rows"


PIPELINE_POLICY = WorkflowPolicy(name="data-pipeline", max_partial_failures=3)
# a deployment names a Resilience Policy block instead (flows/prefect.yaml)
POLICY = os.environ.get("RESILIENCE_POLICY") or PIPELINE_POLICY


def pipeline(
    partitions: int = 6,
    rows: int = 100,
    failure_rate: float = 0.0,
    seed: int | None = None,
    fail_steps: list[str] | None = None,
) -> dict[str, object]:
    """Extract, transform and load `partitions` partitions of `rows` rows each."""
    names = discover_partitions(partitions, failure_rate, seed, fail_steps)
    injection = (failure_rate, seed, unmapped(fail_steps))
    # gathered as values: a resilient step's future cannot be shipped to a Dask worker
    # (it settles in the flow process), and dask_pipeline.py runs this same function
    extracted = extract.map(names, rows, *injection).result()
    transformed = transform.map(names, extracted, *injection)
    loaded = load(transformed, failure_rate, seed, fail_steps)
    dashboard = refresh_dashboard(loaded, failure_rate, seed, fail_steps)
    batches = transformed.result()
    return {
        "partitions": len(names),
        "loaded_rows": loaded,
        "missing_partitions": [n for n, batch in zip(names, batches, strict=True) if not batch],
        "dashboard": dashboard,
    }


# the flow; dask_pipeline.py makes a second flow of the same function
data_pipeline = resilient_flow(pipeline, policy=POLICY, name="data-pipeline")


def main(flow: Flow[..., dict[str, object]], description: str) -> None:
    """Run a pipeline flow once from the command line and print its final state."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--fail-step", action="append", default=[], metavar="GLOB")
    args = parser.parse_args()
    state = flow(
        args.partitions, args.rows, args.failure_rate, args.seed, args.fail_step, return_state=True
    )
    print(f"{state.name}: {state.message or ''}")


if __name__ == "__main__":
    main(data_pipeline, __doc__.splitlines()[0])
