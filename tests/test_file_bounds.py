"""Every file the suite reads is bounded before it is read (issue 20, "Files and values without bounds"):
a FIFO or a device is refused without being opened, a file over its size cap without being read, JSON/TOML nested
past the depth cap and table cells past the length cap are one line; the CLI exits 2 with no traceback and the
Python API raises the reader's own error class (RunFormatError, GateConfigError).

FIFO tests cannot hang: a watchdog thread opens the FIFO's write end whenever a reader blocks in open() (and
closes it at once, so the reader sees end of file), and records that the suite opened the FIFO, which fails the
test. The one subprocess test runs the real command line under a timeout."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from bench import bounded_read
from bench.analysis.gates_file import GateConfigError, load_gates
from bench.cli import main
from bench.results.store import RunFormatError, load_run
from runfactory import case, make_run, noise

REPO = Path(__file__).resolve().parents[1]
RUN_FILES = ("meta.json", "results.parquet", "samples.parquet", "pairs.parquet", "profile.parquet")


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    """Two small runs (results.parquet + .csv, samples, meta.json): a baseline and one to damage."""
    cases = [case("block:msla", 512, 512, noise(1)), case("block:softmax", 512, 512, noise(2, median=30.0))]
    return make_run(tmp_path, "base", cases), make_run(tmp_path, "cur", cases)


def one_error(capsys, rc: int) -> str:
    """The command's one stderr line, after checking exit 2 and no traceback."""
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


class Unblocker:
    """Opens the write end of `fifo` whenever someone blocks in opening its read end: a reader that should never
    have opened it gets end of file instead of hanging the test, and `opened` says it happened."""

    def __init__(self, fifo: Path) -> None:
        self.fifo, self.opened, self._stop = fifo, False, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while no reader has it open
            except OSError:
                continue
            self.opened = True
            os.close(fd)

    def __enter__(self) -> "Unblocker":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def memory_cap():
    """Address space capped 2 GiB above what the process maps now, for tests whose failure would read a device
    until the machine runs out of memory: a regression is then a MemoryError in this test, not the OOM killer."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        mapped = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    cap = mapped + 2 * 1024**3
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _fifo(path: Path) -> Path:
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    return path


# ---- FIFOs and devices: refused without being opened


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", RUN_FILES)
def test_fifo_in_a_run_folder_is_refused_unopened(runs, capsys, name):
    base, cur = runs
    fifo = _fifo(cur / name)
    with Unblocker(fifo) as guard:
        err = one_error(capsys, main(["compare", str(base), str(cur)]))
        with pytest.raises(RunFormatError, match="FIFO"):
            load_run(cur)
    assert not guard.opened, "the FIFO was opened"
    assert name in err and "FIFO" in err and "regular file" in err


@pytest.mark.timeout(60)
def test_fifo_results_file_named_directly_and_report_resume(runs, capsys, tmp_path):
    base, cur = runs
    (cur / "results.parquet").unlink()
    fifo = _fifo(cur / "results.csv")
    with Unblocker(fifo) as guard:
        assert "FIFO" in one_error(capsys, main(["compare", str(base), str(fifo)]))
        assert "FIFO" in one_error(capsys, main(["report", str(cur), "--out", str(tmp_path / "r.html")]))
        assert "FIFO" in one_error(capsys, main(["check", "--run", str(cur)]))
        assert "FIFO" in one_error(capsys, main(["--resume", str(cur), "--out", str(tmp_path)]))
    assert not guard.opened


@pytest.mark.timeout(60)
def test_fifo_gates_file(runs, capsys, tmp_path):
    fifo = _fifo(tmp_path / "gates.toml")
    with Unblocker(fifo) as guard:
        err = one_error(capsys, main(["check", "--run", str(runs[0]), "--gates", str(fifo)]))
        with pytest.raises(GateConfigError, match="FIFO"):
            load_gates(fifo)
    assert not guard.opened and "FIFO" in err


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_devices_as_meta_json_results_and_gates(runs, capsys, tmp_path, device, memory_cap):
    base, cur = runs
    (cur / "meta.json").unlink()
    (cur / "meta.json").symlink_to(device)
    assert "character device" in one_error(capsys, main(["compare", str(base), str(cur)]))
    dev_csv = tmp_path / "results.csv"
    dev_csv.symlink_to(device)
    assert "character device" in one_error(capsys, main(["compare", str(base), str(dev_csv)]))
    err = one_error(capsys, main(["check", "--run", str(base), "--gates", device]))
    assert device in err and "character device" in err and "regular file" in err


def test_gates_file_fifo_end_to_end_in_a_process(runs, tmp_path):
    """The real command line: one line, exit 2, no traceback, and no hang (timeout)."""
    fifo = _fifo(tmp_path / "gates.toml")
    p = subprocess.run([sys.executable, "run_bench.py", "check", "--run", str(runs[0]), "--gates", str(fifo)],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    assert "FIFO" in p.stderr


# ---- size caps (sparse files: the size is stat's, nothing is written or read)


def test_oversized_files_refused_before_reading(runs, capsys, tmp_path):
    base, cur = runs
    os.truncate(cur / "meta.json", bounded_read.JSON_MAX_BYTES + 1)
    err = one_error(capsys, main(["compare", str(base), str(cur)]))
    assert "meta.json" in err and "at most 128 MiB" in err
    big = tmp_path / "big" / "results.csv"
    big.parent.mkdir()
    big.write_bytes(b"")
    os.truncate(big, bounded_read.TABLE_MAX_BYTES + 1)
    assert "at most 1 GiB" in one_error(capsys, main(["compare", str(base), str(big)]))
    gates = tmp_path / "gates.toml"
    gates.write_bytes(b"")
    os.truncate(gates, bounded_read.TOML_MAX_BYTES + 1)
    assert "at most 1 MiB" in one_error(capsys, main(["check", "--run", str(base), "--gates", str(gates)]))


# ---- nesting


@pytest.mark.parametrize("depth", [100, 10_000])
def test_deep_meta_json(runs, capsys, depth):
    base, cur = runs
    (cur / "meta.json").write_text('{"env": ' + "[" * depth + "]" * depth + "}")
    err = one_error(capsys, main(["compare", str(base), str(cur)]))
    assert "meta.json" in err and f"nested deeper than {bounded_read.MAX_DEPTH}" in err
    with pytest.raises(RunFormatError, match="nested deeper"):
        load_run(cur)


def test_deep_toml(runs, capsys, tmp_path):
    gates = tmp_path / "deep.toml"
    gates.write_text("x = " + "[" * 10_000 + "]" * 10_000 + "\n")
    err = one_error(capsys, main(["check", "--run", str(runs[0]), "--gates", str(gates)]))
    assert "deep.toml" in err and "nested deeper" in err
    with pytest.raises(GateConfigError, match="nested deeper"):
        load_gates(gates)


@pytest.mark.parametrize("depth", [900, 10_000])
def test_deep_json_text_inside_meta_is_shown_as_text(depth):
    """The report formats a meta string that is JSON; one nested past the cap stays text (it was a
    RecursionError traceback in `report`, from the parser at 10,000 and from the formatting at 900)."""
    from bench.analysis.report.methodology import format_value

    text = "[" * depth + "]" * depth
    assert format_value("env.note", text) == text


# ---- tables: cell length, columns, rows


def test_ten_megabyte_cell_in_results_csv(runs, capsys, tmp_path):
    base, cur = runs
    df = pd.read_csv(cur / "results.csv")
    df["reason"] = df["reason"].astype("object")
    df.loc[0, "reason"] = "x" * 10_000_000
    (cur / "results.parquet").unlink()
    df.to_csv(cur / "results.csv", index=False)
    err = one_error(capsys, main(["report", str(cur), "--out", str(tmp_path / "r.html")]))
    assert "results.csv" in err and "row 1, column 'reason'" in err and "at most 65,536 characters" in err
    assert not (tmp_path / "r.html").exists()
    with pytest.raises(RunFormatError, match="10,000,000 characters"):
        load_run(cur / "results.csv")


def test_long_cell_in_samples_parquet(runs, capsys):
    base, cur = runs
    s = pd.read_parquet(cur / "samples.parquet")
    s["case_id"] = s["case_id"].astype("object")
    s.loc[3, "case_id"] = "y" * (bounded_read.CELL_MAX_CHARS + 1)
    s.to_parquet(cur / "samples.parquet", index=False)
    err = one_error(capsys, main(["compare", str(base), str(cur)]))
    assert "samples.parquet" in err and "row 4, column 'case_id'" in err


def test_too_many_columns_and_decoded_size(runs, capsys, monkeypatch):
    base, cur = runs
    (cur / "results.parquet").unlink()
    (cur / "results.csv").write_text(",".join(f"c{i}" for i in range(5000)) + "\n")
    assert "5,000 columns" in one_error(capsys, main(["compare", str(base), str(cur)]))
    monkeypatch.setattr(bounded_read, "PARQUET_MAX_DECODED_BYTES", 100)  # a parquet file decompresses to more
    err = one_error(capsys, main(["compare", str(base), str(base)]))
    assert "results.parquet" in err and "once decompressed" in err


# ---- gates: count


def test_too_many_gates(runs, capsys, tmp_path):
    n = bounded_read.MAX_GATES + 1
    gates = tmp_path / "many.toml"
    gates.write_text("".join(f'[[gate]]\nname = "g{i}"\nkind = "speedup"\n' for i in range(20_000)))
    err = one_error(capsys, main(["check", "--run", str(runs[0]), "--gates", str(gates)]))
    assert "20,000 gates" in err and f"at most {n - 1:,} gates" in err
    with pytest.raises(GateConfigError, match="gates; accepted"):
        load_gates(gates)


def test_real_files_pass(runs):
    """The suite's own files stay within every bound: its gates file and a run folder load."""
    assert load_gates() and len(load_run(runs[0]).results) == 2
