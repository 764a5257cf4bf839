"""Are the exception names a policy lists (`retry_on`, `give_up_on`) names of exceptions?

A misspelt name (`ConnectionErrror`) matches nothing at run time, so retries
silently stop or never stop: `policy validate` asks this module instead. A
name is known when it is

- a glob (`*Error`, `httpx.*`): the user asked for a pattern;
- a builtin exception (`ConnectionError`), or this package's (`RetryAfter`);
- a class of that short name in a module this process already imported;
- a dotted name (`httpx.HTTPStatusError`) whose module's source defines or
  imports that name.

Nothing a document names is imported: the project's rule is that a policy
document never makes code run. A dotted name's module is found with the
import system's path finder, which locates files without executing them, and
its source is read with `ast`. A module that cannot be found that way (one
made at import time) is reported unknown, with the way out: a glob.
"""

from __future__ import annotations

import ast
import builtins
import difflib
import importlib.machinery
import sys
from dataclasses import dataclass
from pathlib import Path

from prefect_resilience import errors

GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class UnknownName:
    """A listed name that names no exception this module can find."""

    field: str  # e.g. "step_policies[0].retry_on"
    name: str
    suggestion: str | None

    def __str__(self) -> str:
        hint = f" (did you mean {self.suggestion}?)" if self.suggestion else ""
        return f"{self.field}: unknown exception {self.name!r}{hint}"


def _builtin_names() -> set[str]:
    found = {
        name
        for name, value in vars(builtins).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    found.update(
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    )
    return found


def _imported_exception_names() -> set[str]:
    """Short names of exception classes in modules already imported (nothing new runs)."""
    found: set[str] = set()
    for module in list(sys.modules.values()):
        for value in list(getattr(module, "__dict__", {}).values()):
            if isinstance(value, type) and issubclass(value, BaseException):
                found.add(value.__name__)
    return found


def _module_file(dotted: str) -> Path | None:
    """The source file of a module, found on sys.path without executing any package."""
    parts = dotted.split(".")
    search: list[str] | None = None
    origin: str | None = None
    for part in parts:
        spec = importlib.machinery.PathFinder.find_spec(part, search)
        if spec is None:
            return None
        origin = spec.origin
        search = list(spec.submodule_search_locations or []) or None
    return Path(origin) if origin and origin.endswith(".py") else None


def _defined_in_source(path: Path, name: str) -> bool:
    """The module's source defines, assigns or imports `name` at its top level."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return False
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            defined = [node.name]
        elif isinstance(node, ast.ImportFrom | ast.Import):
            defined = [a.asname or a.name.split(".")[-1] for a in node.names]
        elif isinstance(node, ast.Assign):
            defined = [t.id for t in node.targets if isinstance(t, ast.Name)]
        else:
            continue
        if name in defined:
            return True
    return False


def _dotted_is_known(name: str) -> bool:
    module_name, _, short = name.rpartition(".")
    module = sys.modules.get(module_name)
    if module is not None:
        value = getattr(module, short, None)
        return isinstance(value, type) and issubclass(value, BaseException)
    path = _module_file(module_name)
    return path is not None and _defined_in_source(path, short)


def unknown_names(listed: dict[str, tuple[str, ...]]) -> list[UnknownName]:
    """The names in `listed` (field -> names) that name no exception, with a close known one."""
    short_known = _builtin_names() | _imported_exception_names()
    unknown = []
    for field, names in listed.items():
        for name in names:
            if GLOB_CHARACTERS & set(name) or name in short_known:
                continue
            if "." in name and _dotted_is_known(name):
                continue
            close = difflib.get_close_matches(name, sorted(short_known), n=1, cutoff=0.8)
            unknown.append(UnknownName(field, name, close[0] if close else None))
    return unknown
