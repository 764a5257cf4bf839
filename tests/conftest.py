"""Shared fixtures: one real Prefect server (the test harness) for the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A temporary Prefect server on SQLite, started once for the tests that need it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def client(prefect_server: None) -> Iterator[object]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as c:
        yield c


@pytest.fixture
def clean_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """No registered or offered fallbacks and no allowed imports, for one test (and after)."""
    from prefect_resilience import fallbacks

    monkeypatch.setattr(fallbacks, "_registered", {})
    monkeypatch.setattr(fallbacks, "_offered", {})
    monkeypatch.setattr(fallbacks, "_allowed_in_code", [])
    monkeypatch.delenv(fallbacks.IMPORTS_SETTING, raising=False)
