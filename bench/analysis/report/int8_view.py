"""int8 (issue 22): per mixer and runtime, whether the mixer survives int8, read off the int8 rows.

A case survives when its output is within the int8 tolerance of eager fp32 on the same input (numerics_ok, set by
the child); the table shows its rel_err, the share of its MACs that ran on int8 data (int8_macs_share: the rest
stayed in float, excluded or not quantizable), what the backend kept in float (backend_info["int8"]["excluded"]),
the first block whose error passed the tolerance (first_bad_block) and its time against the same runtime in fp32.
Per mixer and runtime the verdict is computed from those rows: survives, does not survive, survives at k of n
cases, not checked (no numerics recorded) or not measured (no ok row).

What this is not is said wherever int8 rows exist (DISCLOSURE): accuracy (mIoU) is not measured.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from bench.analysis.report.data import Merged
from bench.analysis.report.formatting import fnum, missing, number, text
from bench.analysis.report.ran_where import backend_info
from bench.analysis.report.runtimes import BACKEND_ORDER
from bench.cases import setting_label
from bench.text import markdown_table, md_escape

INT8 = "int8"
DISCLOSURE = ("Accuracy (mIoU) is not measured: int8 is judged only by the numerical distance (rel_err) of its output "
              "to eager fp32 on the same synthetic input, with the models' random (untrained) weights and a "
              "calibration on seeded synthetic images. A mixer that survives here may still lose accuracy with "
              "trained weights on real images.")
# an int8 row is matched to the fp32 row of the same runtime on these (precision aside)
SAME_RUNTIME = ("model", "level", "height", "width", "device_key", "backend", "batch", "threads", "channels_last",
                "folded")
MD_MAX_ROWS = 60


def _rel(v: Any) -> str:
    x = number(v)
    return f"{x:.1e}" if math.isfinite(x) else ""


def _ok(v: Any) -> bool | None:
    return None if missing(v) else bool(v)


def case_word(r: dict) -> str:
    """One int8 case: 'survives', 'does not survive', 'not checked' (ok, numerics not recorded) or
    'not measured (<status>: <reason>)'."""
    if text(r.get("status")) != "ok":
        why = text(r.get("reason"))
        return f"not measured ({text(r.get('status'))}{': ' + why if why else ''})"
    ok = _ok(r.get("numerics_ok"))
    return "not checked" if ok is None else "survives" if ok else "does not survive"


def _excluded(info: dict) -> tuple[str, str]:
    """backend_info["int8"]["excluded"] as (short, full): the names alone ('aten.bmm x4' of 'aten.bmm x4: runs on
    float data ...'; a dict entry's name, the last step of a graph path) for the cell, and every entry in full with
    its why for the cell's title."""
    q = info.get("int8")
    items = q.get("excluded") if isinstance(q, dict) else None
    if not isinstance(items, list):
        return "", ""
    short, full = [], []
    for x in items:
        if isinstance(x, dict):
            name = text(x.get("name") or x.get("node") or x.get("op")) or str(x)
            why = text(x.get("why") or x.get("reason"))
            short.append(name.rstrip("/").rsplit("/", 1)[-1] or name)  # a graph path's last step: 'MatMul_1'
            full.append(f"{name} ({why})" if why else name)
        elif text(x):
            short.append(text(x).split(": ", 1)[0])
            full.append(text(x))
    return ", ".join(short), "; ".join(full)


def _fp32_times(m: Merged) -> dict[tuple, float]:
    ok = m.ok
    if not len(ok):
        return {}
    fp32 = ok[ok["precision"] == "fp32"]
    return {tuple(text(r.get(c)) for c in SAME_RUNTIME): number(r["latency_ms_median"])
            for r in fp32.to_dict("records")}


def records(m: Merged) -> list[dict[str, Any]]:
    """Every int8 row (any status) with its verdict word, numbers and the fp32 / int8 time of its runtime."""
    res = m.results
    if not len(res) or "precision" not in res.columns:
        return []
    rows = res[res["precision"] == INT8]
    if not len(rows):
        return []
    fp32 = _fp32_times(m)
    out = []
    for r in rows.sort_values(["variant", "backend", "model", "pixels"], kind="stable").to_dict("records"):
        t8 = number(r.get("latency_ms_median")) if text(r.get("status")) == "ok" else math.nan
        t32 = fp32.get(tuple(text(r.get(c)) for c in SAME_RUNTIME), math.nan)
        out.append(dict(row=r, variant=text(r.get("variant")), runtime=_runtime(r), word=case_word(r),
                        rel_err=number(r.get("rel_err")), int8_macs=number(r.get("int8_macs_share")),
                        first_bad=text(r.get("first_bad_block")), excluded=_excluded(backend_info(r)),
                        speedup=t32 / t8 if t8 > 0 else math.nan))
    return out


def runtime_rank(runtime: str) -> tuple:
    """eager, compile, ..., onnxruntime, openvino, executorch, tensorrt, then any other by name."""
    b = runtime.split("+")[0]
    return (BACKEND_ORDER.index(b) if b in BACKEND_ORDER else len(BACKEND_ORDER), runtime)


def _runtime(r: dict) -> str:
    """'openvino' (with its layout when not the default): the runtime int8 ran on."""
    return setting_label({k: r.get(k) for k in ("backend", "channels_last", "folded")}, device=None).split(" ")[0]


def verdicts(recs: list[dict]) -> list[dict[str, Any]]:
    """Per (mixer, runtime): the verdict over its int8 cases, the largest rel_err, the smallest int8 MAC share and
    the first bad blocks of its failing cases."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for x in recs:
        groups.setdefault((x["variant"], x["runtime"]), []).append(x)
    out = []
    for (variant, runtime), xs in sorted(groups.items(), key=lambda kv: (kv[0][0], runtime_rank(kv[0][1]))):
        checked = [x for x in xs if x["word"] in ("survives", "does not survive")]
        good = [x for x in checked if x["word"] == "survives"]
        if not checked:
            word = "not checked" if any(x["word"] == "not checked" for x in xs) else "not measured"
        elif len(good) == len(checked):
            word = "survives"
        elif not good:
            word = "does not survive"
        else:
            word = f"survives at {len(good)} of {len(checked)} cases"
        errs = [x["rel_err"] for x in checked if math.isfinite(x["rel_err"])]
        shares = [x["int8_macs"] for x in xs if math.isfinite(x["int8_macs"])]
        bad = list(dict.fromkeys(x["first_bad"] for x in checked if x["word"] != "survives" and x["first_bad"]))
        whys = list(dict.fromkeys(x["word"] for x in xs if x["word"].startswith("not measured")))
        out.append(dict(variant=variant, runtime=runtime, word=word, n=len(xs), n_checked=len(checked),
                        max_err=max(errs) if errs else math.nan, min_share=min(shares) if shares else math.nan,
                        first_bad=bad, whys=whys))
    return out


def _detail(v: dict) -> str:
    parts = []
    if math.isfinite(v["max_err"]):
        parts.append(f"rel_err up to {v['max_err']:.1e}")
    if math.isfinite(v["min_share"]):
        parts.append(f"int8 MACs {100 * v['min_share']:.0f}%" + (" or more" if v["n"] > 1 else ""))
    if v["first_bad"]:
        parts.append("first bad block: " + ", ".join(v["first_bad"]))
    if v["word"] == "not measured" and v["whys"]:  # the reason in short; the table has it whole
        whys = [w[len("not measured ("):-1] for w in v["whys"]]
        parts.append("; ".join(w if len(w) <= 90 else w[:89] + "…" for w in whys))
    return f" ({'; '.join(parts)})" if parts else ""


def _word_rank(word: str) -> int:
    return (0 if word == "survives" else 1 if word.startswith("survives at") else 2 if word == "does not survive"
            else 3)


def readings(vs: list[dict]) -> list[str]:
    """One sentence per mixer: on which runtimes it survives int8, on which it does not, where it was not checked
    or not measured, with the numbers behind each ('msla survives on onnxruntime (...) and openvino (...); does
    not survive on executorch (...)')."""
    by: dict[str, list[dict]] = {}
    for v in vs:
        by.setdefault(v["variant"], []).append(v)
    out = []
    for variant, xs in by.items():
        words: dict[str, list[str]] = {}
        for v in sorted(xs, key=lambda v: (_word_rank(v["word"]), runtime_rank(v["runtime"]))):
            words.setdefault(v["word"], []).append(f"{v['runtime']}{_detail(v)}")
        parts = [f"{w} on " + (rts[0] if len(rts) == 1 else ", ".join(rts[:-1]) + " and " + rts[-1])
                 for w, rts in words.items()]
        out.append(f"{variant or '(no mixer)'} {'; '.join(parts)}.")
    return out


def view(m: Merged) -> dict | None:
    """The int8 section's strings, or None without int8 rows (no section)."""
    recs = records(m)
    if not recs:
        return None
    vs = verdicts(recs)
    rows = [dict(model=text(x["row"].get("model")), variant=x["variant"], runtime=x["runtime"],
                 setting=text(x["row"].get("config")), resolution=text(x["row"].get("resolution")), word=x["word"],
                 rel_err=_rel(x["rel_err"]), int8_macs=f"{100 * x['int8_macs']:.0f}%" if math.isfinite(
                     x["int8_macs"]) else "", first_bad=x["first_bad"], excluded=x["excluded"][0],
                 excluded_full=x["excluded"][1],
                 speedup=f"{fnum(x['speedup'])}×" if math.isfinite(x["speedup"]) else "",
                 cls={"survives": "win", "does not survive": "loss"}.get(x["word"], "small muted")) for x in recs]
    summary = [dict(variant=v["variant"], runtime=v["runtime"], word=v["word"], detail=_detail(v).strip(" ()"),
                    cls="win" if v["word"] == "survives" else "loss" if v["word"] == "does not survive" else "tie")
               for v in vs]
    return dict(rows=rows, summary=summary, readings=readings(vs), disclosure=DISCLOSURE)


def markdown(v: dict | None) -> list[str]:
    if not v:
        return []
    e = md_escape
    lines = ["## int8: which mixer survives", "", f"**{e(v['disclosure'])}**", ""]
    lines += [f"- {e(s)}" for s in v["readings"]] + [""]
    rows = [[r["model"], r["setting"], r["resolution"], r["word"], r["rel_err"], r["int8_macs"], r["first_bad"],
             r["excluded"], r["speedup"]] for r in v["rows"]]
    lines += [markdown_table(["model", "setting", "resolution", "int8", "rel_err", "int8 MACs", "first bad block",
                              "kept in float", "fp32 / int8 time"], rows[:MD_MAX_ROWS], align="llllrr"), ""]
    if len(rows) > MD_MAX_ROWS:
        lines += [f"({len(rows) - MD_MAX_ROWS} more in the HTML report)", ""]
    return lines


def frame(m: Merged) -> pd.DataFrame:
    """The per (mixer, runtime) verdicts as a frame (tests and tools read it)."""
    return pd.DataFrame(verdicts(records(m)))
