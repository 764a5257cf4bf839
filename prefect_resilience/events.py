"""Prefect events the package emits, for Automations: steps, runs and circuit breakers."""

from __future__ import annotations

from typing import Any

from prefect.logging import get_logger

EVENT_PREFIX = "prefect-resilience"

logger = get_logger("prefect_resilience")


def emit(
    event: str, resource: dict[str, str], related: list[dict[str, str]], payload: dict[str, Any]
) -> None:
    """Emit `prefect-resilience.<event>`; an event is a notification, so a failure only warns."""
    from prefect.events import emit_event

    name = f"{EVENT_PREFIX}.{event}"
    try:
        emit_event(event=name, resource=resource, related=related, payload=payload)
    except Exception as exc:
        logger.warning("could not emit %s: %s", name, exc)
