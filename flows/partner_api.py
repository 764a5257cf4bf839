"""Calling a rate-limited, flaky partner API: what retries alone cannot do.

- The quote service answers `429 Too Many Requests` and says when to come back:
  `fetch_quote` raises `RetryAfter`, so Prefect's retry waits what it asked (not
  the short backoff), and `retry_budget` stops retrying once the next attempt
  would start more than 5 s after the first (Temporal's schedule-to-close).
- Prices for a batch of SKUs come from one `.map()`: with
  `min_success_ratio=0.8` the run stops as soon as a fifth of the batch can no
  longer be priced (Flyte's map tasks), instead of pricing the rest for nothing.
- The partner's inventory API is behind a circuit breaker shared by every run
  and worker on the server: after 3 failures within a minute it opens, later
  calls (in this run or any other) do not reach the API for 30 s, and the cached
  inventory answers (no orchestrator remembers a failing dependency across runs).

    python flows/partner_api.py
    python flows/partner_api.py --rate-limited 6 --broken-skus 3 --outage
"""

from __future__ import annotations

import argparse
from typing import Any

from prefect import task
from prefect.runtime import task_run

from prefect_resilience import RetryAfter, resilient, resilient_flow

SKUS = [f"sku-{i}" for i in range(10)]
WAREHOUSES = ["north", "south", "east", "west"]
INVENTORY_BREAKER = "partner-inventory"


@resilient(
    retries=5,
    backoff={"initial": 0.2, "max": 2.0},
    retry_budget="5s",
    policy="fail_fast",
    critical=True,
)
def fetch_quote(account: str, rate_limited_for: int) -> float:
    """The quote service is rate limited for its first `rate_limited_for` attempts."""
    if (task_run.run_count or 1) <= rate_limited_for:
        raise RetryAfter(1.0, "quote service: 429 Too Many Requests")
    return 1.07


@resilient(
    policy="partial_success",
    default=None,
    retries=1,
    retry_delay=0.1,
    min_success_ratio=0.8,
    impact="minor",
)
def price(sku: str, quote: float, broken: list[str]) -> float:
    if sku in broken:
        raise LookupError(f"{sku}: no price in the partner's catalogue")
    return round(quote * (10 + SKUS.index(sku)), 2)


@task
def cached_inventory(warehouse: str) -> int:
    """Last night's inventory: stale but available."""
    return 100


@resilient(
    fallbacks=[cached_inventory],
    retries=1,
    retry_delay=0.1,
    impact="minor",
    circuit_breaker={
        "name": INVENTORY_BREAKER,
        "failure_threshold": 3,
        "reset_after": 30,
        "window": 60,
    },
)
def inventory(warehouse: str, outage: bool) -> int:
    if outage:
        raise ConnectionError(f"partner inventory API unreachable ({warehouse})")
    return 120


@resilient_flow(name="partner-api")
def partner_api(
    rate_limited_for: int = 1, broken_skus: int = 0, outage: bool = False
) -> dict[str, Any]:
    quote = fetch_quote("acme", rate_limited_for)
    broken = SKUS[:broken_skus]
    prices = [f.result() for f in price.map(SKUS, quote=quote, broken=[broken] * len(SKUS))]
    stock = {w: inventory(w, outage) for w in WAREHOUSES}
    return {"quote": quote, "priced": sum(p is not None for p in prices), "stock": stock}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate-limited", type=int, default=1, help="attempts answered 429")
    parser.add_argument("--broken-skus", type=int, default=0, help="SKUs without a price")
    parser.add_argument("--outage", action="store_true", help="the inventory API is down")
    args = parser.parse_args()
    state = partner_api(args.rate_limited, args.broken_skus, args.outage, return_state=True)
    print(f"{state.name}: {state.message or ''}")


if __name__ == "__main__":
    main()
