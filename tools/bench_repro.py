"""Reproducibility of the main job's decisions: the same matrix run back to back, and once more beside a busy core.

    python -m tools.bench_repro [--res 512,1024,2048] [--designs interleaved,isolated] [--runs quiet,quiet,loaded]
                                [--out /tmp/repro] [--json repro.json]

Each design measures the matrix (`run_bench.py --devices cpu --res ...`, its own defaults otherwise) once per
entry of --runs, the designs alternating run by run so that both see the same machine; a `loaded` run has a
background process keep one core busy (`while True: pass`) for the whole run. Then, for every pair of runs of one
design, the figures the issue asks for:
- decisions resolved (each run): pairs against a group's fastest mixer that are decided (interleaved: faster or
  tied from the paired interval; isolated: the report's rule, CIs apart and no flagged side) and not noisy;
- opposite winners: pairs decided in both runs whose faster side differs;
- agreement: the share of one run's resolved ratios that fall inside the other run's interval of that pair;
- open at 2048: groups at 2048x2048 with a pair against the fastest still open;
- samples per evit-b1 case at 2048 (n), wall time, time spent waiting for a quiet machine.
A benchmark, not a test: quote its figures with nothing else running on the machine.
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(design: str, res: str, out: Path, loaded: bool, extra: list[str]) -> Path:
    """One run of the matrix; returns its folder."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if loaded else None
    before = set(out.glob("*")) if out.exists() else set()
    try:
        subprocess.run([sys.executable, "run_bench.py", "--devices", "cpu", "--res", res, "--design", design,
                        "--out", str(out), "--no-report", "-q", *extra], cwd=ROOT, check=False)
    finally:
        if hog is not None:
            hog.kill()
    (new,) = [p for p in out.glob("*") if p not in before and p.is_dir()]
    return new


def decisions(run_dir: Path) -> dict[tuple, dict]:
    """(group, fast variant, slow variant) -> {ratio, lo, hi, resolved, fast} for each pair against a group's
    fastest side (sides in sorted order in the key, so both runs name a pair alike)."""
    from bench.analysis.report.decision import compare_pair
    from bench.cases import group_key
    from bench.results.store import load_run

    run = load_run(run_dir)
    out: dict[tuple, dict] = {}
    if run.pairs is not None and len(run.pairs):
        for p in run.pairs.to_dict("records"):
            if not p["against_fastest"]:
                continue
            key = (p["group_id"], *sorted((p["fast"], p["slow"])))
            out[key] = dict(ratio=p["ratio"], lo=p["ci_low"], hi=p["ci_high"], fast=p["fast"],
                            resolved=p["verdict"] in ("faster", "tied") and not p["noisy"],
                            verdict=p["verdict"], n=int(p["n_processes"]))
        return out
    ok = run.results[run.results["status"] == "ok"]
    groups: dict[str, list[dict]] = {}
    for r in ok.to_dict("records"):
        groups.setdefault(group_key(r), []).append(r)
    for gid, rows in groups.items():
        rows.sort(key=lambda r: r["latency_ms_median"])
        for slow in rows[1:]:
            c = compare_pair(rows[0], slow)
            key = (gid, *sorted((c["faster"], c["slower"])))
            out[key] = dict(ratio=c["ratio"], lo=c["ci_low"], hi=c["ci_high"], fast=c["faster"],
                            resolved=c["verdict"] == "faster", verdict=c["verdict"], n=None)
    return out


def _oriented(d: dict, fast: str) -> tuple[float, float, float]:
    """(ratio, lo, hi) as slow/fast with `fast` the faster side."""
    if d["fast"] == fast:
        return d["ratio"], d["lo"], d["hi"]
    return 1 / d["ratio"], 1 / d["hi"], 1 / d["lo"]


def compare_runs(a: dict, b: dict) -> dict:
    both = [k for k in a if k in b]
    opposite = sum(1 for k in both if a[k]["resolved"] and b[k]["resolved"] and a[k]["verdict"] == "faster"
                   and b[k]["verdict"] == "faster" and a[k]["fast"] != b[k]["fast"])
    inside, total = 0, 0
    for x, y in ((a, b), (b, a)):
        for k in both:
            if x[k]["resolved"]:
                r, _, _ = _oriented(x[k], x[k]["fast"])
                _, lo, hi = _oriented(y[k], x[k]["fast"])
                total += 1
                inside += bool(lo <= r <= hi)
    return {"pairs": len(both), "opposite_winners": opposite, "inside": inside, "resolved_compared": total,
            "inside_share": round(inside / total, 3) if total else None}


def run_figures(run_dir: Path) -> dict:
    from bench.results.store import load_run

    run = load_run(run_dir)
    d = decisions(run_dir)
    res = run.results
    big = res[(res["height"] == 2048) & (res["model"].str.startswith("evit-b1"))]
    open2048 = {k[0] for k, v in d.items() if "2048x2048" in k[0] and not v["resolved"]}
    h = run.meta.get("health") or {}
    return {"run": run_dir.name, "wall_s": run.meta.get("wall_s"), "resolved": sum(v["resolved"] for v in d.values()),
            "decisions": len(d), "groups_open_2048": len(open2048),
            "n_evit_b1_2048": {m: int(n) for m, n in zip(big["model"], big["n"].fillna(0))},
            "waited_s": h.get("waited_s", 0.0), "noisy_rows": int(res["noisy"].fillna(False).astype(bool).sum())}


def readme_table(run_dir: Path) -> str:
    """The README's table of a run: per level and resolution each mixer's median, and for an interleaved group
    each mixer against the group's fastest as the paired ratio, its interval and verdict (isolated runs: the
    ratio of medians, no interval)."""
    from bench.results.store import load_run

    run = load_run(run_dir)
    ok = run.results[run.results["status"] == "ok"]
    mixers = ("msla", "relu-linear", "softmax", "large-kernel")
    pairs = run.pairs.to_dict("records") if run.pairs is not None else []
    lines = ["| level | image | fastest | " + " | ".join(f"{m}: ms (x fastest)" for m in mixers) + " |",
             "|---|---|---|" + "---|" * len(mixers)]
    for (level, h, w), g in ok.groupby(["level", "height", "width"], sort=False):
        med = {r["variant"]: r["latency_ms_median"] for r in g.to_dict("records")}
        gid = str(g["group_id"].iloc[0]) if g["group_id"].notna().any() else ""
        mine = [p for p in pairs if p["group_id"] == gid and p["against_fastest"]]
        best = mine[0]["fastest"] if mine else min(med, key=med.get)
        cells = []
        for m in mixers:
            if m not in med:
                cells.append("-")
                continue
            p = next((p for p in mine if m in (p["fast"], p["slow"]) and m != best), None)
            if m == best:
                cells.append(f"{med[m]:.1f}")
            elif p is not None:
                r, lo, hi = (p["ratio"], p["ci_low"], p["ci_high"]) if p["slow"] == m else \
                    (1 / p["ratio"], 1 / p["ci_high"], 1 / p["ci_low"])
                cells.append(f"{med[m]:.1f} ({r:.2f}x [{lo:.2f}, {hi:.2f}] {p['verdict']})")
            else:
                cells.append(f"{med[m]:.1f} ({med[m] / med[best]:.2f}x)")
        verdict = f" ({mine[0]['group_verdict']})" if mine else ""
        lines.append(f"| {level} | {h}x{w} | {best}{verdict} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    """The figures of a report (this tool's JSON) as two Markdown tables: per run, and per pair of runs."""
    lines = ["| design | run | wall | waited | decisions resolved | groups open at 2048 | n per evit-b1 case at 2048 "
             "| noisy rows |", "|---|---|---:|---:|---:|---:|---|---:|"]
    for d, rep in report["designs"].items():
        for i, r in enumerate(rep["runs"]):
            n = ", ".join(f"{m.split(':')[1]} {v}" for m, v in r["n_evit_b1_2048"].items())
            lines.append(f"| {d} | {i + 1} ({r['kind']}) | {float(r['wall_s'] or 0) / 60:.1f} min | "
                         f"{float(r['waited_s'] or 0):.0f} s | {r['resolved']} of {r['decisions']} | "
                         f"{r['groups_open_2048']} | {n} | {r['noisy_rows']} |")
    lines += ["", "| design | runs | opposite winners | resolved ratios inside the other run's interval |",
              "|---|---|---:|---:|"]
    for d, rep in report["designs"].items():
        for k, c in rep["pairs"].items():
            share = "-" if c["inside_share"] is None else f"{c['inside']} of {c['resolved_compared']} " \
                f"({100 * c['inside_share']:.0f}%)"
            lines.append(f"| {d} | {k} | {c['opposite_winners']} | {share} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench_repro", description=__doc__.split("\n\n")[0])
    ap.add_argument("--res", default="512,1024,2048")
    ap.add_argument("--designs", default="interleaved,isolated")
    ap.add_argument("--runs", default="quiet,quiet,loaded", help="comma list of quiet / loaded")
    ap.add_argument("--out", default="/tmp/densebench-repro")
    ap.add_argument("--json", default=None)
    ap.add_argument("--table", metavar="RUN_DIR", help="print the README table of a stored run and exit")
    ap.add_argument("--summarize", metavar="JSON", help="print the figures of an earlier --json as Markdown and exit")
    ap.add_argument("extra", nargs="*", help="more run_bench.py options (after --)")
    a = ap.parse_args(argv)
    if a.table:
        print(readme_table(Path(a.table)))
        return 0
    if a.summarize:
        from bench.bounded_read import load_json

        try:
            figures = load_json(a.summarize, what="a bench_repro --json file", error=ValueError)
        except (OSError, ValueError) as e:
            print(f"bench_repro: error: {str(e).splitlines()[0]}", file=sys.stderr)
            return 2
        print(markdown(figures))
        return 0
    out = Path(a.out)
    designs, kinds = a.designs.split(","), a.runs.split(",")
    runs: dict[str, list[tuple[str, Path]]] = {d: [] for d in designs}
    for i, kind in enumerate(kinds):
        for d in designs:
            t0 = time.perf_counter()
            folder = measure(d, a.res, out / d, kind == "loaded", a.extra)
            runs[d].append((kind, folder))
            print(f"{d} run {i + 1} ({kind}): {folder} in {time.perf_counter() - t0:.0f} s", flush=True)
    report: dict = {"res": a.res, "designs": {}}
    for d in designs:
        figs = [dict(kind=k, **run_figures(f)) for k, f in runs[d]]
        decs = [decisions(f) for _, f in runs[d]]
        pairs = {f"{i + 1}-{j + 1} ({runs[d][i][0]}/{runs[d][j][0]})": compare_runs(decs[i], decs[j])
                 for i, j in itertools.combinations(range(len(decs)), 2)}
        report["designs"][d] = {"runs": figs, "pairs": pairs}
    for d in designs:
        print(f"\n{d}, run 1:\n{readme_table(runs[d][0][1])}")
    text = json.dumps(report, indent=2, default=str)
    print(text)
    print(markdown(report))
    if a.json:
        Path(a.json).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
