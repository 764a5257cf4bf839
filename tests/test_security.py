"""Security: no eval or unsafe YAML in the package, no task data in its logs, private files.

The source is scanned (its syntax tree, not a grep) for calls that turn text
into code or objects; a resilient flow whose parameters and results look like
secrets runs every path that logs (retries, a refused retry, a fallback, a
tolerated failure, a termination, a loop) and neither our loggers nor the
run's logs in Prefect nor its report carry them; the history cache is created
readable by the user only, whatever the umask.
"""

from __future__ import annotations

import ast
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect import task

from prefect_resilience import resilient, resilient_flow, resilient_loop
from prefect_resilience.history import Cache, load_history
from tests.conftest import ROOT

PACKAGE = ROOT / "prefect_resilience"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _calls(path: Path) -> Iterator[tuple[str, ast.Call]]:
    """Every call in a module, with the dotted name it calls (`yaml.load`, `eval`, ...)."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), node


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{node.lineno}"


# --- nothing user-supplied becomes code ---------------------------------------------------


def test_the_package_never_evaluates_text() -> None:
    forbidden = {"eval", "exec", "compile", "__import__", "builtins.eval", "builtins.exec"}
    found = [
        _where(path, node) + f" {name}"
        for path in SOURCES
        for name, node in _calls(path)
        if name in forbidden
    ]
    assert found == []


def test_yaml_is_read_only_by_the_safe_loader() -> None:
    unsafe = {"yaml.load", "yaml.load_all", "yaml.full_load", "yaml.full_load_all",
              "yaml.unsafe_load", "yaml.unsafe_load_all"}  # fmt: skip
    safe_loaders = {"yaml.SafeLoader", "yaml.CSafeLoader"}
    problems, reads = [], []
    for path in SOURCES:
        for name, node in _calls(path):
            if name in unsafe:
                problems.append(f"{_where(path, node)} {name}")
            if name.startswith("yaml.") and name not in ("yaml.safe_dump", "yaml.dump"):
                reads.append(name)
                for keyword in node.keywords:
                    if keyword.arg == "Loader" and ast.unparse(keyword.value) not in safe_loaders:
                        problems.append(f"{_where(path, node)} Loader={ast.unparse(keyword.value)}")
                if name in ("yaml.compose", "yaml.parse", "yaml.scan") and not any(
                    k.arg == "Loader" for k in node.keywords
                ):
                    problems.append(f"{_where(path, node)} {name} without Loader=SafeLoader")
    assert problems == []
    assert "yaml.safe_load" in reads  # the scan sees the YAML reading that exists


def test_no_pickle_shell_or_dynamic_code_from_documents() -> None:
    risky = {"pickle.loads", "pickle.load", "marshal.loads", "os.system", "os.popen",
             "subprocess.run", "subprocess.Popen", "subprocess.call",
             "subprocess.check_output"}  # fmt: skip
    found = [
        f"{_where(path, node)} {name}"
        for path in SOURCES
        for name, node in _calls(path)
        if name in risky
    ]
    assert found == []


def test_imports_by_name_happen_in_reviewed_places_only() -> None:
    """Two imports by name, each reviewed: the lazy exports, and allow-listed fallbacks.

    A document never chooses what is imported: a fallback 'module:function' is
    imported only from modules the worker's code or environment allowed
    (tests/test_fallbacks.py). A new import by name must be reviewed the same
    way: this test lists them all.
    """
    found = [
        f"{path.relative_to(ROOT)}:{name}"
        for path in SOURCES
        for name, _ in _calls(path)
        if name in ("importlib.import_module", "import_module", "importlib.__import__")
    ]
    assert found == [
        "prefect_resilience/__init__.py:importlib.import_module",  # the lazy exports
        "prefect_resilience/fallbacks.py:importlib.import_module",  # allow-listed only
    ]


def test_the_lazy_package_imports_only_its_own_modules() -> None:
    """The package `__init__` imports by name only from its literal `_EXPORTS` table."""
    import prefect_resilience

    tree = ast.parse((ROOT / "prefect_resilience" / "__init__.py").read_text())
    table = next(
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.AnnAssign | ast.Assign)
        and "_EXPORTS"
        in ast.unparse(node.target if isinstance(node, ast.AnnAssign) else node.targets[0])
    )
    assert isinstance(table, ast.Dict)
    assert all(isinstance(value, ast.Constant) for value in table.values)
    modules = {value.value for value in table.values if isinstance(value, ast.Constant)}
    assert modules == set(prefect_resilience._EXPORTS.values())
    assert all((ROOT / "prefect_resilience" / f"{module}.py").exists() for module in modules)


def test_loop_conditions_and_retry_filters_are_callables_or_exception_names() -> None:
    from prefect_resilience import ResilienceConfigError, StepPolicy

    with pytest.raises(ResilienceConfigError, match="until must be callable"):
        resilient_loop(lambda: 1, until="result > 3")  # type: ignore[arg-type]
    # a retry filter is a list of exception names, matched as names, never run
    step = StepPolicy(retry_on=["__import__('os').system('true')"])
    assert step.retry_on == ("__import__('os').system('true')",)
    from prefect_resilience.decision import decide

    decision = decide(step.model_copy(update={"retries": 3}), ConnectionError("x"), attempt=1)
    assert decision.action.value != "retry"  # the text matched no exception: no retry


# --- no task data in logs -----------------------------------------------------------------

SECRET = "sk-live-7f3a9c1e5b2d-do-not-log"
RESULT = "result-token-48c2e1aa-do-not-log"


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        # ours log through Prefect's run loggers: known by the module that logged
        ours = f"{os.sep}prefect_resilience{os.sep}" in record.pathname
        self.lines.append(f"{'prefect_resilience' if ours else record.name}: {self.format(record)}")


@pytest.fixture
def every_log_line() -> Iterator[list[str]]:
    """Everything logged, at DEBUG, by our loggers and Prefect's (which ours sit under)."""
    handler = _Collect()
    loggers = [logging.getLogger(n) for n in ("", "prefect", "prefect_resilience")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        yield handler.lines
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)


@task
def from_cache(token: str) -> str:
    return f"{RESULT}-cached"


@resilient(policy="graceful_degradation", retries=1, retry_delay=0, fallbacks=[from_cache])
def fetch(token: str) -> str:
    raise ConnectionError("upstream unavailable")


@resilient(policy="continue", default="off", retries=2, retry_delay=0, give_up_on=["ValueError"])
def optional(token: str) -> str:
    raise ValueError("optional step failed")


@resilient(policy="partial_success")
def compute(token: str) -> str:
    return RESULT


@resilient(policy="fail_fast", critical=True)
def final(token: str, fail: bool) -> str:
    if fail:
        raise RuntimeError("final step failed")
    return RESULT


@resilient_flow(name="secret-parameters")
def handles_secrets(token: str, fail: bool) -> str:
    fetch(token)
    optional(token)
    compute.submit(token).result()
    resilient_loop(compute, token, until=lambda result: result == RESULT, max_iterations=3)
    return final(token, fail)


@pytest.mark.parametrize("fail", [False, True])
def test_parameters_and_results_never_reach_the_logs(
    prefect_server: None, client: Any, every_log_line: list[str], fail: bool
) -> None:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    state = handles_secrets(SECRET, fail, return_state=True)
    assert state.is_failed() is fail
    run_id = state.state_details.flow_run_id
    ours = [line for line in every_log_line if "prefect_resilience" in line.split(":")[0]]
    assert ours, "the run logged nothing of ours: the capture is not working"
    assert any("no retry" in line for line in ours)  # the refused retry was logged...
    for line in every_log_line:  # ...and no line, ours or Prefect's, carries the data
        assert SECRET not in line and RESULT not in line, line
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # send what is queued, then read it back
    logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    assert logs, "Prefect stored no logs for the run"
    for log in logs:
        assert SECRET not in log.message and RESULT not in log.message, log.message
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
    )
    assert len(artifacts) >= 3  # the run's report: summary, steps, structured data
    for artifact in artifacts:
        assert SECRET not in str(artifact.data) and RESULT not in str(artifact.data)


# --- files readable by the user only ------------------------------------------------------


def _cache_path() -> Path:
    from prefect.settings import PREFECT_API_URL

    return Cache.location(str(PREFECT_API_URL.value() or "ephemeral"), "secret-parameters")


def test_the_history_cache_is_private_whatever_the_umask(prefect_server: None) -> None:
    path = _cache_path()
    if path.exists():
        path.chmod(0o644)  # a cache left readable by an older version is replaced
    old = os.umask(0)  # the most permissive umask there is
    try:
        load_history("secret-parameters", refresh=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not path.with_suffix(".tmp").exists()


def test_a_fresh_cache_directory_is_private(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "home" / "prefect-resilience" / "cache" / "x.json")
    old = os.umask(0)
    try:
        cache.save()
    finally:
        os.umask(old)
    assert stat.S_IMODE(cache.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.path.parent.stat().st_mode) == 0o700


def test_files_the_package_writes_are_the_reviewed_ones() -> None:
    """Every place the package writes a file: the private cache, and the HTML file asked for."""
    writers = []
    for path in SOURCES:
        for name, node in _calls(path):
            mode = next((ast.unparse(a) for a in node.args[1:2]), "")
            if name in ("os.open", "write_text", "write_bytes") or name.endswith(
                (".write_text", ".write_bytes")
            ):
                writers.append(f"{path.name}:{name}")
            elif name == "open" and any(c in mode for c in "wax"):
                writers.append(f"{path.name}:open({mode})")
    assert sorted(writers) == [
        "cli.py:html_file.write_text",  # the HTML report, at the path the user gave
        # open_private: the history cache, pending reports, journals; 0600
        "local_store.py:os.open",
    ]


def test_fallback_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """Reports the API did not take, and step journals, are user-only in a user-only folder."""
    from uuid import uuid4

    from prefect.settings import PREFECT_HOME, temporary_settings

    from prefect_resilience import WorkflowPolicy
    from prefect_resilience.health import WorkflowHealth
    from prefect_resilience.local_store import StepJournal, keep_pending, pending_dir
    from prefect_resilience.report import (
        BusinessImpact,
        ContinuityStatus,
        PartialSuccessResult,
        RunStatus,
    )

    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    with temporary_settings({PREFECT_HOME: home}):
        old = os.umask(0)
        try:
            journal = StepJournal.open(uuid4(), "secret-parameters", WorkflowPolicy())
            journal.close()
            report = PartialSuccessResult(
                flow_run_id=uuid4(),
                flow_name="secret-parameters",
                overall_status=RunStatus.COMPLETED,
                continuity_status=ContinuityStatus.MAINTAINED,
                business_impact=BusinessImpact(),
                health=WorkflowHealth(),
            )
            pending = keep_pending(report)
        finally:
            os.umask(old)
        folder = pending_dir()
    assert folder.parent.parent == home
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in (journal.path, pending):
        assert path.parent == folder
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
