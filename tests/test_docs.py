"""The user documentation cannot drift from the code.

- docs/reference.md is what `python docs/_reference.py` writes from the models;
- every ```yaml block in the docs loads with `load_policy`, unless its fence says
  `yaml invalid` (then it must fail with `ResilienceConfigError`) or
  `yaml not-policy` (then it need only be YAML);
- every ```python block compiles; every `prefect-resilience ...` line in a
  ```sh block names a real command with real options; relative links and their
  #anchors resolve;
- numbers and messages quoted in concepts.md, step-policies.md and blocks.md are
  what the code computes;
- the quick start and the migration guide run as written, on a real Prefect
  server: ```python file=NAME and ```yaml file=NAME blocks are written to files,
  ```sh lines are run (`python X.py` in-process, `prefect-resilience ...` through
  the CLI; setup lines such as `pip install` are skipped), a ```text output block
  lists lines the preceding command must print, and an HTML comment
  `<!-- test: edit-block NAME MATCH KEY=VALUE -->` makes the edit the guide asks
  of the user in the Prefect UI.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import io
import json
import re
import runpy
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from prefect_resilience import (
    FailurePolicy,
    ResilienceConfigError,
    RunStatus,
    StepPolicy,
    StepStatus,
    TerminationRule,
    WorkflowPolicy,
    decide,
    load_policy,
)
from prefect_resilience.cli import app
from prefect_resilience.health import HealthLedger, StepOutcome
from prefect_resilience.policy import DEFAULT_IMPACT_WEIGHTS, FailureAction, FailureImpact
from prefect_resilience.tracker import WorkflowTerminated
from tests.conftest import ROOT

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]
GUIDES = [DOCS / "quickstart.md", DOCS / "migrating.md"]
SETUP_COMMANDS = [("pip", "install"), ("prefect", "server"), ("prefect", "config")]
runner = CliRunner(env={"COLUMNS": "200"})


# --- reading markdown ----------------------------------------------------------------------


@dataclass
class Fence:
    page: Path
    line: int
    lang: str
    flags: set[str]
    attrs: dict[str, str]
    body: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


@dataclass
class Marker:
    page: Path
    line: int
    words: list[str]


def blocks_of(page: Path) -> list[Fence | Marker]:
    """Fenced blocks and `<!-- test: ... -->` markers, in page order."""
    items: list[Fence | Marker] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        text = lines[i]
        marker = re.fullmatch(r"\s*<!--\s*test:\s*(.*?)\s*-->\s*", text)
        if marker:
            items.append(Marker(page, i + 1, marker.group(1).split()))
        elif text.startswith("```"):
            info = text[3:].split()
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            words = info[1:] if info else []
            items.append(
                Fence(
                    page,
                    i + 1,
                    info[0] if info else "",
                    {w for w in words if "=" not in w},
                    dict(w.split("=", 1) for w in words if "=" in w),
                    "\n".join(lines[i + 1 : end]) + "\n",
                )
            )
            i = end
        i += 1
    return items


def fences(lang: str, pages: list[Path] = PAGES) -> list[Fence]:
    return [b for p in pages for b in blocks_of(p) if isinstance(b, Fence) and b.lang == lang]


def without_fences(page: Path) -> str:
    return re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)


def prose(page: Path) -> str:
    """The page without fenced blocks and inline code: what links can live in."""
    return re.sub(r"`[^`\n]*`", "", without_fences(page))


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.*)$", without_fences(page), flags=re.M):
        slug = "".join(c for c in heading.strip().lower() if c.isalnum() or c in "-_ ")
        slug = slug.replace(" ", "-")
        candidate, n = slug, 0
        while candidate in found:
            n += 1
            candidate = f"{slug}-{n}"
        found.add(candidate)
    return found


def section(page: Path, heading: str) -> str:
    text = page.read_text(encoding="utf-8")
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def first_column(table_text: str) -> list[str]:
    """Backticked names in the first column of the first table in `table_text`."""
    rows = [r for r in table_text.splitlines() if r.startswith("|")][2:]
    return [name for r in rows for name in re.findall(r"`([^`]+)`", r.split("|")[1])]


def table_rows(table_text: str) -> list[list[str]]:
    rows = [r for r in table_text.splitlines() if r.startswith("|")][2:]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows]


def tables(text: str) -> list[str]:
    return re.findall(r"(?:^\|.*\n)+", text, flags=re.M)


# --- the reference -------------------------------------------------------------------------


def test_reference_is_generated_from_the_current_models() -> None:
    spec = importlib.util.spec_from_file_location("docs_reference", DOCS / "_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fresh = module.render()
    written = (DOCS / "reference.md").read_text(encoding="utf-8")
    if fresh != written:
        diff = "".join(
            list(
                difflib.unified_diff(
                    written.splitlines(keepends=True),
                    fresh.splitlines(keepends=True),
                    "docs/reference.md",
                    "generated",
                )
            )[:60]
        )
        pytest.fail(
            "docs/reference.md is out of date with the models; regenerate it with\n"
            f"    python docs/_reference.py\n{diff}"
        )


def test_reference_covers_every_setting_and_alias() -> None:
    text = (DOCS / "reference.md").read_text(encoding="utf-8")
    for model in (StepPolicy, WorkflowPolicy):
        for name, info in model.model_fields.items():
            assert f"| `{name}` |" in text, name
            for alias in getattr(info.validation_alias, "choices", []):
                assert f"`{alias}`" in text, alias


# --- examples ------------------------------------------------------------------------------


@pytest.mark.parametrize("fence", fences("yaml"), ids=lambda f: f.where)
def test_yaml_examples_are_valid_policies(fence: Fence) -> None:
    if "not-policy" in fence.flags:
        yaml.safe_load(fence.body)
    elif "invalid" in fence.flags:
        with pytest.raises(ResilienceConfigError):
            load_policy(fence.body)
    else:
        try:
            load_policy(fence.body)
        except ResilienceConfigError as exc:
            pytest.fail(
                f"{fence.where}: the example does not load: {exc}\n(mark a deliberate bad"
                " example ```yaml invalid, and YAML that is not a policy ```yaml not-policy)"
            )


@pytest.mark.parametrize("fence", fences("python"), ids=lambda f: f.where)
def test_python_examples_compile(fence: Fence) -> None:
    compile(fence.body, fence.where, "exec")


def test_there_are_examples_to_check() -> None:
    # a parser that finds nothing would pass every check above
    assert len(fences("yaml")) >= 4 and len(fences("python")) >= 15 and len(fences("sh")) >= 8


def test_relative_links_and_anchors_resolve() -> None:
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose(page)):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue  # http(s), mailto: not checked offline
            path_part, _, fragment = target.partition("#")
            linked = (page.parent / path_part).resolve() if path_part else page
            where = f"{page.relative_to(ROOT)}: {target}"
            if not linked.exists():
                broken.append(f"{where} (no such file)")
            elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
                broken.append(f"{where} (no heading with anchor #{fragment})")
    assert not broken, "broken links:\n  " + "\n  ".join(broken)


def _command_lines(fence: Fence) -> Iterator[list[str]]:
    """Each line's words, up to a shell redirection or pipe (the shell's, not the command's)."""
    for line in fence.body.splitlines():
        words = shlex.split(line, comments=True)
        shell = next((i for i, w in enumerate(words) if w in {">", ">>", "|", "2>&1"}), None)
        words = words[:shell]
        if words:
            yield words


def test_cli_lines_in_the_docs_name_real_commands_and_options() -> None:
    # typer may vendor its own click: commands and errors are recognised by what they have
    problems = []
    for fence in fences("sh"):
        for words in _command_lines(fence):
            script = ROOT / words[1] if words[0] == "python" else None
            if script is not None and fence.page not in GUIDES and not script.is_file():
                problems.append(f"{fence.where}: no script {words[1]}")
            if words[0] != "prefect-resilience":
                continue
            problem = _cli_problem(words[1:])
            if problem:
                problems.append(f"{fence.where}: {' '.join(words)}: {problem}")
    assert not problems, "\n".join(problems)


def _cli_problem(args: list[str]) -> str | None:
    """What is wrong with a command line (None if it parses), without running it."""
    command: Any = typer.main.get_command(app)
    while args and args[0] in getattr(command, "commands", {}):
        command, args = command.commands[args[0]], args[1:]
    if getattr(command, "commands", None):
        return f"no such command {args[0] if args else '(none given)'}"
    try:
        command.make_context("prefect-resilience", list(args), resilient_parsing=False)
    except Exception as exc:
        if hasattr(exc, "format_message"):
            return str(exc.format_message())
        if type(exc).__name__ != "Exit":  # --help exits: the line is fine
            raise
    return None


def test_cli_line_check_can_fail() -> None:
    assert _cli_problem(["analyze", "--flow", "x", "--since", "7d"]) is None
    assert _cli_problem(["policy", "rollback", "p", "--to", "2"]) is None
    assert "--bogus" in (_cli_problem(["analyze", "--bogus"]) or "")
    assert "no such command" in (_cli_problem(["policy", "nope"]) or "")
    assert _cli_problem(["policy", "diff", "p", "1"]) is not None  # a missing argument


# --- claims in the guides are what the code computes ---------------------------------------


def test_concepts_tables_name_every_value_of_the_enums() -> None:
    concepts = DOCS / "concepts.md"
    assert first_column(section(concepts, "Failure policies")) == [p.value for p in FailurePolicy]
    assert first_column(section(concepts, "Step outcomes")) == [s.value for s in StepStatus]
    assert first_column(section(concepts, "Run outcomes")) == [s.value for s in RunStatus]
    rules = first_column(section(concepts, "Termination rules"))
    assert rules == [r.value for r in TerminationRule]


def test_health_tables_are_the_defaults() -> None:
    credits_table, weights_table = tables(section(DOCS / "concepts.md", "Health"))[:2]
    weights = {r[0].strip("`"): float(r[1]) for r in table_rows(weights_table)}
    assert weights == {impact.value: w for impact, w in DEFAULT_IMPACT_WEIGHTS.items()}
    degraded = next(r[1] for r in table_rows(credits_table) if r[0].startswith("degraded"))
    assert f"default {WorkflowPolicy().degraded_credit}" in degraded


def _outcome(name: str, status: StepStatus, impact: FailureImpact, **extra: Any) -> StepOutcome:
    return StepOutcome(
        name=name, status=status, policy=FailurePolicy.CONTINUE, impact=impact, **extra
    )


def test_health_worked_example_is_what_the_code_computes() -> None:
    # a critical step succeeds, a major step is carried by its fallback, a minor one fails
    ledger = HealthLedger(WorkflowPolicy())
    ledger.add(_outcome("load", StepStatus.SUCCEEDED, FailureImpact.CRITICAL))
    ledger.add(_outcome("recommend", StepStatus.DEGRADED, FailureImpact.MAJOR))
    ledger.add(_outcome("metrics", StepStatus.TOLERATED, FailureImpact.MINOR))
    w = DEFAULT_IMPACT_WEIGHTS
    credit = w[FailureImpact.CRITICAL] + w[FailureImpact.MAJOR] * WorkflowPolicy().degraded_credit
    total = w[FailureImpact.CRITICAL] + w[FailureImpact.MAJOR] + w[FailureImpact.MINOR]
    line = f"= {credit:g} / {total:g} = {ledger.score:.3f}"
    assert line in section(DOCS / "concepts.md", "Health"), line


def test_termination_example_is_the_message_the_code_gives() -> None:
    ledger = HealthLedger(WorkflowPolicy(max_partial_failures=2))
    fired = None
    for name in ("fetch_fx_rates", "push_metrics", "warm_cache"):
        fired = ledger.add(
            _outcome(name, StepStatus.TOLERATED, FailureImpact.MINOR, action=FailureAction.CONTINUE)
        )
    assert fired is TerminationRule.MAX_PARTIAL_FAILURES
    message = str(WorkflowTerminated(fired, ledger.stop_reason or ""))
    assert f"    {message}\n" in section(DOCS / "concepts.md", "Termination rules"), message


def test_decision_example_is_what_decide_says() -> None:
    step = StepPolicy(
        policy="graceful_degradation", retries=3, fallbacks=["email_fallback", "queue"]
    )
    reason = decide(step, ConnectionError("refused"), attempt=4).reason
    assert f"> `{reason}`" in section(DOCS / "concepts.md", "Decisions")


def test_documented_file_error_is_what_load_policy_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = DOCS / "step-policies.md"
    document = fences("yaml", [page])[0].body
    assert "maxRetries: 3\n" in document
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "prod.yaml").write_text(
        document.replace("maxRetries: 3", "maxRetries: -1")
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ResilienceConfigError) as raised:
        load_policy("policies/prod.yaml")
    shown = [f.body.strip() for f in fences("text", [page])]
    assert str(raised.value) in shown


# --- guides run as written, on a real Prefect server ---------------------------------------


@dataclass
class GuideRun:
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (command, output)


_LOOP = re.compile(r"^for \w+ in \$\(seq (?P<times>\d+)\); do (?P<body>[^;]+); done$")


def _repeated(fence: Fence) -> Iterator[tuple[list[str], int]]:
    """Each command line with how many times to run it: a guide's `for ... $(seq N)` loop
    of one command runs it N times."""
    for line in fence.body.splitlines():
        loop = _LOOP.match(line.strip())
        if loop:
            yield shlex.split(loop["body"]), int(loop["times"])
        else:
            yield from ((words, 1) for words in _command_lines(replace(fence, body=line)))


def _run_line(words: list[str], workdir: Path) -> str | None:
    if tuple(words[:2]) in SETUP_COMMANDS:
        return None  # the test has its own environment and server
    if words[0] == "python":
        out = io.StringIO()
        argv = sys.argv
        sys.argv = words[1:]
        try:
            with contextlib.redirect_stdout(out):
                runpy.run_path(str(workdir / words[1]), run_name="__main__")
        finally:
            sys.argv = argv
        return out.getvalue()
    if words[0] == "prefect-resilience":
        result = runner.invoke(app, words[1:])
        assert result.exit_code == 0, f"{' '.join(words)} failed:\n{result.output}"
        return result.output
    pytest.fail(f"the guide runner does not know how to run: {' '.join(words)}")


def run_guide(page: Path, workdir: Path, on_marker: Callable[[Marker], None]) -> GuideRun:
    run = GuideRun()
    for item in blocks_of(page):
        if isinstance(item, Marker):
            on_marker(item)
        elif "file" in item.attrs:
            (workdir / item.attrs["file"]).write_text(item.body, encoding="utf-8")
        elif item.lang == "sh":
            for words, times in _repeated(item):
                for _ in range(times):
                    output = _run_line(words, workdir)
                    if output is not None:
                        run.outputs.append((" ".join(words), output))
        elif item.lang == "text" and "output" in item.flags:
            command, output = run.outputs[-1]
            printed = [line.strip() for line in output.splitlines()]
            for expected in item.body.strip().splitlines():
                assert expected.strip() in printed, (
                    f"{item.page.name}:{item.line}: `{command}` did not print\n  {expected}\n"
                    f"it printed:\n{output}"
                )
    return run


def _edit_block(marker: Marker) -> None:
    """Change one setting of one step policy in a block document, as the UI's form does."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import BlockDocumentUpdate

    command, name, match, assignment = marker.words
    assert command == "edit-block", f"{marker.page.name}:{marker.line}: unknown marker"
    key, _, raw = assignment.partition("=")
    with get_client(sync_client=True) as client:
        document = client.read_block_document_by_name(name, block_type_slug="resilience-policy")
        data = dict(document.data)
        rules = [dict(rule) for rule in data["step_policies"]]
        (rule,) = [r for r in rules if r["match"] == match]
        rule[key] = yaml.safe_load(raw)
        data["step_policies"] = rules
        client.update_block_document(document.id, BlockDocumentUpdate(data=data))


def _no_marker(marker: Marker) -> None:
    pytest.fail(f"{marker.page.name}:{marker.line}: unexpected marker {marker.words}")


@pytest.mark.usefixtures("prefect_server")
def test_quickstart_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = run_guide(DOCS / "quickstart.md", tmp_path, _no_marker)
    assert [command for command, _ in run.outputs] == ["python quickstart.py"]


def _reports_oldest_first(flow_name: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    from prefect_resilience import get_report

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            sort=FlowRunSort.START_TIME_ASC,
            limit=200,
        )
    return [get_report(r.id) for r in runs]


@pytest.mark.usefixtures("prefect_server")
def test_migration_guide_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect_resilience import blocks

    monkeypatch.chdir(tmp_path)
    run = run_guide(DOCS / "migrating.md", tmp_path, _edit_block)
    commands = [command for command, _ in run.outputs]
    assert commands.count("python orders.py") == 6 + 20  # steps 3-5, and step 7's loop

    # what the guide says of the UI edit: one attempt instead of three
    runs = _reports_oldest_first("nightly-orders")
    assert len(runs) == 26
    attempts = [
        next(s.attempts for s in report.steps if s.name == "recommend") for report in runs[4:6]
    ]
    assert attempts == [3, 1]

    # what the guide says the analysis shows (step 6 ran after 6 runs; the figures hold)
    result = runner.invoke(
        app, ["analyze", "--flow", "nightly-orders", "--since", "1d", "--json", "--refresh"]
    )
    assert result.exit_code == 0, result.output
    analysis = json.loads(result.output)
    assert analysis["flow_runs"] == 26
    steps = {row["task_name"]: row for row in analysis["steps"]}
    assert steps["recommend"]["failure_rate"] == 1.0
    assert steps["recommend"]["recovered_by_retry"] == 0
    patterns = [p for p in analysis["failure_patterns"] if p["task_name"] == "recommend"]
    assert [(p["error_type"], p["template"]) for p in patterns] == [
        ("ConnectionError", "recommendation service is down")
    ]

    # step 7: optimize read 26 runs; the rollback brought back version 1 as version 3
    (proposal,) = [
        out for command, out in run.outputs if command.startswith("prefect-resilience optimize")
    ]
    assert "at least 20 are needed" not in proposal
    (simulated,) = [out for command, out in run.outputs if "prefect-resilience simulate" in command]
    assert "predicted from 26 finished flow runs; block orders-policy (in force)" in simulated
    assert "runs terminated" in simulated
    notes = [v.note for v in blocks.history("orders-policy")]
    assert notes == ["applied from orders-policy.yaml", "edited outside", "rollback to version 1"]
    assert (
        blocks.load_block_policy("orders-policy").step_policies
        == load_policy(tmp_path / "orders-policy.yaml").step_policies
    )


@pytest.mark.usefixtures("prefect_server")
def test_documented_block_error_is_what_a_run_would_see() -> None:
    """A block saved with a rule the form cannot check fails with the error blocks.md shows."""
    from uuid import uuid4

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import BlockDocumentCreate

    from prefect_resilience import ResiliencePolicy
    from prefect_resilience.blocks import load_block_policy

    shown = next(
        f.body.strip() for f in fences("text", [DOCS / "blocks.md"]) if "backoff" in f.body
    )
    documented_name = re.match(r"block (\S+?)\.", shown).group(1)  # type: ignore[union-attr]
    name = f"docs-check-{uuid4().hex[:8]}"
    ResiliencePolicy.register_type_and_schema()
    with get_client(sync_client=True) as client:
        block_type = client.read_block_type_by_slug("resilience-policy")
        schema = client.get_most_recent_block_schema_for_block_type(block_type.id)
        assert schema is not None
        client.create_block_document(
            BlockDocumentCreate(
                name=name,
                data={"step_policies": [{"match": "x", "backoff": {"initial": 10, "max": 1}}]},
                block_schema_id=schema.id,
                block_type_id=block_type.id,
            )
        )
    with pytest.raises(ResilienceConfigError) as raised:
        load_block_policy(name)
    assert str(raised.value) == shown.replace(documented_name, name)


@pytest.mark.usefixtures("prefect_server")
def test_readme_quick_start_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new user's path through the README, in an empty directory: its files written, its
    commands run, then each of its flows run as written. `make demo` is the examples' demo
    test and `make test` is this suite, so those two lines are the only ones not run here."""
    from prefect_resilience import get_report

    monkeypatch.chdir(tmp_path)
    commands, flows = [], []
    for item in blocks_of(ROOT / "README.md"):
        if isinstance(item, Marker):
            continue
        if "file" in item.attrs:
            (tmp_path / item.attrs["file"]).write_text(item.body, encoding="utf-8")
        elif item.lang == "sh":
            for words in _command_lines(item):
                if words[0] != "make":
                    commands.append(" ".join(words))
                    _run_line(words, tmp_path)
        elif item.lang == "python":
            namespace: dict[str, Any] = {}
            exec(compile(item.body, f"README.md:{item.line}", "exec"), namespace)
            flows.append(namespace["nightly"])
    assert commands == [
        "prefect-resilience register",
        "prefect-resilience policy apply nightly-resilience.yaml",
    ]
    assert len(flows) == 2
    for nightly in flows:
        state = nightly([1, 2], return_state=True)
        assert state.is_completed(), state
    # the resilient flow ran under the block the README's commands saved
    report = get_report(state.state_details.flow_run_id)
    assert report.policy is not None
    assert (report.policy.source, report.policy.fallback_reason) == (
        "block nightly-resilience",
        None,
    )
