"""Fallbacks named in documents resolve only to what the flow's code made available.

A policy document (a file, a block anyone with edit rights changes in the UI)
chooses among fallbacks; it never chooses code. These tests name dangerous
callables and a module whose import has a side effect, and check that nothing
is imported or run, and that the error says which fallback, where, and how to
register one.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefect_resilience import fallbacks
from prefect_resilience.errors import ResilienceConfigError
from prefect_resilience.fallbacks import (
    IMPORTS_SETTING,
    UnknownFallbackError,
    allow_fallback_imports,
    register_fallback,
)
from prefect_resilience.policy_documents import load_policy

# each test starts with no registered names and no allowed imports (and leaves none)
pytestmark = pytest.mark.usefixtures("clean_fallbacks")


@pytest.fixture
def tripwire(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A module on sys.path whose import writes a file: the proof that it was imported."""
    marker = tmp_path / "imported"
    (tmp_path / "tripwire_fallbacks.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n"
        "def run(*args, **kwargs):\n    return 'tripwire ran'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    sys.modules.pop("tripwire_fallbacks", None)


def _document(tmp_path: Path, *names: str) -> Path:
    listed = "\n".join(f"          - type: {name!r}" for name in names)
    path = tmp_path / "policy.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            apiVersion: workflow.kubernaut.io/v1
            kind: WorkflowResilienceConfig
            metadata:
              name: notify
            spec:
              stepPolicies:
                notifications:
                  failurePolicy: graceful_degradation
                  fallbackActions:
            """
        )
        + listed
        + "\n"
    )
    return path


def _check(path: Path) -> None:
    fallbacks.check_policy(load_policy(path), source=f"file {path}", text=path.read_text())


DANGEROUS = ["os:system", "subprocess:getoutput", "builtins:eval", "builtins.eval", "os.system"]


@pytest.mark.parametrize("name", DANGEROUS)
def test_a_document_naming_code_imports_and_runs_nothing(tmp_path: Path, name: str) -> None:
    path = _document(tmp_path, name)
    before = set(sys.modules)
    with pytest.raises(UnknownFallbackError) as caught:
        _check(path)
    assert set(sys.modules) == before
    error = caught.value
    assert isinstance(error, ResilienceConfigError)
    assert (error.path, error.line) == (str(path), 10)
    assert error.field == "step_policies[notifications].fallbacks"
    message = str(error)
    assert repr(name) in message and f"{path}, line 10" in message
    assert "register_fallback(" in message and "@resilient(fallbacks=" in message


def test_a_module_with_an_import_side_effect_is_never_imported(
    tmp_path: Path, tripwire: Path
) -> None:
    path = _document(tmp_path, "tripwire_fallbacks:run")
    with pytest.raises(UnknownFallbackError, match="never imports 'module:function'"):
        _check(path)
    assert fallbacks.resolve("tripwire_fallbacks:run") is None
    assert "tripwire_fallbacks" not in sys.modules and not tripwire.exists()


def test_imports_are_allowed_only_from_listed_modules_in_code(tripwire: Path) -> None:
    allow_fallback_imports("tripwire_fallbacks")
    assert fallbacks.is_available("tripwire_fallbacks:run") and not tripwire.exists()
    assert not fallbacks.is_available("tripwire_fallbacks:_private")
    assert not fallbacks.is_available("tripwire_fallbacksx:run")  # a prefix is a module
    assert not fallbacks.is_available("os:system")
    found = fallbacks.resolve("tripwire_fallbacks:run")
    assert found is not None and found() == "tripwire ran" and tripwire.exists()


def test_imports_are_allowed_from_the_workers_environment(
    tripwire: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert fallbacks.allowed_import_prefixes() == []  # off by default
    monkeypatch.setenv(IMPORTS_SETTING, "somewhere.else, tripwire_fallbacks")
    assert fallbacks.allowed_import_prefixes() == ["somewhere.else", "tripwire_fallbacks"]
    found = fallbacks.resolve("tripwire_fallbacks:run")
    assert found is not None and found() == "tripwire ran"


def test_allowing_a_non_module_is_an_error() -> None:
    with pytest.raises(ResilienceConfigError, match="not a module name"):
        allow_fallback_imports("os; rm -rf /")


def test_the_seeds_fallback_actions_resolve_to_registered_fallbacks(tmp_path: Path) -> None:
    @register_fallback("log_notification")
    def log_notification(user: str) -> str:
        return f"logged {user}"

    register_fallback("queue_for_retry", lambda user: f"queued {user}")
    path = _document(tmp_path, "log_notification", "queue_for_retry")
    _check(path)  # no error: both are available
    assert fallbacks.resolve("log_notification") is log_notification
    assert log_notification("ada") == "logged ada"  # the decorator returns the function


def test_several_unknown_fallbacks_are_listed_each_with_its_line(tmp_path: Path) -> None:
    register_fallback("log_notification", print)
    path = _document(tmp_path, "log_notification", "page_someone", "os:system")
    with pytest.raises(UnknownFallbackError) as caught:
        _check(path)
    message = str(caught.value)
    assert "2 fallbacks are not available" in message
    assert f"{path}, line 11: step_policies[notifications].fallbacks: 'page_someone'" in message
    assert f"{path}, line 12: step_policies[notifications].fallbacks: 'os:system'" in message
    assert "'log_notification'" not in message


def test_registering_a_name_twice_is_refused_unless_replaced() -> None:
    register_fallback("notify", print)
    register_fallback("notify", print)  # the same one again: nothing changes
    with pytest.raises(ResilienceConfigError, match="already registered"):
        register_fallback("notify", repr)
    register_fallback("notify", repr, replace=True)
    assert fallbacks.resolve("notify") is repr
    fallbacks.unregister_fallback("notify")
    assert fallbacks.resolve("notify") is None


@pytest.mark.parametrize(
    ("name", "fn", "words"),
    [
        ("os:system", print, "no ':'"),
        ("", print, "not a fallback name"),
        ("has space", print, "not a fallback name"),
        ("x" * 201, print, "at most 200"),
        ("notify", 42, "must be callable"),
    ],
)
def test_bad_registrations_name_the_problem(name: str, fn: Any, words: str) -> None:
    with pytest.raises(ResilienceConfigError, match=words):
        register_fallback(name, fn)


def test_a_document_with_a_name_that_is_no_name_is_refused_with_its_line() -> None:
    with pytest.raises(ResilienceConfigError) as caught:
        load_policy(
            "stepPolicies:\n  db:\n    failurePolicy: graceful_degradation\n"
            "    fallbacks: [\"__import__('os').system('true')\"]\n"
        )
    assert caught.value.line == 4 and "not a fallback name" in str(caught.value)


fallback_names = st.one_of(
    st.sampled_from([*DANGEROUS, "antigravity:fly", "this:s", "json:loads", "http.server:test"]),
    st.from_regex(r"\A[a-z_][a-z0-9_]{0,12}(\.[a-z_][a-z0-9_]{0,8}){0,2}(:[a-z][a-z0-9_]{0,8})?\Z"),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(fallback_names, min_size=1, max_size=5))
def test_no_document_of_fallback_names_imports_anything(names: list[str]) -> None:
    listed = "".join(f"      - {name!r}\n" for name in names)
    text = (
        f"stepPolicies:\n  step:\n    failurePolicy: graceful_degradation\n    fallbacks:\n{listed}"
    )
    before = set(sys.modules)
    policy = load_policy(text)
    with pytest.raises(UnknownFallbackError):
        fallbacks.check_policy(policy, source="text", text=text)
    assert all(fallbacks.resolve(name) is None for name in names)
    assert set(sys.modules) == before


def test_a_module_run_again_registers_its_fallback_again() -> None:
    source = "def notify():\n    return 'first'\n"
    first: dict[str, Any] = {"__name__": "flows_module"}
    again: dict[str, Any] = {"__name__": "flows_module"}
    exec(compile(source, "flows_module.py", "exec"), first)  # the module, run twice
    exec(compile(source.replace("first", "again"), "flows_module.py", "exec"), again)
    register_fallback("notify", first["notify"])
    register_fallback("notify", again["notify"])  # a reload, not a clash
    found = fallbacks.resolve("notify")
    assert found is not None and found() == "again"
