"""The fallbacks a policy document may name: only those the flow's code made available.

A document (a YAML file, a Resilience Policy block anyone with edit rights
changes in the Prefect UI) chooses among fallbacks; it never chooses code. A
name resolves to a fallback given to `@resilient(fallbacks=[...])` or one
registered with `register_fallback`. Importing `module:function` by name is
off: an operator who wants it lists module prefixes in code
(`allow_fallback_imports`) or in the worker's environment
(`PREFECT_RESILIENCE_FALLBACK_IMPORTS`), never in the document.

This module has no Prefect import: a fallback is kept as the callable or task
it was given as, and made a task where it runs.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import yaml

from prefect_resilience.errors import ResilienceConfigError

F = TypeVar("F", bound=Callable[..., Any])

IMPORTS_SETTING = "PREFECT_RESILIENCE_FALLBACK_IMPORTS"
"""Environment setting: comma-separated module prefixes a document may import fallbacks from."""

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*(:[A-Za-z][A-Za-z0-9_]*)?$")
MAX_NAME_LENGTH = 200

_registered: dict[str, Callable[..., Any]] = {}
_offered: dict[str, list[Callable[..., Any]]] = {}
_allowed_in_code: list[str] = []

HOW_TO_REGISTER = (
    "make it available in the flow's code: pass it to @resilient(fallbacks=[...]) or"
    " register it with prefect_resilience.register_fallback({name!r}, fn)"
)
HOW_TO_REPLACE_AN_IMPORT = (
    "a document never imports 'module:function': make the function available in the flow's"
    " code (pass it to @resilient(fallbacks=[...]) or register_fallback({name!r}, fn)) and"
    " name it {name!r} in the document, or allow the module on the worker ({setting} or"
    " allow_fallback_imports)"
)


def _how_to_register(name: str) -> str:
    if ":" in name:
        plain = name.rpartition(":")[2] or "name"
        return HOW_TO_REPLACE_AN_IMPORT.format(name=plain, setting=IMPORTS_SETTING)
    return HOW_TO_REGISTER.format(name=name)


class UnknownFallbackError(ResilienceConfigError):
    """A document names a fallback that the flow's code did not make available."""


def check_name(name: str) -> str:
    """A fallback name as a document may write it: a name, or `module:function`."""
    if len(name) > MAX_NAME_LENGTH or not _NAME.match(name):
        raise ValueError(
            f"{name[:60]!r} is not a fallback name (letters, digits, '_', '-', '.',"
            f" at most {MAX_NAME_LENGTH} characters; 'module:function' only where imports"
            " are allowed)"
        )
    return name


@overload
def register_fallback(name: str) -> Callable[[F], F]: ...
@overload
def register_fallback(name: str, fn: F, *, replace: bool = False) -> F: ...
def register_fallback(name: str, fn: Any = None, *, replace: bool = False) -> Any:
    """Make `fn` (a task or a callable) the fallback a document names `name`.

    Use it as a call, `register_fallback("log_notification", notify)`, or as a
    decorator, `@register_fallback("log_notification")`. A name already taken by
    another fallback is an error unless `replace=True`, so two modules cannot
    silently swap what a document runs.
    """
    if fn is None:
        return lambda f: register_fallback(name, f, replace=replace)
    try:
        check_name(name)
    except ValueError as exc:
        raise ResilienceConfigError(str(exc), field="name") from None
    if ":" in name:
        raise ResilienceConfigError(
            f"{name!r}: a registered name has no ':' (that form is for allowed imports)",
            field="name",
        )
    if not callable(fn):
        raise ResilienceConfigError(f"a fallback must be callable, got {fn!r}", field="fn")
    known = _registered.get(name)
    if known is not None and not _same(known, fn) and not replace:
        raise ResilienceConfigError(
            f"fallback {name!r} is already registered ({known!r}); pass replace=True to replace it",
            field="name",
        )
    _registered[name] = fn
    return fn


def unregister_fallback(name: str) -> None:
    """Forget the fallback registered as `name` (a no-op if there is none)."""
    _registered.pop(name, None)


def registered_fallbacks() -> dict[str, Callable[..., Any]]:
    """The fallbacks registered by name, as a copy."""
    return dict(_registered)


def offer(fallbacks: Iterable[Any], names: Callable[[Any], Iterable[str]]) -> None:
    """Record fallbacks given to `@resilient(fallbacks=...)`: documents may name them too."""
    for fallback in fallbacks:
        for name in names(fallback):
            known = _offered.setdefault(name, [])
            # a task made again of the same function (with_options) is the same fallback
            if not any(_code(f) is _code(fallback) for f in known):
                known.append(fallback)


def _code(fallback: Any) -> Any:
    return getattr(fallback, "fn", fallback)


def _same(a: Any, b: Any) -> bool:
    """The same fallback: one object, or one function defined again (its module re-run,
    as Prefect does loading a flow's script)."""
    a, b = _code(a), _code(b)
    where = ("__module__", "__qualname__")
    return a is b or (
        all(hasattr(a, w) for w in where)
        and [getattr(a, w) for w in where] == [getattr(b, w, None) for w in where]
    )


def allow_fallback_imports(*prefixes: str) -> None:
    """Let documents name fallbacks `module:function` from these modules (and submodules).

    Whoever can edit a policy document then chooses which function of these
    modules a failing step runs. Off by default; see docs/reliability.md.
    """
    for prefix in prefixes:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", prefix):
            raise ResilienceConfigError(f"{prefix!r} is not a module name", field="prefixes")
        if prefix not in _allowed_in_code:
            _allowed_in_code.append(prefix)


def allowed_import_prefixes() -> list[str]:
    """Module prefixes fallbacks may be imported from: set in code, then in the environment."""
    from_env = [p.strip() for p in os.environ.get(IMPORTS_SETTING, "").split(",") if p.strip()]
    return [*_allowed_in_code, *from_env]


def _import_allowed(name: str) -> bool:
    module, sep, attr = name.partition(":")
    if not sep or not attr or attr.startswith("_"):
        return False
    return any(module == p or module.startswith(p + ".") for p in allowed_import_prefixes())


def is_available(name: str) -> bool:
    """Whether `name` resolves to a fallback, without importing anything."""
    return name in _registered or name in _offered or _import_allowed(name)


def resolve(name: str) -> Callable[..., Any] | None:
    """The fallback a document's `name` stands for, or None if the code made none available.

    Registered names come first, then fallbacks given to decorators (one per
    name; two different ones under a name are an error), then allowed imports.
    """
    if name in _registered:
        return _registered[name]
    offered = _offered.get(name, [])
    if len(offered) > 1:
        raise ResilienceConfigError(
            f"fallback {name!r} names {len(offered)} different fallbacks given to decorators;"
            f" register the one meant with register_fallback({name!r}, fn)",
            field="fallbacks",
        )
    if offered:
        return offered[0]
    if _import_allowed(name):
        module, _, attr = name.partition(":")
        try:
            found = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ResilienceConfigError(
                f"cannot import fallback {name!r}: {exc}", field="fallbacks"
            ) from None
        if callable(found):
            return found
        raise ResilienceConfigError(f"fallback {name!r} is not callable", field="fallbacks")
    return None


@dataclass(frozen=True)
class NamedFallback:
    """One fallback name in a policy, with the setting that names it."""

    name: str
    field: str


def unknown(named: Iterable[NamedFallback]) -> list[NamedFallback]:
    """The names among `named` that resolve to nothing the code made available."""
    return [n for n in named if not is_available(n.name)]


def unknown_fallback_error(
    missing: list[NamedFallback], *, source: str, lines: dict[str, int] | None = None
) -> UnknownFallbackError:
    """One error naming each unknown fallback, where it is, and how to register it."""
    path = source.removeprefix("file ") if source.startswith("file ") else None

    def where(n: NamedFallback) -> str:
        line = (lines or {}).get(n.name)
        return f"{source}{f', line {line}' if line else ''}: {n.field}"

    first = missing[0]
    if len(missing) == 1:
        message = (
            f"fallback {first.name!r} is not available to this flow ({where(first)});"
            f" {_how_to_register(first.name)}"
        )
    else:
        listed = "\n  ".join(f"{where(n)}: {n.name!r}" for n in missing)
        how = {_how_to_register(n.name) for n in missing}
        message = (
            f"{len(missing)} fallbacks are not available to this flow:\n  {listed}\n"
            + "\n".join(sorted(how))
        )
    error = UnknownFallbackError(message)  # the message says where; the fields are for code
    error.field, error.path, error.line = first.field, path, (lines or {}).get(first.name)
    return error


def named_in(policy: Any) -> Iterator[NamedFallback]:
    """Each fallback name a workflow policy's step policies give, with its setting."""
    for rule in policy.step_policies:
        for name in rule.fallbacks:
            yield NamedFallback(name, f"step_policies[{rule.match}].fallbacks")


def check_policy(policy: Any, *, source: str, text: str | None = None) -> None:
    """Refuse a workflow policy naming a fallback the code did not make available.

    `source` says where the policy came from ('file PATH', 'block NAME'); with
    the document's `text`, the error also gives the line of each name.
    """
    missing = unknown(named_in(policy))
    if missing:
        lines = fallback_lines(text) if text is not None else None
        raise unknown_fallback_error(missing, source=source, lines=lines)


FALLBACK_KEYS = frozenset({"fallbacks", "fallbackActions", "fallback_actions"})


def fallback_lines(text: str) -> dict[str, int]:
    """The line of each fallback name in a YAML document (its first mention)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value in FALLBACK_KEYS:
                    for name, line in _names_with_lines(value):
                        lines.setdefault(name, line)
                stack.append(value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return lines


def _names_with_lines(node: Any) -> Iterator[tuple[str, int]]:
    items = node.value if isinstance(node, yaml.SequenceNode) else [node]
    for item in items:
        if isinstance(item, yaml.MappingNode):
            item = next((v for k, v in item.value if getattr(k, "value", None) == "type"), None)
        if isinstance(item, yaml.ScalarNode):
            yield item.value, item.start_mark.line + 1
