"""Benchmark (not a test): how well history finds steps, and what its confirmations and bisect cost.

1. The detector (asv's step detection, bench.history.steps) on seeded series of 30 commits with a 6% step at
   commit 10 and a 3% step at commit 20, under relative noise levels per recorded value (the spread a stored median
   carries): steps found out of 2 x trials, false steps, and false steps on flat series of 30.
2. On a real git chain (a copy of `models` committed `--commits` times; one commit computes block:relu-linear's
   attention three times): the confirming A/B of a real step and of a step injected only into stored numbers,
   and bisect over the chain, with the wall time of each verdict.
3. On a flat real chain (`--flat-commits`, 30: the same code committed again and again): `history record` of the
   small matrix at every commit into a scratch store, as CI on main would, then the detector over the measured
   series; every step it flags is false. Reported: the series' spread and the false steps, per case.

    python -m tools.bench_history                 # parts 1 and 2 (part 2: a few minutes on 2 cores)
    python -m tools.bench_history --part detector
    python -m tools.bench_history --part flat     # 30 records (~10 min on 2 cores)
"""
from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.history import steps
from bench.history.bisect import bisect
from bench.history.confirm import CaseSpec, ab_commits

ROOT = Path(__file__).resolve().parents[1]
CASE = CaseSpec("block:relu-linear", 64, 64, 1, "eager", "fp32")
SLOW_LINE = "        return self.proj(_merge_heads(relu_linear_attention(q, k, v, self.eps), hgt, wid))\n"
SLOWER = ("        out = relu_linear_attention(q, k, v, self.eps)\n"
          "        out = out + relu_linear_attention(q, k, v, self.eps) - relu_linear_attention(q, k, v, self.eps)\n"
          "        return self.proj(_merge_heads(out, hgt, wid))\n")


def detector(trials: int, noises: list[float]) -> None:
    print(f"detector: asv step detection, 30 commits, steps +6% at 10 and +3% at 20, {trials} seeded series each")
    print(f"{'noise':>7s} {'found/' + str(2 * trials):>10s} {'false':>6s} {'false (flat)':>13s}")
    for noise in noises:
        rng = random.Random(1)
        found = false = flat_false = 0
        for _ in range(trials):
            y = [1.0 * (1.06 if i >= 10 else 1) * (1.03 if i >= 20 else 1) * (1 + noise * rng.gauss(0, 1))
                 for i in range(30)]
            hits = {j for _, j, _, _ in steps.upward_steps(y, steps.THRESHOLDS["wall_ms"])}
            found += len(hits & {10, 20})
            false += len(hits - {10, 20})
            flat = [1 + noise * rng.gauss(0, 1) for _ in range(30)]
            flat_false += len(steps.upward_steps(flat, steps.THRESHOLDS["wall_ms"]))
        print(f"{noise:7.1%} {found:>10d} {false:>6d} {flat_false:>13d}")


def _git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b",
           "PATH": "/usr/bin:/bin"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def chain(repo: Path, n: int, slow_at: int) -> list[str]:
    """`n` commits of a copy of this suite's `models` in a new repository at `repo`; from commit `slow_at` on,
    block:relu-linear computes its linear attention three times (its subject says so, in HTML to be escaped)."""
    shutil.copytree(ROOT / "models", repo / "models", ignore=shutil.ignore_patterns("__pycache__"))
    _git(repo, "init", "-q", "-b", "main")
    commits = []
    for i in range(n):
        (repo / "NOTES.txt").write_text(f"commit {i}\n")
        if i == slow_at:
            src = repo / "models" / "mixers.py"
            src.write_text(src.read_text().replace(SLOW_LINE, SLOWER, 1))
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", f"commit {i}" + (" <b>attention thrice</b>" if i == slow_at else ""))
        commits.append(_git(repo, "rev-parse", "HEAD"))
    return commits


def on_git(n: int, max_time: float) -> None:
    slow_at = n // 2 + 1
    with tempfile.TemporaryDirectory(prefix="history-bench-") as tmp:
        repo = Path(tmp) / "repo"
        commits = chain(repo, n, slow_at)
        out = Path(tmp) / "ab"
        print(f"\nreal chain: {n} commits, commit {slow_at} computes relu-linear's attention three times; {CASE}")
        for label, old, new in (("stored-only step (same code)", commits[1], commits[2]),
                                ("real step", commits[slow_at - 1], commits[slow_at])):
            t0 = time.perf_counter()
            v = ab_commits(repo, old, new, CASE, threshold=0.1, max_time=max_time, out=out)
            print(f"confirm {label:30s}: {v.verdict:10s} B/A {v.ratio:.3f}  {time.perf_counter() - t0:6.1f} s")
        t0 = time.perf_counter()
        res = bisect(repo, commits[0], commits[-1], CASE, out=out, threshold=0.1, max_time=max_time)
        named = commits.index(res.first_slow) if res.first_slow else None
        print(f"bisect over {len(res.commits)} commits: {len(res.looks)} A/Bs, names commit {named} "
              f"(slow at {slow_at}), {time.perf_counter() - t0:.1f} s; looks: "
              + ", ".join(f"{commits.index(c)}:{v.verdict} {v.ratio:.3f}" for c, v in res.looks.items()))


def flat(n: int, models: str, res: str, max_time: float, budget: float) -> None:
    """`history record` at each of `n` commits of the same code, then the detector over the measured series."""
    import statistics

    from bench.history.record import record
    from bench.history.store import Store, load

    with tempfile.TemporaryDirectory(prefix="history-flat-") as tmp:
        repo, store = Path(tmp) / "repo", Path(tmp) / "store"
        commits = chain(repo, n, slow_at=n)  # slow_at past the end: no commit changes the models
        t0 = time.perf_counter()
        for c in commits:
            _git(repo, "checkout", "-q", c)
            record(store, repo=repo, models=models, res=res, threads="1", machine="flat-bench", max_time=max_time,
                   budget=budget)
        wall = time.perf_counter() - t0
        frame = load(Store(store))
        found = steps.detect(frame, commits)
        print(f"\nflat real chain: {n} commits of the same code, `history record` {models} at {res}, 1 thread, "
              f"--max-time {max_time} --budget {budget}: {wall / n:.0f} s a record")
        for (_, case_id, metric), s in steps.series(frame, commits).items():
            v = [float(x) for x in s["value"]]
            cv = statistics.stdev(v) / statistics.mean(v) * 100 if len(v) > 1 else float("nan")
            false = [st for st in found if (st.case_id, st.metric) == (case_id, metric)]
            print(f"{case_id} {metric}: {len(v)} values, SD {cv:.1f}% of the mean, range {min(v):.3f}-{max(v):.3f}; "
                  f"false steps {len(false)}" + "".join(f" (x{st.ratio:.3f} at commit {commits.index(st.after)})"
                                                        for st in false))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("all", "detector", "git", "flat"), default="all")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--noise", default="0.002,0.005,0.01,0.02,0.05")
    ap.add_argument("--commits", type=int, default=8)
    ap.add_argument("--max-time", type=float, default=120.0, help="seconds per A/B")
    ap.add_argument("--flat-commits", type=int, default=30)
    ap.add_argument("--flat-models", default="block:msla,block:relu-linear")
    ap.add_argument("--flat-res", default="128")
    ap.add_argument("--flat-budget", type=float, default=20.0, help="history record's --budget (CI: 20)")
    a = ap.parse_args(argv)
    if a.part in ("all", "detector"):
        detector(a.trials, [float(v) for v in a.noise.split(",")])
    if a.part in ("all", "git"):
        on_git(a.commits, a.max_time)
    if a.part == "flat":
        flat(a.flat_commits, a.flat_models, a.flat_res, max_time=1.0, budget=a.flat_budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
