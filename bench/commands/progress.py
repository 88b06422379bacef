"""The run's progress bar: tqdm on stderr weighted by each case's estimated seconds."""
from __future__ import annotations

import os
import shutil
import sys


class Progress:
    """Current case, cases done, ETA. The bar advances by each case's estimated seconds
    (Runner.estimate_s: MACs over the calibrated rate, within the time budgets), so one slow 2048x2048 softmax case
    weighs what it costs, not 1/N of the run."""

    def __init__(self, enabled: bool):
        self.bar = None
        self.enabled = enabled
        self.weights: list[float] | None = None

    def set_estimates(self, seconds: list[float]) -> None:
        self.weights = [max(0.01, float(x)) for x in seconds]

    def __call__(self, case, i: int, n: int) -> None:
        if not self.enabled:
            return
        w = self.weights if self.weights and len(self.weights) == n else [1.0] * n
        if self.bar is None:
            from tqdm import tqdm

            try:
                real = os.get_terminal_size(sys.stderr.fileno()).columns > 0
            except OSError:
                real = False
            self.bar = tqdm(total=round(sum(w), 2), file=sys.stderr, dynamic_ncols=real, leave=False,
                            ncols=None if real else shutil.get_terminal_size((110, 20)).columns,
                            bar_format="{l_bar}{bar}| {postfix} [{elapsed}<{remaining}]")
        if i:
            self.bar.update(w[i - 1])
        self.bar.set_description_str(f"{i}/{n}", refresh=False)
        self.bar.set_postfix_str(case.label(), refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(max(0.0, self.bar.total - self.bar.n))
            self.bar.close()
