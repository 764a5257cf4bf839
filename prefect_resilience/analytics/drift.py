"""Drift: whether a step's failure rate moved within its history, and what to fit on if it did.

A model fitted on a whole history assumes the rate it estimates held
throughout. A dependency that degrades (or recovers) breaks that: the
estimate is an average of regimes, the future is like the latest one, and an
interval around the average covers neither. So, before fitting, the latest
third of the runs (by start time) is compared with the earlier two thirds on
the share whose first attempt succeeded. Where they differ by at least
`DRIFT_Z` standard errors, the model is fitted on the latest third only, and
its intervals are widened by the shift seen, in its direction: a rate that
moved that much once may move as much again before the next runs. This is
change-point awareness at its simplest; it lags a steady trend by about a
third of the history, which the widening is there to cover.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ._common import two_proportion_z

DRIFT_Z = 3.0
"""Standard errors between the earlier and the latest rate that count as a drift."""


@dataclass(frozen=True)
class Drift:
    """The first attempt's success rate in the earlier runs and in the latest ones."""

    earlier: float
    latest: float
    earlier_runs: int
    latest_runs: int
    z: float

    @property
    def shift(self) -> float:
        """latest - earlier: where the rate went."""
        return self.latest - self.earlier

    @property
    def reason(self) -> str:
        return (
            f"attempt 1 succeeded in {self.earlier:.0%} of the earlier {self.earlier_runs} runs"
            f" and {self.latest:.0%} of the latest {self.latest_runs} ({self.z:+.1f} standard"
            f" errors): fitted on the latest {self.latest_runs}, intervals widened by"
            f" {abs(self.shift):.0%} toward the drift"
        )

    def widen(self, low: float, high: float, point: float) -> tuple[float, float]:
        """An interval stretched to include `point` moved once more by the shift (within 0-1)."""
        moved = float(np.clip(point + self.shift, 0.0, 1.0))
        return min(low, moved), max(high, moved)


def detect_drift(
    order: Any, succeeded: np.ndarray, min_runs: int, z: float = DRIFT_Z
) -> tuple[Drift | None, np.ndarray]:
    """The drift, if any, and which runs to fit on (a boolean mask over the runs).

    `order` sorts the runs in time (their start times; a run without one
    leaves the order unknown: no drift); `succeeded` is whether each run's
    first attempt succeeded. Fewer than `min_runs` on either side of the
    split tells nothing: no drift, all runs.
    """
    everything = np.ones(len(succeeded), dtype=bool)
    times = pd.Series(order)
    if times.isna().any():
        return None, everything
    ranks = times.rank(method="first").to_numpy() - 1
    latest = ranks >= len(succeeded) * 2 // 3
    earlier_runs, latest_runs = int((~latest).sum()), int(latest.sum())
    if min(earlier_runs, latest_runs) < max(min_runs, 1):
        return None, everything
    before, after = float(succeeded[~latest].mean()), float(succeeded[latest].mean())
    score = two_proportion_z(
        succeeded[~latest].sum(), earlier_runs, succeeded[latest].sum(), latest_runs
    )
    if not abs(score) >= z:  # NaN (every run alike) is no drift
        return None, everything
    return Drift(before, after, earlier_runs, latest_runs, float(score)), latest
