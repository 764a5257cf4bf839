"""Write docs/reference.md from the package's pydantic models and signatures.

    python docs/_reference.py

Every name, alias, type, default, bound and description on the page is read
from the code, and every rule across settings is shown with the error the code
gives for it, so the page cannot drift from the models: tests/test_docs.py
fails when the file differs from a fresh generation.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import annotated_types
import yaml
from pydantic import BaseModel, BeforeValidator, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from prefect_resilience import blocks, flow, policy, policy_documents, report, task, tracker

OUTPUT = Path(__file__).with_name("reference.md")
COMMAND = "python docs/_reference.py"

FUNCTIONS: list[Callable[..., Any]] = [
    task.resilient,
    flow.resilient_flow,
    flow.resilient_loop,
    policy_documents.load_policy,
    tracker.current_health,
    report.get_report,
]
POLICY_MODELS = [
    policy.StepPolicy,
    policy.Backoff,
    policy.CircuitBreaker,
    policy.StepRule,
    policy.WorkflowPolicy,
]
DOCUMENT_MODELS = [
    policy_documents.PolicyDocument,
    policy_documents.PolicyMetadata,
    policy_documents.StepsDocument,
    policy_documents.StepAnnotation,
]


def nested(roots: list[type], kind: type) -> list[type]:
    """`roots` and every subclass of `kind` their fields refer to, depth first, in field order.

    New models and enums in the reports appear on the page without an edit here.
    """
    found: list[type] = []
    seen: set[Any] = set()

    def visit(tp: Any) -> None:
        for arg in typing.get_args(tp):
            visit(arg)
        if not isinstance(tp, type) or tp in seen:
            return
        seen.add(tp)
        if issubclass(tp, kind):
            found.append(tp)
        for field in getattr(tp, "model_fields", {}).values():
            visit(field.annotation)

    for root in roots:
        visit(root)
    return found


REPORT_MODELS: list[type[BaseModel]] = nested([report.PartialSuccessResult], BaseModel)
ENUMS: list[type[Enum]] = nested(
    [*POLICY_MODELS, *DOCUMENT_MODELS, *REPORT_MODELS, policy.FailureAction], Enum
)
DOCUMENTED = {cls.__name__ for cls in [*POLICY_MODELS, *DOCUMENT_MODELS, *REPORT_MODELS, *ENUMS]}
DOCUMENTED.add(blocks.ResiliencePolicy.__name__)

# Rules that span settings, each shown with the error the code gives for it. An example
# that no longer fails stops the generation: the page never shows a rule the code dropped.
RULES: list[tuple[type[BaseModel], str, dict[str, Any]]] = [
    (policy.StepPolicy, "two delay schemes", {"backoff": {"initial": 1}, "retry_delay": 5}),
    (
        policy.StepPolicy,
        "fallbacks under a policy that never runs them",
        {"policy": "continue", "fallbacks": ["cached_price"]},
    ),  # fmt: skip
    (
        policy.StepPolicy,
        "an exception both retried and given up on",
        {"retry_on": ["TimeoutError"], "give_up_on": ["TimeoutError"]},
    ),  # fmt: skip
    (policy.StepPolicy, "more delays than Prefect takes", {"retry_delay": [1.0] * 51}),
    (policy.StepPolicy, "one setting under two names", {"retries": 2, "maxRetries": 3}),
    (policy.StepPolicy, "a backoff cap below its start", {"backoff": {"initial": 10, "max": 1}}),
    (policy.StepPolicy, "a duration that is not one", {"retry_delay": "5 minutes"}),
    (policy.WorkflowPolicy, "an unknown setting (a typo)", {"max_partial_failure": 3}),
    (policy.WorkflowPolicy, "a ratio outside 0..1", {"critical_step_ratio": 80}),
]
DURATION_EXAMPLES = [2, "1.5", "500ms", "5s", "2m", "1h"]


# --- small renderers ---------------------------------------------------------------------


def anchor(name: str) -> str:
    """GitHub's heading anchor for a heading that is just `name` in backticks."""
    return "#" + "".join(c for c in name.lower() if c.isalnum() or c in "-_ ").replace(" ", "-")


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def value(data: Any) -> str:
    """A value as YAML writes it on one line."""
    if data is None:
        return "`null`"
    text = yaml.safe_dump(data, default_flow_style=True, width=1000, sort_keys=False)
    return f"`{text.strip().removesuffix('...').strip()}`"


def join_or(parts: list[str]) -> str:
    parts = list(dict.fromkeys(parts))
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def is_duration(metadata: Iterable[Any]) -> bool:
    return any(isinstance(m, BeforeValidator) and m.func is policy.parse_duration for m in metadata)


def bounds(metadata: Iterable[Any]) -> list[str]:
    found = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            found += bounds(item.metadata)
        elif isinstance(item, annotated_types.Ge):
            found.append(f"≥ {item.ge}")
        elif isinstance(item, annotated_types.Gt):
            found.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Le):
            found.append(f"≤ {item.le}")
        elif isinstance(item, annotated_types.Lt):
            found.append(f"< {item.lt}")
        elif isinstance(item, annotated_types.MinLen) and item.min_length == 1:
            found.append("not empty")
        elif isinstance(item, annotated_types.MinLen):
            found.append(f"at least {item.min_length} long")
        elif isinstance(item, annotated_types.MaxLen):
            found.append(f"at most {item.max_length} long")
    return found


def type_name(tp: Any, none: str = "null") -> str:
    """A type in words: unions with 'or', links to the enums and models on this page."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return none
    if tp is Any:
        return "any"
    if origin is typing.Annotated:
        if is_duration(args[1:]):
            return "[duration](#durations)"
        inner = type_name(args[0], none)
        limits = bounds(args[1:])
        return f"{inner} ({', '.join(limits)})" if limits else inner
    if origin in (typing.Union, types.UnionType):
        return join_or([type_name(a, none) for a in args])
    if origin is typing.Literal:
        return join_or([f"`{a}`" for a in args])
    if origin in (list, tuple, Sequence, set, frozenset):
        return f"list of {type_name(args[0], none)}" if args else "list"
    if origin in (dict, Mapping):
        return f"map of {type_name(args[0], none)} to {type_name(args[1], none)}"
    if origin is Callable or tp is Callable:
        return "callable"
    if origin is not None:
        return type_name(origin, none)
    if tp is policy_documents.PolicySpec:
        return "[WorkflowPolicy](#workflowpolicy) settings but `name`"
    if isinstance(tp, type) and tp.__name__ in DOCUMENTED:
        return f"[{tp.__name__}]({anchor(tp.__name__)})"
    return getattr(tp, "__name__", str(tp))


def default_of(field: FieldInfo) -> str:
    if field.default_factory is not None:
        data = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        data = field.default
    if isinstance(data, BaseModel):  # a nested model's default: the settings it gives
        data = data.model_dump(mode="json", exclude_unset=True)
    return value(TypeAdapter(Any).dump_python(data, mode="json"))


def accepts(field: FieldInfo) -> list[str]:
    """What a field's before-validators accept besides its type, from their docstrings."""
    notes = []
    for item in field.metadata:
        if isinstance(item, BeforeValidator) and item.func is not policy.parse_duration:
            doc = inspect.getdoc(item.func)
            if doc:
                notes.append(doc.splitlines()[0])
    return notes


def aliases(name: str, field: FieldInfo) -> list[str]:
    choices = getattr(field.validation_alias, "choices", None) or []
    return [c for c in choices if isinstance(c, str) and c != name]


# --- sections ----------------------------------------------------------------------------


def doc_of(obj: Any) -> str:
    """The object's own docstring: a class without one does not show its base's."""
    if isinstance(obj, type) and not obj.__dict__.get("__doc__"):
        return ""
    return inspect.getdoc(obj) or ""


def model_table(model: type[BaseModel], skip: Iterable[str] = ()) -> list[str]:
    fields = {n: f for n, f in model.model_fields.items() if n not in set(skip)}
    with_aliases = any(aliases(n, f) for n, f in fields.items())
    with_descriptions = any(f.description for f in fields.values())
    with_bounds = any(bounds(f.metadata) for f in fields.values())
    columns = ["setting"]
    columns += ["also accepted"] if with_aliases else []
    columns += ["type", "default"]
    columns += ["bounds"] if with_bounds else []
    columns += ["description"] if with_descriptions else []
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name, field in fields.items():
        row = [f"`{name}`"]
        if with_aliases:
            row.append(", ".join(f"`{a}`" for a in aliases(name, field)))
        kind = "[duration](#durations)" if is_duration(field.metadata) else None
        row += [kind or type_name(field.annotation), default_of(field)]
        if with_bounds:
            row.append(", ".join(bounds(field.metadata)))
        if with_descriptions:
            text = " ".join([field.description or "", *accepts(field)]).strip()
            row.append(text)
        lines.append("| " + " | ".join(cell(c) for c in row) + " |")
    return lines


def model_section(model: type[BaseModel], skip: Iterable[str] = (), note: str = "") -> list[str]:
    lines = [f"### `{model.__name__}`", "", doc_of(model), ""]
    if note:
        lines += [note, ""]
    return [*lines, *model_table(model, skip), ""]


def function_section(fn: Callable[..., Any]) -> list[str]:
    signature = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    lines = [f"### `{fn.__name__}`", ""]
    # the decorated function itself is positional-only: not an argument a user sets
    params = [p for p in signature.parameters.values() if p.kind is not p.POSITIONAL_ONLY]
    if params:
        lines += ["| argument | type | default | step setting |", "|---|---|---|---|"]
    for param in params:
        name = param.name
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            name = f"**{name}"
        elif param.kind is inspect.Parameter.VAR_POSITIONAL:
            name = f"*{name}"
        tp = hints.get(param.name, Any)
        if param.default is inspect.Parameter.empty:
            default = "" if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL) else "required"
        elif param.default is task._UNSET:
            default = "not set"
        else:
            default = f"`{param.default!r}`"
        setting = ""
        if fn is task.resilient and param.name in policy.StepPolicy.model_fields:
            setting = f"[`{param.name}`](#steppolicy)"
        row = [f"`{name}`", "" if tp is Any else type_name(tp, none="None"), default, setting]
        lines.append("| " + " | ".join(cell(c) for c in row) + " |")
    returns = hints.get("return", Any)
    if returns is not Any:
        lines += ["", f"Returns {type_name(returns, none='None')}."]
    lines += ["", doc_of(fn), ""]
    if fn is task.resilient:
        lines += [
            "An argument left *not set* is not part of the step's policy: a matching step"
            " policy or the workflow's `default_failure_policy` supplies it, else the"
            " `StepPolicy` default applies.",
            "",
        ]
    return lines


def rule_errors() -> list[str]:
    lines = ["| given | error |", "|---|---|"]
    for model, label, data in RULES:
        try:
            model.model_validate(data)
        except ValidationError as exc:
            message = str(policy_documents.config_error(exc))
        else:
            raise SystemExit(f"{model.__name__} accepts {data!r}: remove rule {label!r} from RULES")
        shown = label if len(str(data)) > 80 else f"{label}: {value(data)}"
        lines.append(f"| {cell(shown)} | {cell(f'`{message}`')} |")
    return lines


def durations() -> list[str]:
    shown = []
    for example in DURATION_EXAMPLES:
        seconds = policy.StepPolicy.model_validate({"retry_delay": example}).retry_delay
        shown.append(f"{value(example)} is {seconds:g} s")
    return [
        "### Durations",
        "",
        doc_of(policy.parse_duration),
        "",
        "A duration is seconds, never negative: " + ", ".join(shown) + ".",
        "",
    ]


def block_section() -> list[str]:
    block = blocks.ResiliencePolicy
    return [
        "### `ResiliencePolicy`",
        "",
        doc_of(block),
        "",
        f"Block type **{block.get_block_type_name()}**, slug `{block.get_block_type_slug()}`:"
        f" {block.get_description()}",
        "",
        "Its form has a field per workflow setting; every field has the type, bounds, default"
        " and description of the `WorkflowPolicy` setting it stands for.",
        "",
        *model_table(block),
        "",
    ]


def enum_section(enum: type[Enum]) -> list[str]:
    values = ", ".join(f"`{member.value}`" for member in enum)
    return [f"### `{enum.__name__}`", "", doc_of(enum), "", f"Values: {values}.", ""]


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated by `{COMMAND}` from the package's models and signatures."
        " Do not edit by hand: tests/test_docs.py fails when this page is out of date. -->",
        "",
        "Every setting, its other accepted names, its type, default, bounds and"
        " description, read from the code. Settings are written as in YAML; Python takes"
        " the same names as keyword arguments. An unknown setting is an error, and so is"
        " one setting given under two of its names. Defaults are written as YAML values;"
        " `null` means unset, which for a threshold means off.",
        "",
        "Guides: [concepts](concepts.md), [step policies](step-policies.md),"
        " [resilient flows](flows.md), [blocks](blocks.md).",
        "",
        "## Decorators and functions",
        "",
    ]
    for fn in FUNCTIONS:
        lines += function_section(fn)
    lines += ["## Policies", ""]
    for model in POLICY_MODELS:
        skip = policy.StepPolicy.model_fields if model is policy.StepRule else ()
        note = "Plus every setting of [`StepPolicy`](#steppolicy)." if skip else ""
        lines += model_section(model, skip, note)
    lines += [
        "### Rules across settings",
        "",
        "Checked whenever a policy is built (decorator, YAML, block), with the error each gives:",
        "",
        *rule_errors(),
        "",
        *durations(),
    ]
    lines += [
        "## Documents (YAML)",
        "",
        "[`load_policy`](#load_policy) also reads a bare mapping of"
        " [`WorkflowPolicy`](#workflowpolicy) settings, and these two document shapes.",
        "",
    ]
    for model in DOCUMENT_MODELS:
        lines += model_section(model)
    lines += ["## Block", "", *block_section()]
    lines += ["## Reports", ""]
    for model in REPORT_MODELS:
        lines += model_section(model)
    lines += ["## Enumerations", ""]
    for enum in ENUMS:
        lines += enum_section(enum)
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip("\n") + "\n"


def main() -> None:
    OUTPUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUTPUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
