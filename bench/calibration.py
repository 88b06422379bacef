"""The device settings' calibrations (matmul peak, triad bandwidth): taken on a quiet machine, repeated at the end.

Why: frac_of_peak divides a case's GMAC/s by the calibrated matmul rate; a calibration taken while the machine was
busy reads low and made block:softmax reach 1.05 of "peak". So each device setting is calibrated when the machine
is quiet (the runner waits for it, bounded by --wait-quiet), once more at the end of the run, and the peak is the
larger of the two; a row still above 1 gets `frac_of_peak_note` saying why instead of passing silently.
Scheduling only: the kernels run in a child (bench.measure.calibrate via the isolation's "calibrate" spec).
"""
from __future__ import annotations

import math
from typing import Any, Callable

from bench.cases import Case
from bench.launch.outcome import child_error

CALIBRATION_TIMEOUT_S = 180.0


def calibration_key(case: Case | dict) -> str:
    g = case.get if isinstance(case, dict) else lambda k: getattr(case, k)
    return f"{g('device')}|{g('precision')}|t{g('threads')}"


class Calibrations:
    """meta["calibration"][key]: the first calibration's figures, `quiet` (was the machine quiet), and after the
    run `end` (the repeat) and `peak_gmacs_per_s` (the larger rate, what frac_of_peak uses)."""

    def __init__(self, meta: dict, run_child: Callable[[dict, Case], Any], quiet: Callable[[str], bool],
                 log: Callable[[str], None], bandwidth: bool = False):
        self.cal = meta.setdefault("calibration", {})
        self.run_child, self.quiet, self.log, self.with_bandwidth = run_child, quiet, log, bandwidth

    def _spec(self, case: Case) -> dict:
        return {"kind": "calibrate", "device": case.device, "precision": case.precision, "threads": case.threads,
                "bandwidth": self.with_bandwidth}

    def _take(self, case: Case) -> dict:
        out = self.run_child(self._spec(case), case)
        res = out.result.calibration if out.result else None
        if res:
            return res
        return {"error": child_error(out)}

    def peak(self, case: Case) -> float | None:
        """The setting's matmul rate, calibrated now (on a quiet machine where it can wait for one) if not yet."""
        key = calibration_key(case)
        if key not in self.cal:
            quiet = self.quiet(f"calibrating {key}")
            self.cal[key] = {**self._take(case), "quiet": quiet}
            c = self.cal[key]
            self.log(f"calibration {key}: {c.get('gmacs_per_s', c.get('error'))}" + ("" if quiet else
                                                                                    " (machine busy)"))
        c = self.cal[key]
        return c.get("peak_gmacs_per_s") or c.get("gmacs_per_s")

    def bandwidth(self, case: Case) -> float | None:
        return (self.cal.get(calibration_key(case)) or {}).get("bandwidth_gb_per_s")

    def repeat_at_end(self, cases: list[Case]) -> None:
        """Calibrate every setting used once more; the peak is the larger of the two rates."""
        seen: set[str] = set()
        for case in cases:
            key = calibration_key(case)
            c = self.cal.get(key)
            if key in seen or not c or "end" in c:
                continue
            seen.add(key)
            quiet = self.quiet(f"calibrating {key} again")
            end = {k: v for k, v in self._take(case).items() if k != "bandwidth"}
            c["end"] = {**end, "quiet": quiet}
            rates = [x for x in (c.get("gmacs_per_s"), end.get("gmacs_per_s")) if x]
            if rates:
                c["peak_gmacs_per_s"] = max(rates)
            self.log(f"calibration {key} at the end: {end.get('gmacs_per_s', end.get('error'))}")

    def apply(self, rows: list[dict]) -> None:
        """frac_of_peak of every ok row against its setting's peak; a note where it is still above 1."""
        for row in rows:
            c = self.cal.get(calibration_key(row)) or {}
            peak = c.get("peak_gmacs_per_s") or c.get("gmacs_per_s")
            g = row.get("gmacs_per_s")
            if row.get("status") != "ok" or not peak or g is None or not math.isfinite(float(g)):
                continue
            row["device_peak_gmacs_per_s"] = peak
            row["frac_of_peak"] = float(g) / peak
            row["frac_of_peak_note"] = (
                f"above 1: this case's {float(g):.1f} GMAC/s beat the calibration kernel's {peak:.1f} (calibrated "
                f"{'on a quiet machine' if c.get('quiet') else 'while the machine was busy'}); the matmul "
                "calibration is not this case's roof" if row["frac_of_peak"] > 1 else "")
