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
4. On a real chain with two real steps (`--part steps`; a copy of this suite committed `--step-commits` times, in
   which block:msla is followed by an fp32 matmul sized by measurement to 6% of its forward from one commit on and
   to 6% then 3% more from a later one): `history record` of wall time and instructions at every commit, the
   detector over the series, the confirming A/B of each flagged step and of a step injected into the stored numbers
   only, and `history bisect` twice (the first slow commit, then the second step from there), each with its wall
   time. The record runs the chain's own run_bench.py, so it measures the chain's code, as CI on main does.

    python -m tools.bench_history                 # parts 1 and 2 (part 2: a few minutes on 2 cores)
    python -m tools.bench_history --part detector
    python -m tools.bench_history --part flat     # 30 records (~10 min on 2 cores)
    python -m tools.bench_history --part steps    # 12 records with instructions, 3 confirmations, 2 bisects
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from bench.history import steps
from bench.history.bisect import bisect
from bench.history.confirm import CaseSpec, ab_commits

if TYPE_CHECKING:
    import pandas as pd

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


def _commit_chain(repo: Path, n: int, edits: dict[int, tuple[str, Callable[[Path], None]]]) -> list[str]:
    """`n` commits of what `repo` holds (a new repository); at commit i in `edits`, its edit is applied first and its
    words end the subject."""
    _git(repo, "init", "-q", "-b", "main")
    commits = []
    for i in range(n):
        (repo / "NOTES.txt").write_text(f"commit {i}\n")
        subject = f"commit {i}"
        if i in edits:
            words, edit = edits[i]
            edit(repo)
            subject += f" {words}"
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", subject)
        commits.append(_git(repo, "rev-parse", "HEAD"))
    return commits


def chain(repo: Path, n: int, slow_at: int) -> list[str]:
    """`n` commits of a copy of this suite's `models` in a new repository at `repo`; from commit `slow_at` on,
    block:relu-linear computes its linear attention three times (its subject says so, in HTML to be escaped)."""
    shutil.copytree(ROOT / "models", repo / "models", ignore=shutil.ignore_patterns("__pycache__"))

    def thrice(root: Path) -> None:
        src = root / "models" / "mixers.py"
        src.write_text(src.read_text().replace(SLOW_LINE, SLOWER, 1))

    return _commit_chain(repo, n, {slow_at: ("<b>attention thrice</b>", thrice)})


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


def flat(n: int, models: str, res: str, max_time: float, budget: float, instructions: bool = False) -> None:
    """`history record` at each of `n` commits of the same code, then the detector over the measured series."""
    from bench.history.record import record
    from bench.history.store import Store, load

    with tempfile.TemporaryDirectory(prefix="history-flat-") as tmp:
        repo, store = Path(tmp) / "repo", Path(tmp) / "store"
        commits = chain(repo, n, slow_at=n)  # slow_at past the end: no commit changes the models
        t0 = time.perf_counter()
        for c in commits:
            _git(repo, "checkout", "-q", c)
            record(store, repo=repo, models=models, res=res, threads="1", machine="flat-bench", max_time=max_time,
                   budget=budget, instructions=instructions)
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


STEP_CASE = CaseSpec("block:msla", 256, 256, 1, "eager", "fp32")
STEP_SIZES = (0.06, 0.03)  # the slowdowns the chain's two real steps are sized to, each on the level before it
BLOCK_INIT = ("    def __init__(self, mixer: str, channels: int, head_dim: int) -> None:\n        super().__init__()\n"
              "        self.context = Residual(build_mixer(mixer, channels, head_dim))\n")  # MixerBlock's
BLOCK_FORWARD = "        return self.context(x)\n"


def slowed_blocks(n: int) -> Callable[[Path], None]:
    """An edit of a suite copy: every MixerBlock (block:*) is followed by an n x n fp32 matmul into a preallocated
    buffer, a real slower code path in the model's own file (written over this suite's file, so a later edit of the
    chain replaces an earlier matmul)."""
    text = (ROOT / "models" / "efficientvit.py").read_text()
    if text.count(BLOCK_INIT) != 1 or text.count(BLOCK_FORWARD) != 1:
        raise SystemExit("bench_history --part steps: models/efficientvit.py's MixerBlock no longer reads as "
                         "BLOCK_INIT/BLOCK_FORWARD say; update them")
    init = BLOCK_INIT + ("        g = torch.Generator().manual_seed(0)\n"
                         f"        self.register_buffer('extra_a', torch.randn({n}, {n}, generator=g))\n"
                         f"        self.register_buffer('extra_out', torch.empty({n}, {n}))\n")
    forward = ("        y = self.context(x)\n"
               "        torch.mm(self.extra_a, self.extra_a, out=self.extra_out)\n"
               "        return y\n")
    slowed = text.replace(BLOCK_INIT, init).replace(BLOCK_FORWARD, forward)

    def edit(root: Path) -> None:
        (root / "models" / "efficientvit.py").write_text(slowed)
    return edit


def suite_chain(repo: Path, n: int, sizes: dict[int, int]) -> list[str]:
    """`n` commits of a copy of this suite (bench, models, run_bench.py: what `history record` runs); at commit i in
    `sizes` the blocks are followed by a matmul of that size."""
    for name in ("bench", "models"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "run_bench.py", repo / "run_bench.py")
    (repo / ".gitignore").write_text("__pycache__/\n")
    return _commit_chain(repo, n, {i: (f"<i>blocks + {k}x{k} matmul</i>", slowed_blocks(k)) for i, k in sizes.items()})


def _record_chain(repo: Path, commits: list[str], store: Path, case: CaseSpec) -> list[float]:
    """`history record` (wall time and instructions) at each commit by the chain's own run_bench.py; seconds each."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([sys.executable, "-c", "import bench.launch.childenv as c; print(c.REPO)"], cwd=repo,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    if Path(where).resolve() != repo.resolve():
        raise SystemExit(f"bench_history --part steps: the chain's run_bench.py imports the suite from {where}, not "
                         f"from the chain {repo}: its record would measure other code")
    walls = []
    for c in commits:
        _git(repo, "checkout", "-q", c)
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, str(repo / "run_bench.py"), "history", "record", "--store", str(store),
                            "--repo", str(repo), "--models", case.model, "--res", f"{case.height}x{case.width}",
                            "--threads", str(case.threads), "--instructions", "--max-time", "1", "--budget", "20",
                            "--machine", "steps-bench"], cwd=repo, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"history record at {c[:10]} failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
        walls.append(time.perf_counter() - t0)
    _git(repo, "checkout", "-q", "main")
    return walls


def _levels(values: list[float], cuts: list[int]) -> list[float]:
    """The median of each stretch of the series between the known step positions."""
    bounds = [0, *cuts, len(values)]
    return [statistics.median(values[a:b]) for a, b in zip(bounds, bounds[1:])]


def _series_lines(frame: pd.DataFrame, order: list[str], cuts: list[int],
                  found: list[steps.Step]) -> dict[str, list[float]]:
    """Print each series (relative to its first value), its achieved steps (the ratio of the medians of the stretches
    around each known step) and the detector's steps; return the achieved ratios per metric."""
    achieved = {}
    for (_, case_id, metric), s in steps.series(frame, order).items():
        v = [float(x) for x in s["value"]]
        lv = _levels(v, cuts)
        ratios = [b / a for a, b in zip(lv, lv[1:])]
        achieved[metric] = ratios
        print(f"{case_id} {metric}: series / first = " + " ".join(f"{x / v[0]:.3f}" for x in v))
        print("  achieved steps (median of each stretch): " + ", ".join(f"x{r:.4f} at {c}" for r, c in
                                                                        zip(ratios, cuts)))
        for st in (x for x in found if (x.case_id, x.metric) == (case_id, metric)):
            at = order.index(st.after)
            print(f"  flagged: x{st.ratio:.4f} at commit {at} ({'right' if at in cuts else 'FALSE'})"
                  + (f"; A/B {st.confirmed} x{st.ab_ratio:.4f}" if st.confirmed else ""))
    return achieved


def on_steps(n: int, max_time: float, bisect_metric: str) -> None:
    """Part 4: two real steps in a chain of `n` commits, recorded, detected, confirmed, an injected step rejected, and
    both slow commits named by bisect."""
    from tools.checker_ab import _sizes

    from bench.history import gitlog
    from bench.history.confirm import confirm
    from bench.history.store import Store, load

    case, cuts = STEP_CASE, [n // 3, 2 * n // 3]
    with tempfile.TemporaryDirectory(prefix="history-steps-") as tmp:
        work, repo, store = Path(tmp), Path(tmp) / "repo", Path(tmp) / "store"
        repo.mkdir()
        total = STEP_SIZES[0] + STEP_SIZES[1] + STEP_SIZES[0] * STEP_SIZES[1]
        ns = _sizes([case.model], (case.height, case.width), case.threads, [STEP_SIZES[0], total], work)
        commits = suite_chain(repo, n, {cuts[0]: ns[(case.model, STEP_SIZES[0])], cuts[1]: ns[(case.model, total)]})
        print(f"\nsteps chain: {n} commits of this suite; {case.model} {case.height}x{case.width}, {case.threads} "
              f"thread(s), sized +{STEP_SIZES[0]:.0%} at commit {cuts[0]}, +{STEP_SIZES[1]:.0%} more at {cuts[1]}")
        walls = _record_chain(repo, commits, store, case)
        print(f"history record (wall + instructions) at each commit: median {sorted(walls)[len(walls) // 2]:.0f} s, "
              f"max {max(walls):.0f} s")
        frame = load(Store(store))
        order = steps.order_commits(frame, gitlog.first_parent_chain(repo))
        found = steps.detect(frame, order)
        t0 = time.perf_counter()
        confirm(found, {s.case_id: case for s in found}, repo, out=work / "ab", max_time=max_time)
        print(f"{len(found)} flagged step(s), confirmed by A/B at the stored step's size in "
              f"{time.perf_counter() - t0:.0f} s")
        achieved = _series_lines(frame, order, cuts, found)
        inj = cuts[0] // 2  # commits inj - 1 and inj hold the same code
        injected = frame.copy()
        late = injected["commit"].isin(order[inj:])
        injected.loc[late, "value"] = injected.loc[late, "value"] * 1.06
        fake = [s for s in steps.detect(injected, order) if order.index(s.after) == inj]
        t0 = time.perf_counter()
        confirm(fake, {s.case_id: case for s in fake}, repo, out=work / "ab", max_time=max_time)
        print(f"injected x1.06 into the stored numbers from commit {inj} on (same code as {inj - 1}): flagged in "
              f"{', '.join(s.metric for s in fake) or 'no series'}; A/B "
              + ", ".join(f"{s.metric} {s.confirmed} x{s.ab_ratio:.4f}" for s in fake)
              + f" ({time.perf_counter() - t0:.0f} s)")
        sizes = STEP_SIZES if bisect_metric == "wall_ms" else [r - 1 for r in achieved["instructions"]]
        for good, want, size in ((commits[0], cuts[0], sizes[0]), (commits[cuts[0]], cuts[1], sizes[1])):
            t0 = time.perf_counter()
            res = bisect(repo, good, commits[-1], case, out=work / "ab", metric=bisect_metric,
                         threshold=max(0.002, size), max_time=max_time)
            named = commits.index(res.first_slow) if res.first_slow else None
            print(f"bisect {bisect_metric} from commit {commits.index(good)} at threshold {size:.2%}: "
                  f"{len(res.looks)} A/Bs, names commit {named} (the step is at {want}), "
                  f"{time.perf_counter() - t0:.0f} s; looks: "
                  + ", ".join(f"{commits.index(c)}:{v.verdict} {v.ratio:.3f}" for c, v in res.looks.items())
                  + (f"; {res.reason}" if res.reason else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("all", "detector", "git", "flat", "steps"), default="all")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--noise", default="0.002,0.005,0.01,0.02,0.05")
    ap.add_argument("--commits", type=int, default=8)
    ap.add_argument("--max-time", type=float, default=120.0, help="seconds per A/B")
    ap.add_argument("--flat-commits", type=int, default=30)
    ap.add_argument("--flat-models", default="block:msla,block:relu-linear")
    ap.add_argument("--flat-res", default="128")
    ap.add_argument("--flat-budget", type=float, default=20.0, help="history record's --budget (CI: 20)")
    ap.add_argument("--flat-instructions", action="store_true", help="history record --instructions at each commit")
    ap.add_argument("--step-commits", type=int, default=12)
    ap.add_argument("--bisect-metric", choices=("wall_ms", "instructions"), default="wall_ms")
    a = ap.parse_args(argv)
    if a.step_commits < 6:
        ap.error(f"--step-commits {a.step_commits}: accepted: 6 or more (two steps at n/3 and 2n/3, and two commits "
                 "of the same code before the first)")
    if a.part in ("all", "detector"):
        detector(a.trials, [float(v) for v in a.noise.split(",")])
    if a.part in ("all", "git"):
        on_git(a.commits, a.max_time)
    if a.part == "flat":
        flat(a.flat_commits, a.flat_models, a.flat_res, max_time=1.0, budget=a.flat_budget,
             instructions=a.flat_instructions)
    if a.part == "steps":
        on_steps(a.step_commits, a.max_time, a.bisect_metric)
    return 0


if __name__ == "__main__":
    sys.exit(main())
