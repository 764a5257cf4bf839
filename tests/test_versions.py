"""Policy versions: a readable page per version in the UI, exact rollback, numbers under races."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefect_resilience import (
    ResilienceConfigError,
    ResiliencePolicy,
    WorkflowPolicy,
    blocks,
    versions,
)

# --- the page, without a server ------------------------------------------------------------

_scalars = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=30)
_documents = st.dictionaries(
    st.text(min_size=1, max_size=12),
    st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6),
    max_size=6,
)


@given(document=_documents, note=st.text(max_size=40))
def test_the_page_gives_back_exactly_the_policy_it_shows(
    document: dict[str, Any], note: str
) -> None:
    page = versions.render("p", 3, note, document, previous=None)
    parsed_note, parsed = versions.parse("p", page)
    assert parsed == document
    assert parsed_note == " ".join(note.split())


def test_the_page_says_what_changed_how_and_by_whom() -> None:
    before = {"max_partial_failures": 2, "step_policies": [{"match": "load_*", "retries": 1}]}
    after = {
        "max_partial_failures": 7,
        "step_policies": [{"match": "load_*", "retries": 3, "policy": "continue"}],
    }
    page = versions.render("nightly", 4, "applied from nightly.yaml", after, before)
    assert page.startswith("# Resilience Policy `nightly`, version 4\n")
    assert "**How:** applied from nightly.yaml" in page
    assert "**By:** " in page
    assert "| `max_partial_failures` | 2 | 7 |" in page
    assert "| `step_policies[load_*].retries` | 1 | 3 |" in page
    assert '| `step_policies[load_*].policy` | (not set) | "continue" |' in page
    assert "policy rollback nightly --to 4" in page


def test_a_value_holding_a_fence_or_a_pipe_does_not_break_the_page() -> None:
    document = {"name_like": "````yaml\n| a |\n````", "other": "x|y"}
    page = versions.render("p", 2, "n", document, previous={"other": "x"})
    assert versions.parse("p", page)[1] == document
    assert '| `other` | "x" | "x\\|y" |' in page


def test_versions_written_before_the_pages_still_read() -> None:
    legacy = {"block": "p", "version": 1, "note": "saved", "policy": {"max_partial_failures": 1}}
    assert versions.parse("p", legacy) == ("saved", {"max_partial_failures": 1})


def test_a_page_without_its_policy_is_refused_by_name() -> None:
    with pytest.raises(ResilienceConfigError, match="policy 'p' holds no policy YAML"):
        versions.parse("p", "# edited by hand, policy removed")


# --- on a server ---------------------------------------------------------------------------


@pytest.fixture
def registered(prefect_server: None) -> None:
    ResiliencePolicy.register_type_and_schema()


def _name(request: pytest.FixtureRequest) -> str:
    return f"v-{request.node.name}".replace("_", "-")[:60]


@pytest.mark.usefixtures("registered")
def test_each_version_is_a_markdown_page_in_the_ui(request: pytest.FixtureRequest) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    name = _name(request)
    blocks.save_policy(name, WorkflowPolicy(max_partial_failures=2), note="first")
    blocks.save_policy(name, WorkflowPolicy(max_partial_failures=7), note="more room")
    with get_client(sync_client=True) as client:
        key = ArtifactFilterKey(any_=[versions.version_key(name)])
        artifact = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=key), sort=ArtifactSort.CREATED_DESC, limit=1
        )[0]
    assert artifact.type == "markdown"
    assert artifact.description == f"Resilience Policy `{name}` version 2: more room"
    assert "| `max_partial_failures` | 2 | 7 |" in artifact.data
    assert blocks.diff(name, 1, 2).count("max_partial_failures") == 2


@pytest.mark.usefixtures("registered")
def test_saves_at_the_same_moment_get_distinct_numbers(request: pytest.FixtureRequest) -> None:
    name = _name(request)
    blocks.save_policy(name, WorkflowPolicy(max_partial_failures=0), note="start")
    savers = 6
    start = threading.Barrier(savers)
    saved: dict[int, int] = {}

    def save(limit: int) -> None:
        start.wait()
        version = blocks.save_policy(name, WorkflowPolicy(max_partial_failures=limit))
        saved[limit] = version.number

    threads = [threading.Thread(target=save, args=(limit,)) for limit in range(1, savers + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(saved.values()) == list(range(2, savers + 2))
    assert [v.number for v in blocks.history(name)] == list(range(1, savers + 2))
    for limit, number in saved.items():  # each number reads back what that save wrote
        assert versions.read_version(name, number).document["max_partial_failures"] == limit


@pytest.mark.usefixtures("registered")
def test_one_version_reads_alone_and_out_of_range_is_named(request: pytest.FixtureRequest) -> None:
    name = _name(request)
    for limit in range(1, 4):
        blocks.save_policy(name, WorkflowPolicy(max_partial_failures=limit), note=f"n{limit}")
    second = versions.read_version(name, 2)
    assert (second.number, second.note, second.document["max_partial_failures"]) == (2, "n2", 2)
    newest = versions.latest(name)
    assert newest is not None and (newest.number, newest.note) == (3, "n3")
    with pytest.raises(ResilienceConfigError, match="versions 1..3, not 0"):
        versions.read_version(name, 0)
    assert versions.latest(f"{name}-none") is None


@pytest.mark.usefixtures("registered")
def test_a_version_recorded_before_the_pages_can_be_rolled_back_to(
    request: pytest.FixtureRequest,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    name = _name(request)
    old = blocks.policy_document(WorkflowPolicy(max_partial_failures=5))
    with get_client(sync_client=True) as client:
        client.create_artifact(
            ArtifactCreate(
                key=versions.version_key(name),
                type="resilience-policy-version",
                data={"block": name, "version": 1, "note": "saved", "policy": old},
            )
        )
    blocks.save_policy(name, WorkflowPolicy(max_partial_failures=1))
    version = blocks.rollback(name, to=1)
    assert version.number == 3
    assert blocks.load_block_policy(name).max_partial_failures == 5
