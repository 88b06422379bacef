"""The checker benchmark's re-judging of stored trials (`python -m tools.bench_checker --analyze DIR`)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # works with or without tests/__init__.py
from runfactory import case, make_run, noise  # noqa: E402

from tools import bench_checker  # noqa: E402


def _trial(root: Path, t: int, slow_factor: float) -> None:
    make_run(root, f"t{t:02d}-base", [case("m", samples=noise(100 * t + 1))])
    make_run(root, f"t{t:02d}-aa", [case("m", samples=noise(100 * t + 2))])
    for i, f in enumerate(bench_checker.SLOWDOWNS):
        make_run(root, f"t{t:02d}-slow{f}", [case("m", samples=noise(100 * t + 3 + i) * slow_factor)])


def test_analyze_rejudges_complete_trials(tmp_path, capsys):
    for t in range(3):
        _trial(tmp_path, t, 1.5)
    make_run(tmp_path, "t03-base", [case("m", samples=noise(9))])  # incomplete trial: ignored
    assert bench_checker.stored_trials(tmp_path) == [0, 1, 2]
    out = tmp_path / "rates.json"
    assert bench_checker.main(["--analyze", str(tmp_path), "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    assert s["trials"] == 3 and s["aa"]["false_alarm_runs"] == 0
    assert all(d["rate"] == 1.0 for d in s["detection"].values())
    assert "3 stored trials re-judged" in capsys.readouterr().out
    # a threshold above the injected change: nothing is detected any more
    assert bench_checker.main(["--analyze", str(tmp_path), "--threshold", "0.6", "--json", str(out)]) == 0
    assert all(d["rate"] == 0.0 for d in json.loads(out.read_text())["detection"].values())


def test_analyze_without_trials_exits_2(tmp_path, capsys):
    assert bench_checker.main(["--analyze", str(tmp_path)]) == 2
    assert "no complete trial" in capsys.readouterr().err
