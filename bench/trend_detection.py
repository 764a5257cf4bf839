"""False-alarm rate and power of `detect_degradation`, on synthetic series over many seeds.

Pure: no Prefect server. One series is one scheduled job's runs (a frame with
the loader's `state_type`, `start_time`, `end_time` columns and dtypes): a run
every `cadence`, each started up to two minutes late, over the two windows
`detect_degradation` compares with its defaults (recent = the last 7 days up
to the latest run, baseline = the 28 days before), plus a day of older runs.
Each run fails independently:

- stationary: with probability `--p0` (0.1) all along: any "degraded" is a
  false alarm;
- degraded: with `--p0` in the baseline window and `--p1` (0.2) in the recent
  window: "degraded" is a detection (power).

Per cadence (run counts per window), test ("fisher", the default, and "z")
and scenario, `--seeds` independent series (seeded), each judged at `--alpha`
(0.05). Rates come with their 95% Wilson interval. "exact" is the rate computed
exactly at the cadence's nominal window counts (sum over every binomial outcome
of both windows), a check on the simulation. The false-alarm goal is the
test's level: met when the measured rate is consistent with at most alpha
(its Wilson interval's lower bound is at most alpha).

    python trend_detection.py [--seeds 500] [--alpha 0.05] [--p0 0.1] [--p1 0.2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from _report import markdown_table, show, write_section
from scipy import stats

from prefect_resilience.analytics import detect_degradation, wilson_interval
from prefect_resilience.analytics.trends import _one_sided_p

T0 = pd.Timestamp("2025-10-01", tz="UTC")
RECENT, BASELINE = pd.Timedelta("7D"), pd.Timedelta("28D")
CADENCES = {"hourly": pd.Timedelta("1h"), "every 4 hours": pd.Timedelta("4h"),
            "daily": pd.Timedelta("1D")}  # fmt: skip
TESTS = ("fisher", "z")


def series(rng: np.random.Generator, cadence: pd.Timedelta, p0: float, p1: float) -> pd.DataFrame:
    """One job's runs over 36 days; runs in the last 7 days (from the latest) fail with p1."""
    count = int((RECENT + BASELINE + pd.Timedelta("1D")) / cadence)
    step_us = cadence.value // 1000
    start = T0.value // 1000 + np.arange(count) * step_us + rng.integers(0, 120 * 10**6, count)
    latest = start.max()
    recent = start > latest - RECENT.value // 1000
    failed = rng.random(count) < np.where(recent, p1, p0)
    start_time = pd.Series(start.view("datetime64[us]")).dt.tz_localize("UTC")
    return pd.DataFrame(
        {
            "state_type": pd.Series(np.where(failed, "FAILED", "COMPLETED"), dtype="str"),
            "start_time": start_time,
            "end_time": start_time + pd.Timedelta(seconds=60),
        }
    )


def exact_rate(n_recent: int, n_base: int, p_recent: float, p_base: float, alpha: float,
               test: str) -> float:  # fmt: skip
    """P(degraded) at fixed window counts: every outcome (x recent, y baseline failures)."""
    x = np.arange(n_recent + 1)[:, None]
    y = np.arange(n_base + 1)[None, :]
    xs, ys = np.broadcast_arrays(x, y)
    p = _one_sided_p(xs.ravel(), np.full(xs.size, n_recent), ys.ravel(),
                     np.full(xs.size, n_base), test).reshape(xs.shape)  # fmt: skip
    weight = stats.binom.pmf(x, n_recent, p_recent) * stats.binom.pmf(y, n_base, p_base)
    return float((weight * (p < alpha)).sum())


def _rate(k: int, n: int) -> str:
    low, high = wilson_interval(k, n)
    return f"{k / n:.3f} [{low:.3f}, {high:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=500)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--p0", type=float, default=0.1, help="baseline failure probability")
    parser.add_argument("--p1", type=float, default=0.2, help="recent failure probability")
    args = parser.parse_args()

    started = time.perf_counter()
    columns = ["cadence", "runs recent / baseline (mean)", "test", "false alarms",
               "false-alarm rate [95% CI]", "exact", "goal <= alpha (exact)", "detections",
               "power [95% CI]", "exact power", "exact inside both CIs"]  # fmt: skip
    rows = []
    exact: dict[tuple[str, str], tuple[float, float]] = {}
    for c, (cadence_name, cadence) in enumerate(CADENCES.items()):
        for t, test in enumerate(TESTS):
            alarms = detections = 0
            counts: list[tuple[int, int]] = []
            for seed in range(args.seeds):
                for degraded, p1 in ((0, args.p0), (1, args.p1)):
                    # the same seeds for both tests: they judge the same series
                    rng = np.random.default_rng([seed, c, degraded])
                    frame = series(rng, cadence, args.p0, p1)
                    result = detect_degradation(frame, alpha=args.alpha, test=test).iloc[0]
                    if degraded:
                        detections += bool(result["degraded"])
                    else:
                        alarms += bool(result["degraded"])
                        counts.append((int(result["recent_runs"]), int(result["baseline_runs"])))
            n_recent, n_base = int(RECENT / cadence), int(BASELINE / cadence)
            exact_alarm = exact_rate(n_recent, n_base, args.p0, args.p0, args.alpha, test)
            exact_power = exact_rate(n_recent, n_base, args.p1, args.p0, args.alpha, test)
            exact[(cadence_name, test)] = (exact_alarm, exact_power)
            inside = all(
                low <= value <= high
                for value, (low, high) in (
                    (exact_alarm, wilson_interval(alarms, args.seeds)),
                    (exact_power, wilson_interval(detections, args.seeds)),
                )
            )
            mean_recent = np.mean([r for r, _ in counts])
            mean_base = np.mean([b for _, b in counts])
            rows.append(
                [
                    cadence_name,
                    f"{mean_recent:.1f} / {mean_base:.1f}",
                    test + (" (default)" if t == 0 else ""),
                    f"{alarms}/{args.seeds}",
                    _rate(alarms, args.seeds),
                    f"{exact_alarm:.3f}",
                    "met" if exact_alarm <= args.alpha else "MISSED",
                    f"{detections}/{args.seeds}",
                    _rate(detections, args.seeds),
                    f"{exact_power:.3f}",
                    "yes" if inside else "no",
                ]
            )
    elapsed = time.perf_counter() - started
    title = (
        f"detect_degradation: {args.seeds} seeds per cell, alpha {args.alpha}, "
        f"failure rate {args.p0} -> {args.p1}"
    )
    show(title, columns, rows)
    print(f"{len(CADENCES) * len(TESTS) * 2 * args.seeds} series judged in {elapsed:.0f} s")
    notes = []
    for test in TESTS:
        alarms_by = {name: exact[(name, test)][0] for name in CADENCES}
        over = [name for name, rate in alarms_by.items() if rate > args.alpha]
        power_by = ", ".join(f"{name} {exact[(name, test)][1]:.2f}" for name in CADENCES)
        notes.append(
            f"- `{test}`: exact false-alarm rate "
            + ", ".join(f"{name} {rate:.3f}" for name, rate in alarms_by.items())
            + (
                f"; **above alpha** ({', '.join(over)})"
                if over
                else "; at most alpha everywhere (conservative)"
            )
            + f". Power: {power_by}."
        )
    body = (
        f"`detect_degradation(frame, alpha={args.alpha}, test=...)` with its default windows "
        "(recent = the 7 days up to the latest run, baseline = the 28 days before), on "
        "synthetic series: one scheduled job per series, a run every cadence (each up to two "
        "minutes late) over 36 days, each run failing independently. **Stationary**: failure "
        f"probability {args.p0} throughout, so every `degraded` is a false alarm. **Degraded**: "
        f"{args.p0} in the baseline window, {args.p1} in the recent one, so `degraded` is a "
        f"detection. {args.seeds} seeds per cell (the same series for both tests); rates with "
        "their 95% Wilson interval (`wilson_interval`). `exact` is the rate computed exactly at "
        "the nominal window counts (7 and 28 days of runs) by summing over every binomial "
        "outcome of both windows; the simulation should agree with it (last column). The "
        f"false-alarm goal is the test's level alpha, judged on the exact rate ({args.seeds} seeds "
        "alone cannot tell 0.05 from 0.06).\n\n"
        + markdown_table(columns, rows)
        + "\n\n"
        + "\n".join(notes)
    )
    write_section(
        "trend-detection",
        "Degradation detection: false-alarm rate and power",
        f"cd bench && ../.venv/bin/python trend_detection.py --seeds {args.seeds} "
        f"--alpha {args.alpha} --p0 {args.p0} --p1 {args.p1}",
        body,
    )


if __name__ == "__main__":
    main()
