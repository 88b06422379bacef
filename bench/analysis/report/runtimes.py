"""The runtime as a dimension of the decision (issue 22): which mixer is fastest on each runtime and precision, at
one model size, resolution, device and thread count, and a computed reading of whether the answer changes with the
runtime.

Each runtime's answer is the decision table's (decision.decisions: the same groups, the same verdicts): a pair
measured in the same processes (interleaved, pairs.parquet) is decided by its paired interval, any other pair by
the medians of separate processes and the interval their two CIs allow, and the row says which. Across runtimes
nothing is paired: the readings compare each runtime's own winner, and say when a change rests on a runtime whose
decision is not resolved. A winner measured on a fallback (ran_where) or failing the precision's tolerance
(numerics_ok) is flagged beside it.

The section exists only where a comparison group has two or more runtimes (a run with only eager fp32 shows none).
"""
from __future__ import annotations

import math
from typing import Any

from bench.analysis.report import decision, pairs as paired, ran_where
from bench.analysis.report.data import Merged
from bench.analysis.report.formatting import fnum, missing, number, text
from bench.analysis.report.formatting import ci_label
from bench.cases import setting_label
from bench.text import markdown_table, md_escape

# a comparison group: everything of a decision group but the runtime (backend, layout, precision)
KEY = ("level", "base", "resolution", "device_key", "batch", "threads")
BACKEND_ORDER = ("eager", "compile", "cudagraphs", "onnxruntime", "openvino", "executorch", "tensorrt")
PRECISION_ORDER = ("fp32", "tf32", "bf16", "fp16", "int8")
DESIGN = {"paired": "paired (same processes)", "two CIs": "medians of separate processes (two CIs)",
          "paired and two CIs": "paired where measured together, else medians of separate processes"}
MD_MAX_GROUPS = 40


def runtime_label(row: dict) -> str:
    """'onnxruntime int8', 'eager+cl fp32': the backend with its layout and the precision."""
    return setting_label({k: row.get(k) for k in ("backend", "precision", "channels_last", "folded")}, device=None)


def _order(row: dict) -> tuple:
    b, p = text(row.get("backend")), text(row.get("precision"))
    return (BACKEND_ORDER.index(b) if b in BACKEND_ORDER else len(BACKEND_ORDER), b,
            PRECISION_ORDER.index(p) if p in PRECISION_ORDER else len(PRECISION_ORDER), p, runtime_label(row))


def _key(row: dict) -> tuple[str, ...]:
    return tuple(text(row.get(k)) for k in KEY)


def _runner_up(d: dict) -> tuple[dict | None, dict | None]:
    """The second row (decide_group puts the fastest first, the rest by median) and its pair with the fastest."""
    if len(d["rows"]) < 2:
        return None, None
    second = d["rows"][1]
    names = {d["fastest"], text(second["variant"])}
    return second, next((p for p in d["pairs"] if {p["faster"], p["slower"]} == names), None)


def _sci(v: Any) -> str:
    x = number(v)
    return f"{x:.1e}" if math.isfinite(x) else "not recorded"


def _flags(row: dict) -> list[str]:
    """Why the winner's time may not be the runtime's: it measured a fallback, or its output failed the tolerance."""
    out = []
    if ran_where.flagged(row):
        out.append(ran_where.verdict(row))
    if not missing(row.get("numerics_ok")) and not bool(row.get("numerics_ok")):
        out.append(f"output beyond the {text(row.get('precision'))} tolerance (rel_err {_sci(row.get('rel_err'))})")
    return out


def _short_why(p: dict | None) -> str:
    """Why a pair decides nothing, in a few words (the full sentence is in the decision table)."""
    why = text((p or {}).get("why"))
    for key, words in (("busy machine", "busy machine"), ("fewer than", f"fewer than {decision.MIN_N} samples"),
                       ("no CI", "no CI"), ("CIs overlap", "CIs overlap")):
        if key in why:
            return words
    return (why if len(why) <= 80 else why[:79] + "…") or "interval too wide"


def _open_text(d: dict) -> str:
    """'msla: busy machine' for each mixer the fastest is not decided against."""
    out = []
    for other in d["open"]:
        p = next((p for p in d["pairs"] if {p["faster"], p["slower"]} == {d["fastest"], other}), None)
        out.append(f"{other}: {_short_why(p)}")
    return ", ".join(out)


def _entry(d: dict) -> dict[str, Any]:
    """One runtime's answer: the fastest, its median, the runner-up and their ratio with its interval, the
    verdict and how it was decided."""
    best = d["rows"][0]
    second, p = _runner_up(d)
    ratio = ci = pair_text = ""
    if p is not None:
        ratio = f"{fnum(p['ratio'])}×"
        ci = ci_label(p["ci_low"], p["ci_high"], p["ci_level"], n=p.get("n_min"), at_least=p["at_least"])
        pair_text = paired.sentence(p, ratio)
        if p["faster"] != d["fastest"]:  # the pair table's fastest has the higher median: say it as it is
            ratio += " (runner-up's median is lower)"
    return dict(row=best, runtime=runtime_label(best), fastest=d["fastest"], median=fnum(best["latency_ms_median"]),
                open=_open_text(d),
                runner_up=text(second["variant"]) if second is not None else "", ratio=ratio, ci=ci,
                pair_text=pair_text, verdict=d["verdict"], design=DESIGN.get(d["design"], d["design"]),
                n_mixers=len(d["rows"]), flags=_flags(best), cls=paired.VERDICT_CLASS.get(
                    {"resolved": "faster"}.get(d["verdict"], d["verdict"]), "tie"))


def _undecided(m: Merged, key: tuple[str, ...], decided: set[str]) -> list[str]:
    """Runtimes of the comparison group with rows but no decision: each mixer's status ('executorch int8: msla ok,
    softmax unsupported')."""
    res = m.results
    rows = [r for r in res.to_dict("records") if _key(r) == key and runtime_label(r) not in decided]
    by: dict[str, list[dict]] = {}
    for r in sorted(rows, key=_order):
        by.setdefault(runtime_label(r), []).append(r)
    return [f"{rt}: " + ", ".join(f"{text(r.get('variant')) or text(r.get('model'))} {text(r.get('status'))}"
                                 for r in rs) for rt, rs in by.items()]


def groups(m: Merged) -> list[dict[str, Any]]:
    """Per comparison group with two or more runtimes (among its rows, any status) and at least one decision: its
    runtimes' answers (ordered eager, compile, ..., fp32 before int8), the undecided runtimes and the readings."""
    by: dict[tuple[str, ...], list[dict]] = {}
    for d in decision.decisions(m):
        by.setdefault(_key(d["rows"][0]), []).append(d)
    if not by or not len(m.results):
        return []
    runtimes_of: dict[tuple[str, ...], set[str]] = {}
    for r in m.results.to_dict("records"):
        runtimes_of.setdefault(_key(r), set()).add(runtime_label(r))
    out = []
    for key, ds in by.items():
        if len(runtimes_of.get(key, ())) < 2:
            continue
        entries = [_entry(d) for d in sorted(ds, key=lambda d: _order(d["rows"][0]))]
        first = ds[0]
        out.append(dict(zip(KEY, key), pixels=first["pixels"], entries=entries,
                        undecided=_undecided(m, key, {e["runtime"] for e in entries}),
                        readings=readings(_where(first["rows"][0]), entries)))
    out.sort(key=lambda g: (g["level"] != "block", g["level"], g["base"], g["device_key"], g["threads"], g["batch"],
                            g["pixels"]))
    return out


def _where(row: dict) -> str:
    """'At 1024x1024 on 1 thread (evit-b1, <device>)': the comparison group in words."""
    t = row.get("threads")
    threads = "on the GPU" if text(t) in ("", "0") else f"on {int(t)} thread{'s' if int(t) != 1 else ''}"
    batch = f", batch {int(row['batch'])}" if not missing(row.get("batch")) and int(row["batch"]) != 1 else ""
    return f"At {text(row.get('resolution'))} {threads} ({text(row.get('base'))}, {text(row.get('device_key'))}{batch})"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def readings(where: str, entries: list[dict]) -> list[str]:
    """The computed sentences of one comparison group: the winner on every runtime, or which mixer wins where;
    where the winner changes with the precision on one backend; which answers are not resolved or flagged."""
    winners: dict[str, list[str]] = {}
    for e in entries:  # a flagged answer says so where it is named
        winners.setdefault(e["fastest"], []).append(e["runtime"] + (" (flagged)" if e["flags"] else ""))
    if len(entries) < 2:
        out = [f"{where}, only {entries[0]['runtime']} has two mixers measured ok: no comparison across runtimes."]
    elif len(winners) == 1:
        (mixer, rts), = winners.items()
        out = [f"{where}, {mixer} is fastest on every runtime measured ({_join(rts)})."]
    else:
        order = sorted(winners.items(), key=lambda kv: -len(kv[1]))
        head = f"{where}, {order[0][0]} is fastest on {_join(order[0][1])}"
        rest = [f"{mx} is fastest on {_join(rts)}" for mx, rts in order[1:]]
        out = [head + ", but " + ", and ".join(rest) + "."]
        out += _precision_changes(entries)
        resolved = {e["fastest"] for e in entries if e["verdict"] == "resolved"}
        if not resolved:
            out.append("None of these answers is decided (each is flagged or not resolved, below): the change with "
                       "the runtime is not established.")
        elif len(resolved) < 2:
            out.append(f"Among the decided answers {_join(sorted(resolved))} wins everywhere: the change rests on "
                       f"answers not decided (below).")
    open_ = [f"{e['runtime']} ({e['fastest']} {e['verdict']} against {e['open']})" for e in entries
             if e["verdict"] != "resolved"]
    if open_ and len(entries) > 1:
        out.append("Not decided: " + "; ".join(open_) + ".")
    out += [f"On {e['runtime']} the fastest ({e['fastest']}) is flagged: {'; '.join(e['flags'])}." for e in entries
            if e["flags"]]
    return out


def _precision_changes(entries: list[dict]) -> list[str]:
    """'On openvino the winner changes with the precision: msla in fp32, softmax in int8.'"""
    by: dict[str, list[dict]] = {}
    for e in entries:
        by.setdefault(runtime_label({**e["row"], "precision": ""}).split(" ")[0], []).append(e)
    out = []
    for backend, es in by.items():
        if len({e["fastest"] for e in es}) > 1:
            out.append(f"On {backend} the winner changes with the precision: "
                       + ", ".join(f"{e['fastest']} in {text(e['row'].get('precision'))}" for e in es) + ".")
    return out


def view(m: Merged) -> list[dict] | None:
    """The section's strings per comparison group, or None when no group has two runtimes (no section)."""
    gs = groups(m)
    if not gs:
        return None
    out = []
    for g in gs:
        rows = [dict(runtime=e["runtime"], fastest=e["fastest"], median=e["median"], runner_up=e["runner_up"],
                     ratio=e["ratio"], ci=e["ci"], verdict=e["verdict"], design=e["design"], cls=e["cls"],
                     n=e["n_mixers"], flags="; ".join(e["flags"]), pair_text=e["pair_text"]) for e in g["entries"]]
        t = text(g["threads"])
        threads = "GPU" if t in ("", "0") else f"{t} thread{'s' if t != '1' else ''}"
        out.append(dict(level=g["level"], base=g["base"], resolution=g["resolution"], device=g["device_key"],
                        threads=threads, batch=g["batch"], rows=rows, undecided=g["undecided"],
                        readings=g["readings"], int8=any(text(e["row"].get("precision")) == "int8"
                                                         for e in g["entries"])))
    return out


def markdown(v: list[dict] | None, disclosure: str) -> list[str]:
    """The section in the Markdown summary: per group its readings and a table of the runtimes' answers."""
    if not v:
        return []
    e = md_escape
    lines = ["## The fastest mixer per runtime and precision", ""]
    if any(g["int8"] for g in v):
        lines += [f"**{e(disclosure)}**", ""]
    for g in v[:MD_MAX_GROUPS]:
        lines += [f"### {e(g['base'])} · {e(g['resolution'])} · {e(g['device'])} · {e(g['threads'])}", ""]
        lines += [f"- {e(s)}" for s in g["readings"]] + [""]
        rows = [[r["runtime"], r["fastest"], r["median"], r["runner_up"], f"{r['ratio']} {r['ci']}".strip(),
                 r["verdict"], r["design"], r["flags"]] for r in g["rows"]]
        lines += [markdown_table(["runtime", "fastest", "median ms", "runner-up", "runner-up / fastest",
                                  "verdict", "decided by", "flags"], rows, align="llrlr"), ""]
        if g["undecided"]:
            lines += ["No decision: " + "; ".join(e(x) for x in g["undecided"]), ""]
    if len(v) > MD_MAX_GROUPS:
        lines += [f"({len(v) - MD_MAX_GROUPS} more in the HTML report)", ""]
    return lines
