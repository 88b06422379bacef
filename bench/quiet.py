"""Waiting for a quiet machine, once per busy period: the runner's policy over bench.health's figures.

A process measured while other processes used the CPU is measured again after a wait (up to --wait-quiet) for a
quiet machine (health.Guard.wait_quiet: a 2-s window within the bounds, then the speed probe within its drift
bound). After a wait that found no quiet machine, later ones are only a short look at most every BUSY_RECHECK_S,
so that a machine busy for good costs one wait, not one per process; once a look finds it quiet, full waits
resume. Calibrations are taken after the same wait.
"""
from __future__ import annotations

import time
from typing import Callable

from bench.health import Guard

BUSY_RECHECK_S = 30.0


class QuietWaits:
    def __init__(self, guard: Guard, wait_s: float, say: Callable[[str], None]):
        self.guard, self.wait_s, self.say = guard, wait_s, say
        self.busy_since: float | None = None  # a wait found no quiet machine: later waits are short looks

    def wait(self, why: str) -> bool:
        """Wait for a quiet machine; True when it came (measure again), False to measure on (or never wait)."""
        if self.wait_s <= 0:
            return False
        if self.busy_since is not None:
            if time.perf_counter() - self.busy_since < BUSY_RECHECK_S or self.guard.quiet_reason():
                return False
            self.busy_since = None
            self.say("the machine is quiet again: measuring again")
            return True
        if self.guard.wait_quiet(self.wait_s, why, self.say):
            return True
        self.busy_since = time.perf_counter()
        return False

    def before(self, what: str) -> bool:
        """Before a calibration: True when the machine is quiet now or became quiet within the wait."""
        why = self.guard.quiet_reason(1.0)
        return not why or self.wait(f"{what}: {why}")
