"""Synthetic run folders for the compare, gates and report tests (real files written through bench.results.store).

compare and gates build their rows with `case`; the report's fixtures (`cpu_run`, `gpu_run`, `crafted_run`) are
whole runs of a synthetic latency model, shared by the report tests and the browser test."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bench.cases import case_key
from bench.stats import summarize
from bench.results.store import (Run, profile_frame, results_frame, samples_frame, write_meta, write_profile,
                                 write_results, write_samples)

CPU = "Test CPU @ 2.0GHz"
ENV = {"cpu_model": CPU, "torch_version": "2.14.1", "threads": 1, "python": "3.11.7"}


def case(model: str, h: int = 512, w: int = 512, samples=None, status: str = "ok", rate: float | None = 100.0,
         groups=None, **extra) -> dict:
    """A result row (and its samples). `groups`: one sample array per process instead of `samples` (--repeats)."""
    if groups is not None:
        samples = np.concatenate(groups)
        extra.setdefault("repeats", len(groups))
    row = dict(model=model, level="block" if model.startswith("block:") else "model", height=h, width=w,
               device="cpu", device_name=CPU, backend="eager", precision="fp32", batch=1, threads=1,
               channels_last=False, folded=False, status=status, reason="" if status == "ok" else "boom",
               device_peak_gmacs_per_s=rate, converged=True)
    row.update(extra)
    row["case_id"] = case_key(row)
    if status == "ok" and samples is not None:
        s = summarize(samples)
        row.update(n=s["n"], **{f"latency_ms_{k}": s[k] for k in s if k != "n"})
    row["_samples"] = samples if groups is None else [np.asarray(g) for g in groups]
    return row


def build_run(name: str, cases: list[dict], env: dict | None = None) -> Run:
    """The same run in memory (no files), for loops where disk I/O would dominate."""
    rows, srows = _rows(name, cases, True)
    return Run(path=Path(name), results=results_frame(rows), samples=samples_frame(srows),
               meta={"run_id": name, "env": dict(ENV if env is None else env)})


def _rows(name, cases, with_samples):
    rows, srows = [], []
    for c in cases:
        c = dict(c)
        s = c.pop("_samples")
        c["run_id"] = name
        rows.append(c)
        if with_samples and s is not None and c["status"] == "ok":
            groups = s if isinstance(s, list) else [s]
            srows += [dict(run_id=name, case_id=c["case_id"], repeat=r, iter=i, latency_ms=float(v))
                      for r, g in enumerate(groups) for i, v in enumerate(g)]
    return rows, srows


def make_run(root: Path, name: str, cases: list[dict], env: dict | None = None, with_samples: bool = True) -> Path:
    d = Path(root) / name
    rows, srows = _rows(name, cases, with_samples)
    write_results(d, results_frame(rows))
    if with_samples:
        write_samples(d, samples_frame(srows))
    write_meta(d, {"run_id": name, "started_at": name, "env": dict(ENV if env is None else env)})
    return d


def noise(seed: int, n: int = 300, median: float = 10.0, cv: float = 0.02) -> np.ndarray:
    """Latency-like samples: lognormal body with a few slow outliers."""
    rng = np.random.default_rng(seed)
    x = median * rng.lognormal(0.0, cv, n)
    k = max(1, n // 50)
    x[rng.choice(n, k, replace=False)] *= rng.uniform(1.2, 3.0, k)
    return x


# ---------------------------------------------------------------------------------------------------------------
# the report's fixtures

XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = '"><img src=x onerror=alert(1)>'

SIZE = {"evit-b0": 1.0, "evit-b1": 2.2, "block": 0.15}
# latency(ms) = overhead + lin * MP + quad * MP^2 at size 1 on the reference device
MIXER = {"msla": (2.0, 40.0, 0.0), "relu-linear": (2.0, 36.0, 0.0), "softmax": (2.0, 25.0, 30.0),
         "large-kernel": (2.0, 95.0, 0.0)}
DEVICES = {  # name -> (device, speed factor, peak GMAC/s)
    "Fixture Xeon 8480 (CPU)": ("cpu", 1.0, 900.0),
    "Fixture H100 (GPU)": ("cuda:0", 0.015, 400_000.0),
}


def report_row(run_id: str, host: str, model: str, variant: str, level: str, dev_name: str, threads: int, h: int,
               w: int, batch: int = 1, status: str = "ok", reason: str = "", backend: str = "eager",
               precision: str = "fp32", lat: float | None = None, seed: int = 0) -> dict:
    """A result row of the report fixtures: latency from the synthetic model of MIXER, SIZE and DEVICES."""
    device, factor, peak = DEVICES.get(dev_name, ("cpu", 1.0, 900.0))
    base = model.split(":")[0]
    mp = h * w / 1e6
    o, lin, quad = MIXER.get(variant, (2.0, 40.0, 0.0))
    tf = 1.0 if threads in (0, 1) else 0.6
    size = SIZE.get(base, 1.0)
    median = lat if lat is not None else (o + (lin * mp + quad * mp * mp) * size) * factor * tf * batch ** 0.7
    macs = int(4.0e9 * SIZE.get(base, 1.0) * mp * batch * (1.3 if variant == "softmax" else 1.0))
    r = dict(run_id=run_id, model=model, family="block" if level == "block" else "evit-variant", variant=variant,
             level=level, device=device, device_name=dev_name, backend=backend, precision=precision, batch=batch,
             threads=threads, height=h, width=w, tokens=h * w // 256, channels_last=False, folded=False,
             params=int(1e6 * SIZE.get(base, 1.0)), macs=macs, status=status, reason=reason, host=host, seed=seed,
             started_at="2025-11-27T07:00:00Z", wall_s=3.0, warmup_iters=10)
    r["case_id"] = case_key(r)
    if status == "ok":
        n = 40
        r.update(n=n, latency_ms_median=median, latency_ms_mean=median * 1.01, latency_ms_std=median * 0.02,
                 latency_ms_min=median * 0.97, latency_ms_max=median * 1.1, latency_ms_p90=median * 1.03,
                 latency_ms_p95=median * 1.04, latency_ms_p99=median * 1.08, latency_ms_iqr=median * 0.02,
                 latency_ms_ci_low=median * 0.99, latency_ms_ci_high=median * 1.012, converged=True,
                 throughput_ips=1000.0 * batch / median, peak_mem_mb=50 + 300 * mp * SIZE.get(base, 1.0)
                 * (1 + (mp * 4 if variant == "softmax" else 0)), first_call_ms=median * 3,
                 gmacs_per_s=macs / 1e9 / (median / 1e3), device_peak_gmacs_per_s=peak,
                 frac_of_peak=macs / 1e9 / (median / 1e3) / peak, rel_err=1e-6, numerics_ok=True, build_s=0.0)
    return r


def _report_samples(rows: list[dict], rng: np.random.Generator) -> list[dict]:
    out = []
    for r in rows:
        if r["status"] != "ok":
            continue
        x = r["latency_ms_median"] * rng.lognormal(0.0, 0.02, r["n"])
        x[rng.integers(0, r["n"])] *= 1.3  # one outlier
        out += [dict(run_id=r["run_id"], case_id=r["case_id"], iter=i, latency_ms=float(v)) for i, v in enumerate(x)]
    return out


def write_fixture_run(run_dir: Path, rows: list[dict], meta: dict | None = None, samples: bool = True,
                      seed: int = 0) -> Path:
    write_results(run_dir, results_frame(rows))
    if samples:
        write_samples(run_dir, samples_frame(_report_samples(rows, np.random.default_rng(seed))))
    if meta is not None:
        write_meta(run_dir, meta)
    return run_dir


def cpu_run(tmp: Path, run_id: str = "fixture-cpu", host: str = "cpu-box", extra: list[dict] | None = None) -> Path:
    """A CPU box: 1 thread (mobile proxy) and 2 threads; softmax times out at 2048 on 1 thread."""
    rows = []
    for threads in (1, 2):
        for base, level in (("evit-b0", "model"), ("evit-b1", "model"), ("block", "block")):
            for mixer in MIXER:
                for s in (512, 1024, 2048):
                    model = f"{base}:{mixer}"
                    if mixer == "softmax" and s == 2048 and threads == 1 and level == "model":
                        rows.append(report_row(run_id, host, model, mixer, level, "Fixture Xeon 8480 (CPU)", threads, s, s,
                                         status="timeout", reason="case exceeded its 120 s timeout"))
                        continue
                    rows.append(report_row(run_id, host, model, mixer, level, "Fixture Xeon 8480 (CPU)", threads, s, s))
    rows.append(report_row(run_id, host, "evit-b0:msla", "msla", "model", "Fixture Xeon 8480 (CPU)", 2, 512, 512,
                     backend="tensorrt", status="unsupported", reason="tensorrt needs a CUDA device"))
    rows += extra or []
    meta = dict(run_id=run_id, host=host, started_at="2025-11-27T07:00:00Z", python="3.11.2", torch="2.5.1",
                cpu=dict(model="Fixture Xeon 8480", cores=2, governor="performance", freq_mhz=2000),
                argv=["run_bench.py", "--devices", "cpu", "--res", "512,1024,2048"])
    return write_fixture_run(tmp / run_id, rows, meta, seed=1)


def gpu_run(tmp: Path, run_id: str = "fixture-gpu", host: str = "gpu-box") -> Path:
    rows = []
    for base, level in (("evit-b0", "model"), ("evit-b1", "model"), ("block", "block")):
        for mixer in MIXER:
            for s in (512, 1024, 2048):
                model = f"{base}:{mixer}"
                if mixer == "softmax" and s == 2048 and base == "evit-b1":
                    rows.append(report_row(run_id, host, model, mixer, level, "Fixture H100 (GPU)", 0, s, s,
                                     status="oom", reason="CUDA out of memory. Tried to allocate 12.00 GiB"))
                    continue
                rows.append(report_row(run_id, host, model, mixer, level, "Fixture H100 (GPU)", 0, s, s))
    for b in (2, 4, 8):
        for mixer in ("msla", "softmax"):
            rows.append(report_row(run_id, host, f"evit-b0:{mixer}", mixer, "model", "Fixture H100 (GPU)", 0, 1024, 1024,
                             batch=b))
    meta = dict(run_id=run_id, host=host, started_at="2025-11-27T08:00:00Z", torch="2.5.1", cuda="12.4",
                gpu=dict(name="Fixture H100", driver="550.54", clocks=dict(sm_mhz=1980, mem_mhz=2619),
                         power_limit_w=700, persistence_mode=True))
    return write_fixture_run(tmp / run_id, rows, meta, seed=2)


def crafted_run(tmp: Path) -> Path:
    """Every text field a user or a machine controls carries markup."""
    run_id = "fixture-crafted"
    host = f"host{XSS_IMG}"
    dev = f"CPU {XSS_SCRIPT}"
    rows = []
    for s in (512, 1024):
        for mixer in ("msla", "softmax"):
            model = f"{XSS_SCRIPT}:{mixer}" if mixer == "msla" else f"{XSS_SCRIPT}:softmax"
            rows.append(report_row(run_id, host, model, mixer, "model", dev, 1, s, s))
    rows.append(report_row(run_id, host, f"evil{XSS_IMG}", "msla", "model", dev, 1, 512, 512, status="error",
                     reason=f"RuntimeError: {XSS_SCRIPT} {XSS_IMG} </script><script>alert(2)</script>"))
    # the run id from meta.json goes into the page title and the JSON block read by the table script
    meta = dict(run_id=f"crafted</script><script>alert(3)</script><!--", host=host, note=f"{XSS_SCRIPT}{XSS_IMG}",
                gpu={"clocks": XSS_IMG})
    return write_fixture_run(tmp / run_id, rows, meta)


# ---------------------------------------------------------------------------------------------------------------
# a run with a real profile (issue 13): bench.profiling's output on real models, not invented numbers

# the fixture's calibration of its one device setting (GMAC/s, GB/s): given to profile_rows, not measured
PROFILE_PEAK, PROFILE_BANDWIDTH = 100.0, 20.0
PROFILED = (("block:msla", 128, 128), ("block:large-kernel", 128, 128), ("evit-b0:msla", 128, 128))
NOT_PROFILED_REASON = ("profiling covers eager (any device), onnxruntime (cpu fp32) and tensorrt (cuda); "
                       "not compile on cpu fp32")
_PROFILES: dict[tuple[str, int, int], tuple] = {}


def _profiled(name: str, h: int, w: int) -> tuple:
    """(bench.profiling Profile, timed latencies in ms) of registry model `name` on 1 CPU thread, once per session
    (the process's thread count is restored: profiling sets it)."""
    key = (name, h, w)
    if key not in _PROFILES:
        import torch

        from bench.profiling import profile_registry_model
        from models.registry import build_model, example_input

        threads = torch.get_num_threads()
        try:
            prof = profile_registry_model(name, h, w, threads=1, iters=2, warmup=1)
            model, x = build_model(name), example_input(name, h, w, 1)
            times = []
            with torch.inference_mode():
                model(x)
                for _ in range(8):
                    t0 = time.perf_counter()
                    model(x)
                    times.append((time.perf_counter() - t0) * 1e3)
        finally:
            torch.set_num_threads(threads)
        _PROFILES[key] = (prof, np.asarray(times))
    return _PROFILES[key]


def _profiled_row(run_id: str, host: str, name: str, shown: str, h: int, w: int, samples: np.ndarray,
                  **extra) -> dict:
    """A result row of the fixture's one setting (CPU, eager fp32, 1 thread) with real latency statistics."""
    variant = name.split(":", 1)[1]
    level = "block" if name.startswith("block:") else "model"
    s = summarize(samples)
    row = report_row(run_id, host, shown, variant, level, CPU, 1, h, w, lat=s["median"], **extra)
    row.update(n=s["n"], **{f"latency_ms_{k}": s[k] for k in s if k != "n"})
    row["_samples"] = samples
    return row


def profiled_run(root: Path, run_id: str = "fixture-profile", models=PROFILED, calibrated: bool = True,
                 rename: dict[str, str] | None = None, not_profiled: bool = True, host: str = "profile-box") -> Path:
    """A run folder with profile.parquet made by bench.profiling (profile_registry_model -> profile_rows ->
    profile_frame / write_profile), the results rows (status ok, real timed samples) carrying profile_source,
    profiled_ms and profile_overhead; `rename` shows a model under another name (hostile names); `calibrated`
    False leaves the roofline's peak and bandwidth out; `not_profiled` adds an ok case with a profile_reason."""
    from bench.profiling.rows import profile_rows

    rows, prows = [], []
    peak, bw = (PROFILE_PEAK, PROFILE_BANDWIDTH) if calibrated else (None, None)
    for name, h, w in models:
        prof, samples = _profiled(name, h, w)
        row = _profiled_row(run_id, host, name, (rename or {}).get(name, name), h, w, samples)
        macs = sum(c.macs for c in prof.costs)
        rate = macs / 1e9 / (row["latency_ms_median"] / 1e3)
        row.update(macs=macs, gmacs_per_s=rate, device_peak_gmacs_per_s=peak,
                   frac_of_peak=rate / peak if peak else None, profile_source=prof.source,
                   profiled_ms=prof.profiled_ms, profile_overhead=prof.profiled_ms / row["latency_ms_median"] - 1)
        rows.append(row)
        prows += profile_rows(row, prof, peak, bw)
    if not_profiled:
        rows.append(_profiled_row(run_id, host, "block:softmax", "block:softmax", 128, 128, noise(7, n=8, median=1.0),
                                  backend="compile"))
        rows[-1]["profile_reason"] = NOT_PROFILED_REASON
    d = Path(root) / run_id
    results, srows = _rows(run_id, rows, True)
    write_results(d, results_frame(results))
    write_samples(d, samples_frame(srows))
    write_profile(d, profile_frame(prows))
    write_meta(d, {"run_id": run_id, "started_at": "2025-11-27T09:00:00Z", "env": dict(ENV)})
    return d


# ---------------------------------------------------------------------------------------------------------------
# the interleaved design: rows measured in the same processes as their decision group, and their pairs.parquet


def interleave(row: dict) -> dict:
    """The row measured interleaved with its decision group (design, group_id as the engine writes them)."""
    from bench.cases import group_key

    return dict(row, design="interleaved", group_id=group_key(row))


def pair_row(fast: dict, slow: dict, ratio: float, ci_low: float, ci_high: float, verdict: str, *,
             ci_level: float = 0.9938, n_processes: int = 12, tie: float = 0.02, fastest: str | None = None,
             noisy: bool = False, noisy_reason: str = "", reason: str = "", **extra) -> dict:
    """One pairs.parquet row (bench.schema.PAIR_COLUMNS) of two interleaved result rows; the rest of the columns
    are filled by bench.results.store.pairs_frame."""
    from bench.cases import base_name

    row = dict(run_id=fast["run_id"], group_id=fast.get("group_id"), level=fast["level"],
               base=base_name(fast["model"]), device=fast["device"], device_name=fast["device_name"],
               backend=fast["backend"], precision=fast["precision"], batch=fast["batch"], threads=fast["threads"],
               channels_last=fast["channels_last"], folded=fast["folded"], height=fast["height"],
               width=fast["width"], fast_case_id=fast["case_id"], slow_case_id=slow["case_id"],
               fast=fast["variant"], slow=slow["variant"], fast_model=fast["model"], slow_model=slow["model"],
               ratio=ratio, ci_low=ci_low, ci_high=ci_high, ci_level=ci_level, n_processes=n_processes,
               sd_log=0.01, tie=tie, verdict=verdict, reason=reason or f"interval [{ci_low}, {ci_high}]",
               fastest=fastest or fast["variant"], noisy=noisy, noisy_reason=noisy_reason, design="interleaved")
    row.update(extra)
    return row
