"""Workflow policies kept in Prefect blocks: edited in the UI, versioned, rolled back.

The `ResiliencePolicy` block holds the policy a run loads by name when it
starts. Every save made through this package also records the saved policy as
a new version of a Prefect artifact keyed `resilience-policy-<name>`: Prefect
keeps every version of a keyed artifact, in order, with its time, and shows
them in its UI, so history needs no store of its own. A rollback saves an
earlier version again, as a new version: nothing is lost.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from prefect.blocks.core import Block
from pydantic import HttpUrl, TypeAdapter, ValidationError, field_serializer

from prefect_resilience import versions
from prefect_resilience.errors import ResilienceConfigError
from prefect_resilience.policy import (
    FailureImpact,
    FailurePolicy,
    LearnedRetry,
    StepRule,
    WorkflowPolicy,
)
from prefect_resilience.policy_documents import config_error, load_policy
from prefect_resilience.versions import PolicyVersion, history, to_yaml, version_key

__all__ = [
    "Change",
    "PolicyVersion",
    "ResiliencePolicy",
    "apply",
    "current_document",
    "diff",
    "history",
    "load_block_policy",
    "plan_apply",
    "plan_changes",
    "policy_document",
    "record_ui_edit",
    "register_block_type",
    "rollback",
    "save_policy",
    "version_key",
]

LOGO_FILE = Path(__file__).parent / "assets" / "resilience-policy.png"
DEFAULT_LOGO_URL = (
    "https://raw.githubusercontent.com/prefect-resilience/prefect-resilience/main/"
    "prefect_resilience/assets/resilience-policy.png"
)
_POLICY_FIELDS = [name for name in WorkflowPolicy.model_fields if name != "name"]


def _field(name: str) -> Any:
    """The block field of a WorkflowPolicy setting: same type, bounds, default, description."""
    return copy.copy(WorkflowPolicy.model_fields[name])


class ResiliencePolicy(Block):
    """A workflow resilience policy: failure-policy defaults, termination rules,
    health weights and per-step policies, loaded by `@resilient_flow(policy="NAME")`
    when a run starts.
    """

    _block_type_name: ClassVar[str] = "Resilience Policy"
    _block_type_slug: ClassVar[str] = "resilience-policy"
    # Prefect's client accepts only http(s) logo URLs (no data: URL); the image ships
    # with the package (LOGO_FILE) for a server of one's own: see register_block_type
    _logo_url: ClassVar[Any] = DEFAULT_LOGO_URL
    _documentation_url: ClassVar[Any] = (
        "https://github.com/prefect-resilience/prefect-resilience/blob/main/docs/blocks.md"
    )
    _description: ClassVar[str] = (
        "A workflow resilience policy for prefect-resilience: failure-policy defaults,"
        " termination rules, health weights and per-step policies. A resilient flow loads it"
        " by name when each run starts, so an edit applies to the next run."
    )
    _code_example: ClassVar[str] = """
```python
from prefect_resilience.blocks import ResiliencePolicy
from prefect_resilience import resilient_flow

resilience_policy_block = ResiliencePolicy.load("BLOCK_NAME")

@resilient_flow(policy="BLOCK_NAME")  # read when each run starts
def nightly():
    ...
```
"""

    default_failure_policy: FailurePolicy = _field("default_failure_policy")
    max_partial_failures: int | None = _field("max_partial_failures")
    critical_step_ratio: float | None = _field("critical_step_ratio")
    termination_threshold: float | None = _field("termination_threshold")
    health_alert_below: float = _field("health_alert_below")
    degraded_credit: float = _field("degraded_credit")
    impact_weights: dict[FailureImpact, float] = _field("impact_weights")
    step_policies: list[StepRule] = _field("step_policies")
    auto_retries_min: int = _field("auto_retries_min")
    auto_retries_max: int = _field("auto_retries_max")
    learned_retries: dict[str, LearnedRetry] = _field("learned_retries")

    @field_serializer("step_policies")
    def _only_what_was_set(self, rules: list[Any]) -> list[Any]:
        # a rule overrides the decorator's settings one by one: store only those it sets
        return [
            rule.model_dump(mode="json", exclude_unset=True) if isinstance(rule, StepRule) else rule
            for rule in rules
        ]

    def to_policy(self) -> WorkflowPolicy:
        """The `WorkflowPolicy` this block holds, checked by the same rules as a file."""
        data = {name: getattr(self, name) for name in _POLICY_FIELDS}
        data["step_policies"] = self._only_what_was_set(self.step_policies)
        try:
            return WorkflowPolicy.model_validate({**data, "name": self._block_document_name})
        except ValidationError as exc:
            raise config_error(exc, prefix=f"block {self._block_document_name}") from None

    @classmethod
    def from_policy(cls, policy: WorkflowPolicy) -> ResiliencePolicy:
        return cls.model_validate(policy_document(policy))


def register_block_type(logo_url: str | None = None) -> None:
    """Register the Resilience Policy block type, its logo at `logo_url` if given.

    The UI loads a block type's logo from its URL in each user's browser, so
    behind a closed network the shipped image (`LOGO_FILE`) must be served from
    a server the browsers reach. Without `logo_url`, a URL set by an earlier
    registration is kept, so a teammate's plain `register` does not undo it.
    """
    url = _http_url(logo_url) if logo_url is not None else _registered_logo_url()
    default = ResiliencePolicy._logo_url
    ResiliencePolicy._logo_url = url or default
    try:
        # sync also when called from a running event loop, where Prefect's dispatch
        # would hand back a coroutine
        ResiliencePolicy.register_type_and_schema(_sync=True)  # type: ignore[call-arg]
    finally:
        ResiliencePolicy._logo_url = default


def _http_url(text: str) -> HttpUrl:
    try:
        return TypeAdapter(HttpUrl).validate_python(text)
    except ValidationError:
        raise ResilienceConfigError(
            f"logo URL: {text!r} is not an http(s) URL (Prefect accepts no other for a logo)"
        ) from None


def _registered_logo_url() -> HttpUrl | None:
    """The logo URL the server has for the block type, unless it is the package's default."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            block_type = client.read_block_type_by_slug(ResiliencePolicy.get_block_type_slug())
        except ObjectNotFound:
            return None
    if block_type.logo_url is None or str(block_type.logo_url) == DEFAULT_LOGO_URL:
        return None
    return block_type.logo_url


def policy_document(policy: WorkflowPolicy) -> dict[str, Any]:
    """A policy as the plain mapping a block or a version holds, in one normal form.

    Every workflow-level setting is written out; a step policy keeps only the
    settings it gives, since those are what it overrides.
    """
    document = policy.model_dump(mode="json", exclude={"name", "step_policies"})
    document["step_policies"] = [
        rule.model_dump(mode="json", exclude_unset=True) for rule in policy.step_policies
    ]
    return document


def load_block_policy(name: str) -> WorkflowPolicy:
    """Load a ResiliencePolicy block by name, with a clear error when it is missing or bad.

    The block document is read as data and checked by the policy's own rules
    (the UI's form checks types, not rules such as a backoff cap below its
    start), so a bad document fails with the field named, before any step.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            document = client.read_block_document_by_name(
                name, block_type_slug=ResiliencePolicy.get_block_type_slug()
            )
    except ObjectNotFound:
        raise ResilienceConfigError(
            f"no Resilience Policy block named {name!r} on this Prefect server", field="policy"
        ) from None
    # every key is checked: a setting written through the API under a wrong name is an
    # error naming it, not silently dropped
    data = {k: v for k, v in (document.data or {}).items() if k != "name"}
    try:
        return WorkflowPolicy.model_validate({**data, "name": name})
    except ValidationError as exc:
        raise config_error(exc, prefix=f"block {name}") from None


# --- versions ----------------------------------------------------------------------------


def save_policy(name: str, policy: WorkflowPolicy, note: str = "saved") -> PolicyVersion:
    """Save a policy block (create or overwrite) and record the saved policy as a version."""
    # the waiting call also from a running event loop (a notebook, an async app), where
    # Prefect's dispatch would hand back a coroutine and save nothing
    ResiliencePolicy.from_policy(policy).save(name, overwrite=True, _sync=True)  # type: ignore[call-arg]
    return versions.record(name, policy_document(policy), note)


def current_document(name: str) -> dict[str, Any] | None:
    """What the block holds now (as saved in the UI, too), or None if there is no block."""
    try:
        return policy_document(load_block_policy(name))
    except ResilienceConfigError as exc:
        if "no Resilience Policy block named" in str(exc):
            return None
        raise


def record_ui_edit(name: str) -> PolicyVersion | None:
    """Record the block's content as a version if it was changed outside this package."""
    document = current_document(name)
    newest = versions.latest(name)
    if document is None or (newest and newest.document == document):
        return None
    return save_policy(name, WorkflowPolicy.model_validate(document), note="edited outside")


def rollback(name: str, to: int | None = None) -> PolicyVersion:
    """Save version `to` (default: the one before the latest) again, as a new version."""
    record_ui_edit(name)
    if to is None:
        newest = versions.latest(name)
        if newest is None or newest.number < 2:
            raise ResilienceConfigError(f"policy {name!r} has no earlier version", field="version")
        to = newest.number - 1
    target = versions.read_version(name, to)
    policy = WorkflowPolicy.model_validate(target.document)
    return save_policy(name, policy, note=f"rollback to version {target.number}")


def diff(name: str, a: int, b: int) -> str:
    """A unified diff between two versions of a policy, as YAML."""
    left, right = versions.read_version(name, a), versions.read_version(name, b)
    return "".join(
        difflib.unified_diff(
            to_yaml(left.document).splitlines(keepends=True),
            to_yaml(right.document).splitlines(keepends=True),
            fromfile=f"{name} v{a}",
            tofile=f"{name} v{b}",
        )
    )


# --- files as source ---------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """What applying one file does (or did) to its block."""

    name: str
    path: Path
    action: str  # created | updated | unchanged
    diff: str
    reverts: str | None = None  # the block's newest version this file did not write, if any
    policy: WorkflowPolicy | None = field(default=None, repr=False, compare=False)


def _applied_note(file: Path) -> str:
    return f"applied from {file.name}"


def plan_apply(paths: list[Path]) -> list[tuple[str, Path, WorkflowPolicy]]:
    """Load every policy file first: one bad file stops everything, naming file and line."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted([*path.glob("*.yaml"), *path.glob("*.yml")]))
        else:
            files.append(path)
    if not files:
        raise ResilienceConfigError("no .yaml or .yml policy files found", path=str(paths[0]))
    planned: list[tuple[str, Path, WorkflowPolicy]] = []
    seen: dict[str, Path] = {}
    for file in files:
        policy = load_policy(file)
        name = policy.name or file.stem
        if name in seen:
            raise ResilienceConfigError(
                f"block {name!r} is defined twice, also in {seen[name]}", path=str(file)
            )
        seen[name] = file
        planned.append((name, file, policy))
    return planned


def plan_changes(paths: list[Path]) -> list[Change]:
    """What applying the files would do to each block, writing nothing.

    A change `reverts` a version when the block's content was last written by
    something other than this file (`optimize --apply`, a rollback, an edit in
    the UI): applying the file would silently undo it.
    """
    changes = []
    for name, file, policy in plan_apply(paths):
        wanted = policy_document(policy)
        try:
            current = current_document(name)
        except ResilienceConfigError:  # invalid on the server (a bad UI edit): replace it
            current = {}
        if current == wanted:
            changes.append(Change(name, file, "unchanged", "", policy=policy))
            continue
        text = "".join(
            difflib.unified_diff(
                (to_yaml(current) if current else "").splitlines(keepends=True),
                to_yaml(wanted).splitlines(keepends=True),
                fromfile=f"{name} (server)",
                tofile=str(file),
            )
        )
        action = "created" if current is None else "updated"
        changes.append(Change(name, file, action, text, _reverts(name, file, current), policy))
    return changes


def _reverts(name: str, file: Path, current: dict[str, Any] | None) -> str | None:
    """The newest version of a block, described, when this file did not write it."""
    if not current:
        return None
    newest = versions.latest(name)
    if newest is None or newest.document != current:
        return "a change made outside this package (in the UI or through the API)"
    if newest.note == _applied_note(file):
        return None
    return f"version {newest.number} ({newest.note})"


def apply(paths: list[Path], *, force: bool = False) -> list[Change]:
    """Create or update a block per policy file, idempotently; say what changed.

    Nothing is written when a change would revert a version the file did not
    write, unless `force`: a `ResilienceConfigError` names each such block.
    """
    changes = plan_changes(paths)
    reverting = [c for c in changes if c.reverts]
    if reverting and not force:
        listed = "; ".join(f"{c.name}: {c.reverts}" for c in reverting)
        raise ResilienceConfigError(
            f"applying would revert {listed}. Export the block to a file with"
            " `prefect-resilience policy export NAME`, or apply anyway with --force",
            path=str(reverting[0].path),
        )
    for change in changes:
        if change.action == "unchanged":
            continue
        if change.action == "updated":
            record_ui_edit(change.name)
        assert change.policy is not None  # every planned change carries its policy
        save_policy(change.name, change.policy, note=_applied_note(change.path))
    return changes
