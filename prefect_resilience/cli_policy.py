"""`prefect-resilience policy ...`: check, show, apply, export and version workflow policies.

A policy is a YAML file or a Resilience Policy block; the commands that read
one take either. `apply` writes files to blocks and never silently undoes a
version it did not write (one written by `optimize --apply`, a rollback, a UI
edit): it refuses without `--force`, and `--dry-run` shows what it would do.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from prefect_resilience import fallbacks
from prefect_resilience.cli_output import config_failure, console, errors, fail, talks_to_api
from prefect_resilience.errors import ResilienceConfigError
from prefect_resilience.policy import StepRule, WorkflowPolicy
from prefect_resilience.policy_documents import load_policy

policy_app = typer.Typer(
    help="Check, show, apply and version workflow policies.", no_args_is_help=True
)

FlowOption = Annotated[
    str | None,
    typer.Option(
        "--flow",
        help="The flow the policy is for, as Prefect's entrypoint: path/to/file.py:flow or"
        " package.module:flow. Its code is loaded, so the fallbacks it makes available are known.",
    ),
]


def _is_file(source: str) -> bool:
    return Path(source).exists() or source.endswith((".yaml", ".yml"))


def _read(source: str) -> WorkflowPolicy:
    """A policy from a file, or else from the block of that name; exit 1 naming the problem."""
    try:
        if _is_file(source):
            return load_policy(Path(source))
        from prefect_resilience.blocks import load_block_policy

        return load_block_policy(source)
    except ResilienceConfigError as exc:
        raise config_failure(exc, "invalid") from None


@policy_app.command("validate")
def validate(
    files: Annotated[list[Path], typer.Argument(help="YAML policy documents to check.")],
) -> None:
    """Check policy documents; exit 1 naming the field and line of each problem."""
    for path in files:
        policy = _read(str(path))
        _check_exception_names(policy, path)
        console.print(
            f"[green]valid:[/green] {path} ({policy.name or 'unnamed'},"
            f" {len(policy.step_policies)} step policies)",
            soft_wrap=True,
            highlight=False,
        )


def _check_exception_names(policy: WorkflowPolicy, path: Path) -> None:
    """Exit 1 naming each `retry_on` / `give_up_on` name that names no exception."""
    from prefect_resilience.exception_names import unknown_names

    listed = {
        f"step policy {rule.match!r} {field}": getattr(rule, field)
        for rule in policy.step_policies
        for field in ("retry_on", "give_up_on")
    }
    unknown = unknown_names(listed)
    if not unknown:
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    for problem in unknown:
        line = next((i + 1 for i, text in enumerate(lines) if problem.name in text), None)
        where = f"{path}, line {line}" if line else str(path)
        errors.print(f"[red]invalid:[/red] {escape(f'{where}: {problem}')}", highlight=False)
    errors.print(
        "a name is known when it is a builtin exception, module.Class found on the path,"
        " or a glob such as *Error (which is taken as written)",
        highlight=False,
    )
    raise typer.Exit(1)


FROM_STEP = "(step's own)"
"""What `show` prints for a setting the policy leaves to the step's decorator (or its default)."""


DELAY_SETTINGS = ("retry_delay", "retry_delays", "backoff")
"""The settings that decide a step's delays between attempts."""


def _delays_text(delays: list[float]) -> str:
    """The first five delays in seconds, and '...' when there are more."""
    return ", ".join(f"{d:g}" for d in delays[:5]) + (" ..." if len(delays) > 5 else "")


def _rule_row(rule: StepRule) -> list[str]:
    """One step policy's cells: the values it sets, and which it leaves to the step."""
    explicit = rule.explicit()

    def given(field: str, text: str) -> str:
        return text if field in explicit else FROM_STEP

    return [
        rule.match,
        given("policy", rule.policy.value),
        given("retries", str(rule.retries)),
        _delays_text(rule.retry_delays()) if set(DELAY_SETTINGS) & set(explicit) else FROM_STEP,
        given("critical", "yes" if rule.critical else "no"),
        given("impact", rule.impact.value),
        given("fallbacks", ", ".join(rule.fallbacks) or "none"),
    ]


@policy_app.command("show")
@talks_to_api
def show(
    source: Annotated[
        str, typer.Argument(help="A YAML policy file, or a Resilience Policy block.")
    ],
    flow: Annotated[
        str | None,
        typer.Option(
            help="A flow's entrypoint (path.py:flow_function): also show what each of its"
            " resilient steps runs with, and where each value comes from."
        ),
    ] = None,
) -> None:
    """Show a workflow policy as a run loads it: thresholds and each step policy.

    A step setting the policy does not give is the step's own: its `@resilient`
    decorator's value, or the decorator's default. With `--flow`, the flow's
    module is loaded (as a worker loads it) and each resilient step's effective
    values are shown with their origin: the policy's rule, the decorator, or
    the default.
    """
    policy = _read(source)
    origin = "file" if _is_file(source) else "block"
    console.print(f"[bold]{policy.name or source}[/bold] ({origin})", highlight=False)
    console.print(f"default failure policy: {policy.default_failure_policy.value}")
    for label, value in (
        ("max partial failures", policy.max_partial_failures),
        ("critical step ratio", policy.critical_step_ratio),
        ("termination threshold", policy.termination_threshold),
    ):
        console.print(f"{label}: {'off' if value is None else value}")
    table = Table(title="step policies (first match wins)")
    for column in ("match", "policy", "retries", "delays (s)", "critical", "impact", "fallbacks"):
        table.add_column(column)
    for rule in policy.step_policies:
        table.add_row(*_rule_row(rule))
    console.print(table)
    if policy.step_policies:
        console.print(
            f"{FROM_STEP}: the policy does not set it; the step's @resilient value applies,"
            f" or the default: policy {policy.default_failure_policy.value} (this policy's"
            " default failure policy), no retries, impact major, not critical",
            soft_wrap=True,
            highlight=False,
        )
    if flow:
        console.print(_effective_table(policy, _load_flow(flow)))


EFFECTIVE_FIELDS = {
    "policy": ("policy",),
    "retries": ("retries",),
    "delays (s)": DELAY_SETTINGS,
    "critical": ("critical",),
    "impact": ("impact",),
    "fallbacks": ("fallbacks",),
}
"""Each column of the effective table, and the settings that decide it."""


def _effective_table(policy: WorkflowPolicy, flow_object: Any) -> Table:
    """What each resilient step of the flow runs with under `policy`, value by value with its
    origin: `rule MATCH` (the policy), `decorator` (the step's @resilient) or `default`."""
    table = Table(title=f"effective per step of {flow_object.name} (value: where it comes from)")
    table.add_column("step")
    for column in EFFECTIVE_FIELDS:
        table.add_column(column)
    for step in resilient_steps(flow_object):
        tags = tuple(step.tags)
        rule = policy.rule_for(step.name, tags)
        effective = policy.policy_for(step.name, tags, step.step)
        values = {
            "policy": effective.policy.value,
            "retries": str(effective.retries),
            "delays (s)": _delays_text(effective.retry_delays()) or "none",
            "critical": "yes" if effective.critical else "no",
            "impact": effective.impact.value,
            "fallbacks": ", ".join(effective.fallbacks) or "none",
        }
        cells = [step.name]
        for column, fields in EFFECTIVE_FIELDS.items():
            if rule is not None and set(fields) & set(rule.explicit()):
                origin = f"rule {rule.match}"
            elif set(fields) & set(step.step.explicit()):
                origin = "decorator"
            else:
                origin = "policy default" if column == "policy" else "default"
            cells.append(f"{values[column]}: {origin}")
        table.add_row(*cells)
    return table


def resilient_steps(flow_object: Any) -> list[Any]:
    """The resilient tasks the flow's module defines, by name (what its calls can run)."""
    from prefect_resilience.task import ResilientTask

    found = {
        value.name: value
        for value in vars(inspect.getmodule(flow_object.fn) or object()).values()
        if isinstance(value, ResilientTask)
    }
    return [found[name] for name in sorted(found)]


@policy_app.command("export")
@talks_to_api
def export(name: Annotated[str, typer.Argument(help="Block name.")]) -> None:
    """Print a Resilience Policy block as a YAML file `policy apply` takes back.

    Write it over the file the block came from (`> blocks/NAME.yaml`) to keep
    what `optimize --apply` or the UI changed.
    """
    from prefect_resilience.blocks import load_block_policy, policy_document
    from prefect_resilience.versions import to_yaml

    try:
        policy = load_block_policy(name)
    except ResilienceConfigError as exc:
        raise config_failure(exc) from None
    print(to_yaml({"name": name, **policy_document(policy)}), end="")


def _load_flow(entrypoint: str) -> Any:
    """Run the flow's module, as a worker would, so its fallbacks are registered."""
    from prefect.flows import load_flow_from_entrypoint

    try:
        return load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)
    except Exception as exc:  # Prefect's own error says what is wrong with the entrypoint
        raise fail(str(exc), f"cannot load flow {entrypoint}") from None


def _check_for_flow(source: str | Path) -> WorkflowPolicy:
    """Load a policy as a run of the flow would, fallbacks checked; exit 1 naming each problem."""
    from prefect_resilience.flow import load_workflow_policy

    try:
        return load_workflow_policy(source)
    except ResilienceConfigError as exc:
        raise config_failure(exc) from None


@policy_app.command("check")
@talks_to_api
def check_policy(
    source: Annotated[str, typer.Argument(help="A policy file, or a Resilience Policy block.")],
    flow: FlowOption = None,
) -> None:
    """Check a policy as a run of the flow would load it: fields, and every fallback it names.

    A fallback resolves only to one the flow's code made available; with
    `--flow`, that code is loaded first. Exit 1 naming the fallback, the file and line.
    """
    flow_object = _load_flow(flow) if flow else None
    policy = _check_for_flow(source)
    named = sorted({n.name for n in fallbacks.named_in(policy)})
    target = f" for flow {flow_object.name!r}" if flow_object else ""
    console.print(
        f"[green]ok:[/green] {source}{target} ({policy.name or 'unnamed'})", soft_wrap=True
    )
    if named:
        console.print(f"fallbacks named, all available: {', '.join(named)}", soft_wrap=True)


def _note_fallbacks(planned: list[tuple[str, Path, WorkflowPolicy]], flow: Any) -> None:
    """With the flow, check every fallback against its code; without, say which to check."""
    if flow is not None:
        for _, file, _ in planned:
            _check_for_flow(file)
        return
    for _, file, policy in planned:
        named = sorted({n.name for n in fallbacks.named_in(policy)})
        if named:
            errors.print(
                f"[yellow]note:[/yellow] {file} names fallbacks {', '.join(named)}; a run"
                " refuses those its flow's code does not make available: check them with"
                f" `prefect-resilience policy check {file} --flow FILE.py:FLOW`",
                soft_wrap=True,
                highlight=False,
            )


def show_changes(changes: list[Any], dry_run: bool) -> None:
    """Print what applying did (or, dry, would do) to each block, with its diff."""
    for change in changes:
        style = {"created": "green", "updated": "yellow", "unchanged": "dim"}[change.action]
        action = (
            f"would be {change.action}"
            if dry_run and change.action != "unchanged"
            else (change.action)
        )
        console.print(f"[{style}]{action}[/{style}] {change.name} ({change.path})")
        if change.reverts:
            console.print(f"  reverts {change.reverts}", highlight=False, markup=False)
        if change.diff:
            console.print(change.diff, highlight=False, markup=False, soft_wrap=True)


def _predict(changes: list[Any], flow_name: str) -> None:
    """For each block a dry run would update: its predicted effect on the flow (`simulate`)."""
    from prefect_resilience.blocks import load_block_policy
    from prefect_resilience.cli_simulate import predicted_effect

    for change in changes:
        if change.action != "updated" or change.policy is None:
            continue
        now = load_block_policy(change.name)
        text = predicted_effect(flow_name, now, change.name, change.policy, str(change.path))
        said = text or f"no prediction: flow {flow_name!r} has no runs in the last 30 days"
        console.print(f"predicted effect on {flow_name}:\n{said}", highlight=False, markup=False)


@policy_app.command("apply")
@talks_to_api
def apply_policies(
    paths: Annotated[list[Path], typer.Argument(help="Policy files or folders (e.g. blocks/).")],
    flow: FlowOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would change; write nothing.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Write even where it reverts a version the file did not write."
        ),
    ] = False,
) -> None:
    """Create or update a Resilience Policy block per file; unchanged ones are left alone.

    Every file is checked first: one bad file changes nothing. A block whose
    newest version this file did not write (`optimize --apply`, a rollback, a
    UI edit) is not overwritten without `--force`; `policy export NAME` writes
    that version back to a file instead. With `--flow`, each fallback a file
    names must be one that flow's code makes available, and `--dry-run` also
    predicts each change's effect on that flow from its history (`simulate`).
    """
    from prefect_resilience import blocks

    try:
        planned = blocks.plan_apply(paths)
        flow_object = _load_flow(flow) if flow else None
        _note_fallbacks(planned, flow_object)
        if dry_run:
            changes = blocks.plan_changes(paths)
            show_changes(changes, dry_run=True)
            if flow_object is not None:
                _predict(changes, flow_object.name)
            return
        blocks.ResiliencePolicy.register_type_and_schema()
        changes = blocks.apply(paths, force=force)
    except ResilienceConfigError as exc:
        raise config_failure(exc) from None
    show_changes(changes, dry_run=False)


@policy_app.command("history")
@talks_to_api
def show_history(name: Annotated[str, typer.Argument(help="Block name.")]) -> None:
    """List the recorded versions of a Resilience Policy block."""
    from prefect_resilience import blocks

    try:
        blocks.record_ui_edit(name)
        versions = blocks.history(name)
    except ResilienceConfigError as exc:
        raise config_failure(exc) from None
    if not versions:
        raise fail(f"no recorded versions of policy {name!r}")
    table = Table(title=f"versions of {name}")
    for column in ("version", "saved", "note"):
        table.add_column(column)
    for v in versions:
        table.add_row(str(v.number), f"{v.created:%Y-%m-%d %H:%M:%S}" if v.created else "?", v.note)
    console.print(table)


@policy_app.command("diff")
@talks_to_api
def show_diff(
    name: Annotated[str, typer.Argument(help="Block name.")],
    a: Annotated[int, typer.Argument(help="Older version.", min=1)],
    b: Annotated[int, typer.Argument(help="Newer version.", min=1)],
) -> None:
    """Show what changed between two versions of a policy."""
    from prefect_resilience import blocks

    try:
        text = blocks.diff(name, a, b)
    except ResilienceConfigError as exc:
        raise config_failure(exc) from None
    console.print(text or "no difference", highlight=False, markup=False, soft_wrap=True)


@policy_app.command("rollback")
@talks_to_api
def roll_back(
    name: Annotated[str, typer.Argument(help="Block name.")],
    to: Annotated[
        int | None, typer.Option(help="Version to return to (default: previous).", min=1)
    ] = None,
) -> None:
    """Save an earlier version again, as a new version (nothing is lost)."""
    from prefect_resilience import blocks

    try:
        version = blocks.rollback(name, to)
    except ResilienceConfigError as exc:
        raise config_failure(exc) from None
    console.print(f"{name}: saved version {version.number} ({version.note})", highlight=False)
