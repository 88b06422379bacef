"""Users' model files are imported, built and run only in child processes; the parent keeps what they said.

The parent of a run (and `models`, `ab`) needs a user's models' names and metadata to plan, and their dense-output
check and MAC count at each size to decide and estimate. All of it comes from a probe child
(`python -m bench.launch.usercode REQUEST OUT`): it imports the sources, then checks and counts each (model, size,
batch) asked for, and reports each step as one JSON line in OUT, a file of its own: the user's prints go to the
child's captured stdout and can never mix into it. A step that exits (sys.exit, os._exit), crashes (a signal), hangs
past the timeout or changes torch's global state (threads, default dtype) becomes that step's reason; the steps not
reached yet go to a fresh child. An import that fails is a PlanError-worthy ModelSourceError (the run cannot name
the file's models); a check that fails is the reason of that model's rows, and the run goes on without it.

In the parent every model of a source is registered from the child's metadata with `remote` (this module's
`RemoteModel`) answering checks and counts; its builder refuses (models.registry.ChildOnlyError). Case children
(bench.launch.worker) import the sources themselves, as before.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

import models  # noqa: F401 - the built-in zoo before any source: a source cannot change how it imports
from bench.launch.childenv import set_pdeathsig
from bench.launch.outcome import signal_name
from bench.measure.outputs import OutputError, TorchState
from models.complexity import macs_per_image, params_of
from models.registry import (ChildOnlyError, ModelCheckError, Published, UnknownModelError, check_model, dense_output,
                             error_line, get_model_info, list_models, register_model)
from models.user import ModelSourceError, load_model_sources

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TIMEOUT_S = 120.0  # an import or a meta-device check that takes longer is taken as hung
STARTUP_S = 120.0  # the child's own start (torch's import) on a busy machine, apart from the steps' timeout
POLL_S = 0.05
Key = tuple[str, int, int, int]  # (model, height, width, batch)


@dataclass
class Step:
    """One reported step of a probe child: what it was, and its answer (or the reason it has none)."""

    what: str  # "import" or "check"
    item: Any  # the source, or the Key
    answer: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# The parent side


def _how_it_ended(rc: int | None, timed_out: float | None, log: Path, since: int = 0) -> str:
    """'exited with code 3' / 'was killed by SIGSEGV' / 'did not finish within 5 s', with the last line the
    child wrote after byte `since` of its output (the start of the step it was in), when it wrote one."""
    if timed_out is not None:
        how = f"did not finish within {timed_out:g} s (hung?)"
    elif rc is not None and rc < 0:
        how = f"was killed by {signal_name(-rc)}"
    else:
        how = f"exited with code {rc}"
    try:
        with open(log, "rb") as f:
            f.seek(max(since, os.path.getsize(log) - 4096))
            tail = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        tail = []
    return how + (f" (its last output: {tail[-1][:200]!r})" if tail else "")


def _child_env() -> dict[str, str]:
    """The parent's import path, so that a package.module source imports in the child as it would here."""
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([str(ROOT), *paths]))
    env.pop("DENSEBENCH_MODELS_FROM", None)  # the request names the sources; the variable was resolved already
    return env


def _run_child(request: dict, timeout_s: float) -> tuple[list[Step], Step | None, str]:
    """Run one probe child; (steps done, the step it was in when it ended early or None, how it ended)."""
    with tempfile.TemporaryDirectory(prefix="densebench-usercode-") as tmp:
        req, out, log = Path(tmp, "request.json"), Path(tmp, "steps.jsonl"), Path(tmp, "output.log")
        req.write_text(json.dumps(request))
        out.touch()
        with open(log, "wb") as logf:
            proc = subprocess.Popen([sys.executable, "-m", "bench.launch.usercode", str(req), str(out)], cwd=ROOT,
                                    env=_child_env(), stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                    start_new_session=True)
            steps, current, timed_out, since = _follow(proc, out, log, timeout_s)
        return steps, current, _how_it_ended(proc.returncode, timed_out, log, since)


def _follow(proc: subprocess.Popen, out: Path, log: Path, timeout_s: float
            ) -> tuple[list[Step], Step | None, float | None, int]:
    """Read the child's steps as they come; kill its process group when one step outlasts timeout_s. (steps done,
    the step it was in, the timeout that killed it or None, where that step's output starts in `log`)."""
    steps: list[Step] = []
    current: Step | None = None
    since, pos, buf, timed_out, log_at = time.monotonic(), 0, b"", None, 0
    while True:
        ended = proc.poll() is not None
        with open(out, "rb") as f:
            f.seek(pos)
            chunk = f.read()
        pos += len(chunk)
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            try:
                msg = json.loads(line)
            except ValueError:  # not a line of ours (the file is the child's alone; a model could still find it)
                continue
            if "start" in msg:
                current = Step(msg["start"], _item(msg["item"]))
                log_at = log.stat().st_size
            elif current is not None:
                current.answer = msg["done"]
                steps.append(current)
                current = None
            since = time.monotonic()
        if ended:
            return steps, current, timed_out, log_at
        limit = timeout_s if current is not None else max(timeout_s, STARTUP_S)
        if time.monotonic() - since > limit:
            timed_out = limit
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        time.sleep(POLL_S)


def _item(raw: Any) -> Any:
    return tuple(raw) if isinstance(raw, list) else raw


def probe(sources: list[str], checks: Iterable[Key] = (), timeout_s: float = DEFAULT_TIMEOUT_S
          ) -> tuple[dict[str, list[dict]], dict[Key, dict]]:
    """Import `sources` and check `checks` in child processes: ({source: [model metadata]}, {key: answer}).
    Raises ModelSourceError when a source cannot be imported (the child's reason, or how the child ended)."""
    todo = list(dict.fromkeys(checks))
    models: dict[str, list[dict]] = {}
    answers: dict[Key, dict] = {}
    while True:
        steps, current, how = _run_child({"sources": sources, "checks": [list(k) for k in todo]}, timeout_s)
        for s in steps:
            if s.what == "import":
                if s.answer.get("error"):
                    raise ModelSourceError(s.answer["error"])
                models[s.item] = s.answer["models"]
            else:
                answers[s.item] = s.answer
        if current is None:
            if len(models) < len(sources) or any(k not in answers for k in todo):
                raise ModelSourceError(f"the process importing the model sources {how} before it reported")
            return models, answers
        if current.what == "import":
            raise ModelSourceError(f"model source {current.item!r}: importing it {how}; accepted: a source that "
                                   "imports without exiting, crashing or hanging")
        name, h, w, b = current.item
        answers[current.item] = {"reason": f"{name!r} at {h}x{w} (batch {b}): the process building and running it "
                                           f"on the meta device {how}; accepted: a model that builds and runs "
                                           "without exiting, crashing or hanging"}
        todo = [k for k in todo if k not in answers]
        if not todo:
            return models, answers


class RemoteModel:
    """A user's model as the parent knows it: checks and counts answered by probe children, asked for once."""

    def __init__(self, name: str, source: str, timeout_s: float):
        self.name, self.source, self.timeout_s = name, source, timeout_s
        self.answers: dict[Key, dict] = {}

    def check(self, height: int, width: int, batch: int = 1) -> dict:
        """{"reason"} or {"classes", "stride", "macs" (per image), "params"} at this size and batch."""
        key = (self.name, height, width, batch)
        prefetch([key])
        return self.answers[key]

    def counts(self, height: int, width: int) -> dict:
        found = self.check(height, width, 1)
        if found.get("reason"):
            raise ModelCheckError(found["reason"])
        return found


def remote_of(name: str) -> RemoteModel | None:
    try:
        return get_model_info(name).remote
    except UnknownModelError:
        return None


def prefetch(keys: Iterable[Key]) -> None:
    """Check every key of a user's model not answered yet, in one probe child (more where one dies): the runner
    asks for all its cases' keys at once, so a run pays one child's start, not one per case."""
    todo = [(k, r) for k in dict.fromkeys(keys) if (r := remote_of(k[0])) is not None and k not in r.answers]
    if not todo:
        return
    sources = list(dict.fromkeys(r.source for _, r in todo))
    _, answers = probe(sources, [k for k, _ in todo], max(r.timeout_s for _, r in todo))
    for k, r in todo:
        r.answers[k] = answers[k]


def register_sources(sources: list[str], timeout_s: float = DEFAULT_TIMEOUT_S) -> list[str]:
    """Import `sources` in a probe child and register their models here (metadata only: they are built in
    children); the names, in order. A source registered already (its models are in the registry) is not probed
    again."""
    loaded = {n: r.source for n in list_models() if (r := get_model_info(n).remote) is not None}
    fresh = [s for s in sources if s not in set(loaded.values())]
    if fresh:
        found, _ = probe(fresh, (), timeout_s)
        for src in fresh:
            for meta in found[src]:
                _register(src, meta, timeout_s)
                loaded[meta["name"]] = src
    return [n for s in sources for n, src in loaded.items() if src == s]


def _register(src: str, meta: dict, timeout_s: float) -> None:
    """Register one model of a source from the child's metadata, its builder refusing in this process."""
    meta = dict(meta)
    name = meta.pop("name")
    if name in set(list_models()):
        raise ModelSourceError(f"model source {src!r} registers {name!r}, already registered; accepted: names not "
                               "already registered")
    meta["published"] = _published(meta.get("published"))
    meta["input_size"] = tuple(meta["input_size"])  # a list in JSON
    register_model(name, **meta)(_refuse_in_parent)
    # frozen: the record is set once, here, before anyone reads it
    object.__setattr__(get_model_info(name), "remote", RemoteModel(name, src, timeout_s))


def _published(raw: dict | None) -> Any:
    return None if raw is None else Published(**raw)


def _refuse_in_parent() -> Any:
    raise ChildOnlyError("a user's model is built only in a child process")


# ----------------------------------------------------------------------------------------------------------------
# The child side


def _changed(before: TorchState, what: str) -> str | None:
    """The reason when torch's global state differs from `before` (put back first: the next step runs clean)."""
    try:
        before.check(what)
    except OutputError as e:
        return str(e)
    return None


def _why(e: BaseException) -> str:
    if isinstance(e, SystemExit):
        return f"called sys.exit({e.code!r})"
    if isinstance(e, KeyboardInterrupt):
        return "raised KeyboardInterrupt"
    return f"raised {error_line(e)}"


def _import_step(spec: str) -> dict:
    before = TorchState.now()
    try:
        names = load_model_sources([spec])
    except ModelSourceError as e:
        return {"error": str(e)}
    except BaseException as e:  # noqa: BLE001 - SystemExit, KeyboardInterrupt: users' code, reported
        return {"error": f"model source {spec!r}: importing it {_why(e)}; accepted: a source that imports "
                         "without exiting"}
    changed = _changed(before, f"the import of model source {spec!r}")
    if changed:
        return {"error": changed}
    return {"models": [_metadata(get_model_info(n)) for n in names]}


def _metadata(info: Any) -> dict:
    """register_model's keywords for a registered model, as JSON."""
    return {"name": info.name, "family": info.family, "mixer": info.mixer, "dataset": info.dataset,
            "input_size": list(info.input_size), "in_channels": info.in_channels,
            "input_stride": info.input_stride, "size_multiple": info.size_multiple,
            "token_stride": info.token_stride, "description": info.description,
            "num_classes": info.declared_classes, "out_stride": info.declared_stride,
            "published": asdict(info.published) if info.published is not None else None}


def _check_step(key: Key) -> dict:
    name, h, w, b = key
    before = TorchState.now()
    try:
        reason = check_model(name, h, w, b)
        if reason is None:
            classes, stride = dense_output(get_model_info(name), h, w, b)
            found = {"classes": int(classes), "stride": int(stride), "macs": int(macs_per_image(name, h, w)),
                     "params": int(params_of(name))}
        else:
            found = {"reason": reason}
    except BaseException as e:  # noqa: BLE001 - users' code: every way out is a reason
        found = {"reason": f"{name!r} at {h}x{w} (batch {b}): its builder or forward {_why(e)} (meta device); "
                           "accepted: a model that builds and runs without exiting"}
    changed = _changed(before, f"the build or forward of {name!r}")
    return {"reason": changed} if changed else found


def child_main(request_path: str, out_path: str) -> int:
    """Run the request's steps, one JSON line before ("start") and after ("done") each."""
    request = json.loads(Path(request_path).read_text())
    with open(out_path, "a", buffering=1) as out:
        def report(what: str, item: Any, fn: Any) -> dict:
            out.write(json.dumps({"start": what, "item": item}) + "\n")
            out.flush()
            answer = fn()
            out.write(json.dumps({"done": answer}) + "\n")
            out.flush()
            return answer

        for spec in request["sources"]:
            if report("import", spec, lambda: _import_step(spec)).get("error"):
                return 0
        for key in request["checks"]:
            report("check", key, lambda: _check_step(tuple(key)))
    return 0


if __name__ == "__main__":
    set_pdeathsig()
    sys.stdout = sys.stderr  # a user's print goes to the captured output, never to OUT
    raise SystemExit(child_main(sys.argv[1], sys.argv[2]))
