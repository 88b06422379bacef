"""The results table's schema: one row per case, one column per measure.

Every module that writes or reads results (engine, report, compare, gates) goes through these names, so a
pandas user can pivot a results table without reading our code, and a schema change is made in one place.
"""
from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 1

# Status of a case. Every case becomes exactly one row with one of these.
STATUSES = ("ok", "oom", "timeout", "error", "unsupported", "skipped")


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # pandas dtype name
    doc: str


COLUMNS: tuple[Column, ...] = (
    # identity and description of the case
    Column("run_id", "string", "run folder name"),
    Column("case_id", "string", "stable key of the case within and across runs (bench.cases.case_key)"),
    Column("model", "string", "registry name, e.g. evit-b1:msla"),
    Column("family", "string", "registry family: evit-variant, efficientvit, segformer, segnext, block, user (--models-from)"),
    Column("variant", "string", "token mixer: msla, relu-linear, softmax, large-kernel, softmax-sr, or a user model's own"),
    Column("level", "string", "model or block"),
    Column("device", "string", "device as asked: cpu, cuda:0"),
    Column("device_name", "string", "CPU model or GPU name"),
    Column("backend", "string", "eager, compile, cudagraphs, onnxruntime, tensorrt, openvino, executorch"),
    Column("precision", "string", "fp32, tf32, fp16, bf16, int8"),
    Column("batch", "int64", "images per iteration"),
    Column("threads", "int64", "torch intra-op threads (CPU); 0 where not applicable"),
    Column("cpu_oversubscription", "float64", "threads / CPUs the run could use (sched_getaffinity) when measured; "
                                              "above 1 the threads share cores and the latency times their "
                                              "contention (the run warns); NaN for CUDA"),
    Column("height", "int64", "input image height in pixels"),
    Column("width", "int64", "input image width in pixels"),
    Column("tokens", "int64", "tokens seen by the token mixer (first attention stage)"),
    Column("channels_last", "bool", "memory format channels_last"),
    Column("folded", "bool", "conv+BN folded (deployment form)"),
    Column("params", "int64", "parameter count"),
    Column("macs", "int64", "multiply-accumulates per batch (conv + matmul, FlopCounterMode)"),
    # outcome
    Column("status", "string", "one of STATUSES"),
    Column("reason", "string", "why a case is not ok (empty when ok)"),
    # latency of one iteration (one batch), milliseconds
    Column("n", "int64", "timed iterations kept"),
    Column("warmup_iters", "int64", "warm-up iterations before timing"),
    Column("first_call_ms", "float64", "latency of the very first call (lazy init, autotuning)"),
    Column("latency_ms_median", "float64", ""),
    Column("latency_ms_mean", "float64", ""),
    Column("latency_ms_std", "float64", ""),
    Column("latency_ms_min", "float64", ""),
    Column("latency_ms_max", "float64", ""),
    Column("latency_ms_p90", "float64", ""),
    Column("latency_ms_p95", "float64", ""),
    Column("latency_ms_p99", "float64", ""),
    Column("latency_ms_iqr", "float64", ""),
    Column("latency_ms_ci_low", "float64", "95% CI of the median: binomial order statistics (one process) or "
                                           "the two-level bootstrap over processes and samples (--repeats)"),
    Column("latency_ms_ci_high", "float64", ""),
    Column("latency_ms_ci_level", "float64", "confidence the CI of the median actually reaches (0.95 when there are "
                                             "enough samples; below 6 samples (min, max) covers less: no verdict "
                                             "rests on it)"),
    Column("converged", "bool", "CI of the median within the target before the time cap (in every process)"),
    Column("repeats", "int64", "processes the case was measured in (--repeats); latency columns pool their samples"),
    Column("latency_ms_repeat_cv", "float64", "CV (%) of the per-process medians; nan with one process"),
    Column("throughput_ips", "float64", "images per second = batch / median latency"),
    # memory
    Column("peak_mem_mb", "float64", "CUDA peak allocated, or CPU peak RSS above the child's baseline"),
    Column("peak_mem_reserved_mb", "float64", "CUDA peak reserved by the caching allocator"),
    Column("weights_mem_mb", "float64", "memory held by weights and buffers"),
    Column("activations_mem_mb", "float64", "peak memory above weights during inference"),
    # energy (NVIDIA NVML)
    Column("energy_j_per_image", "float64", "NVML total-energy counter delta / images"),
    Column("mean_power_w", "float64", "energy / time over the timed iterations"),
    # efficiency
    Column("gmacs_per_s", "float64", "macs / median latency"),
    Column("device_peak_gmacs_per_s", "float64", "the device's measured matmul rate (calibration kernel)"),
    Column("frac_of_peak", "float64", "gmacs_per_s / device_peak_gmacs_per_s (the peak: the larger of the "
                                      "calibrations at the start and the end of the run, each taken on a quiet "
                                      "machine where it could be)"),
    Column("frac_of_peak_note", "string", "why frac_of_peak is above 1 (the calibration kernel ran slower than this "
                                          "case's own matmuls); empty when it is not"),
    # work counted, not timed (--metric instructions)
    Column("instructions", "float64", "CPU instructions per forward pass (valgrind callgrind, 1 thread, median of "
                                      "several forwards in one valgrind process); deterministic on a shared VM"),
    Column("instructions_spread_pct", "float64", "(max - min) / median of the counted forwards, percent"),
    # how the case was measured
    Column("design", "string", "interleaved: measured in the same processes as the other mixers of its decision "
                               "group, in rotating balanced order (pairs.parquet has the paired ratios); isolated: "
                               "its own processes (other devices, backends that own the process, --design isolated)"),
    Column("group_id", "string", "the decision group of an interleaved case (bench.cases.group_key); empty when "
                                 "isolated"),
    # machine health
    Column("noisy", "bool", "measured while the machine was busy or drifting beyond the bounds (see noisy_reason)"),
    Column("noisy_reason", "string", "what was wrong with the machine during the case (empty when not noisy)"),
    Column("remeasured", "int64", "processes of this case measured again after the machine was busy and a wait for "
                                  "a quiet machine (--wait-quiet); their first measurement is discarded"),
    # numerics and backend
    Column("rel_err", "float64", "||y - y_ref|| / ||y_ref|| against eager fp32 on the same input"),
    Column("numerics_ok", "bool", "rel_err within the precision's tolerance"),
    Column("first_bad_block", "string", "int8 / fp16: the first block (in forward order) whose output's rel_err "
                                        "against eager fp32 on the same input passes the precision's tolerance; "
                                        "empty when none does or it was not localised (backend_info.localise)"),
    Column("build_s", "float64", "compile / export / engine build time, apart from latency"),
    # what ran where (graph runtimes: executorch, openvino, onnxruntime; bench.backends.delegation)
    Column("delegated_ops_share", "float64", "share of the graph's ops the delegate or plugin ran (XNNPACK for "
                                             "executorch); the rest fell back (fallback_ops)"),
    Column("delegated_macs_share", "float64", "share of the model's MACs in ops the delegate or plugin ran"),
    Column("fallback_ops", "string", "ops that fell back out of the delegate, 'op xcount, ...' (empty: none)"),
    Column("int8_macs_share", "float64", "int8 cases: share of the model's MACs in ops that run on int8 data; the "
                                         "rest stayed in float (excluded or not quantizable)"),
    Column("backend_info", "string", "provider, versions and settings of the backend (JSON)"),
    # the profiled pass (--profile): after and apart from the timed pass; its rows are in profile.parquet
    Column("profile_source", "string", "torch, onnxruntime, tensorrt, executorch or openvino: the profiler that "
           "explained this case"),
    Column("profiled_ms", "float64", "time per iteration with the profiler on (the overhead is against the median)"),
    Column("profile_wall_ms", "float64", "wall time per profiled inference where profiled_ms sums per-node times "
           "(openvino: profiled_ms / profile_wall_ms > 1 when parallel nodes overlapped; not rescaled)"),
    Column("profile_overhead", "float64", "profiled_ms / latency_ms_median - 1: what profiling costs this case"),
    Column("profile_reason", "string", "why the case has no profile (its backend has no profiler source, ...)"),
    # bookkeeping
    Column("seed", "int64", ""),
    Column("host", "string", "hostname"),
    Column("started_at", "string", "ISO 8601 UTC"),
    Column("wall_s", "float64", "wall time of the case, child spawn included"),
)

COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)

# Raw samples: one row per timed iteration.
SAMPLE_COLUMNS = (Column("run_id", "string", ""), Column("case_id", "string", ""),
                  Column("repeat", "int64", "0-based index of the process that took the sample (--repeats)"),
                  Column("iter", "int64", "0-based index of the timed iteration within its process"),
                  Column("latency_ms", "float64", "latency of one iteration (one batch)"))

# The profiled pass (--profile, `run_bench.py profile`): profile.parquet, one row per case x breakdown item.
# `breakdown` is "op_kind" (one row per op kind: bench.profiling.opkinds.OP_KINDS), "module" (stem, each stage, each
# block's mixer vs FFN, head) or "op" (the case's top ops by time, with their shapes). Shares sum to 1 within a
# case and breakdown; time is per iteration (host self time on a CPU, kernel time on CUDA).
PROFILE_IDENTITY = ("run_id", "case_id", "model", "family", "variant", "level", "device", "backend", "precision",
                    "batch", "threads", "height", "width")
PROFILE_COLUMNS = tuple(c for c in COLUMNS if c.name in PROFILE_IDENTITY) + (
    Column("source", "string", "torch, onnxruntime or tensorrt"),
    Column("breakdown", "string", "op_kind, module or op"),
    Column("op_kind", "string", "the op kind (op_kind and op rows)"),
    Column("module", "string", "module group path (module and op rows)"),
    Column("stage", "string", "stem, stage N, head, ... (module rows)"),
    Column("part", "string", "mixer, ffn or other (module rows)"),
    Column("op", "string", "aten op, ONNX node type or TensorRT layer (op rows)"),
    Column("shapes", "string", "input shapes of the op (op rows)"),
    Column("rank", "int64", "0-based rank by time within the case and breakdown"),
    Column("time_ms", "float64", "time per iteration"),
    Column("time_share", "float64", "share of the case's attributed time (sums to 1 per case and breakdown)"),
    Column("host_ms", "float64", "host self time per iteration"),
    Column("macs", "float64", "multiply-accumulates per forward (FlopCounterMode's formulas)"),
    Column("mac_share", "float64", "share of the case's MACs"),
    Column("bytes", "float64", "bytes read + written per forward, from shapes and dtypes (a lower bound)"),
    Column("intensity_macs_per_byte", "float64", "arithmetic intensity: macs / bytes"),
    Column("gmacs_per_s", "float64", "achieved: macs / time"),
    Column("gbytes_per_s", "float64", "achieved: bytes / time"),
    Column("calls", "float64", "op calls per iteration"),
    Column("attainable_gmacs_per_s", "float64", "roofline: min(peak, bandwidth x intensity) of the device setting"),
    Column("roofline_frac", "float64", "gmacs_per_s / attainable_gmacs_per_s"),
    Column("bound", "string", "memory or compute: which side of the ridge point the intensity lies"),
    Column("peak_gmacs_per_s", "float64", "the device setting's calibrated matmul rate (the roof)"),
    Column("bandwidth_gb_per_s", "float64", "the device setting's calibrated triad bandwidth (the slope)"),
)
PROFILE_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in PROFILE_COLUMNS)

# The paired decisions of interleaved groups: pairs.parquet, one row per pair of cases of one decision group (the
# mixers of one level x device setting x model size x resolution measured in the same processes). Each process
# gives the median over its cycles of log(t_slow / t_fast); the pair's ratio and interval are over processes (a
# Student t interval of their mean), so the interval includes how far processes disagree, and the machine's drift,
# shared by both sides of every cycle, cancels.
PAIR_DECISIONS = ("faster", "tied", "not resolved")
PAIR_SETTING = ("device", "device_name", "backend", "precision", "batch", "threads", "channels_last", "folded",
                "height", "width")
PAIR_COLUMNS: tuple[Column, ...] = (
    Column("run_id", "string", "run folder name"),
    Column("group_id", "string", "the decision group (bench.cases.group_key)"),
    Column("level", "string", "model or block"),
    Column("base", "string", "model size: the model name before ':' (evit-b1, block)"),
) + tuple(c for c in COLUMNS if c.name in PAIR_SETTING) + (
    Column("fast_case_id", "string", "case_id of the side with the lower mean time"),
    Column("slow_case_id", "string", "case_id of the other side"),
    Column("fast", "string", "variant (mixer) of the faster side"), Column("slow", "string", "variant of the slower"),
    Column("fast_model", "string", ""), Column("slow_model", "string", ""),
    Column("ratio", "float64", "slow / fast: exp of the mean over processes of the per-process median log ratio (>= 1)"),
    Column("ci_low", "float64", "interval of the ratio (Student t over processes, exp)"),
    Column("ci_high", "float64", ""),
    Column("ci_level", "float64", "confidence of [ci_low, ci_high] (the sequential rule's per-look level, Bonferroni "
                                  "over the looks; at least 0.95)"),
    Column("n_processes", "int64", "processes that measured both sides"),
    Column("sd_log", "float64", "SD over processes of the per-process log ratio"),
    Column("tie", "float64", "equivalence margin (--tie): a ratio within 1 +- tie is a tie"),
    Column("verdict", "string", "faster (interval above 1 + tie), tied (interval inside the margin) or not resolved"),
    Column("reason", "string", "the rule's words: the interval against the margin, where it stopped"),
    Column("against_fastest", "bool", "the pair compares the group's fastest side with another: these decide the group"),
    Column("group_verdict", "string", "resolved (every pair against the fastest is faster or tied) or not resolved"),
    Column("fastest", "string", "variant with the lowest time in the group"),
    Column("noisy", "bool", "some process of the pair stayed noisy after the waits for a quiet machine"),
    Column("noisy_reason", "string", ""),
    Column("design", "string", "interleaved"),
)
PAIR_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in PAIR_COLUMNS)

# An A/B compare's folder OUT/ab-<date>-<time>-<rand>/ (bench.ab.store writes it, bench.ab.store.load_ab reads it
# back): ab.parquet, one row per case, named by A's case; ab_samples.parquet, one row per timed block or call.
AB_IDENTITY = ("model", "level", "height", "width", "device_name", "backend", "precision", "batch", "threads",
               "channels_last", "folded")  # bench.cases.IDENTITY (a test keeps them equal): A's case
AB_VERDICTS = ("slower", "faster", "unchanged", "undecided", "failed")  # bench.ab.decide.VERDICTS
AB_COLUMNS: tuple[Column, ...] = tuple(c for n in AB_IDENTITY for c in COLUMNS if c.name == n) + (
    Column("case_id", "string", "A's case_id (bench.cases.case_key)"),
    Column("model_a", "string", "side A as named: a registered model, PATH.py:FUNCTION, or the model at --a-rev"),
    Column("model_b", "string", "side B as named"),
    Column("rev_a", "string", "--a-rev: the revision (and its commit); empty otherwise"),
    Column("rev_b", "string", "--a-rev: 'working tree'; empty otherwise"),
    Column("backend_b", "string", "B's backend (--backend-b, else A's)"),
    Column("design", "string", "same-process (ABBA blocks in one process) or pairs (a process of A, one of B)"),
    Column("processes", "int64", "children run for the case"),
    Column("n", "int64", "per-process log ratios: one per process (same-process) or per pair of processes"),
    Column("ratio", "float64", "B/A: exp of the mean per-process log ratio"),
    Column("ci_low", "float64", "interval of the ratio at `confidence` (Student t over processes, exp)"),
    Column("ci_high", "float64", ""),
    Column("confidence", "float64", "the interval's level: 1 - alpha/K, K = the number of checkpoints"),
    Column("sd_log", "float64", "SD of the per-process log ratios"),
    Column("a_median_ms", "float64", "median over processes of A's per-process median, ms per call"),
    Column("b_median_ms", "float64", "median over processes of B's per-process median, ms per call"),
    Column("block", "int64", "calls per ABBA block (same-process design; empty for pairs)"),
    Column("cycles", "float64", "median ABBA cycles per process (same-process design)"),
    Column("verdict", "string", "one of AB_VERDICTS"),
    Column("reason", "string", "the rule's words, or why the case failed"),
    Column("wall_s", "float64", "wall time of the case's processes"),
)
AB_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in AB_COLUMNS)
# --metric instructions adds these to ab.parquet (bench.launch.callgrind counts, bench.ab.decide.judge_counts)
AB_INSTRUCTION_COLUMNS: tuple[Column, ...] = (
    Column("instructions_a", "float64", "A's CPU instructions per forward (callgrind, median of the forwards)"),
    Column("instructions_b", "float64", "B's, counted in the same valgrind process"),
    Column("instructions_ratio", "float64", "instructions B / instructions A"),
    Column("instructions_verdict", "string", "slower, faster, unchanged (beyond the counting noise) or failed"),
    Column("instructions_reason", "string", "the forwards' spread, or why a side could not be counted"),
)
AB_INSTRUCTION_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in AB_INSTRUCTION_COLUMNS)
AB_SAMPLE_COLUMNS: tuple[Column, ...] = (
    Column("case_id", "string", ""), Column("process", "int64", "1-based process of the case that took it"),
    Column("side", "string", "a or b"),
    Column("iter", "int64", "0-based, counting per side within a process"),
    Column("latency_ms", "float64", "ms per call: of one ABBA block (same-process) or of one call (pairs)"),
)
