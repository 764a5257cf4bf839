"""Policy documents read into a `WorkflowPolicy`: YAML files, YAML text, mappings.

Three shapes are accepted: the originating design's `kind:
WorkflowResilienceConfig` document (or its `spec` alone), a workflow
definition whose `steps` carry `resilience:` blocks, and a bare mapping of
settings. YAML is read with `safe_load` only, bounded in size, and every
problem is one `ResilienceConfigError` naming the field, the file and the line.

Like `policy`, this module has no Prefect import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from prefect_resilience.errors import ResilienceConfigError
from prefect_resilience.policy import StepPolicy, WorkflowPolicy, _aliases, _Model


class PolicyMetadata(_Model):
    name: str = Field(min_length=1)
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class PolicySpec(WorkflowPolicy):
    """`spec` of a WorkflowResilienceConfig document: its name lives in `metadata`."""

    name: None = None


class PolicyDocument(_Model):
    """The originating design's `kind: WorkflowResilienceConfig` document."""

    api_version: str = Field(validation_alias=_aliases("apiVersion", "api_version"))
    kind: Literal["WorkflowResilienceConfig"]
    metadata: PolicyMetadata
    spec: PolicySpec

    def to_policy(self) -> WorkflowPolicy:
        return WorkflowPolicy.model_validate({**self.spec.explicit(), "name": self.metadata.name})


class SpecDocument(_Model):
    """A WorkflowResilienceConfig's `spec` (and `metadata`) without `apiVersion` and `kind`."""

    metadata: PolicyMetadata | None = None
    spec: PolicySpec

    def to_policy(self) -> WorkflowPolicy:
        name = self.metadata.name if self.metadata is not None else None
        return WorkflowPolicy.model_validate({**self.spec.explicit(), "name": name})


class StepAnnotation(_Model):
    """One step of the seed's workflow definition, with its `resilience:` block."""

    id: str = Field(min_length=1)
    type: str | None = None
    action: dict[str, Any] | None = None
    resilience: StepPolicy = Field(default_factory=StepPolicy)


class StepsDocument(_Model):
    """A workflow definition whose steps carry `resilience:` annotations."""

    name: str | None = None
    steps: list[StepAnnotation]

    def to_policy(self) -> WorkflowPolicy:
        rules = [{"match": s.id, **s.resilience.explicit()} for s in self.steps]
        return WorkflowPolicy.model_validate({"name": self.name, "step_policies": rules})


def load_policy(
    source: str | os.PathLike[str] | Mapping[str, Any] | WorkflowPolicy,
) -> WorkflowPolicy:
    """Read a workflow policy from a YAML file, YAML text, or a mapping.

    Three shapes are accepted: the originating design's
    `kind: WorkflowResilienceConfig` document, a workflow definition whose
    `steps` carry `resilience:` blocks, and a bare mapping of `WorkflowPolicy`
    settings. Any problem, whatever the input, is a `ResilienceConfigError`
    naming the field and, for files, the path and line.
    """
    if isinstance(source, WorkflowPolicy):
        return source
    path: str | None = None
    try:
        if isinstance(source, Mapping):
            return policy_from_mapping(source)
        text = source
        if isinstance(source, os.PathLike) or _looks_like_path(source):
            path = os.fspath(source)
            text = _read(path)
        return _policy_from_text(str(text), path)
    except ResilienceConfigError:
        raise
    except Exception as exc:  # the promise: nothing but ResilienceConfigError escapes
        raise ResilienceConfigError(f"cannot read the policy: {exc}", path=path) from exc


def policy_from_mapping(data: Any, *, path: str | None = None, lines: Any = None) -> WorkflowPolicy:
    """Validate an already-parsed document into a `WorkflowPolicy`."""
    if not isinstance(data, Mapping):
        raise ResilienceConfigError(
            f"a policy document must be a mapping, got {type(data).__name__}",
            path=path,
            line=1 if path else None,
        )
    try:
        if "kind" in data or "apiVersion" in data or "api_version" in data:
            return PolicyDocument.model_validate(data).to_policy()
        if "spec" in data and set(data) <= {"spec", "metadata"}:
            # the document's body without its header, as people write it
            return SpecDocument.model_validate(data).to_policy()
        if "steps" in data:
            return StepsDocument.model_validate(data).to_policy()
        return WorkflowPolicy.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, path=path, lines=lines) from None


def config_error(
    exc: ValidationError, *, path: str | None = None, lines: Any = None, prefix: str = ""
) -> ResilienceConfigError:
    """Turn pydantic's errors into one message naming each field (and its line)."""
    problems: list[tuple[str, int | None, str]] = []
    for err in _user_errors(exc):
        names, line = _locate(lines, err["loc"])
        field = ".".join([prefix, *names] if prefix else names) or "(document)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown setting"
        elif err["type"] != "missing" and not isinstance(err.get("input"), Mapping):
            message += f" (got {_short(err.get('input'))})"
        problems.append((field, line, message))
    field, line, message = problems[0]
    if len(problems) == 1:
        return ResilienceConfigError(message, field=field, path=path, line=line)
    listed = "\n  ".join(
        (f"line {ln}: " if ln else "") + f"{fd}: {msg}" for fd, ln, msg in problems
    )
    error = ResilienceConfigError(f"{len(problems)} problems:\n  {listed}", path=path)
    error.field, error.line = field, line  # the first problem, for code that inspects one
    return error


def _user_errors(exc: ValidationError) -> list[Any]:
    """pydantic's errors, with one branch kept per union (the user wrote one value).

    The branch kept is one whose type fitted and whose value failed, when there
    is one: 'not a duration' says more than 'not a list'.
    """
    errors = exc.errors(include_url=False)
    branches: dict[tuple[Any, ...], dict[Any, list[Any]]] = {}
    for err in errors:
        loc = tuple(err["loc"])
        tag_at = next((i for i, p in enumerate(loc) if _is_union_tag(p)), None)
        if tag_at is not None:
            branches.setdefault(loc[:tag_at], {}).setdefault(loc[tag_at], []).append(err)
    chosen = {
        where: min(by_branch, key=lambda b: all(_is_type_error(e) for e in by_branch[b]))
        for where, by_branch in branches.items()
    }
    kept = []
    for err in errors:
        loc = tuple(err["loc"])
        tag_at = next((i for i, p in enumerate(loc) if _is_union_tag(p)), None)
        if tag_at is None:
            kept.append(err)
        elif chosen[loc[:tag_at]] == loc[tag_at]:
            kept.append({**err, "loc": loc[:tag_at] + loc[tag_at + 1 :]})
    return kept


def _is_type_error(err: Any) -> bool:
    return str(err["type"]).endswith(("_type", "_parsing"))


def _looks_like_path(text: str) -> bool:
    return "\n" not in text and (text.endswith((".yaml", ".yml")) or os.path.isfile(text))


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        raise ResilienceConfigError("no such policy file", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResilienceConfigError(f"cannot read the file: {exc}", path=path) from None


MAX_YAML_VALUES = 100_000
"""A policy document expanding (through YAML aliases) to more values than this is refused."""


def _policy_from_text(text: str, path: str | None) -> WorkflowPolicy:
    try:
        lines = yaml.compose(text, Loader=yaml.SafeLoader)
        if lines is not None and _expanded_size(lines, {}) > MAX_YAML_VALUES:
            raise ResilienceConfigError(
                f"the document expands to more than {MAX_YAML_VALUES:,} values through YAML"
                " aliases; a policy never needs that many",
                path=path,
                line=lines.start_mark.line + 1,
            )
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ResilienceConfigError(
            f"not valid YAML: {problem}", path=path, line=mark.line + 1 if mark else None
        ) from None
    except RecursionError:
        raise ResilienceConfigError("the document is nested too deeply", path=path) from None
    return policy_from_mapping(data, path=path, lines=lines)


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values the node stands for once its aliases are expanded (shared nodes
    are counted once per use, computed once: linear in the document's own size)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    sizes[id(node)] = 1  # a node reached again through itself counts once
    total = 1
    if isinstance(node, yaml.MappingNode):
        total += sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_size(item, sizes) for item in node.value)
    sizes[id(node)] = total
    return total


def _is_union_tag(part: Any) -> bool:
    """pydantic puts the tried type of a union in the location; users never wrote it."""
    return isinstance(part, str) and (
        part in ("float", "int", "str", "bool", "none") or "[" in part
    )


def _locate(node: Any, loc: tuple[Any, ...]) -> tuple[list[str], int | None]:
    """The field's path as the user wrote it, and the line of the deepest node it reaches.

    Step policies given as a mapping are validated as a list; their index is
    turned back into the pattern the user wrote.
    """
    names = [str(part) for part in loc]
    line = node.start_mark.line + 1 if node is not None else None
    for i, part in enumerate(loc):
        child = None
        if isinstance(node, yaml.MappingNode):
            if isinstance(part, int) and part < len(node.value):
                key, child = node.value[part]
                names[i] = str(key.value)
            else:
                child = next((v for k, v in node.value if k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            child = node.value[part] if part < len(node.value) else None
        if child is None:
            break
        node, line = child, child.start_mark.line + 1
    return names, line


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
