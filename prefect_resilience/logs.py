"""The logger of the run this code is part of, so decisions show in the run's logs in the UI."""

from __future__ import annotations

import logging
from typing import Any

from prefect.exceptions import MissingContextError
from prefect.logging import get_logger, get_run_logger


def run_logger() -> logging.Logger | logging.LoggerAdapter[Any]:
    """Prefect's logger of the current task or flow run; the package's own outside any run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("prefect_resilience")


def flow_run_log() -> logging.Logger | logging.LoggerAdapter[Any]:
    """The current flow run's logger, to keep: it carries the run's id, so what it logs
    later, from any thread, still reaches that run's logs; the package's own outside a run."""
    from prefect.context import FlowRunContext
    from prefect.logging.loggers import flow_run_logger

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return get_logger("prefect_resilience")
    return flow_run_logger(context.flow_run, context.flow)
