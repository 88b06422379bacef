"""Compare two runs case by case: ratio of medians, its CI, a rank test and a verdict per case.

    python run_bench.py compare BASELINE CURRENT [--threshold 0.05] [--alpha 0.01] [--normalize] [--allow-noisy]
                                                 [--markdown FILE] [--json FILE]

Matching. Cases are matched on the identity columns `bench.cases.IDENTITY` (model, level, resolution, device
name, backend, precision, batch, threads, channels_last, folded); raw samples (samples.parquet) are matched to result
rows on `case_id`. A case present in one run only is `new` or `missing`; a case not `ok` in either run is `failed`.

Verdict rule (both runs ok). With r = median(current) / median(baseline), [lo, hi] the (1 - alpha) percentile
bootstrap CI of r (raw samples of both runs resampled independently; when both runs measured the case in two or
more processes (`--repeats`), the two-level bootstrap that resamples processes and then samples within them,
`basis` = "repeats", so the CI includes how far separate processes disagree) and p the two-sided Mann-Whitney U
p-value of the raw samples (with "repeats": Welch's t-test on the log medians of the processes, since the process
and not the sample is then the unit of replication; with 2-3 processes per side it only passes large changes).
"Beyond" means r > 1 + threshold (or r < 1 / (1 + threshold)), "significant" p < alpha; the first line that applies
gives the verdict (`bench.analysis.verdict.judge`):

    undecided  summary basis (below) with a CI that reaches less than 95% on either side (fewer than 6 samples: the
               interval is (min, max)), or without CIs (point ratio only)
    slower     r > 1 + threshold       and significant and lo > 1
    faster     r < 1 / (1 + threshold) and significant and hi < 1
    unchanged  the CI inside [1 / (1 + threshold), 1 + threshold]: established to be within the threshold
    undecided  the figures disagree, and the note names both:
               - significant but the CI includes 1 ("ratio 1.030 [0.990, 1.070]: p = 0.002 < alpha 0.01 but the
                 CI includes 1");
               - the whole CI beyond the threshold but not significant ("ratio 1.120 [1.060, 1.190] beyond 5% but
                 p = 0.03 >= alpha 0.01");
               - significant, but the CI reaching beyond the threshold (not established to be small)
    unchanged  otherwise: not significant and small; also r beyond the threshold but not significant (p >= alpha,
               the CI not wholly beyond the threshold), with the note "beyond threshold but not significant"

i.e. a change must be both large enough to matter (the point ratio beyond the minimum effect `threshold`) and
statistically established (rank test significant at `alpha` AND the CI of the ratio excluding 1); a significant
test whose CI includes 1, or a CI wholly beyond the threshold whose test is not significant, gives no verdict.
The minimum effect is what protects against run-to-run drift of a noisy machine, which no within-run test can see
(two runs with thousands of samples each differ "significantly" by 2%): set `threshold` above the A/A drift of the
machine (`tools/bench_checker.py` measures it). Without raw samples on either side (a results file alone), the
check falls back on the per-run 95% CIs of the medians: [lo, hi] = [cur_ci_low / base_ci_high, cur_ci_high /
base_ci_low] (a conservative interval), no p-value, and significance is "the interval excludes 1" (`basis` =
"summary"); it needs both CIs at their nominal level (`latency_ms_ci_level` >= 0.95; runs without that column: the
level of `n`).

Noise. The runner's machine-health guard flags rows measured while the machine was busy or drifting (`noisy`,
`noisy_reason`; runs without the column are not noisy). A case present in both runs and flagged on either side
gets the verdict `noisy` (not judged, the reason in the note) instead of slower/faster/unchanged/undecided or a
regression by status; the summary line counts them. `--allow-noisy` judges them anyway and says so in the note and
the summary line.

Regression: any `slower` case, or a case `ok` in the baseline whose current status is oom, timeout or error. A
case that became unsupported/skipped is reported as `failed` but is not a regression.

Exit status (`run_compare`, also `run --baseline`): 0 no regression and every shared case judged (undecided cases
included: the data establish nothing, they are no regression); 1 a regression; 2 bad input, or nothing compared
(the runs share no case: one line "nothing compared: the runs share no case (baseline X cases, current Y)"); 3 no
regression among the judged cases but some not judged because they were measured on a busy machine (rerun on a
quiet machine, or pass --allow-noisy). A regression wins over noise: 1 before 3.

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

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.analysis.meta import env_differences
from bench.analysis.verdict import Context, as_float, compare_case
from bench.cases import IDENTITY, case_key, case_label
from bench.results.store import Run, RunFormatError, load_run, samples_by_process
from bench.text import markdown_table, md_escape, text_table

VERDICTS = ("slower", "faster", "unchanged", "undecided", "noisy", "new", "missing", "failed")
N_BOOT = 2000
COLUMNS = (*IDENTITY, "case_id", "verdict", "regression", "ratio", "ci_low", "ci_high", "p_value", "base_median_ms",
           "cur_median_ms", "base_n", "cur_n", "base_status", "cur_status", "scale", "basis", "noisy", "note")
_ORDER = {"slower": 0, "failed": 1, "noisy": 2, "undecided": 3, "missing": 4, "new": 5, "faster": 6, "unchanged": 7}


# ---------------------------------------------------------------- matching


def _by_identity(run: Run) -> pd.DataFrame:
    """The run's rows indexed by case identity (`case_key` of the IDENTITY columns, not the stored case_id, which
    another version may have spelled differently); the last row of a case wins (a resumed case)."""
    df = run.results
    keys = [case_key(r) for r in df[list(IDENTITY)].to_dict("records")]
    return df.assign(_key=keys).drop_duplicates("_key", keep="last").set_index("_key")


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
    """device_name -> the run's median calibration matmul rate on it (for --normalize)."""
    out: dict[str, float] = {}
    if "device_peak_gmacs_per_s" not in df.columns:
        return out
    for dev, g in df.groupby(df["device_name"].astype("string").fillna("")):
        r = pd.to_numeric(g["device_peak_gmacs_per_s"], errors="coerce").dropna()
        r = r[r > 0]
        if len(r):
            out[str(dev)] = float(r.median())
    return out


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    """Regressions first, then by verdict (slower, failed, missing, new, faster, unchanged), then ratio down."""
    if not len(df):
        return df
    keyed = df.assign(_r=~df["regression"].astype(bool), _o=df["verdict"].map(_ORDER), _x=-df["ratio"].fillna(0))
    keyed = keyed.sort_values(["_r", "_o", "_x"], kind="stable")
    return keyed.drop(columns=["_r", "_o", "_x"]).reset_index(drop=True)


def compare_runs(baseline: Run, current: Run, threshold: float = 0.05, alpha: float = 0.01,
                 normalize: bool = False, n_boot: int | None = None, seed: int = 0,
                 allow_noisy: bool = False) -> pd.DataFrame:
    """One row per case identity (union of both runs); see the module doc for the verdict rule.

    Columns: COLUMNS (the IDENTITY columns, case_id, verdict, regression (bool), ratio (current / baseline median),
    ci_low/ci_high ((1 - alpha) CI of the ratio), p_value, base/cur_median_ms, base/cur_n, base/cur_status, scale
    (factor applied to the current run by --normalize, 1.0 otherwise), basis ("samples", "repeats", "summary" or
    ""), noisy (flagged on either side), note). Rows are sorted regressions first, then by ratio descending.
    `df.attrs` holds threshold, alpha, normalize, allow_noisy, env_mismatch (list of lines), baseline/current run
    ids and paths, and shared / baseline_cases / current_cases (case identities in both runs / in each).
    """
    if not threshold >= 0 or not 0 < alpha < 1:
        raise ValueError("threshold must be >= 0 and alpha in (0, 1)")
    b, c = _by_identity(baseline), _by_identity(current)
    rates = (_rates(baseline.results), _rates(current.results)) if normalize else None
    ctx = Context(threshold, alpha, N_BOOT if n_boot is None else n_boot, _samples_by_case(baseline),
                  _samples_by_case(current), rates, allow_noisy)
    keys = list(b.index) + [k for k in c.index if k not in b.index]
    rows = [compare_case(b.loc[k] if k in b.index else None, c.loc[k] if k in c.index else None, ctx, seed + i)
            for i, k in enumerate(keys)]
    df = _sorted(pd.DataFrame(rows, columns=list(COLUMNS)))
    df.attrs.update(threshold=threshold, alpha=alpha, normalize=normalize, allow_noisy=allow_noisy,
                    shared=int(sum(k in c.index for k in b.index)), baseline_cases=len(b), current_cases=len(c),
                    env_mismatch=env_differences(baseline.meta, current.meta),
                    baseline=baseline.run_id, current=current.run_id,
                    baseline_path=str(baseline.path), current_path=str(current.path))
    return df


def has_regression(df: pd.DataFrame) -> bool:
    return bool(len(df) and df["regression"].astype(bool).any())


def not_judged(df: pd.DataFrame) -> int:
    """Cases left unjudged because a side was measured on a busy machine (verdict `noisy`)."""
    return int((df["verdict"] == "noisy").sum()) if len(df) else 0


def judged_noisy(df: pd.DataFrame) -> int:
    """Cases flagged noisy that were judged anyway (--allow-noisy)."""
    return int((df["noisy"].astype(bool) & (df["verdict"] != "noisy")).sum()) if len(df) else 0


def exit_status(df: pd.DataFrame) -> int:
    """1 a regression; 3 none, but cases not judged for noise; 0 otherwise (see the module doc)."""
    return 1 if has_regression(df) else 3 if not_judged(df) else 0


def nothing_compared(df: pd.DataFrame) -> str:
    """The one line for two runs that share no case, "" when they share one."""
    a = df.attrs
    if a.get("shared", 1):
        return ""
    nb, nc = a.get("baseline_cases", 0), a.get("current_cases", 0)
    return (f"nothing compared: the runs share no case (baseline {nb} case{'' if nb == 1 else 's'}, "
            f"current {nc})")


# ---------------------------------------------------------------- rendering

def _ms(x: Any) -> str:
    x = as_float(x)
    if math.isnan(x):
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.2f}" if x < 100 else f"{x:.1f}" if x < 10000 else f"{x:.0f}"


def _ratio_str(row: pd.Series) -> str:
    r = as_float(row["ratio"])
    if math.isnan(r):
        return "-"
    lo, hi = as_float(row["ci_low"]), as_float(row["ci_high"])
    ci = "" if math.isnan(lo) or math.isnan(hi) else f" [{lo:.3f}, {hi:.3f}]"
    return f"{r:.3f}{ci}"


def _p_str(p: Any) -> str:
    p = as_float(p)
    return "-" if math.isnan(p) else (f"{p:.1e}" if p < 1e-3 else f"{p:.3f}")


def _table_rows(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    head = ["case", "device", "base ms", "cur ms", "ratio [CI]", "p", "verdict", "note"]
    rows = []
    for _, r in df.iterrows():
        verdict = r["verdict"].upper() if r["regression"] else r["verdict"]
        rows.append([case_label(r), str(r["device_name"]), _ms(r["base_median_ms"]), _ms(r["cur_median_ms"]),
                     _ratio_str(r), _p_str(r["p_value"]), verdict, str(r["note"] or "")])
    return head, rows


def summary_counts(df: pd.DataFrame) -> dict[str, int]:
    counts = df["verdict"].value_counts() if len(df) else pd.Series(dtype=int)
    return {v: int(counts.get(v, 0)) for v in VERDICTS}


def _summary_line(df: pd.DataFrame) -> str:
    c = summary_counts(df)
    parts = [f"{n} {v}" for v, n in c.items() if n]
    a = df.attrs
    skipped, judged = not_judged(df), judged_noisy(df)
    verdict = "REGRESSION" if has_regression(df) else "NOT JUDGED" if skipped else "no regression"
    line = (f"{verdict}: {', '.join(parts) or 'no cases'} (threshold {a.get('threshold', 0):.1%}, "
            f"alpha {a.get('alpha')}{', normalised by calibration' if a.get('normalize') else ''})")
    if skipped:
        line += (f"; {skipped} not judged: measured on a busy machine (noisy on either side; rerun on a quiet "
                 "machine or pass --allow-noisy)")
    if judged:
        line += f"; {judged} judged on noisy data (--allow-noisy)"
    return line


def format_table(df: pd.DataFrame) -> str:
    """Compact aligned terminal table with a header line, environment warnings and a summary line."""
    a = df.attrs
    lines = [f"compare {a.get('baseline')} -> {a.get('current')}"]
    lines += [f"  ! environment differs: {m}" for m in a.get("env_mismatch", [])]
    head, rows = _table_rows(df)
    if rows:
        lines.append(text_table(head, rows, right={2, 3}))
    lines.append(_summary_line(df))
    return "\n".join(lines)


_ICONS = {"slower": "🔴", "faster": "🟢", "unchanged": "⚪", "undecided": "🟡", "noisy": "🌫️", "new": "🆕",
          "missing": "❔", "failed": "⚠️"}


def to_markdown(df: pd.DataFrame) -> str:
    """Markdown for a CI step summary or a PR comment: summary, environment differences, then the table."""
    a = df.attrs
    out = [f"### Latency compare: {md_escape(a.get('baseline'))} → {md_escape(a.get('current'))}", "",
           f"**{md_escape(_summary_line(df))}**", ""]
    if a.get("env_mismatch"):
        out += ["Environment differs between the runs:", ""]
        out += [f"- {md_escape(m)}" for m in a["env_mismatch"]] + [""]
    head, rows = _table_rows(df)
    if rows:
        for r, verdict in zip(rows, df["verdict"]):
            r[6] = f"{_ICONS.get(verdict, '')} {r[6]}"
        out += [markdown_table(head, rows, align="llrr"), ""]
    out.append(md_escape(
        f"Verdict rule: slower/faster when the ratio of medians is beyond {a.get('threshold', 0):.1%}, the p-value "
        f"< {a.get('alpha')} and the {1 - a.get('alpha', 0.01):.0%} bootstrap CI of the ratio excludes 1; "
        "undecided when the test and the CI disagree, or when a CI from results alone reaches less than 95% "
        "(fewer than 6 samples); noisy: measured on a busy machine, not judged"
        f"{' (judged anyway: --allow-noisy)' if a.get('allow_noisy') else ''}. p: Mann-Whitney on the samples; "
        "for cases measured in several processes in both runs (--repeats), Welch's t on the log process medians, "
        "with the CI bootstrapped over processes then samples."))
    return "\n".join(out) + "\n"


def _jsonable(v: Any) -> Any:
    if v is None or v is pd.NA:
        return None
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(v) or math.isinf(v) else float(v)
    return v


def to_json_dict(df: pd.DataFrame) -> dict[str, Any]:
    a = df.attrs
    cases = [{k: _jsonable(v) for k, v in rec.items()} for rec in df.astype(object).to_dict("records")]
    return {"baseline": a.get("baseline"), "current": a.get("current"), "baseline_path": a.get("baseline_path"),
            "current_path": a.get("current_path"), "threshold": a.get("threshold"), "alpha": a.get("alpha"),
            "normalize": a.get("normalize"), "allow_noisy": bool(a.get("allow_noisy")),
            "regression": has_regression(df), "not_judged_noisy": not_judged(df),
            "judged_noisy": judged_noisy(df), "exit_status": exit_status(df), "summary": summary_counts(df),
            "env_mismatch": list(a.get("env_mismatch", [])), "cases": cases}


# ---------------------------------------------------------------- load, compare, print

def run_compare(baseline: str | Path, current: str | Path, *, threshold: float = 0.05, alpha: float = 0.01,
                normalize: bool = False, markdown: str | Path | None = None, json_path: str | Path | None = None,
                allow_noisy: bool = False, out=None, err=None) -> int:
    """Load, compare, print, write outputs. Returns `exit_status` (0 no regression, 1 regression, 3 cases not
    judged for noise) or 2 (bad input, or nothing compared: one line on `err`, no table)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        if not 0 <= threshold < float("inf"):
            raise ValueError(f"--threshold {threshold} is not accepted; accepted: a finite number >= 0")
        if not 0 < alpha < 1:
            raise ValueError(f"--alpha must be in (0, 1), not {alpha}")
        base, cur = load_run(baseline), load_run(current)
        df = compare_runs(base, cur, threshold=threshold, alpha=alpha, normalize=normalize, allow_noisy=allow_noisy)
        if line := nothing_compared(df):
            raise ValueError(line)
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
    return exit_status(df)
