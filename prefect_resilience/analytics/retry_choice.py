"""Choosing retries from a fitted `RetryModel`: the retries (and, when the delay was
learned, the backoff) that maximise the predicted success rate of a run whose
attempts and delays fit a time budget.

Predictions come with bootstrap intervals from the model's own counts. Too
little data gives no recommendation and says why; no number is made up. The
result, `LearnedRetries`, is what `retries: "auto"` stores with a policy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pandas as pd

from .retry_model import BOOTSTRAP, MIN_RUNS, RecoveryCurve, RetryModel

DEFAULT_DELAY_OPTIONS: tuple[tuple[float, float, float], ...] = (
    (0.0, 1.0, 0.0), (1.0, 1.0, 1.0), (2.0, 1.0, 2.0), (5.0, 1.0, 5.0), (10.0, 1.0, 10.0),
    (30.0, 1.0, 30.0), (60.0, 1.0, 60.0), (120.0, 1.0, 120.0), (1.0, 2.0, 60.0),
    (2.0, 2.0, 120.0), (5.0, 2.0, 300.0), (10.0, 2.0, 600.0), (30.0, 2.0, 600.0),
)  # fmt: skip
"""Backoffs (initial, factor, max) `choose_retries` compares when the delay was learned."""


@dataclass(frozen=True)
class LearnedRetries:
    """A learned retry setting to store with a step's policy (`retries="auto"`).

    `backoff` is {"initial", "factor", "max"} in seconds when the delay was
    learned, None when the declared backoff is to be kept. `basis` is
    "attempts" (hazards per attempt) or "elapsed" (recovery-time view).
    `evidence` lists what the prediction rests on: per attempt reached,
    succeeded, hazard and its interval, or per elapsed time the recovered share.
    `to_dict()` gives plain JSON types; `from_dict()` reads them back, checked.
    """

    step: str
    retries: int
    backoff: dict[str, float] | None
    predicted_success: float
    predicted_success_low: float
    predicted_success_high: float
    expected_time_s: float
    worst_case_time_s: float
    n: int
    fitted_at: datetime
    bounds: tuple[int, int]
    time_budget_s: float
    per_attempt_seconds: float
    basis: Literal["attempts", "elapsed"]
    min_runs: int
    error_type: str | None = None
    evidence: tuple[dict[str, float], ...] = ()
    reason: str = ""

    @property
    def delay_learned(self) -> bool:
        return self.backoff is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "retries": self.retries,
            "backoff": dict(self.backoff) if self.backoff is not None else None,
            "predicted_success": self.predicted_success,
            "predicted_success_low": self.predicted_success_low,
            "predicted_success_high": self.predicted_success_high,
            "expected_time_s": self.expected_time_s,
            "worst_case_time_s": self.worst_case_time_s,
            "n": self.n,
            "fitted_at": self.fitted_at.isoformat(),
            "bounds": list(self.bounds),
            "time_budget_s": self.time_budget_s,
            "per_attempt_seconds": self.per_attempt_seconds,
            "basis": self.basis,
            "min_runs": self.min_runs,
            "error_type": self.error_type,
            "evidence": [dict(item) for item in self.evidence],
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LearnedRetries:
        """Read `to_dict()`'s form back; a missing or ill-typed field is a ValueError naming it."""
        if not isinstance(data, Mapping):
            raise ValueError(f"learned retries must be a mapping, got {type(data).__name__}")
        required = ("step", "retries", "predicted_success", "n", "fitted_at", "bounds")
        missing = [name for name in required if name not in data]
        if missing:
            raise ValueError(f"learned retries lack {', '.join(missing)}")
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"learned retries have unknown fields {sorted(unknown)}")

        def number(name: str, default: float = math.nan) -> float:
            value = data.get(name, default)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"learned retries field {name!r} must be a number, got {value!r}")
            return float(value)

        def integer(name: str, value: Any = None) -> int:
            value = data.get(name) if value is None else value
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"learned retries field {name!r} must be an integer >= 0")
            return value

        backoff = data.get("backoff")
        if backoff is not None:
            if not isinstance(backoff, Mapping) or set(backoff) != {"initial", "factor", "max"}:
                raise ValueError("learned retries field 'backoff' needs initial, factor and max")
            backoff = {key: float(backoff[key]) for key in ("initial", "factor", "max")}
        bounds = data["bounds"]
        if not isinstance(bounds, Sequence) or len(bounds) != 2:
            raise ValueError("learned retries field 'bounds' must be [low, high]")
        low, high = integer("bounds", bounds[0]), integer("bounds", bounds[1])
        try:
            fitted_at = datetime.fromisoformat(str(data["fitted_at"]))
        except ValueError:
            raise ValueError("learned retries field 'fitted_at' is not an ISO time") from None
        basis = data.get("basis", "attempts")
        if basis not in ("attempts", "elapsed"):
            raise ValueError(
                f"learned retries field 'basis' must be attempts or elapsed: {basis!r}"
            )
        retries = integer("retries")
        if not low <= retries <= high:
            raise ValueError(f"learned retries {retries} lie outside their bounds {low}..{high}")
        return cls(
            step=str(data["step"]),
            retries=retries,
            backoff=backoff,
            predicted_success=number("predicted_success"),
            predicted_success_low=number("predicted_success_low"),
            predicted_success_high=number("predicted_success_high"),
            expected_time_s=number("expected_time_s"),
            worst_case_time_s=number("worst_case_time_s"),
            n=integer("n"),
            fitted_at=fitted_at if fitted_at.tzinfo else fitted_at.replace(tzinfo=UTC),
            bounds=(low, high),
            time_budget_s=number("time_budget_s"),
            per_attempt_seconds=number("per_attempt_seconds"),
            basis=basis,
            min_runs=integer("min_runs", data.get("min_runs", MIN_RUNS)),
            error_type=data.get("error_type"),
            evidence=tuple(dict(item) for item in data.get("evidence", ())),
            reason=str(data.get("reason", "")),
        )


@dataclass(frozen=True, eq=False)
class RetryChoice:
    """The outcome of `choose_retries`: a setting, or None and the reason there is none.

    `candidates` has every schedule compared: retries, initial, factor, max,
    predicted_success, expected_time_s, worst_case_time_s, within_budget.
    """

    step: str
    learned: LearnedRetries | None
    reason: str
    candidates: pd.DataFrame


def backoff_delays(initial: float, factor: float, maximum: float, retries: int) -> list[float]:
    """Nominal delays of capped exponential backoff: delay j is min(initial * factor**j, max)."""
    delays, delay = [], float(initial)
    for _ in range(retries):
        delays.append(min(delay, maximum))
        delay = min(delay * factor, maximum)
    return delays


def _declared_delays(declared: Any, retries: int) -> list[float]:
    """Delays from a Backoff-like (initial/factor/max), a number, or Prefect's list of delays."""
    if declared is None:
        return [0.0] * retries
    if isinstance(declared, int | float) and not isinstance(declared, bool):
        return [float(declared)] * retries
    if isinstance(declared, Mapping) or hasattr(declared, "initial"):
        get: Callable[[str], Any] = (
            declared.get if isinstance(declared, Mapping) else lambda k: getattr(declared, k)
        )
        return backoff_delays(
            float(get("initial")), float(get("factor")), float(get("max")), retries
        )
    if isinstance(declared, Sequence) and not isinstance(declared, str) and len(declared) > 0:
        values = [float(d) for d in declared]
        return [values[min(j, len(values) - 1)] for j in range(retries)]
    raise ValueError(
        f"declared backoff must be None, seconds, a list of seconds or have initial/factor/max;"
        f" got {declared!r}"
    )


def _attempt_schedule(
    hazards: np.ndarray, delays: list[float], a: float
) -> tuple[float, float, float]:
    """(success, expected time, worst-case time) of len(delays) retries under hazards h_1.."""
    r = len(delays)
    still = np.cumprod(1 - hazards[: r + 1])
    reach = np.concatenate([[1.0], still[:-1]])  # chance to make attempt m (m = 1..r+1)
    waits = np.concatenate([[0.0], delays])
    return float(1 - still[-1]), float(np.sum(reach * (waits + a))), (r + 1) * a + sum(delays)


def _elapsed_schedule(
    h1: float, curve: RecoveryCurve, delays: list[float], a: float, replicate: int | None = None
) -> tuple[float, float, float]:
    """(success, expected time, worst-case time) in the recovery-time view."""
    r = len(delays)
    worst = (r + 1) * a + sum(delays)
    if r == 0:
        return h1, a, worst
    starts = np.cumsum(delays) + a * np.arange(r)  # elapsed at attempts 2..r+1
    recovered = [curve.at(t, replicate) for t in starts]
    before = [0.0, *recovered[:-1]]  # recovered before each retry's attempt
    expected = a + (1 - h1) * sum((1 - f) * (d + a) for f, d in zip(before, delays, strict=True))
    return h1 + (1 - h1) * recovered[-1], expected, worst


def _draws(succeeded: np.ndarray, reached: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Beta(1 + s, 1 + n - s) posterior draws of each hazard, one row per draw."""
    return rng.beta(1 + succeeded, 1 + reached - succeeded, size=(BOOTSTRAP, len(reached)))


def choose_retries(
    model: RetryModel,
    per_attempt_seconds: float,
    time_budget_s: float,
    bounds: tuple[int, int] = (0, 10),
    delay_options: Sequence[tuple[float, float, float]] = DEFAULT_DELAY_OPTIONS,
    *,
    declared: Any = None,
    error_type: str | None = None,
    tolerance: float = 1e-9,
) -> RetryChoice:
    """Retries (and backoff, when learnable) maximising predicted success within a time budget.

    A schedule fits the budget when its worst case, (retries + 1) attempts of
    `per_attempt_seconds` plus all delays, is at most `time_budget_s`. Among
    the schedules that fit, the highest predicted success wins; schedules
    within `tolerance` of it count as equal and the one with the least
    expected time (then the fewest retries) is taken.

    Attempts view (the delay was not learned, or `error_type` is given):
    success = 1 - prod(1 - h_k, k <= retries + 1), with the `declared` delays
    (a Backoff-like with initial/factor/max, seconds, a list of seconds as
    Prefect takes them, or None: Prefect's default of no delay) and the
    returned backoff None (keep the declared one). Retries are limited to
    those whose every attempt was reached by at least `model.min_runs` runs.
    Recovery-time view (`model.delay.matters`): success = h_1 + (1 - h_1) *
    F(elapsed at the last attempt), over `delay_options` (initial, factor, max).

    No recommendation (learned None, with the reason) when: fewer than
    min_runs runs reached attempt 1 or attempt 2 (what a retry buys is then
    unknown), no schedule within bounds is supported by the data, or none fits
    the budget. The predicted success's interval is from Beta(1+s, 1+n-s)
    posterior draws of the hazards (and bootstrap curves in the elapsed view),
    widened to contain the point estimate.
    """
    low, high = bounds
    if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high):
        raise ValueError(f"bounds must be two integers 0 <= low <= high, got {bounds!r}")
    if not per_attempt_seconds >= 0 or not math.isfinite(per_attempt_seconds):
        raise ValueError(f"per_attempt_seconds must be >= 0, got {per_attempt_seconds!r}")
    if not time_budget_s > 0:
        raise ValueError(f"time_budget_s must be > 0, got {time_budget_s!r}")
    for option in delay_options:
        if len(option) != 3 or option[0] < 0 or option[1] < 1 or option[2] < option[0]:
            raise ValueError(
                f"a delay option is (initial >= 0, factor >= 1, max >= initial): {option!r}"
            )
    a = float(per_attempt_seconds)
    empty = pd.DataFrame(
        columns=[
            "retries",
            "initial",
            "factor",
            "max",
            "predicted_success",
            "expected_time_s",
            "worst_case_time_s",
            "within_budget",
        ]
    )

    def none(reason: str, candidates: pd.DataFrame = empty) -> RetryChoice:
        return RetryChoice(model.step, None, reason, candidates)

    n1 = int(model.hazards["reached"].get(1, 0))
    if n1 < model.min_runs:
        return none(f"only {n1} finished runs of {model.step!r} (need {model.min_runs})")
    if error_type is not None:
        rows = model._error_rows(error_type)
        if rows.empty:
            return none(
                f"no retry of {model.step!r} followed a {error_type} (needs the"
                " attempt_errors column and such failures)"
            )
        table = pd.concat([model.hazards.loc[[1]], rows])
    else:
        table = model.hazards
    supported = model.supported_attempts(error_type)
    n2 = int(table["reached"].get(2, 0))
    if supported < 2:
        return none(
            f"only {n2} runs of {model.step!r} reached a retry"
            f"{' after ' + error_type if error_type else ''} (need {model.min_runs}): what a"
            " retry buys is unknown; keep the declared retries"
        )
    elapsed_view = (
        model.delay.matters
        and model.recovery is not None
        and model.recovery.supported_s >= 0
        and error_type is None
    )
    if elapsed_view:
        max_retries = high
        options = list(delay_options)
    else:
        max_retries = min(high, supported - 1)
        options = [(math.nan, math.nan, math.nan)]
    if max_retries < low:
        return none(
            f"the data support at most {supported - 1} retries of {model.step!r} (attempt"
            f" {supported + 1} was reached by fewer than {model.min_runs} runs), below the"
            f" lower bound {low}"
        )
    hazards = table["hazard"].to_numpy()
    h1 = float(hazards[0])
    rows_out = []
    for initial, factor, maximum in options:
        for r in range(low, max_retries + 1):
            if elapsed_view:
                assert model.recovery is not None  # the elapsed view reads its curve
                delays = backoff_delays(initial, factor, maximum, r)
                success, expected, worst = _elapsed_schedule(h1, model.recovery, delays, a)
            else:
                delays = _declared_delays(declared, r)
                success, expected, worst = _attempt_schedule(hazards, delays, a)
            fits = worst <= time_budget_s + 1e-9
            rows_out.append([r, initial, factor, maximum, success, expected, worst, fits])
    candidates = pd.DataFrame(rows_out, columns=empty.columns)
    fitting = candidates[candidates["within_budget"]]
    if fitting.empty:
        cheapest = candidates["worst_case_time_s"].min()
        return none(
            f"no schedule of {low}..{max_retries} retries fits {time_budget_s:g} s (the"
            f" shortest needs {cheapest:g} s)",
            candidates,
        )
    best = fitting["predicted_success"].max()
    near = fitting[fitting["predicted_success"] >= best - tolerance]
    pick = near.sort_values(["expected_time_s", "retries"], kind="stable").iloc[0]
    r = int(pick["retries"])

    rng = np.random.default_rng(0)
    reached, succeeded = table["reached"].to_numpy(), table["succeeded"].to_numpy()
    draws = _draws(succeeded.astype(float), reached.astype(float), rng)
    if elapsed_view:
        assert model.recovery is not None  # the elapsed view reads its curve
        delays = backoff_delays(pick["initial"], pick["factor"], pick["max"], r)
        sample = [
            _elapsed_schedule(draws[b, 0], model.recovery, delays, a, b)[0]
            for b in range(BOOTSTRAP)
        ]
        curve = model.recovery.table
        evidence = [
            {
                "attempt": 1.0,
                "reached": float(reached[0]),
                "succeeded": float(succeeded[0]),
                "hazard": h1,
            }
        ] + [
            {
                "elapsed_s": float(t),
                "still_retrying": float(row.still_retrying),
                "recovered_share": float(row.recovered_share),
                "recovered_share_low": float(row.recovered_share_low),
                "recovered_share_high": float(row.recovered_share_high),
            }
            for t, row in curve.iterrows()
            if r and t <= sum(delays) + a * (r - 1)
        ]
        backoff = {
            "initial": float(pick["initial"]),
            "factor": float(pick["factor"]),
            "max": float(pick["max"]),
        }
        basis: Literal["attempts", "elapsed"] = "elapsed"
        why = (
            f"{model.delay.reason}; recovery within the schedule read from the recovery"
            f" curve of {model.recovery.runs} retried runs"
        )
    else:
        delays = _declared_delays(declared, r)
        sample = [1 - np.prod(1 - draws[b, : r + 1]) for b in range(BOOTSTRAP)]
        evidence = [
            {
                "attempt": float(k),
                "reached": float(row.reached),
                "succeeded": float(row.succeeded),
                "hazard": float(row.hazard),
                "hazard_low": float(row.hazard_low),
                "hazard_high": float(row.hazard_high),
            }
            for k, row in table.iloc[: r + 1].iterrows()
        ]
        backoff, basis = None, "attempts"
        why = model.delay.reason
    tail = (1 - model.confidence) / 2
    point = float(pick["predicted_success"])
    interval = np.quantile(sample, [tail, 1 - tail])
    if model.drift is not None:  # every attempt's odds moved by the shift once more
        moved = np.clip(hazards + model.drift.shift, 0.0, 1.0)
        if elapsed_view:
            assert model.recovery is not None
            further = _elapsed_schedule(float(moved[0]), model.recovery, delays, a)[0]
        else:
            further = _attempt_schedule(moved, delays, a)[0]
        interval = np.array([min(interval[0], further), max(interval[1], further)])
        why = f"{why}; {model.drift.reason}"
    gained = ", ".join(
        f"attempt {int(e['attempt'])}: {e['hazard']:.0%} of {int(e['reached'])}"
        for e in evidence
        if "attempt" in e
    )
    plural = "retry" if r == 1 else "retries"
    learned = LearnedRetries(
        step=model.step,
        retries=r,
        backoff=backoff,
        predicted_success=point,
        predicted_success_low=float(min(interval[0], point)),
        predicted_success_high=float(max(interval[1], point)),
        expected_time_s=float(pick["expected_time_s"]),
        worst_case_time_s=float(pick["worst_case_time_s"]),
        n=model.runs,
        fitted_at=model.fitted_at,
        bounds=(low, high),
        time_budget_s=float(time_budget_s),
        per_attempt_seconds=a,
        basis=basis,
        min_runs=model.min_runs,
        error_type=error_type,
        evidence=tuple(evidence),
        reason=f"{r} {plural}: {point:.1%} success predicted within {time_budget_s:g} s"
        f" ({gained}); {why}",
    )
    return RetryChoice(model.step, learned, learned.reason, candidates)
