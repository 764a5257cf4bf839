"""Policy versions kept as Prefect artifacts, readable in the UI and exact for rollback.

Each version is one version of the markdown artifact keyed
`resilience-policy-<name>`: the UI's Artifacts page shows it as a page saying
what changed from the previous version, how, by whom, and the whole policy as
YAML. That YAML block is also what a rollback reads back (with `safe_load`,
then the policy's own checks), so the page a person reads is the data.

Version numbers are positions in Prefect's creation order, not counters
written at save time: two saves at the same moment are two artifacts, so they
always get two numbers. A version is read by its position (a count and one
page of one), never by reading the whole history.
"""

from __future__ import annotations

import getpass
import json
import re
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import yaml

from prefect_resilience.errors import ResilienceConfigError

VERSION_TYPE = "markdown"
_PAGE = 200
_FENCE = re.compile(r"^(?P<fence>`{4,})yaml\n(?P<body>.*?)\n(?P=fence)$", re.M | re.S)
_NOTE = re.compile(r"^\*\*How:\*\* (?P<note>.*)$", re.M)


@dataclass(frozen=True)
class PolicyVersion:
    number: int
    created: datetime | None
    note: str
    document: dict[str, Any]


def version_key(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "policy"
    return f"resilience-policy-{slug}"[:100].rstrip("-")


# --- the page a version is ---------------------------------------------------------------


def render(
    name: str, number: int, note: str, document: dict[str, Any], previous: dict[str, Any] | None
) -> str:
    """The markdown page of one version: what changed, how, by whom, and the policy."""
    body = to_yaml(document)
    fence = "`" * max(4, _longest_backtick_run(body) + 1)
    return "\n".join(
        [
            f"# Resilience Policy `{name}`, version {number}",
            "",
            f"**How:** {_one_line(note)}",
            f"**By:** {_who()}",
            "",
            "## What changed",
            "",
            *_changes_table(previous, document),
            "",
            "## Policy",
            "",
            f"The whole policy this version holds. `prefect-resilience policy rollback"
            f" {name} --to {number}` saves it again as a new version.",
            "",
            f"{fence}yaml",
            body.rstrip("\n"),
            fence,
            "",
        ]
    )


def parse(name: str, data: Any) -> tuple[str, dict[str, Any]]:
    """The note and the policy document of a version's artifact data.

    Versions written before the markdown pages (a JSON object) are read too.
    """
    if isinstance(data, dict):
        return str(data.get("note", "")), dict(data.get("policy") or {})
    text = data if isinstance(data, str) else ""
    blocks = list(_FENCE.finditer(text))
    if not blocks:
        raise ResilienceConfigError(
            f"a version of policy {name!r} holds no policy YAML block", field="version"
        )
    document = yaml.safe_load(blocks[-1].group("body"))
    if not isinstance(document, dict):
        raise ResilienceConfigError(
            f"a version of policy {name!r} holds no policy mapping", field="version"
        )
    note = _NOTE.search(text)
    return (note.group("note") if note else ""), document


def to_yaml(document: dict[str, Any]) -> str:
    return yaml.safe_dump(json.loads(json.dumps(document)), sort_keys=True)


def _changes_table(previous: dict[str, Any] | None, document: dict[str, Any]) -> list[str]:
    if previous is None:
        return ["The first version: every setting is in the policy below."]
    before, after = _flat(previous), _flat(document)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if not changed:
        return ["Nothing: the same settings as the previous version."]
    rows = [f"| `{k}` | {_cell(before.get(k))} | {_cell(after.get(k))} |" for k in changed]
    return ["| setting | before | after |", "| --- | --- | --- |", *rows]


def _flat(document: dict[str, Any]) -> dict[str, Any]:
    """Settings by path; step policies by their `match`, since that is how a person finds one."""
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if key == "step_policies" and isinstance(value, list):
            for i, rule in enumerate(value):
                label = rule.get("match", i) if isinstance(rule, dict) else i
                for field, setting in rule.items() if isinstance(rule, dict) else []:
                    if field != "match":
                        flat[f"step_policies[{label}].{field}"] = setting
        elif isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def _cell(value: Any) -> str:
    if value is None:
        return "(not set)"
    return _one_line(json.dumps(value)).replace("|", "\\|")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _longest_backtick_run(text: str) -> int:
    return max((len(run) for run in re.findall(r"`+", text)), default=0)


def _who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers: say so rather than fail a save
        user = "unknown user"
    return f"{user} on {socket.gethostname()}"


# --- reading and writing versions on the server --------------------------------------------


def _key_filter(name: str) -> Any:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    return ArtifactFilter(key=ArtifactFilterKey(any_=[version_key(name)]))


def _newest_first(client: Any, name: str, offset: int, limit: int) -> list[Any]:
    from prefect.client.schemas.sorting import ArtifactSort

    return list(
        client.read_artifacts(
            artifact_filter=_key_filter(name),
            sort=ArtifactSort.CREATED_DESC,
            offset=offset,
            limit=limit,
        )
    )


def _count(client: Any, name: str) -> int:
    # Prefect's REST API counts artifacts; its Python client has no method for it yet
    response = client.request(
        "POST", "/artifacts/count", json={"artifacts": _key_filter(name).model_dump(mode="json")}
    )
    response.raise_for_status()
    return int(response.json())


def _version(name: str, number: int, artifact: Any) -> PolicyVersion:
    note, document = parse(name, artifact.data)
    return PolicyVersion(number, artifact.created, note, document)


def history(name: str) -> list[PolicyVersion]:
    """Every recorded version of a policy block, oldest first (version 1 is the first)."""
    from prefect.client.orchestration import get_client

    artifacts: list[Any] = []
    with get_client(sync_client=True) as client:
        while page := _newest_first(client, name, len(artifacts), _PAGE):
            artifacts.extend(page)
            if len(page) < _PAGE:
                break
    artifacts.reverse()
    return [_version(name, i, a) for i, a in enumerate(artifacts, start=1)]


def read_version(name: str, number: int) -> PolicyVersion:
    """One version by its number, read alone: a count and a page of one."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        total = _count(client, name)
        if not 1 <= number <= total:
            raise ResilienceConfigError(
                f"policy {name!r} has versions 1..{total}, not {number}", field="version"
            )
        (artifact,) = _newest_first(client, name, total - number, 1)
    return _version(name, number, artifact)


def latest(name: str) -> PolicyVersion | None:
    """The newest version, or None if the policy has none."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        total = _count(client, name)
        newest = _newest_first(client, name, 0, 1) if total else []
    return _version(name, total, newest[0]) if newest else None


def record(name: str, document: dict[str, Any], note: str) -> PolicyVersion:
    """Record a saved policy as the next version; its number is its place in creation order."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate

    previous = latest(name)
    before = previous.document if previous else None
    guess = previous.number + 1 if previous else 1
    with get_client(sync_client=True) as client:
        artifact = client.create_artifact(
            ArtifactCreate(
                key=version_key(name),
                type=VERSION_TYPE,
                data=render(name, guess, note, document, before),
                description=_description(name, guess, note),
            )
        )
        number = _settled_number(client, name, artifact.id)
        if number != guess:  # another save landed at the same moment: the page says its place
            client.update_artifact(
                artifact.id,
                ArtifactUpdate(
                    data=render(name, number, note, document, before),
                    description=_description(name, number, note),
                ),
            )
    return PolicyVersion(number, artifact.created, note, document)


def _description(name: str, number: int, note: str) -> str:
    return f"Resilience Policy `{name}` version {number}: {_one_line(note)}"


def _settled_number(client: Any, name: str, artifact_id: Any, tries: int = 8) -> int:
    """The version's place once two reads a moment apart agree: a save that started
    earlier may commit after this one, and until then neither read sees it."""
    number = _number_of(client, name, artifact_id)
    for _ in range(tries):
        time.sleep(0.25)
        again = _number_of(client, name, artifact_id)
        if again == number:
            return number
        number = again
    return number


def _number_of(client: Any, name: str, artifact_id: Any) -> int:
    total = _count(client, name)
    offset = 0
    while page := _newest_first(client, name, offset, _PAGE):
        for i, candidate in enumerate(page):
            if candidate.id == artifact_id:
                return total - (offset + i)
        offset += len(page)
    raise ResilienceConfigError(f"the new version of policy {name!r} was not found")
