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
