"""The package itself: lazy imports, version, typing marker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import prefect_resilience

PURE = [
    "policy",
    "policy_documents",
    "decision",
    "health",
    "errors",
    "circuit_state",
    "exception_names",
    "analytics",
]


def test_pure_modules_import_through_the_package_without_prefect() -> None:
    """`import prefect_resilience.policy` must not pay for Prefect (about a second)."""
    script = (
        "import sys\n"
        + "".join(f"import prefect_resilience.{name}\n" for name in PURE)
        + "print(sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_public_name_resolves() -> None:
    for name in prefect_resilience.__all__:
        assert getattr(prefect_resilience, name) is not None, name
    assert set(dir(prefect_resilience)) >= set(prefect_resilience.__all__)


def test_unknown_names_raise_attribute_error() -> None:
    try:
        prefect_resilience.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("an unknown name resolved")


def test_version_and_typing_marker() -> None:
    from importlib.metadata import version

    assert prefect_resilience.__version__ == version("prefect-resilience")
    assert (Path(prefect_resilience.__file__).parent / "py.typed").is_file()
