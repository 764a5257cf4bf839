"""A flow run in a process of its own by tests/test_circuit.py: one failing call of a step
behind a shared breaker, started at a wall-clock moment given on the command line, so
that several processes fail at once.

    python tests/circuit_flows.py BREAKER START_EPOCH
"""

from __future__ import annotations

import sys
import time

from prefect import flow

from prefect_resilience import resilient


def main(breaker: str, start: float) -> None:
    @resilient(
        policy="continue",
        default="skipped",
        circuit_breaker={"name": breaker, "failure_threshold": 2, "reset_after": 300},
    )
    def call_dependency() -> str:
        time.sleep(max(0.0, start - time.time()))
        raise ConnectionError("dependency down")

    @flow(name=f"circuit-process-{breaker}")
    def one_call() -> str:
        return call_dependency()

    print(one_call())


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
