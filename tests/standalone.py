"""The analytics package run on its own, where Prefect, the rest of the package and pydantic
cannot be imported: proof that its pure modules need nothing but the numeric stack."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ANALYTICS = Path(__file__).resolve().parent.parent / "prefect_resilience" / "analytics"

_PROLOGUE = f"""
import importlib, importlib.abc, importlib.util, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("prefect", "prefect_resilience", "pydantic"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
spec = importlib.util.spec_from_file_location(
    "standalone_analytics", {str(ANALYTICS / "__init__.py")!r},
    submodule_search_locations=[{str(ANALYTICS)!r}],
)
analytics = importlib.util.module_from_spec(spec)
sys.modules["standalone_analytics"] = analytics
spec.loader.exec_module(analytics)
"""


def run_standalone(body: str) -> str:
    """Run `body` (with `analytics`, the package loaded on its own, and `importlib` in
    scope; its submodules are `standalone_analytics.<name>`); return what it printed."""
    script = _PROLOGUE + textwrap.dedent(body)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()
