"""Bad input: block documents, policy YAML, command-line arguments, and untidy history.

Whatever a block document or a policy file holds, loading it gives a policy or a
ResilienceConfigError naming what is wrong; whatever the arguments, the CLI
answers with a result, a clear error (exit 1) or a usage error (exit 2), never
a traceback; and runs in progress, gaps and a worker's skewed clock in real
Prefect history do not change what the analysis concludes.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prefect import flow, task
from typer.testing import CliRunner

from prefect_resilience import ResilienceConfigError, WorkflowPolicy, load_policy, resilient
from prefect_resilience.analytics import continuity_metrics
from prefect_resilience.analytics.summary import analyze
from prefect_resilience.blocks import ResiliencePolicy, load_block_policy
from prefect_resilience.cli import app
from prefect_resilience.compliance import evaluate
from prefect_resilience.history import load_history

pytestmark = pytest.mark.usefixtures("prefect_server")
runner = CliRunner(env={"COLUMNS": "200"})
FUZZ = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# --- block documents ----------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 1000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.sampled_from(["fail_fast", "continue", "critical", "5s", "1m", "graceful_degradation"]),
)
step_keys = st.sampled_from(
    ["match", "policy", "retries", "retry_delay", "backoff", "critical", "impact", "fallbacks",
     "default", "retry_on", "give_up_on", "timeout", "initial", "max", "jitter", "colour"]
)  # fmt: skip
block_keys = st.sampled_from(
    ["default_failure_policy", "max_partial_failures", "critical_step_ratio",
     "termination_threshold", "health_alert_below", "degraded_credit", "impact_weights",
     "step_policies", "name", "unknown"]
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(step_keys, block_keys, st.text(max_size=5)), inner, max_size=4),
    ),
    max_leaves=12,
)
step_rules = st.dictionaries(step_keys, values, max_size=5)
block_documents = st.dictionaries(
    block_keys,
    st.one_of(values, st.lists(st.one_of(step_rules, values), max_size=3)),
    max_size=6,
)


@pytest.fixture(scope="module")
def block_id(prefect_server: None) -> Iterator[Any]:
    ResiliencePolicy.register_type_and_schema()
    ResiliencePolicy.from_policy(WorkflowPolicy()).save("fuzzed", overwrite=True)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        yield client.read_block_document_by_name("fuzzed", "resilience-policy").id


def _store(block_document_id: Any, data: dict[str, Any]) -> None:
    """Write `data` into the block document as the API (or a UI edit) would store it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import BlockDocumentUpdate

    with get_client(sync_client=True) as client:
        client.update_block_document(
            block_document_id, BlockDocumentUpdate(data=data, merge_existing_data=False)
        )


@FUZZ
@given(block_documents)
@example(data={"step_policies": [{"match": "db", "fallbacks": False}]})  # the known failure
def test_any_block_document_loads_or_raises_config_error(block_id: Any, data: dict) -> None:
    try:
        _store(block_id, data)
    except Exception:  # the API refused to store it: nothing for the package to read
        return
    try:
        policy = load_block_policy("fuzzed")
    except ResilienceConfigError as error:
        assert str(error).startswith("block fuzzed") or "block fuzzed" in str(error)
    else:
        assert isinstance(policy, WorkflowPolicy)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"step_policies": "everything"}, "step_policies"),
        ({"step_policies": [{"match": "x", "retries": -1}]}, "retries"),
        ({"critical_step_ratio": 7}, "critical_step_ratio"),
        ({"impact_weights": {"huge": 1}}, "impact_weights"),
        ({"step_policies": [{"match": "x", "retry_delay": "soon"}]}, "not a duration"),
    ],
)
def test_bad_block_documents_name_the_field(block_id: Any, data: dict, words: str) -> None:
    _store(block_id, data)
    with pytest.raises(ResilienceConfigError, match=re.escape(words)) as caught:
        load_block_policy("fuzzed")
    assert "block fuzzed" in str(caught.value)


@pytest.mark.parametrize("fallbacks", [False, 3, 2.5])
def test_fallbacks_that_are_not_a_list_are_named_in_a_block(block_id: Any, fallbacks: Any) -> None:
    _store(block_id, {"step_policies": [{"match": "db", "fallbacks": fallbacks}]})
    with pytest.raises(ResilienceConfigError, match=r"block fuzzed.*fallbacks"):
        load_block_policy("fuzzed")


def test_fallbacks_that_are_not_a_list_are_named_in_a_policy_file() -> None:
    with pytest.raises(ResilienceConfigError) as caught:
        load_policy("stepPolicies:\n  db:\n    fallbacks: false\n")
    assert caught.value.field == "stepPolicies.db.fallbacks"  # today: no field named
    assert caught.value.line == 3


@pytest.mark.parametrize("fallbacks", [False, 3, 2.5])
def test_fallbacks_that_are_not_a_list_are_named_by_the_decorator(fallbacks: Any) -> None:
    def fetch() -> int:
        return 1

    for step in (fetch, task(fetch)):  # a plain function, or a Prefect task under @resilient
        with pytest.raises(ResilienceConfigError, match="must be a list of tasks") as caught:
            resilient(fallbacks=fallbacks)(step)
        assert caught.value.field == "fallbacks"
        assert str(caught.value).startswith("fallbacks: must be a list of tasks")


# --- policy YAML --------------------------------------------------------------------------

camel_step_keys = st.sampled_from(
    ["failurePolicy", "isCritical", "maxRetries", "retryDelay", "failureImpact",
     "fallbackActions", "backoff", "retryOn", "timeout", "type"]
)  # fmt: skip
spec_keys = st.sampled_from(
    ["defaultFailurePolicy", "maxPartialFailures", "criticalStepRatio", "terminationThreshold",
     "stepPolicies", "healthAlertBelow", "unknown"]
)  # fmt: skip
camel_rules = st.dictionaries(camel_step_keys, values, max_size=4)
policy_documents = st.one_of(
    block_documents,  # the bare mapping of settings, snake_case
    st.builds(  # the originating design's WorkflowResilienceConfig
        lambda spec, kind: {"apiVersion": "workflow.kubernaut.io/v1", "kind": kind, "spec": spec},
        st.dictionaries(
            spec_keys,
            st.one_of(values, st.dictionaries(st.text(max_size=8), camel_rules, max_size=3)),
            max_size=5,
        ),
        st.sampled_from(["WorkflowResilienceConfig", "Other", ""]),
    ),
    st.builds(  # a workflow whose steps carry resilience blocks
        lambda steps: {"steps": steps},
        st.lists(
            st.fixed_dictionaries(
                {"id": st.one_of(st.text(max_size=8), values)},
                optional={"resilience": st.one_of(camel_rules, values), "type": values},
            ),
            max_size=3,
        ),
    ),
    values,  # not a mapping at all
)
policy_texts = st.one_of(
    policy_documents.map(yaml.safe_dump),
    policy_documents.map(yaml.safe_dump).map(lambda text: text.replace(":", ": :", 1)),
    st.text(max_size=80).map(lambda text: text + "\n"),  # a line break: text, never a path
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_texts)
@example(text="stepPolicies:\n  db:\n    fallbacks: false\n")
@example(text="spec: !!python/object/apply:os.system ['true']\n")  # never constructed
def test_any_policy_yaml_loads_or_raises_config_error_with_a_message(text: str) -> None:
    try:
        policy = load_policy(text)
    except ResilienceConfigError as error:
        assert error.message.strip()
        # load_policy's last resort wraps an unexpected exception in this message: an
        # exception from deep inside, which bad input must never reach
        assert not error.message.startswith("cannot read the policy"), error.__cause__
    else:
        assert isinstance(policy, WorkflowPolicy)


BOMB = "\n".join(
    ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    + ["stepPolicies: *a8", ""]
)


def test_a_yaml_alias_bomb_is_refused_not_a_hang() -> None:
    script = (
        "import sys\n"
        "from prefect_resilience import ResilienceConfigError, load_policy\n"
        "try:\n    load_policy(sys.stdin.read())\n"
        "except ResilienceConfigError as error:\n    print(error.message[:200])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], input=BOMB, capture_output=True, text=True, timeout=5
    )
    assert done.returncode == 0 and done.stdout.strip(), done.stderr[-2000:]
    assert "through YAML aliases" in done.stdout


# --- untidy history -----------------------------------------------------------------------
#
# A daily flow run over three weeks, as Prefect records it. Prefect stamps a flow run's
# states with the server's clock, and a task run's with the clock of the process that
# runs it (they reach the server as events), so `_on_day` moves the clock the Prefect
# client stamps states with: the task runs are recorded on that day, as if a worker
# had run them then. Day LAST is today; day d ran LAST - d days ago.

FLOW = "untidy-history"
STEPS = 4  # task runs of `fetch` in each daily run
LAST = 20
GAPS = (3, 9, 15, 18)  # days without a run: each alone, between two days with runs
RUN_DAYS = [day for day in range(LAST + 1) if day not in GAPS]
EVERY = frozenset(range(STEPS))
FAILING = {5: {0}, 7: EVERY, 11: {2}, 14: {1, 3}, 16: EVERY, 17: {0}, 19: EVERY}
"""The parts of `fetch` that fail, by day; a day on which every part fails fails the flow run."""
SKEWED_DAY = LAST
"""Run by a worker whose clock is 2 minutes fast and is stepped back 3 minutes during its
last part: Prefect keeps that task run Running (its end event is older than its start), and
it is then marked Crashed on the server's clock, so Prefect holds an end before the start."""
RECENT, BASELINE = "7D", "14D"
# the last 7 days hold days 14, 16, 17, 19 and 20: 20 task runs, 2 + 4 + 1 + 4 + 1 (the
# crashed one) = 12 failed; the 14 days before hold 12 days with runs: 48 task runs, 6 failed
FINISHED_FLOW_RUNS, FAILED_FLOW_RUNS = len(RUN_DAYS), 3
FINISHED_TASK_RUNS, FAILED_TASK_RUNS = len(RUN_DAYS) * STEPS, 18


class _Clock:
    """How far the clock Prefect stamps client-side states with is moved from the real one."""

    shift = timedelta(0)


@resilient(policy="continue", default=None)
def fetch(day: int, part: int) -> int:
    """One part of a day's load; on the skewed day NTP steps the clock back during the last."""
    if part in FAILING.get(day, ()):
        raise ConnectionError(f"source down on day {day}")
    if day == SKEWED_DAY and part == STEPS - 1:
        _Clock.shift -= timedelta(minutes=3)
    return part


@flow(name=FLOW)
def daily(day: int) -> list[int | None]:
    parts = [fetch(day, part) for part in range(STEPS)]
    if all(part is None for part in parts):
        raise RuntimeError(f"nothing loaded on day {day}")
    return parts


def _on_day(
    day: int | None, fn: Callable[[], Any], offset: timedelta = timedelta(0), settled: int = STEPS
) -> Any:
    """Call `fn` (a flow run, returning its state) as a worker whose clock reads day `day`
    (None: today) plus `offset`; return the state once `settled` of its task runs are
    recorded by Prefect in a final state."""
    from prefect.client.schemas import objects

    real = objects.now
    _Clock.shift = offset + timedelta(days=0 if day is None else day - LAST)
    with pytest.MonkeyPatch.context() as patch:  # State(timestamp=...) defaults to objects.now
        patch.setattr(objects, "now", lambda tz="UTC": real(tz) + _Clock.shift)
        state = fn()
    _recorded(state.state_details.flow_run_id, settled)
    return state


def _recorded(flow_run_id: Any, finished: int, total: int | None = None) -> list[Any]:
    """The flow run's task runs once Prefect has recorded `finished` of them in a final state
    (and `total` in all): task run states reach the server as events, a moment later."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))
            done = sum(run.state is not None and run.state.is_final() for run in runs)
            if done >= finished and len(runs) >= (total or finished):
                return runs
            assert time.monotonic() < deadline, f"{done} of {len(runs)} task runs recorded"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def untidy(prefect_server: None) -> dict[str, Any]:
    """The history of FLOW: daily runs with gaps, a skewed clock and two runs in progress."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed, Pending, Running

    day_of = {}
    for day in RUN_DAYS:
        skewed = day == SKEWED_DAY
        state = _on_day(
            day,
            partial(daily, day, return_state=True),
            offset=timedelta(minutes=2) if skewed else timedelta(0),
            settled=STEPS - 1 if skewed else STEPS,
        )
        day_of[str(state.state_details.flow_run_id)] = day
    with get_client(sync_client=True) as client:
        (stuck,) = [
            run
            for run in _recorded(state.state_details.flow_run_id, STEPS - 1, total=STEPS)
            if not run.state.is_final()
        ]
        assert stuck.state.type.value == "RUNNING"  # its end event was dropped as older
        client.set_task_run_state(
            stuck.id, Crashed(message="left Running by a worker's clock step"), force=True
        )
        running = client.create_flow_run(daily, parameters={"day": LAST}, state=Running())
        pending = client.create_flow_run(daily, parameters={"day": LAST}, state=Pending())
        for key, started in (("now", Running()), ("pen", Pending())):
            client.create_task_run(fetch, running.id, key, name=f"fetch-{key}", state=started)
    return {
        "history": load_history(FLOW, refresh=True),
        "day_of": day_of,
        "skewed": str(stuck.id),
        "in_progress": {str(running.id), str(pending.id)},
    }


def _analysis(history: Any) -> Any:
    return analyze(
        history.task_runs, history.flow_runs, history.reports, recent=RECENT, baseline=BASELINE
    )


def test_runs_in_progress_are_neither_successes_nor_failures(untidy: dict[str, Any]) -> None:
    history = untidy["history"]
    flow_runs, task_runs = history.flow_runs, history.task_runs
    in_progress = flow_runs["flow_run_id"].isin(untidy["in_progress"])
    assert sorted(flow_runs.loc[in_progress, "state_type"]) == ["PENDING", "RUNNING"]
    assert sorted(task_runs.loc[task_runs["start_time"].isna() | task_runs["end_time"].isna(),
                                "state_type"]) == ["PENDING", "RUNNING"]  # fmt: skip
    analysis = _analysis(history)
    assert analysis.flow_runs == FINISHED_FLOW_RUNS + 2

    continuity = analysis.continuity.loc[FLOW]
    assert continuity["n_finished"] == FINISHED_FLOW_RUNS
    assert continuity["completion_rate"] == pytest.approx(14 / 17)
    assert continuity["termination_rate"] == pytest.approx(FAILED_FLOW_RUNS / 17)
    assert continuity["partial_success_rate"] == 0
    # days 7, 16 and 19 failed; the next day's run recovered each
    assert (continuity["n_recoveries"], continuity["open_incidents"]) == (3, 0)
    assert continuity["mttr_s"] > 0
    assert continuity["n_reported"] == 0 and pd.isna(continuity["critical_failure_rate"])
    finished = flow_runs[~in_progress]
    pd.testing.assert_frame_equal(
        analysis.continuity, continuity_metrics(finished, history.reports)
    )

    steps = analysis.steps.loc["fetch"]
    assert (steps["runs"], steps["failures"], steps["cancelled"]) == (
        FINISHED_TASK_RUNS, FAILED_TASK_RUNS, 0
    )  # fmt: skip
    assert steps["failure_rate"] == pytest.approx(18 / 68)
    assert steps["attempts_mean"] == 1.0 and steps["retried_runs"] == 0
    (row,) = analysis.degradation.to_dict("records")  # the Running task run is in the window
    assert (row["recent_runs"], row["recent_failures"]) == (20, 12)
    assert (row["baseline_runs"], row["baseline_failures"]) == (48, 6)

    compliance = evaluate(flow_runs, task_runs, history.reports)
    assert (compliance.finished_flow_runs, compliance.in_progress) == (FINISHED_FLOW_RUNS, 2)


def test_days_without_runs_are_gaps_not_days_without_failures(untidy: dict[str, Any]) -> None:
    history = untidy["history"]
    trend = _analysis(history).trend
    periods = trend.periods
    task_runs = history.task_runs
    days = task_runs["flow_run_id"].map(untidy["day_of"])
    date = task_runs["start_time"].dt.floor("D").groupby(days).min()  # each day's date
    for day in RUN_DAYS:
        failed = len(FAILING.get(day, ())) + (day == SKEWED_DAY)
        assert tuple(periods.loc[date[day], ["runs", "failures"]]) == (STEPS, failed), day
    for gap in GAPS:
        row = periods.loc[date[gap - 1] + pd.Timedelta(days=1)]
        assert (row["runs"], row["failures"]) == (0, 0), gap
        assert row[["failure_rate", "failure_rate_low", "failure_rate_high"]].isna().all(), gap
    # the line is fitted through the days with runs only, and counts every finished run
    assert (trend.n_periods, trend.n_runs) == (len(RUN_DAYS), FINISHED_TASK_RUNS)
    assert len(periods) >= LAST + 1 and periods["runs"].sum() == FINISHED_TASK_RUNS


def test_a_step_whose_end_is_before_its_start_has_unknown_duration(
    untidy: dict[str, Any],
) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # as Prefect holds it
        skewed = client.read_task_run(untidy["skewed"])
    assert skewed.state.type.value == "CRASHED" and skewed.end_time < skewed.start_time
    task_runs = untidy["history"].task_runs
    mine = task_runs["task_run_id"] == untidy["skewed"]
    (row,) = task_runs[mine].to_dict("records")
    assert row["end_time"] < row["start_time"] and row["duration_s"] < 0
    others = task_runs[~mine & task_runs["state_type"].isin(["COMPLETED", "FAILED"])]
    assert len(others) == FINISHED_TASK_RUNS - 1 and (others["duration_s"] >= 0).all()

    steps = _analysis(untidy["history"]).steps.loc["fetch"]
    assert (steps["runs"], steps["duration_n"]) == (FINISHED_TASK_RUNS, FINISHED_TASK_RUNS - 1)
    assert steps["p50_s"] == pytest.approx(others["duration_s"].median())
    assert steps["p95_s"] == pytest.approx(others["duration_s"].quantile(0.95))
    failed = others[others["state_type"] == "FAILED"]
    assert steps["wasted_retry_s"] == pytest.approx(failed["duration_s"].sum())
    assert steps["failures"] == FAILED_TASK_RUNS  # its outcome is known: it counts


def test_a_worker_clock_ahead_does_not_hide_a_degradation(untidy: dict[str, Any]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    # one run from a worker whose clock is 30 days fast
    state = _on_day(None, lambda: daily(0, return_state=True), offset=timedelta(days=30))
    try:
        with get_client(sync_client=True) as client:  # Prefect holds the worker's times
            (skewed,) = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id={"any_": [state.state_details.flow_run_id]}),
                limit=1,
            )
        assert skewed.start_time > datetime.now(UTC) + timedelta(days=29)
        history = load_history("untidy-history")
        (row,) = _analysis(history).degradation.to_dict("records")
        assert (row["recent_runs"], row["recent_failures"]) == (20, 12)
        assert row["degraded"]
    finally:  # the other tests see the history without it
        with get_client(sync_client=True) as client:
            client.delete_flow_run(state.state_details.flow_run_id)
        load_history("untidy-history", refresh=True)


# --- command-line arguments ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "option", "words"),
    [
        (["analyze", "--recent", "0"], "--recent", "needs a unit"),
        (["analyze", "--recent", "5"], "--recent", "needs a unit"),
        (["analyze", "--recent", "0D"], "--recent", "must be a positive span"),
        (["analyze", "--recent", "-1D"], "--recent", "must be a positive span"),
        (["analyze", "--recent", "soon"], "--recent", "is not a span of time"),
        (["analyze", "--baseline", "4000D"], "--baseline", "longer than 3650 days"),
        (["analyze", "--since", "0d"], "--since", "is not in the past"),
        (["analyze", "--since", "2999-01-01"], "--since", "is not in the past"),
        (["analyze", "--since", "99999999d"], "--since", "reaches before year 1"),
        (["analyze", "--since", "last week"], "--since", "use e.g. 7d"),
        (["compliance", "--min-sample", "0"], "--min-sample", "greater than or equal to 1"),
        (["optimize", "--flow", FLOW, "--bootstrap", "1"], "--bootstrap", "greater than or equal"),
        (["scale", "--horizon", "0"], "--horizon", "greater than or equal to 1"),
        (["scale", "--period", "0h"], "--period", "must be a positive span"),
    ],
)
def test_arguments_out_of_range_are_usage_errors(args: list[str], option: str, words: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"Usage: prefect-resilience {args[0]} [OPTIONS]" in result.output
    assert re.search(rf"Invalid value for '?{option}'?: .*{re.escape(words)}", result.output), (
        result.output
    )
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["analyze", "compliance", "optimize", "scale"])
def test_an_empty_history_is_a_clear_error_not_a_traceback(command: str) -> None:
    result = runner.invoke(app, [command, "--flow", "never-ran", "--since", "1d"])
    assert result.exit_code == 1, result.output
    assert "no runs match: flow never-ran, since 1d" in result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output


def test_history_since_in_the_future_is_refused_before_reading(prefect_server: None) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    result = runner.invoke(app, ["compliance", "--since", later])
    assert result.exit_code == 2 and "not in the past" in result.output
