"""Change points in a history: where a case's series steps up (slower), found with asv's step detection.

Method: `asv.step_detect` (airspeed velocity's regression detection, used on its own benchmark histories): the
series is fitted by a piecewise-constant function minimising the L1 error plus a penalty per step (the Potts
model, penalty chosen automatically from the data's noise), then `detect_regressions` keeps the upward steps whose
size passes both the fit's own error estimate and `threshold` x the level. L1 and medians make it robust to the
single outlier a noisy runner gives; a deterministic metric (instructions) has no noise, so its steps are exact.

A step is a candidate, not a finding: a shared runner's wall time moves with its neighbours, so history confirms each
step by a same-process A/B of its two commits (bench.history.confirm) before reporting it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from bench.history.store import HistoryError

THRESHOLDS = {"wall_ms": 0.02, "instructions": 0.002}  # the smallest step reported, relative to the level
SERIES_KEYS = ("machine", "case_id", "metric")


@dataclass
class Step:
    """An upward step of one series between two recorded commits (`before` the last at the old level, `after` the
    first at the new one); the confirmation's fields are filled by bench.history.confirm."""

    machine: str
    case_id: str
    metric: str
    before: str
    after: str
    value_before: float
    value_after: float
    confirmed: str = ""  # the A/B verdict of before vs after: "slower" confirms; "" not checked
    ab_ratio: float = float("nan")
    ab_folder: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.value_after / self.value_before if self.value_before > 0 else float("nan")


def _asv():
    try:
        from asv import step_detect
    except ImportError as e:
        raise HistoryError(f"history needs asv's step detection ({e}); accepted: pip install -e '.[history]'") \
            from None
    return step_detect


def fit(values: list[float]) -> list[tuple[int, int, float]]:
    """The piecewise-constant fit: (first index, end index exclusive, level) per segment."""
    if not values:
        return []
    return [(left, right, level) for left, right, level, _, _ in _asv().detect_steps(values)]


def upward_steps(values: list[float], threshold: float) -> list[tuple[int, int, float, float]]:
    """(index before, index after, level before, level after) of each upward step of at least `threshold`."""
    sd = _asv()
    segments = sd.detect_steps(values)
    _, _, found = sd.detect_regressions(segments, threshold=threshold, min_size=1)
    level_at = {left: level for left, _, level, _, _ in segments}
    return [(i, j, before, level_at.get(j, best)) for i, j, before, best in (found or []) if j is not None]


def order_commits(frame: pd.DataFrame, chain: list[str] | None = None) -> list[str]:
    """The recorded commits in history order: along `chain` (git's first-parent order) when it holds any, the
    recorded commits not on it dropped; else (no chain, or the store is of another repository) by committer date,
    then by when they were recorded."""
    recorded = set(frame["commit"].dropna())
    on_chain = [c for c in chain or [] if c in recorded]
    if on_chain:
        return on_chain
    firsts = frame.sort_values(["committed_at", "recorded_at"]).drop_duplicates("commit")
    return list(firsts["commit"])


def series(frame: pd.DataFrame, order: list[str]) -> dict[tuple[str, str, str], pd.DataFrame]:
    """Per (machine, case_id, metric): its ok rows in `order` (one value per commit)."""
    rank = {c: i for i, c in enumerate(order)}
    ok = frame[(frame["status"] == "ok") & frame["commit"].isin(rank) & frame["value"].notna()].copy()
    ok["position"] = ok["commit"].map(rank)
    out = {}
    for key, g in ok.groupby(list(SERIES_KEYS), sort=True):
        out[tuple(key)] = g.sort_values("position").drop_duplicates("commit", keep="last").reset_index(drop=True)
    return out


def detect(frame: pd.DataFrame, order: list[str], thresholds: dict[str, float] | None = None) -> list[Step]:
    """The candidate steps of every series of `frame`."""
    thresholds = {**THRESHOLDS, **(thresholds or {})}
    steps = []
    for (machine, case_id, metric), s in series(frame, order).items():
        values = [float(v) for v in s["value"]]
        for i, j, before, after in upward_steps(values, thresholds[metric]):
            steps.append(Step(machine, case_id, metric, s["commit"].iloc[i], s["commit"].iloc[j], before, after))
    return steps


def steps_frame(steps: list[Step]) -> pd.DataFrame:
    """The steps as a tidy table (one row per step)."""
    cols = ["machine", "case_id", "metric", "before", "after", "value_before", "value_after", "ratio", "confirmed",
            "ab_ratio", "ab_folder"]
    return pd.DataFrame([{**{c: getattr(s, c) for c in cols}} for s in steps], columns=cols)
