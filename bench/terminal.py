"""What a run shows on the terminal while it measures: the progress bar (tqdm on stderr, weighted by each case's
estimated seconds, with an ETA that learns) and, without a terminal, a heartbeat line so a piped run is never
silent for minutes. Used by the `run` and `profile` commands; tqdm is imported only when a bar is drawn."""
from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from typing import IO, Sequence

RATIO_BOUNDS = (0.05, 20.0)  # how far the measured / estimated ratio may move the ETA


def learned_ratio(estimates: Sequence[float], done: int, elapsed_s: float) -> float:
    """Measured / estimated seconds of the first `done` cases (1.0 before any is done), within RATIO_BOUNDS."""
    est = float(sum(estimates[:done]))
    if done <= 0 or est <= 0 or elapsed_s <= 0:
        return 1.0
    lo, hi = RATIO_BOUNDS
    return min(hi, max(lo, elapsed_s / est))


def learned_eta(estimates: Sequence[float], done: int, elapsed_s: float) -> float:
    """Seconds left: the estimates of the cases not done yet, scaled by how the finished ones compared with theirs
    (`elapsed_s`: the measured wall time of the first `done` cases)."""
    return learned_ratio(estimates, done, elapsed_s) * float(sum(estimates[done:]))


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def _braces(text: str) -> str:
    """A label as literal text inside a tqdm bar_format."""
    return text.replace("{", "{{").replace("}", "}}")


class Progress:
    """Current case, cases done, ETA. The bar advances by each case's estimated seconds (Runner.estimate_s: MACs
    over the calibrated rate, within the time budgets), so one slow 2048x2048 softmax case weighs what it costs,
    not 1/N of the run; the ETA scales the estimates left by measured / estimated of the cases done so far."""

    def __init__(self, enabled: bool, file: IO[str] | None = None, heartbeat_s: float | None = None):
        self.bar = None
        self.enabled = enabled
        self.file = file
        self.current = ""
        self.heartbeat = Heartbeat(heartbeat_s, lambda: self.current, file)
        self.weights: list[float] | None = None
        self._t0: float | None = None  # when the first case started

    def set_estimates(self, seconds: list[float]) -> None:
        self.weights = [max(0.01, float(x)) for x in seconds]

    def eta_s(self, i: int, n: int, now: float | None = None) -> float:
        """Seconds left when case `i` of `n` starts."""
        w = self._w(n)
        elapsed = 0.0 if self._t0 is None else (time.perf_counter() if now is None else now) - self._t0
        return learned_eta(w, i, elapsed)

    def _w(self, n: int) -> list[float]:
        return self.weights if self.weights and len(self.weights) == n else [1.0] * n

    def _make_bar(self, total: float):
        from tqdm import tqdm

        out = self.file or sys.stderr
        try:
            real = os.get_terminal_size(out.fileno()).columns > 0
        except (OSError, AttributeError, ValueError):
            real = False
        # a terminal of unknown size (a pty nobody sized: CI, `docker run -t`) reads as 0 x 0; tqdm would take it
        # for 0 rows and draw nothing, so the size is given for it
        fallback = shutil.get_terminal_size((110, 20))
        return tqdm(total=round(total, 2), file=out, dynamic_ncols=real, leave=False,
                    ncols=None if real else fallback.columns, nrows=None if real else max(2, fallback.lines),
                    bar_format="{desc}")

    def __call__(self, case, i: int, n: int) -> None:
        self.current = f"{case.label()} ({i + 1} of {n})"
        if not self.enabled:
            return
        w = self._w(n)
        if self.bar is None:
            self.bar = self._make_bar(sum(w))
            self._t0 = time.perf_counter()
        eta = self.eta_s(i, n)
        self.bar.bar_format = ("{desc}: {percentage:3.0f}%|{bar}| " + _braces(case.label())
                               + f" [{{elapsed}}<{_clock(eta)}]")
        self.bar.set_description_str(f"{i}/{n}", refresh=False)
        self.bar.update(max(0.0, sum(w[:i]) - self.bar.n))  # cases the runner skipped still count as done
        self.bar.refresh()

    def group(self, g, spent_s: float, budget_s: float) -> None:
        """An interleaved group's next process: the bar shows the budget spent and the group."""
        self.current = f"{g.gid} process {len(g.processes) + 1}"
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = self._make_bar(max(1.0, budget_s))
            self._t0 = time.perf_counter()
        self.bar.bar_format = ("{desc}: {percentage:3.0f}%|{bar}| " + _braces(self.current)
                               + f" [{{elapsed}}, budget {budget_s:.0f} s]")
        self.bar.set_description_str(f"{spent_s:.0f} s", refresh=False)
        self.bar.update(max(0.0, min(budget_s, spent_s) - self.bar.n))
        self.bar.refresh()

    def note(self, line: str) -> None:
        """A line the user must see (waiting for a quiet machine, ...): above the bar, or a plain line."""
        self.heartbeat.said()
        if self.bar is not None:
            self.bar.write(line, file=self.file or sys.stderr)
        else:
            print(line, file=self.file or sys.stderr, flush=True)

    def close(self) -> None:
        self.heartbeat.stop()
        if self.bar is not None:
            self.bar.update(max(0.0, self.bar.total - self.bar.n))
            self.bar.close()


class Heartbeat:
    """Without a terminal (CI logs, `| tee`), a line at least every `every_s` seconds while nothing else was
    printed: what is being measured and for how long, so that a piped run is never silent for minutes."""

    def __init__(self, every_s: float | None, current, file: IO[str] | None = None):
        self.every_s, self.current, self.file = every_s, current, file
        self._last = self._t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = None
        if every_s:
            self._thread = threading.Thread(target=self._beat, name="densebench-heartbeat", daemon=True)
            self._thread.start()

    def said(self) -> None:
        """Something was printed: the next beat is due every_s from now."""
        self._last = time.perf_counter()

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.every_s)):
            if time.perf_counter() - self._last >= self.every_s:
                what = self.current() or "starting"
                print(f"[{_clock(time.perf_counter() - self._t0)}] still measuring: {what}",
                      file=self.file or sys.stderr, flush=True)
                self.said()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
