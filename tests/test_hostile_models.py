"""Users' code never takes the suite down: model files that print, exit, crash, hang or misbehave only on the real
device cost their own rows (or, at import, one line and exit 2), and every other case of the run is measured."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]

HEAD = """\
import os, sys, ctypes
import torch
from torch import nn
from models.registry import register_model


class Net(nn.Module):
    '''A dense 8x-strided map; `how` says what its forward does besides.'''
    def __init__(self, how=""):
        super().__init__()
        self.how, self.c = how, nn.Conv2d(3, 4, 8, 8)

    def forward(self, x):
        real = not x.is_meta
        if self.how == "exit-meta":
            os._exit(3)
        if self.how == "segv-real" and real:
            ctypes.string_at(0)
        if self.how == "exit-real" and real:
            sys.exit(0)
        if self.how == "hang-meta":
            while True:
                pass
        y = self.c(x)
        if self.how == "tuple-real" and real:
            return (y,)
        if self.how == "nan-real" and real:
            return y * float("nan")
        if self.how == "threads-real" and real:
            torch.set_num_threads(2)
        return y
"""

# model -> (what it does, the status of its row, words of its reason)
MISBEHAVING = {
    "h-print": ("print", "ok", ""),
    "h-exit-build": ("exit-build", "error", "called sys.exit(0)"),
    "h-hang-build": ("hang-build", "error", "did not finish within"),
    "h-exit-meta": ("exit-meta", "error", "exited with code 3"),
    "h-hang-meta": ("hang-meta", "error", "did not finish within"),
    "h-segv-real": ("segv-real", "error", "SIGSEGV"),
    "h-exit-real": ("exit-real", "error", "called sys.exit(0) in stage reference"),
    "h-tuple-real": ("tuple-real", "error", "is a tuple, not a tensor"),
    "h-nan-real": ("nan-real", "error", "NaN or infinite"),
    "h-threads-real": ("threads-real", "error", "thread count 1 -> 2"),
}


def _model_file(path: Path) -> Path:
    body = [HEAD, "print('loading my models')"]
    for name, (how, _, _) in MISBEHAVING.items():
        build = {"exit-build": "sys.exit(0)", "hang-build": "while True:\n        pass",
                 "print": "print('building'); return Net()"}.get(how, f"return Net({how!r})")
        body.append(f"@register_model({name!r})\ndef _b_{name.replace('-', '_')}():\n    {build}\n")
    path.write_text("\n\n".join(body))
    return path


def _bench(*args: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run_bench.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, **kw)


def test_every_misbehaving_model_is_its_own_row_and_the_built_in_one_is_measured(tmp_path):
    src = _model_file(tmp_path / "hostile.py")
    p = _bench("--models-from", str(src), "--models", "h-*,block:msla", "--level", "both", "--res", "64",
               "--threads", "1", "--timeout", "8", "--budget", "10", "--no-calibrate", "--no-report",
               "--out", str(tmp_path / "out"))
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    (run,) = (tmp_path / "out").iterdir()
    res = pd.read_parquet(run / "results.parquet").set_index("model")
    assert json.loads((run / "meta.json").read_text())["status"] == "complete"
    assert res.loc["block:msla", "status"] == "ok"
    for name, (_, status, words) in MISBEHAVING.items():
        assert res.loc[name, "status"] == status, (name, res.loc[name, "reason"])
        assert words in res.loc[name, "reason"], (name, res.loc[name, "reason"])
    # eager fp32's own numerics are measured against a float64 forward, not 0 by construction
    assert 0.0 < res.loc["h-print", "rel_err"] < 1e-5 and bool(res.loc["h-print", "numerics_ok"])


@pytest.mark.parametrize("at_import,words", [
    ("sys.exit(0)", "called sys.exit(0)"),
    ("os._exit(3)", "exited with code 3"),
    ("ctypes.string_at(0)", "SIGSEGV"),
    ("torch.set_default_dtype(torch.float64)", "default dtype torch.float32 -> torch.float64"),
])
def test_a_model_file_that_ends_its_import_is_a_plan_error_naming_it(tmp_path, at_import, words):
    """In the planning process (no subprocess of ours around it): the import happens in a child."""
    from bench.plan import PlanError, load_sources

    src = tmp_path / "bad_import.py"
    src.write_text(f"import os, sys, ctypes\nimport torch\n{at_import}\n")
    with pytest.raises(PlanError) as e:
        load_sources([str(src)], timeout_s=60)
    assert "bad_import.py" in str(e.value) and words in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_model_file_that_hangs_at_import_is_one_line_and_exit_2_within_the_timeout(tmp_path):
    src = tmp_path / "bad_import.py"
    src.write_text("import time\nprint('waiting')\nwhile True:\n    time.sleep(0.1)\n")
    p = _bench("--models-from", str(src), "--models", "block:msla", "--res", "64", "--timeout", "4", "--list",
               timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad_import.py" in lines[0] and "did not finish within 4 s" in lines[0], lines
    assert "Traceback" not in p.stderr


def test_a_printing_model_file_in_the_environment_does_not_break_a_built_in_run(tmp_path):
    """A model file that prints at import, named by DENSEBENCH_MODELS_FROM, leaves the worker's protocol alone."""
    src = tmp_path / "chatty.py"
    src.write_text("print('loading my model')\nimport sys\nprint('to stderr too', file=sys.stderr)\n")
    env = {**__import__("os").environ, "DENSEBENCH_MODELS_FROM": str(src)}
    p = _bench("--models", "block:msla", "--level", "block", "--res", "64", "--threads", "1", "--design",
               "isolated", "--min-time", "0.05", "--max-time", "0.2", "--no-calibrate", "--no-report", "--out", str(tmp_path / "out"),
               env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    (run,) = (tmp_path / "out").iterdir()
    assert set(pd.read_parquet(run / "results.parquet")["status"]) == {"ok"}


def test_models_lists_a_misbehaving_model_with_its_reason(tmp_path):
    src = tmp_path / "two.py"
    src.write_text(textwrap.dedent("""\
        import sys
        from torch import nn
        from models.registry import register_model
        print('hello from a model file')

        @register_model("m-good")
        def good():
            return nn.Conv2d(3, 4, 8, 8)

        @register_model("m-exits")
        def exits():
            sys.exit(1)
        """))
    p = _bench("models", "--models-from", str(src), "--family", "user", "--format", "json", timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = {r["model"]: r for r in json.loads(p.stdout)}
    assert rows["m-good"]["params_m"] > 0 and not rows["m-good"]["reason"]
    assert "called sys.exit(1)" in rows["m-exits"]["reason"]


def test_the_parent_never_builds_a_users_model(tmp_path):
    """In the planning process a user's model is metadata: its builder refuses, its checks come from a child."""
    from bench.plan import load_sources
    from models.registry import ChildOnlyError, build_model, check_model, get_model_info

    src = tmp_path / "mine.py"
    src.write_text("from torch import nn\nfrom models.registry import register_model\n"
                   "@register_model('t-mine', out_stride=4)\ndef b():\n    return nn.Conv2d(3, 5, 4, 4)\n")
    load_sources([str(src)])
    assert not any(m.startswith("densebench_user_") for m in sys.modules)
    with pytest.raises(ChildOnlyError):
        build_model("t-mine")
    assert check_model("t-mine", 64, 64) is None
    info = get_model_info("t-mine")
    assert (info.num_classes, info.out_stride) == (5, 4)


def test_a_fifo_or_a_huge_file_named_py_is_refused_without_reading_it(tmp_path):
    import os

    from bench.plan import PlanError, load_sources

    fifo, huge = tmp_path / "fifo.py", tmp_path / "huge.py"
    os.mkfifo(fifo)
    with open(huge, "wb") as f:  # sparse: nothing big is written
        f.truncate(64 * 2**20)
    for src, words in ((fifo, "not a regular file"), (huge, "bytes, over")):
        with pytest.raises(PlanError, match=words):
            load_sources([str(src)], timeout_s=30)
