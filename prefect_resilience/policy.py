"""Resilience policies as plain data.

A `StepPolicy` says what one step does when it fails; a `WorkflowPolicy` says
how a run judges its steps and which step policies override the decorators.
Both accept the originating design's camelCase names (`failurePolicy`,
`maxRetries`, ...) next to the snake_case ones, and reject unknown keys, so a
typo is an error instead of a silently ignored setting.

This module has no Prefect import: it is validated and tested on its own.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from prefect_resilience.fallbacks import check_name

MAX_RETRY_DELAYS = 50
"""Prefect accepts at most 50 retry delays per task; later attempts reuse the last."""

# Bounds on what a document may ask for: sane maxima, so an edit in the UI cannot make
# a step retry for ever, sleep for a week between attempts or never time out.
MAX_RETRIES = 100
MAX_DELAY_SECONDS = 86_400.0
"""One day: the longest delay between two attempts."""
MAX_TIMEOUT_SECONDS = 7 * 86_400.0
"""One week: the longest timeout of one attempt."""
MAX_STEP_POLICIES = 1_000
MAX_NAMES = 100
"""The most exception names (retry_on, give_up_on) or fallbacks one step policy lists."""
MAX_NAME_LENGTH = 200


class FailurePolicy(StrEnum):
    """What happens once a step has failed for good (its retries are exhausted)."""

    FAIL_FAST = "fail_fast"
    CONTINUE = "continue"
    PARTIAL_SUCCESS = "partial_success"
    GRACEFUL_DEGRADATION = "graceful_degradation"


class FailureImpact(StrEnum):
    """How much a step's failure weighs in the run's health score."""

    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"
    NEGLIGIBLE = "negligible"


def _in_place(enum: type[StrEnum]) -> WithJsonSchema:
    """An enum's JSON schema written into the field instead of a `$ref`.

    Prefect's block form (its default UI) labels a `$ref` field with the enum's
    class name and docstring; in place, the field's own title and description show.
    """
    return WithJsonSchema({"type": "string", "enum": [member.value for member in enum]})


Policy = Annotated[FailurePolicy, _in_place(FailurePolicy)]
Impact = Annotated[FailureImpact, _in_place(FailureImpact)]


class FailureAction(StrEnum):
    """The decision taken about one failure; every decision carries a reason."""

    RETRY = "retry"
    FALLBACK = "fallback"
    CONTINUE = "continue"
    TERMINATE = "terminate"
    DEGRADE = "degrade"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> Any:
    """Read seconds from a number or a string such as '500ms', '5s', '2m', '1h'."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {value!r}")
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(
                f"{value!r} is not a duration (use seconds, or e.g. '500ms', '5s', '2m', '1h')"
            )
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


Seconds = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
Span = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
"""A duration that must be longer than nothing (a budget, a window)."""
Delay = Annotated[float, BeforeValidator(parse_duration), Field(ge=0, le=MAX_DELAY_SECONDS)]
Name = Annotated[str, Field(max_length=MAX_NAME_LENGTH)]


def _retries(value: Any) -> int | Literal["auto"]:
    """A whole number of retries >= 0, or 'auto' (learned from history)."""
    if value == "auto":
        return "auto"
    try:
        number = _whole_number(value)
    except (TypeError, ValueError):
        raise ValueError("Input should be a valid integer, or 'auto'") from None
    if number < 0:
        raise ValueError("Input should be greater than or equal to 0")
    if number > MAX_RETRIES:
        raise ValueError(f"Input should be at most {MAX_RETRIES} retries")
    return number


def _whole_number(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(value)
    number = float(value)
    if not number.is_integer():
        raise ValueError(value)
    return int(number)


Retries = Annotated[
    int | Literal["auto"],
    PlainValidator(_retries),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": MAX_RETRIES},
                {"const": "auto", "type": "string"},
            ]
        }
    ),
]


def _aliases(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _one_name_per_field(cls, data: Any) -> Any:
        """Refuse a setting given twice under two of its names (`retries` and `maxRetries`)."""
        if not isinstance(data, Mapping):
            return data
        for name, field in cls.model_fields.items():
            alias = field.validation_alias
            choices = alias.choices if isinstance(alias, AliasChoices) else [alias or name]
            names = [c for c in choices if isinstance(c, str)]
            given = [n for n in names if n in data]
            if len(given) > 1:
                raise ValueError(f"{' and '.join(given)} name the same setting; give one")
        return data

    def explicit(self) -> dict[str, Any]:
        """The settings that were given, not defaulted: what an override carries."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class Backoff(_Model):
    """Capped exponential backoff: delay k is min(initial * factor**k, max).

    `jitter` is Prefect's `retry_jitter_factor`: each delay is drawn around its
    nominal value and never exceeds nominal * (1 + jitter).
    """

    initial: Delay = Field(1.0, description="Delay before the first retry, in seconds.")
    factor: float = Field(
        2.0, ge=1.0, le=10.0, description="Each delay is the previous one times this."
    )
    max: Delay = Field(60.0, description="No delay is longer than this, in seconds.")
    jitter: float = Field(0.0, ge=0.0, le=2.0, description="Prefect's retry_jitter_factor.")

    @model_validator(mode="after")
    def _cap_not_below_start(self) -> Backoff:
        if self.max < self.initial:
            raise ValueError(f"max ({self.max}s) is below initial ({self.initial}s)")
        return self


MAX_FAILURE_THRESHOLD = 100
"""The failures a breaker remembers are kept in one Prefect Variable (5,000 characters)."""
CIRCUIT_NAME = r"^[a-z0-9_-]+$"
"""A breaker's name is part of a Prefect Variable's: lowercase letters, digits, - and _."""


class CircuitBreaker(_Model):
    """A breaker shared by every step that names it, in every run and process on a server.

    After `failure_threshold` failures for good within `window` seconds it
    opens: calls of its steps then fail at once with `CircuitOpen`, without
    calling the function. After `reset_after` seconds one call is let through;
    its success closes the breaker, its failure opens it again.
    """

    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=CIRCUIT_NAME,
        description="The breaker's name (lowercase letters, digits, - and _); steps naming"
        " the same breaker share it.",
    )
    failure_threshold: int = Field(
        5,
        ge=1,
        le=MAX_FAILURE_THRESHOLD,
        validation_alias=_aliases("failure_threshold", "failureThreshold"),
        description="Failures for good (retries exhausted) within the window that open it.",
    )
    reset_after: Span = Field(
        60.0,
        le=MAX_DELAY_SECONDS,
        validation_alias=_aliases("reset_after", "resetAfter"),
        description="Seconds an open breaker waits before letting one trial call through.",
    )
    window: Span = Field(
        60.0,
        le=MAX_TIMEOUT_SECONDS,
        description="Seconds over which failures are counted.",
    )


def _fallback_names(value: Any) -> Any:
    """Accept fallbacks as names, or as the seed's `{type: name}` objects."""
    if value is None:
        return ()
    if isinstance(value, str | Mapping):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError(f"fallbacks are a list of names, got {value!r}")
    names = []
    for item in value:
        if isinstance(item, Mapping):
            extra = set(item) - {"type"}
            if extra or "type" not in item:
                raise ValueError(
                    f"a fallback action is a name or {{type: name}}, got keys {sorted(item)}"
                )
            item = item["type"]
        if not isinstance(item, str) or not item:
            raise ValueError(f"a fallback is named by a non-empty string, got {item!r}")
        names.append(check_name(item))
    return tuple(names)


def _names(value: Any) -> Any:
    if isinstance(value, str):
        return (value,)
    return value


class StepPolicy(_Model):
    """How one step fails: policy, retries, criticality, impact, fallbacks, default.

    Unset settings are inherited (from the decorator, then the workflow's
    defaults); `explicit()` returns only what was set.
    """

    policy: Policy = Field(
        FailurePolicy.FAIL_FAST,
        title="Policy",
        validation_alias=_aliases("policy", "failurePolicy", "failure_policy"),
        description="What happens once the step has failed for good.",
    )
    retries: Retries = Field(
        0,
        validation_alias=_aliases("retries", "maxRetries", "max_retries"),
        description="Prefect retries after the first attempt; 'auto' (in a workflow policy's"
        " step policy): the retries learned from history, stored in the policy's"
        " learned_retries.",
    )
    backoff: Backoff | None = Field(
        None, title="Backoff", description="Capped exponential backoff between retries."
    )
    retry_delay: Delay | list[Delay] | None = Field(
        None,
        validation_alias=_aliases("retry_delay", "retryDelay"),
        description="Fixed delay(s) between retries: seconds or '5s', '2m'; at most 50.",
    )
    retry_on: Annotated[tuple[Name, ...], BeforeValidator(_names)] = Field(
        (),
        max_length=MAX_NAMES,
        validation_alias=_aliases("retry_on", "retryOn"),
        description="Only retry these exception names (globs); empty: any.",
    )
    give_up_on: Annotated[tuple[Name, ...], BeforeValidator(_names)] = Field(
        (),
        max_length=MAX_NAMES,
        validation_alias=_aliases("give_up_on", "giveUpOn"),
        description="Never retry these exception names (globs).",
    )
    critical: bool = Field(
        False,
        validation_alias=_aliases("critical", "isCritical", "is_critical"),
        description="Its failure is a critical failure for the termination rules.",
    )
    impact: Impact = Field(
        FailureImpact.MAJOR,
        title="Impact",
        validation_alias=_aliases("impact", "failureImpact", "failure_impact"),
        description="Its weight in the health score.",
    )
    fallbacks: Annotated[tuple[str, ...], BeforeValidator(_fallback_names)] = Field(
        (),
        max_length=MAX_NAMES,
        validation_alias=_aliases("fallbacks", "fallbackActions", "fallback_actions"),
        description="Fallbacks run in order under graceful_degradation (names).",
    )
    default: Any = Field(None, description="The value a tolerated step yields.")
    timeout: Seconds | None = Field(
        None,
        gt=0,
        le=MAX_TIMEOUT_SECONDS,
        validation_alias=_aliases("timeout", "timeout_seconds", "timeoutSeconds"),
        description="Prefect's timeout for each attempt, in seconds.",
    )

    retry_budget: Seconds | None = Field(
        None,
        gt=0,
        le=MAX_TIMEOUT_SECONDS,
        validation_alias=_aliases("retry_budget", "retryBudget"),
        description="Seconds from the first attempt's start within which retries may start;"
        " a retry whose wait would end later is not started. Empty: no budget.",
    )
    min_success_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        validation_alias=_aliases("min_success_ratio", "minSuccessRatio"),
        description="For a mapped step: the share of one .map()'s task runs that must deliver;"
        " the run is terminated once it can no longer be reached. Empty: off.",
    )
    circuit_breaker: CircuitBreaker | None = Field(
        None,
        title="Circuit breaker",
        validation_alias=_aliases("circuit_breaker", "circuitBreaker"),
        description="A breaker shared across runs and workers by name; empty: none.",
    )

    @field_validator("retry_delay")
    @classmethod
    def _at_most_50_delays(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) > MAX_RETRY_DELAYS:
            raise ValueError(
                f"{len(value)} delays given; Prefect allows at most {MAX_RETRY_DELAYS}"
            )
        return value

    @model_validator(mode="after")
    def _coherent(self) -> StepPolicy:
        if self.backoff is not None and self.retry_delay is not None:
            raise ValueError("give either backoff or retry_delay, not both")
        if self.fallbacks and self.policy is not FailurePolicy.GRACEFUL_DEGRADATION:
            raise ValueError(
                f"fallbacks {list(self.fallbacks)} are never run under policy "
                f"{self.policy.value!r}; use 'graceful_degradation' or drop them"
            )
        overlap = set(self.retry_on) & set(self.give_up_on)
        if overlap:
            raise ValueError(f"{sorted(overlap)} are in both retry_on and give_up_on")
        return self

    def merged(self, override: StepPolicy | Mapping[str, Any] | None) -> StepPolicy:
        """This policy with the settings `override` gave explicitly taking precedence."""
        if override is None:
            return self
        given = override.explicit() if isinstance(override, StepPolicy) else dict(override)
        given.pop("match", None)
        base = self.explicit()
        # a newly given delay scheme replaces the other one instead of clashing with it
        if "backoff" in given:
            base.pop("retry_delay", None)
        if "retry_delay" in given:
            base.pop("backoff", None)
        if "policy" in given and given["policy"] != FailurePolicy.GRACEFUL_DEGRADATION:
            base.pop("fallbacks", None)
        return StepPolicy.model_validate({**base, **given})

    def retry_delays(self) -> list[float]:
        """Nominal delay before each retry: at most 50, as Prefect allows.

        Delays are cut to whole microseconds, the resolution of the timedelta
        Prefect schedules a retry with (a denormal float would make its
        jitter NaN).
        """
        count = min(self.retry_count, MAX_RETRY_DELAYS)
        if self.backoff is not None:
            delays, delay = [], self.backoff.initial
            for _ in range(count):
                delays.append(min(delay, self.backoff.max))
                delay = min(delay * self.backoff.factor, self.backoff.max)  # never overflows
        elif isinstance(self.retry_delay, list):
            delays = list(self.retry_delay)
        else:
            delays = [float(self.retry_delay or 0.0)] * count
        return [math.floor(d * 1_000_000) / 1_000_000 for d in delays]

    @property
    def retry_count(self) -> int:
        """The retries as a number; 'auto' has none until a workflow policy resolves it."""
        if self.retries == "auto":
            raise ValueError(
                "retries='auto' has no number until a workflow policy resolves it"
                " from its learned_retries (WorkflowPolicy.policy_for)"
            )
        return self.retries

    @property
    def jitter(self) -> float:
        return self.backoff.jitter if self.backoff is not None else 0.0

    @property
    def tolerates_failure(self) -> bool:
        return self.policy is not FailurePolicy.FAIL_FAST


def _step_rule_schema(schema: dict[str, Any]) -> None:
    """A step rule's JSON schema as a form should show it: `match` first, and no defaults.

    A setting a rule leaves out keeps the decorator's value, so the model's
    defaults are not the rule's: a form that filled them in (Prefect's UI does)
    would make the rule override every setting of every step it matches.
    """
    properties = schema.get("properties", {})
    for name, field in properties.items():
        field.pop("default", None)
        if name == "match":
            continue
        text = field.get("description", "")
        options = field.get("anyOf", [])
        if {"type": "null"} in options:
            options.sort(key=lambda option: option != {"type": "null"})
            text = re.sub(r"(?:[;,]\s*|\.\s+)[Ee]mpty: [^.]*\.", ".", text)  # null: not set
        field["description"] = f"{text} Not set: the decorator's.".strip()
    if "match" in properties:
        schema["properties"] = {"match": properties.pop("match"), **properties}


class StepRule(StepPolicy):
    """A step policy in a workflow policy, with the steps it applies to.

    `match` is a glob on the task name (`load_*`), or `tag:<glob>` to match a
    task tag. Dashes and underscores are interchangeable in names, so the
    seed's `critical-database-setup` matches a task named
    `critical_database_setup`.
    """

    model_config = ConfigDict(json_schema_extra=_step_rule_schema)

    match: str = Field(
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        description="Task name glob, or 'tag:' and a glob to match a task tag.",
    )

    @model_validator(mode="before")
    @classmethod
    def _null_is_not_set(cls, data: Any) -> Any:
        """A setting given as null is left to the decorator, as if it were left out.

        Prefect's block form writes null for each optional setting left empty;
        `default` is a value, not a setting, so a null there is kept.
        """
        if not isinstance(data, Mapping):
            return data
        return {key: value for key, value in data.items() if value is not None or key == "default"}

    def matches(self, task_name: str, tags: Iterable[str] = ()) -> bool:
        if self.match.startswith("tag:"):
            pattern = self.match[4:]
            return any(fnmatch.fnmatchcase(tag, pattern) for tag in tags)
        return fnmatch.fnmatchcase(_normal(task_name), _normal(self.match))


def _normal(name: str) -> str:
    return name.replace("-", "_")


class LearnedRetry(_Model):
    """Retries learned from a step's history, used where its step policy says `retries: auto`.

    Written by `prefect-resilience optimize --learn-retries`; `n`, `fitted_at`
    and `predicted_success` say what the values rest on.
    """

    retries: int = Field(ge=0, le=MAX_RETRIES, description="Retries after the first attempt.")
    backoff: Backoff | None = Field(
        None, title="Backoff", description="Learned backoff; empty: the declared delays are kept."
    )
    predicted_success: float | None = Field(
        None, ge=0, le=1, description="Predicted chance the step succeeds with these retries."
    )
    n: int = Field(0, ge=0, description="Finished runs of the step the values were learned from.")
    fitted_at: datetime | None = Field(None, description="When the values were learned.")


DEFAULT_IMPACT_WEIGHTS: dict[FailureImpact, float] = {
    FailureImpact.CRITICAL: 1.0,
    FailureImpact.MAJOR: 0.6,
    FailureImpact.MINOR: 0.3,
    FailureImpact.NEGLIGIBLE: 0.1,
}


MAX_IMPACT_WEIGHT = 1_000
Weight = Annotated[float, Field(ge=0, le=MAX_IMPACT_WEIGHT)]


def _one_property_per_impact(schema: dict[str, Any]) -> None:
    """Name each impact in the weights' JSON schema, so a form shows one number per impact
    with its default (a bare mapping is an empty JSON editor in Prefect's block form)."""
    schema["properties"] = {
        impact.value: {
            "title": impact.value.capitalize(),
            "type": "number",
            "minimum": 0,
            "maximum": MAX_IMPACT_WEIGHT,
            "default": weight,
        }
        for impact, weight in DEFAULT_IMPACT_WEIGHTS.items()
    }


def _rules(value: Any) -> Any:
    """Accept step policies as the seed's mapping (pattern -> policy) or as a list."""
    if isinstance(value, Mapping):
        rules = []
        for pattern, body in value.items():
            if body is None:
                body = {}
            if not isinstance(body, Mapping):
                raise ValueError(f"the policy for {pattern!r} must be a mapping")
            rules.append({"match": pattern, **body})
        return rules
    return value


class WorkflowPolicy(_Model):
    """The run-level policy: defaults, termination rules, weights, step overrides.

    The three termination thresholds are off when unset, which keeps plain
    Prefect behaviour (a run fails only through a `fail_fast` step).
    """

    name: str | None = Field(
        None, max_length=MAX_NAME_LENGTH, description="The policy's name, for reports and blocks."
    )
    default_failure_policy: Policy = Field(
        FailurePolicy.FAIL_FAST,
        title="Default failure policy",
        validation_alias=_aliases("default_failure_policy", "defaultFailurePolicy"),
        description="Failure policy of a step that neither its decorator nor a step policy sets.",
    )
    max_partial_failures: int | None = Field(
        None,
        ge=0,
        le=1_000_000,
        validation_alias=_aliases("max_partial_failures", "maxPartialFailures"),
        description="Terminate the run when more steps than this have failed; empty: no limit.",
    )
    critical_step_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        validation_alias=_aliases("critical_step_ratio", "criticalStepRatio"),
        description="Terminate when the share of critical steps that delivered falls under"
        " this; empty: off.",
    )
    termination_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        validation_alias=_aliases("termination_threshold", "terminationThreshold"),
        description="Terminate when critical failures exceed this share of finished steps;"
        " empty: off.",
    )
    impact_weights: dict[FailureImpact, Weight] = Field(
        default_factory=lambda: dict(DEFAULT_IMPACT_WEIGHTS),
        json_schema_extra=_one_property_per_impact,
        validation_alias=_aliases("impact_weights", "impactWeights"),
        description="Weight of a step in the health score, by its impact.",
    )
    degraded_credit: float = Field(
        0.5,
        ge=0,
        le=1,
        validation_alias=_aliases("degraded_credit", "degradedCredit"),
        description="Health credit of a step whose fallback supplied the result (success is 1).",
    )
    health_alert_below: float = Field(
        0.85,
        ge=0,
        le=1,
        validation_alias=_aliases("health_alert_below", "healthAlertBelow"),
        description="Emit a health event when the score crosses below this; 0 turns it off.",
    )
    step_policies: Annotated[tuple[StepRule, ...], BeforeValidator(_rules)] = Field(
        (),
        max_length=MAX_STEP_POLICIES,
        validation_alias=_aliases("step_policies", "stepPolicies"),
        description="Step policies matched by task name glob, or 'tag:' and a tag glob;"
        " the first match applies.",
    )

    auto_retries_min: int = Field(
        0,
        ge=0,
        le=MAX_RETRIES,
        validation_alias=_aliases("auto_retries_min", "autoRetriesMin"),
        description="Fewest retries 'auto' may use; learned values below are not used.",
    )
    auto_retries_max: int = Field(
        10,
        ge=0,
        le=MAX_RETRIES,
        validation_alias=_aliases("auto_retries_max", "autoRetriesMax"),
        description="Most retries 'auto' may use; learned values above are not used.",
    )
    learned_retries: dict[str, LearnedRetry] = Field(
        default_factory=dict,
        validation_alias=_aliases("learned_retries", "learnedRetries"),
        description="Retries learned from history per task name, for step policies with"
        " retries: auto.",
    )

    @field_validator("impact_weights")
    @classmethod
    def _all_impacts_weighted(cls, value: dict[FailureImpact, float]) -> dict[FailureImpact, float]:
        return {**DEFAULT_IMPACT_WEIGHTS, **value}

    @model_validator(mode="after")
    def _auto_bounds_in_order(self) -> WorkflowPolicy:
        if self.auto_retries_min > self.auto_retries_max:
            raise ValueError(
                f"auto_retries_min {self.auto_retries_min} is above"
                f" auto_retries_max {self.auto_retries_max}"
            )
        return self

    @property
    def auto_retry_bounds(self) -> tuple[int, int]:
        """The retries 'auto' may use, lowest and highest."""
        return self.auto_retries_min, self.auto_retries_max

    def rule_for(self, task_name: str, tags: Iterable[str] = ()) -> StepRule | None:
        """The first step policy, in declared order, that matches the task."""
        tags = tuple(tags)
        return next((r for r in self.step_policies if r.matches(task_name, tags)), None)

    def policy_for(
        self, task_name: str, tags: Iterable[str] = (), declared: StepPolicy | None = None
    ) -> StepPolicy:
        """The effective step policy: the matching rule over the decorator's settings.

        A policy that neither sets falls back to `default_failure_policy`.
        """
        declared = declared or StepPolicy()
        rule = self.rule_for(task_name, tags)
        if rule is not None and rule.retries == "auto":
            rule = self._with_learned_retries(task_name, rule)
        effective = declared.merged(rule)
        if "policy" not in effective.model_fields_set:
            effective = effective.merged({"policy": self.default_failure_policy})
        return effective

    def _with_learned_retries(self, task_name: str, rule: StepRule) -> StepRule:
        """`retries: auto` made concrete: the learned retries within bounds, else the declared.

        Learned values outside `auto_retries_min`..`auto_retries_max`, or none at all (too little
        history to learn from), leave the decorator's declared retries in force.
        """
        settings = {k: v for k, v in rule.explicit().items() if k != "retries"}
        learned = self.learned_retries.get(task_name) or self.learned_retries.get(
            _normal(task_name)
        )
        low, high = self.auto_retry_bounds
        if learned is not None and low <= learned.retries <= high:
            settings["retries"] = learned.retries
            if learned.backoff is not None:
                settings.pop("retry_delay", None)
                settings["backoff"] = learned.backoff
        return StepRule.model_validate(settings)
