"""What is decided about a case before any child runs, and what is counted of it without running it.

An absent device (--allow-missing) or softmax attention whose scores alone would not fit in the device's free
memory is `skipped`, an unsupported backend/precision combination `unsupported`, a model whose builder raises,
returns no Module or does not map an image to a dense output `error` (users' models are the ones this catches); the
case's MACs are counted on the meta device. Each answer is computed once per model and size, and an estimate that
fails never stops the run: it is logged and the case goes on.
"""
from __future__ import annotations

from typing import Callable, Iterable

from bench.cases import Case
from bench.env import free_memory_bytes
from models.complexity import count_macs
from models.registry import check_model
from models.user import ModelSourceError
from bench.launch.usercode import prefetch
from bench.measure.memory import fit_reason, materialises_scores


class CaseChecks:
    """The runner's pre-child decisions and MAC counts, cached per model and size."""

    def __init__(self, missing: set[str], log: Callable[[str], None], cases: Iterable[Case] = ()):
        self.missing, self.log = missing, log
        self.cases = list(cases)  # users' models among them are checked in one probe child, on the first ask
        self._macs: dict = {}
        self._model_reason: dict = {}
        self._fit: dict = {}

    def static(self, case: Case, fit: bool = True) -> tuple[str, str] | None:
        """(status, reason) decided without a child: absent device, unsupported combination, would not fit."""
        if case.device in self.missing:
            return "skipped", f"device {case.device} is not present on this machine (--allow-missing)"
        bad_model = self.model_reason(case)
        if bad_model:
            return "error", bad_model
        from bench.backends import unsupported_reason

        r = unsupported_reason(case.backend, case.device_type, case.precision, channels_last=case.channels_last,
                               fold=case.folded)
        if r:
            return "unsupported", r
        return self.fit(case) if fit else None

    def model_reason(self, case: Case) -> str | None:
        """Why the model cannot be measured at all (its builder raises, returns no Module, or its output is not a
        dense map), from one meta-device forward; users' models are the ones this catches."""
        key = (case.model, case.height, case.width, case.batch)
        if key not in self._model_reason:
            self._prefetch_users_models()
            try:
                self._model_reason[key] = check_model(case.model, case.height, case.width, case.batch)
            except ModelSourceError as e:  # its source no longer imports in a child: the reason of its rows
                self._model_reason[key] = str(e)
        return self._model_reason[key]

    def _prefetch_users_models(self) -> None:
        """Users' models of every case checked and counted at once, in a child (bench.launch.usercode)."""
        keys, self.cases = [(c.model, c.height, c.width, c.batch) for c in self.cases], []
        try:
            prefetch(keys)
        except ModelSourceError as e:  # each model is then asked alone, and its rows get the reason
            self.log(f"users' models could not be checked together: {e}")

    def fit(self, case: Case) -> tuple[str, str] | None:
        """("skipped", reason) when the case's attention scores alone would not fit in free memory."""
        if "softmax" not in case.variant or not materialises_scores(case.device_type, case.backend, case.precision):
            return None
        key = (case.model, case.height, case.width, case.batch, case.precision, case.device)
        if key not in self._fit:
            try:
                self._fit[key] = fit_reason(case.model, case.height, case.width, case.batch, case.precision,
                                            free_memory_bytes(case.device))
            except Exception as e:  # an estimate must never stop the run
                self.log(f"memory estimate failed for {case.label()}: {type(e).__name__}: {e}")
                self._fit[key] = None
        return ("skipped", self._fit[key]) if self._fit[key] else None

    def macs(self, case: Case) -> int | None:
        """The case's MACs (meta-device count), None when the model cannot be counted."""
        key = (case.model, case.height, case.width, case.batch)
        if key not in self._macs:
            try:
                self._macs[key] = int(count_macs(case.model, case.height, case.width, case.batch))
            except Exception as e:
                self.log(f"count_macs failed for {case.model}: {type(e).__name__}: {e}")
                self._macs[key] = None
        return self._macs[key]

    def known_macs(self, case: Case) -> int | None:
        """The MACs counted so far (None when not counted yet or not countable)."""
        return self._macs.get((case.model, case.height, case.width, case.batch))
