"""Compare two runs case by case: ratio of medians, its CI, a rank test and a verdict per case.

    python run_bench.py compare BASELINE CURRENT [--threshold 0.05] [--alpha 0.01] [--normalize]
                                                 [--markdown FILE] [--json FILE]

Matching. Cases are matched on the identity columns `bench.cases.IDENTITY` (model, level, resolution, device
name, backend, precision, batch, threads, channels_last, folded); raw samples (samples.parquet) are matched to result
rows on `case_id`. A case present in one run only is `new` or `missing`; a case not `ok` in either run is `failed`.

Verdict rule (both runs ok). With r = median(current) / median(baseline), [lo, hi] the (1 - alpha) percentile
bootstrap CI of r (raw samples of both runs resampled independently; when both runs measured the case in two or
more processes (`--repeats`), the two-level bootstrap that resamples processes and then samples within them,
`basis` = "repeats", so the CI includes how far separate processes disagree) and p the two-sided Mann-Whitney U
p-value of the raw samples (with "repeats": Welch's t-test on the log medians of the processes, since the process
and not the sample is then the unit of replication; with 2-3 processes per side it only passes large changes):

    slower     if r > 1 + threshold       and p < alpha and lo > 1
    faster     if r < 1 / (1 + threshold) and p < alpha and hi < 1
    unchanged  otherwise

i.e. a change must be both large enough to matter (the point ratio beyond the minimum effect `threshold`) and
statistically established (rank test significant at `alpha` AND the CI of the ratio excluding 1). The minimum
effect is what protects against run-to-run drift of a noisy machine, which no within-run test can see (two runs
with thousands of samples each differ "significantly" by 2%): set `threshold` above the A/A drift of the machine
(`bench/bench_checker.py` measures it). Without raw samples on either side (a results file alone), the check falls
back on the per-run 95% CIs of the medians: [lo, hi] = [cur_ci_low / base_ci_high, cur_ci_high / base_ci_low] (a
conservative interval), no p-value, and significance is "the interval excludes 1" (`basis` = "summary").

Regression (exit status 1): any `slower` case, or a case `ok` in the baseline whose current status is oom,
timeout or error. A case that became unsupported/skipped is reported as `failed` but is not a regression.

Environment. meta.json of both runs is compared (CPU/GPU model, torch/CUDA/driver versions, threads, ...) and every
difference is reported above the table and in the Markdown/JSON outputs; cases are still compared.

--normalize. Each run's rows carry the calibration kernel's matmul rate of their device
(`device_peak_gmacs_per_s`). The current run's latencies (samples and medians) are multiplied by
rate_current / rate_baseline for the same device_name, i.e. expressed in baseline-machine time. This corrects a
uniform speed difference of the machine between the two runs: clock/turbo/power settings, thermal state, a
slightly different SKU or VM of the same family. It cannot correct what the compute-bound calibration matmul does
not see: memory-bandwidth or cache differences (memory-bound ops such as attention softmax, layer norms and
depth-wise convs scale differently from matmuls), a different microarchitecture or library version, contention
that hit the case but not the calibration (or the reverse); and it adds the calibration's own noise to the
comparison. Use it for baselines recorded on a similar machine, not across hardware.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.cases import IDENTITY
from bench.stats import mann_whitney_p, process_welch_p, ratio_ci
from bench.results.store import Run, RunFormatError, load_run, samples_by_process

VERDICTS = ("slower", "faster", "unchanged", "new", "missing", "failed")
REGRESSION_STATUSES = ("oom", "timeout", "error")
N_BOOT = 2000

# meta keys that differ between any two runs and say nothing about the environment: a flattened key is volatile
# when one of its dotted components is in _VOLATILE_KEYS or one of that component's "_"-separated words is in
# _VOLATILE_WORDS ("ram_available_gb", "started_at", "gpus.0.memory_free_mb"; not "packages.onnxruntime")
_VOLATILE_WORDS = {"time", "date", "started", "finished", "ended", "created", "updated", "duration", "wall", "pid",
                   "uptime", "load", "free", "available", "avail", "temp", "temperature", "util", "utilization",
                   "argv", "args", "command", "cmdline", "git", "cwd", "status", "calibration", "overhead", "seed",
                   "resume", "resumed", "cases", "done"}
_VOLATILE_KEYS = {"schema_version", "run_id", "sm_clock_mhz", "pci_bus_id", "nvml_index", "out_dir", "path",
                  "power_w", "worker_server_start_s", "isolation"}


def _volatile(key: str) -> bool:
    for comp in key.lower().split("."):
        if comp in _VOLATILE_KEYS or any(w in _VOLATILE_WORDS for w in comp.split("_")):
            return True
    return False


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(d, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in d):
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = d
    return out


def env_differences(base_meta: dict, cur_meta: dict) -> list[str]:
    """Differences between the environments recorded in two meta.json files, as 'key: base -> current' lines.

    Compares `meta["env"]` when present (else the whole meta), flattened, without volatile keys (times, ids, load,
    free memory, temperatures, command lines, git state). A key present on one side only is reported too.
    """
    b = _flatten(base_meta.get("env", base_meta) if isinstance(base_meta.get("env"), dict) else base_meta)
    c = _flatten(cur_meta.get("env", cur_meta) if isinstance(cur_meta.get("env"), dict) else cur_meta)
    out = []
    for k in sorted(set(b) | set(c)):
        if _volatile(k):
            continue
        bv, cv = b.get(k, "<absent>"), c.get(k, "<absent>")
        if bv != cv:
            out.append(f"{k}: {bv} -> {cv}")
    return out


def _key(df: pd.DataFrame) -> pd.Series:
    parts = [df[c].astype("string").fillna("") for c in IDENTITY]
    key = parts[0]
    for p in parts[1:]:
        key = key + "|" + p
    return key


def _samples_by_case(run: Run) -> dict[str, list[np.ndarray]]:
    """case_id -> the case's samples, one array per process (one array for runs without --repeats)."""
    s = run.samples
    if s is None or len(s) == 0:
        return {}
    missing = [c for c in ("case_id", "latency_ms") if c not in s.columns]
    if missing:
        raise RunFormatError(f"{run.path}/samples.parquet: missing columns {', '.join(missing)}")
    return {k[0]: v for k, v in samples_by_process(s, ["case_id"]).items()}


def _rates(df: pd.DataFrame) -> dict[str, float]:
    out = {}
    if "device_peak_gmacs_per_s" not in df.columns:
        return out
    for dev, g in df.groupby(df["device_name"].astype("string").fillna("")):
        r = pd.to_numeric(g["device_peak_gmacs_per_s"], errors="coerce").dropna()
        r = r[r > 0]
        if len(r):
            out[str(dev)] = float(r.median())
    return out


def _f(x) -> float:
    try:
        return float(x) if x is not None and not pd.isna(x) else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def _is_true(v) -> bool:
    return v is not None and not pd.isna(v) and bool(v)


def _is_false(v) -> bool:
    return v is not None and not pd.isna(v) and not bool(v)


def _judge(r: float, lo: float, hi: float, p: float, threshold: float, alpha: float) -> str:
    sig_p = True if math.isnan(p) else p < alpha  # no p-value (summary basis): the CI alone decides
    if r > 1 + threshold and sig_p and lo > 1:
        return "slower"
    if r < 1 / (1 + threshold) and sig_p and hi < 1:
        return "faster"
    return "unchanged"


def compare_runs(baseline: Run, current: Run, threshold: float = 0.05, alpha: float = 0.01,
                 normalize: bool = False, n_boot: int | None = None, seed: int = 0) -> pd.DataFrame:
    """One row per case identity (union of both runs); see the module doc for the verdict rule.

    Columns: the IDENTITY columns, case_id, verdict, regression (bool), ratio (current / baseline median),
    ci_low/ci_high ((1 - alpha) CI of the ratio), p_value, base_median_ms, cur_median_ms, base_n, cur_n,
    base_status, cur_status, scale (factor applied to the current run by --normalize, 1.0 otherwise),
    basis ("samples", "repeats", "summary" or ""), note. Rows are sorted regressions first, then by ratio descending.
    `df.attrs` holds threshold, alpha, normalize, env_mismatch (list of lines), baseline/current run ids and paths.
    """
    if not threshold >= 0 or not 0 < alpha < 1:
        raise ValueError("threshold must be >= 0 and alpha in (0, 1)")
    b = baseline.results.copy()
    c = current.results.copy()
    b["_key"], c["_key"] = _key(b), _key(c)
    b = b.drop_duplicates("_key", keep="last").set_index("_key")
    c = c.drop_duplicates("_key", keep="last").set_index("_key")
    bs, cs = _samples_by_case(baseline), _samples_by_case(current)
    brates, crates = _rates(baseline.results), _rates(current.results)
    conf = 1 - alpha
    n_boot = N_BOOT if n_boot is None else n_boot
    rows = []
    keys = list(b.index) + [k for k in c.index if k not in b.index]
    for i, k in enumerate(keys):
        br = b.loc[k] if k in b.index else None
        cr = c.loc[k] if k in c.index else None
        src = cr if cr is not None else br
        row: dict[str, Any] = {col: src[col] for col in IDENTITY}
        row["case_id"] = src["case_id"]
        bstat = None if br is None else str(br["status"])
        cstat = None if cr is None else str(cr["status"])
        row.update(verdict="unchanged", regression=False, ratio=np.nan, ci_low=np.nan, ci_high=np.nan,
                   p_value=np.nan, base_median_ms=np.nan if br is None else _f(br["latency_ms_median"]),
                   cur_median_ms=np.nan if cr is None else _f(cr["latency_ms_median"]),
                   base_n=pd.NA if br is None else br["n"], cur_n=pd.NA if cr is None else cr["n"],
                   base_status=bstat, cur_status=cstat, scale=1.0, basis="", note="")
        if br is None:
            row.update(verdict="new", note="not in baseline")
        elif cr is None:
            row.update(verdict="missing", note="not in current run")
        elif bstat != "ok" or cstat != "ok":
            row["verdict"] = "failed"
            row["regression"] = bstat == "ok" and cstat in REGRESSION_STATUSES
            side = []
            if bstat != "ok":
                side.append(f"baseline {bstat}")
            if cstat != "ok":
                reason = "" if pd.isna(cr.get("reason", pd.NA)) else str(cr["reason"])
                side.append(f"current {cstat}" + (f" ({reason.splitlines()[0][:80]})" if reason else ""))
            row["note"] = "; ".join(side)
        else:
            notes = []
            scale = 1.0
            if normalize:
                dev = str(src["device_name"]) if not pd.isna(src["device_name"]) else ""
                if dev in brates and dev in crates:
                    scale = crates[dev] / brates[dev]
                else:
                    notes.append("no calibration rate: not normalised")
            row["scale"] = scale
            ga = bs.get(str(br["case_id"])) or []
            gx = [g * scale for g in cs.get(str(cr["case_id"])) or []]
            a = np.concatenate(ga) if ga else None
            x = np.concatenate(gx) if gx else None
            bmed, cmed = _f(br["latency_ms_median"]), _f(cr["latency_ms_median"]) * scale
            if a is not None and x is not None and len(a) >= 2 and len(x) >= 2:
                # processes in both runs: resample both levels, test on the process medians
                r, lo, hi, two_level = ratio_ci(ga, gx, np.median, conf=conf, n_boot=n_boot, seed=seed + i)
                p = process_welch_p(ga, gx) if two_level else mann_whitney_p(a, x)
                row["basis"] = "repeats" if two_level else "samples"
                row.update(base_median_ms=float(np.median(a)), cur_median_ms=float(np.median(x)))
            else:
                r = cmed / bmed if bmed > 0 else np.nan
                blo, bhi = _f(br["latency_ms_ci_low"]), _f(br["latency_ms_ci_high"])
                clo, chi = _f(cr["latency_ms_ci_low"]) * scale, _f(cr["latency_ms_ci_high"]) * scale
                lo = clo / bhi if bhi > 0 else np.nan
                hi = chi / blo if blo > 0 else np.nan
                if math.isnan(lo) or math.isnan(hi):
                    lo, hi = r, r
                    notes.append("no samples or CI: point ratio only")
                else:
                    notes.append("no raw samples: 95% CIs of medians")
                p = np.nan
                row.update(basis="summary", cur_median_ms=cmed)
            if math.isnan(r):
                row["verdict"] = "failed"
                notes.append("no latency")
            else:
                v = _judge(r, lo, hi, p, threshold, alpha)
                row["verdict"] = v
                row["regression"] = v == "slower"
                if v == "unchanged" and abs(math.log(r)) > math.log1p(threshold):
                    notes.append("beyond threshold but not significant")
            for side, rr in (("baseline", br), ("current", cr)):
                if _is_false(rr.get("converged")):
                    notes.append(f"{side} not converged")
            row.update(ratio=r, ci_low=lo, ci_high=hi, p_value=p, note="; ".join(notes))
        rows.append(row)

    cols = list(IDENTITY) + ["case_id", "verdict", "regression", "ratio", "ci_low", "ci_high", "p_value",
                             "base_median_ms", "cur_median_ms", "base_n", "cur_n", "base_status", "cur_status",
                             "scale", "basis", "note"]
    df = pd.DataFrame(rows, columns=cols)
    if len(df):
        order = {"slower": 0, "failed": 1, "missing": 2, "new": 3, "faster": 4, "unchanged": 5}
        df = (df.assign(_r=~df["regression"].astype(bool), _o=df["verdict"].map(order), _x=-df["ratio"].fillna(0))
              .sort_values(["_r", "_o", "_x"], kind="stable").drop(columns=["_r", "_o", "_x"])
              .reset_index(drop=True))
    df.attrs.update(threshold=threshold, alpha=alpha, normalize=normalize,
                    env_mismatch=env_differences(baseline.meta, current.meta),
                    baseline=baseline.run_id, current=current.run_id,
                    baseline_path=str(baseline.path), current_path=str(current.path))
    return df


def has_regression(df: pd.DataFrame) -> bool:
    return bool(len(df) and df["regression"].astype(bool).any())


# ---------------------------------------------------------------- rendering

def _label(row) -> str:
    fl = ("+cl" if _is_true(row["channels_last"]) else "") + ("+fold" if _is_true(row["folded"]) else "")
    h = "?" if pd.isna(row["height"]) else int(row["height"])
    w = "?" if pd.isna(row["width"]) else int(row["width"])
    b = "" if pd.isna(row["batch"]) else f" b{int(row['batch'])}"
    t = "" if pd.isna(row["threads"]) or int(row["threads"]) == 0 else f" t{int(row['threads'])}"
    return f"{row['model']} {h}x{w} {row['backend']}{fl} {row['precision']}{b}{t}"


def _ms(x) -> str:
    x = _f(x)
    if math.isnan(x):
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.2f}" if x < 100 else f"{x:.1f}" if x < 10000 else f"{x:.0f}"


def _ratio_str(row) -> str:
    r = _f(row["ratio"])
    if math.isnan(r):
        return "-"
    lo, hi = _f(row["ci_low"]), _f(row["ci_high"])
    ci = "" if math.isnan(lo) or math.isnan(hi) else f" [{lo:.3f}, {hi:.3f}]"
    return f"{r:.3f}{ci}"


def _p_str(p) -> str:
    p = _f(p)
    return "-" if math.isnan(p) else (f"{p:.1e}" if p < 1e-3 else f"{p:.3f}")


def _table_rows(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    head = ["case", "device", "base ms", "cur ms", "ratio [CI]", "p", "verdict", "note"]
    rows = []
    for _, r in df.iterrows():
        verdict = r["verdict"].upper() if r["regression"] else r["verdict"]
        rows.append([_label(r), str(r["device_name"]), _ms(r["base_median_ms"]), _ms(r["cur_median_ms"]),
                     _ratio_str(r), _p_str(r["p_value"]), verdict, str(r["note"] or "")])
    return head, rows


def summary_counts(df: pd.DataFrame) -> dict[str, int]:
    counts = df["verdict"].value_counts() if len(df) else pd.Series(dtype=int)
    return {v: int(counts.get(v, 0)) for v in VERDICTS}


def _summary_line(df: pd.DataFrame) -> str:
    c = summary_counts(df)
    parts = [f"{n} {v}" for v, n in c.items() if n]
    a = df.attrs
    verdict = "REGRESSION" if has_regression(df) else "no regression"
    return (f"{verdict}: {', '.join(parts) or 'no cases'} (threshold {a.get('threshold', 0):.1%}, "
            f"alpha {a.get('alpha')}{', normalised by calibration' if a.get('normalize') else ''})")


def format_table(df: pd.DataFrame) -> str:
    """Compact aligned terminal table with a header line, environment warnings and a summary line."""
    a = df.attrs
    lines = [f"compare {a.get('baseline')} -> {a.get('current')}"]
    for m in a.get("env_mismatch", []):
        lines.append(f"  ! environment differs: {m}")
    head, rows = _table_rows(df)
    if rows:
        widths = [max(len(head[j]), *(len(r[j]) for r in rows)) for j in range(len(head))]
        right = {2, 3}
        fmt = lambda cells: "  ".join(c.rjust(widths[j]) if j in right else c.ljust(widths[j])
                                      for j, c in enumerate(cells)).rstrip()
        lines.append(fmt(head))
        lines.append("  ".join("-" * w for w in widths))
        lines.extend(fmt(r) for r in rows)
    lines.append(_summary_line(df))
    return "\n".join(lines)


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def to_markdown(df: pd.DataFrame) -> str:
    """Markdown for a CI step summary or a PR comment: summary, environment differences, then the table."""
    a = df.attrs
    icon = {"slower": "🔴", "faster": "🟢", "unchanged": "⚪", "new": "🆕", "missing": "❔", "failed": "⚠️"}
    out = [f"### Latency compare: `{a.get('baseline')}` → `{a.get('current')}`", "",
           f"**{_summary_line(df)}**", ""]
    if a.get("env_mismatch"):
        out += ["Environment differs between the runs:", ""]
        out += [f"- `{_md_cell(m)}`" for m in a["env_mismatch"]] + [""]
    head, rows = _table_rows(df)
    if rows:
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join("---:" if j in (2, 3) else "---" for j in range(len(head))) + "|")
        for r, (_, src) in zip(rows, df.iterrows()):
            r[6] = f"{icon.get(src['verdict'], '')} {r[6]}"
            out.append("| " + " | ".join(_md_cell(c) for c in r) + " |")
        out.append("")
    out.append(f"Verdict rule: slower/faster when the ratio of medians is beyond {a.get('threshold', 0):.1%}, "
               f"the p-value < {a.get('alpha')} and the {1 - a.get('alpha', 0.01):.0%} bootstrap CI "
               "of the ratio excludes 1. p: Mann-Whitney on the samples; for cases measured in several processes "
               "in both runs (--repeats), Welch's t on the log process medians, with the CI bootstrapped over "
               "processes then samples.")
    return "\n".join(out) + "\n"


def _jsonable(v):
    if v is None or v is pd.NA:
        return None
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(v) or math.isinf(v) else float(v)
    return v


def to_json_dict(df: pd.DataFrame) -> dict:
    a = df.attrs
    cases = [{k: _jsonable(v) for k, v in rec.items()} for rec in df.astype(object).to_dict("records")]
    return {"baseline": a.get("baseline"), "current": a.get("current"), "baseline_path": a.get("baseline_path"),
            "current_path": a.get("current_path"), "threshold": a.get("threshold"), "alpha": a.get("alpha"),
            "normalize": a.get("normalize"), "regression": has_regression(df), "summary": summary_counts(df),
            "env_mismatch": list(a.get("env_mismatch", [])), "cases": cases}


# ---------------------------------------------------------------- CLI glue

def add_compare_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("baseline", metavar="BASELINE", help="baseline run folder or results file")
    parser.add_argument("current", metavar="CURRENT", help="current run folder or results file")
    add_compare_options(parser)
    return parser


def add_compare_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options without the positionals (for `run --baseline BASELINE`, which compares after running)."""
    parser.add_argument("--threshold", type=float, default=0.05,
                        help="minimum effect: flag a case only if the ratio of medians is beyond 1 +- this "
                             "(default 0.05 = 5%%)")
    parser.add_argument("--alpha", type=float, default=0.01,
                        help="significance level of the Mann-Whitney test and of the (1-alpha) ratio CI "
                             "(default 0.01)")
    parser.add_argument("--normalize", action="store_true",
                        help="scale the current run by the ratio of the two runs' calibration rates per device "
                             "(corrects uniform machine speed drift only)")
    parser.add_argument("--markdown", metavar="FILE", help="also write a Markdown summary (CI step summary / PR)")
    parser.add_argument("--json", metavar="FILE", help="also write the comparison as JSON")
    return parser


def run_compare(baseline: str | Path, current: str | Path, *, threshold: float = 0.05, alpha: float = 0.01,
                normalize: bool = False, markdown: str | Path | None = None, json_path: str | Path | None = None,
                out=None, err=None) -> int:
    """Load, compare, print, write outputs. Returns 0 (no regression), 1 (regression) or 2 (bad input)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        if not threshold >= 0:
            raise ValueError(f"--threshold must be >= 0, not {threshold}")
        if not 0 < alpha < 1:
            raise ValueError(f"--alpha must be in (0, 1), not {alpha}")
        base, cur = load_run(baseline), load_run(current)
        df = compare_runs(base, cur, threshold=threshold, alpha=alpha, normalize=normalize)
    except (RunFormatError, ValueError, OSError, KeyError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"compare: error: {msg}", file=err)
        return 2
    print(format_table(df), file=out)
    try:
        if markdown:
            Path(markdown).write_text(to_markdown(df))
        if json_path:
            Path(json_path).write_text(json.dumps(to_json_dict(df), indent=2))
    except OSError as e:
        print(f"compare: error: cannot write output: {str(e).splitlines()[0]}", file=err)
        return 2
    return 1 if has_regression(df) else 0


def cmd_compare(args: argparse.Namespace) -> int:
    return run_compare(args.baseline, args.current, threshold=args.threshold, alpha=args.alpha,
                       normalize=args.normalize, markdown=args.markdown, json_path=args.json)


def main(argv: list[str] | None = None) -> int:
    p = add_compare_arguments(argparse.ArgumentParser(prog="python -m bench.analysis.compare", description=__doc__.split("\n")[0]))
    return cmd_compare(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
