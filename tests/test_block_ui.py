"""A real browser test of the Resilience Policy block form in Prefect's UI.

A `prefect server start` of its own (own PREFECT_HOME, own SQLite file) serves
the UI; headless Chromium (Debian's `chromium`, driven by Playwright) fills the
block's create form the way a user would and saves it; the block is then loaded
in Python and must give back exactly the typed values. A screenshot of the
filled form is kept for the user guide (docs/img/resilience-policy-form.png).

This test does not use the `prefect_server` fixture of conftest.py: that one is
an in-process test harness; this one is the server a user starts.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import PrefectServer, file_server, prefect_server

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ROOT / "docs" / "img" / "resilience-policy-form.png"
V2_SCREENSHOT = ROOT / "docs" / "img" / "resilience-policy-step-form-v2.png"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # without these Chromium keeps calling home, which floods a closed network
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

BLOCK_NAME = "ui-made-policy"
STEP_POLICIES = [{"match": "load_*", "policy": "continue", "retries": 2}]


@pytest.fixture
def ui_server(tmp_path: Path) -> Iterator[PrefectServer]:
    """`prefect server start` on a free port with its own PREFECT_HOME, the block type
    registered with its logo served over HTTP as a team serves it."""

    from prefect_resilience.blocks import LOGO_FILE, register_block_type

    with (
        prefect_server(home=tmp_path / "prefect-home", startup_timeout=90) as server,
        file_server(LOGO_FILE.parent) as logos,
    ):
        # Playwright's sync API keeps an event loop running in the test's thread, so
        # this registers before the browser starts
        with server.settings():
            register_block_type(f"{logos}/{LOGO_FILE.name}")
        yield server


@pytest.fixture
def browser_page() -> Iterator[object]:
    """A page of headless Debian Chromium with a fresh profile."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); .ci/run installs it")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not importable (pip install playwright)")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 900},
            )
            try:
                context.set_default_timeout(30_000)
                yield context.new_page()
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.timeout(300)
def test_block_form_in_the_ui_saves_what_was_typed(browser_page, ui_server: PrefectServer) -> None:
    from playwright.sync_api import expect

    from prefect_resilience.blocks import ResiliencePolicy
    from prefect_resilience.policy import (
        DEFAULT_IMPACT_WEIGHTS,
        FailureImpact,
        FailurePolicy,
        StepRule,
    )

    page = browser_page
    page.goto(f"{ui_server.base_url}/blocks/catalog/resilience-policy/create")
    form = page.locator("form.block-schema-create-form")
    expect(form).to_be_visible(timeout=60_000)

    # Block name: a plain text input
    name_field = form.locator(".p-label").filter(has=page.locator("label", has_text="Block Name"))
    name_field.locator("input").fill(BLOCK_NAME)

    # default_failure_policy: an enum, rendered as a drop-down (the only one on the
    # form). In headless Chromium a click on its button opens and closes it at once
    # (only its chevron reacts to a click); the keyboard opens it reliably.
    select = form.locator(".p-select-button__control")
    expect(select).to_have_count(1)
    expect(select).to_have_text("fail_fast")
    select.focus()
    select.press("ArrowDown")
    options = page.get_by_role("option")
    expect(options).to_have_text(
        ["fail_fast", "continue", "partial_success", "graceful_degradation"]
    )
    options.filter(has_text="partial_success").click()
    expect(select).to_have_text("partial_success")

    # max_partial_failures: int | None, rendered as an integer/null switch with a number input
    max_partial = form.locator(".schema-form-property-any-of").filter(
        has=page.locator("h3", has_text="Max Partial Failures")
    )
    max_partial.locator("input[type=number]").fill("4")

    # step_policies: a list of objects, rendered as a JSON editor (no per-item form)
    step_field = form.locator(".schema-form-property").filter(
        has=page.locator("label", has_text="Step Policies")
    )
    step_field.locator("textarea").fill(json.dumps(STEP_POLICIES, indent=2))
    step_field.locator("textarea").blur()

    # the whole form, for the user guide: the page scrolls inside .app-router-view,
    # so make the viewport as tall as its content before the full-page shot
    height = page.evaluate(
        "() => { const v = document.querySelector('.app-router-view');"
        " return v ? v.scrollHeight : document.documentElement.scrollHeight; }"
    )
    page.set_viewport_size({"width": 1280, "height": max(900, int(height) + 40)})
    page.mouse.move(0, 0)
    logo = page.locator(".block-type-card-preview__logo img")
    expect(logo).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=logo.element_handle())
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    form.get_by_role("button", name="Create", exact=True).click()
    # after a save the UI shows the new block's page
    page.wait_for_url("**/blocks/block/**", timeout=60_000)
    expect(page.get_by_text(BLOCK_NAME).first).to_be_visible()

    with ui_server.settings():
        block = ResiliencePolicy.load(BLOCK_NAME, _sync=True)
        policy = block.to_policy()

    assert policy.name == BLOCK_NAME
    assert policy.default_failure_policy is FailurePolicy.PARTIAL_SUCCESS
    assert policy.max_partial_failures == 4
    assert isinstance(policy.max_partial_failures, int)
    assert policy.step_policies == (
        StepRule(match="load_*", policy=FailurePolicy.CONTINUE, retries=2),
    )
    (rule,) = policy.step_policies
    assert rule.match == "load_*"
    assert rule.policy is FailurePolicy.CONTINUE
    assert rule.retries == 2
    # a step policy overrides only what it sets: nothing else may have been filled in
    assert rule.model_fields_set == {"match", "policy", "retries"}
    assert rule.impact is FailureImpact.MAJOR
    assert rule.critical is False
    # what was left alone keeps its default
    assert policy.critical_step_ratio is None
    assert policy.termination_threshold is None
    assert policy.health_alert_below == 0.85
    assert policy.degraded_credit == 0.5
    assert policy.impact_weights == DEFAULT_IMPACT_WEIGHTS


V2_BLOCK_NAME = "ui-v2-made-policy"


def _field(page: Any, label: str) -> Any:
    """The input group of the field labelled `label` in Prefect's V2 schema form."""
    return page.locator(
        f"xpath=//label[normalize-space()={label!r}]"
        "/ancestor::div[contains(concat(' ', @class, ' '), ' group ')][1]"
    )


@pytest.mark.timeout(300)
def test_v2_form_edits_step_policies_item_by_item(browser_page, ui_server: PrefectServer) -> None:
    """Prefect's V2 UI renders the list of step policies as one form per item; a rule made
    there sets only what was typed, so every other setting stays the decorator's."""
    from playwright.sync_api import expect

    from prefect_resilience.blocks import ResiliencePolicy
    from prefect_resilience.policy import DEFAULT_IMPACT_WEIGHTS, FailurePolicy, StepPolicy

    page = browser_page
    page.goto(f"{ui_server.base_url}/v2/blocks/catalog/resilience-policy/create")
    page.get_by_label("Name", exact=True).fill(V2_BLOCK_NAME)
    expect(page.get_by_text("No items in this list")).to_have_count(1)
    page.get_by_role("button", name="Add item").click()

    page.get_by_label("Match", exact=True).fill("load_*")
    page.get_by_role("button", name="Select Policy", exact=True).click()
    page.get_by_role("option", name="continue", exact=True).click()
    _field(page, "Retries (Optional)").locator("input[type=number]").fill("2")
    # the weights are one number each, showing their defaults
    expect(_field(page, "Major (Optional)").locator("input")).to_have_value("0.6")
    # the step policy as filled, for the user guide
    page.set_viewport_size({"width": 1280, "height": 2600})
    _field(page, "Step Policies (Optional)").screenshot(path=str(V2_SCREENSHOT))

    page.get_by_role("button", name="Save", exact=True).click()
    page.wait_for_url("**/blocks/block/**", timeout=60_000)

    with ui_server.settings():
        policy = ResiliencePolicy.load(V2_BLOCK_NAME, _sync=True).to_policy()

    (rule,) = policy.step_policies
    assert rule.model_fields_set == {"match", "policy", "retries"}
    declared = StepPolicy(critical=True, timeout=30, backoff={"initial": 2, "max": 8})
    effective = policy.policy_for("load_users", declared=declared)
    assert (effective.policy, effective.retries) == (FailurePolicy.CONTINUE, 2)
    assert (effective.critical, effective.timeout) == (True, 30.0)
    assert effective.backoff == declared.backoff
    assert policy.impact_weights == DEFAULT_IMPACT_WEIGHTS


@pytest.mark.timeout(300)
def test_a_policy_saved_unchanged_from_the_v2_edit_page_is_the_same_policy(
    browser_page, ui_server: PrefectServer
) -> None:
    """The V2 form writes null for each optional setting a step policy leaves empty; a
    save that changed nothing must leave the policy as it was, rule by rule."""
    from playwright.sync_api import expect
    from prefect.client.orchestration import get_client

    from prefect_resilience import blocks
    from prefect_resilience.policy_documents import load_policy

    applied = load_policy(
        {
            "default_failure_policy": "continue",
            "max_partial_failures": 3,
            "step_policies": [
                {"match": "load_*", "retries": 3, "backoff": {"initial": 2, "max": 30}},
                {
                    "match": "tag:api",
                    "policy": "graceful_degradation",
                    "fallbacks": ["cached"],
                    "circuitBreaker": {"name": "api", "failureThreshold": 3},
                    "timeout": 20,
                },
            ],
        }
    )
    with ui_server.settings():
        blocks.save_policy("from-a-file", applied)
        with get_client(sync_client=True) as client:
            document = client.read_block_document_by_name("from-a-file", "resilience-policy")

    page = browser_page
    page.goto(f"{ui_server.base_url}/v2/blocks/block/{document.id}/edit")
    expect(page.get_by_label("Match", exact=True)).to_have_count(2)
    page.get_by_role("button", name="Save", exact=True).click()
    page.wait_for_url(f"**/blocks/block/{document.id}", timeout=60_000)

    with ui_server.settings():
        with get_client(sync_client=True) as client:
            saved = client.read_block_document_by_name("from-a-file", "resilience-policy")
        stored = saved.data["step_policies"]
        reread = blocks.load_block_policy("from-a-file")
    # the form did write the nulls; they are read as not given
    assert any(value is None for rule in stored for value in rule.values())
    assert reread.step_policies == applied.step_policies
    assert [r.model_fields_set for r in reread.step_policies] == [
        r.model_fields_set for r in applied.step_policies
    ]
    assert reread.model_dump(exclude={"name"}) == applied.model_dump(exclude={"name"})
