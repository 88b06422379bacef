"""Benchmark (not a test): our `evit-b1:msla` in deployment form against timm's `efficientvit_b1` backbone with
the same segmentation head, on the CPU in fp32, measured side by side in one process.

The two are interleaved (A, B, A, B, ... rounds of a fixed time each) so that machine drift hits both alike, and
the ratio of their medians is reported with a bootstrap CI over the raw samples. Both get the same input, the
same threads, and the same head (ours, with timm's features fed to it). Run:

    python -m tools.bench_models                 # 512x512 and 1024x2048, 2 threads
    python -m tools.bench_models --res 512 --rounds 4 --round-time 1
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from bench.cases import parse_resolution
from bench.stats import bootstrap_ratio_ci, summarize
from models.deploy import to_deploy
from models.efficientvit import BACKBONES, HEADS, SegHead, _ACTS, efficientvit_seg


class TimmSeg(nn.Module):
    """timm's EfficientViT-B1 backbone (stride 8/16/32 features) + our EfficientViT segmentation head."""

    def __init__(self) -> None:
        super().__init__()
        import timm

        self.backbone = timm.create_model("efficientvit_b1", pretrained=False, features_only=True,
                                          out_indices=(1, 2, 3))
        cfg = BACKBONES["b1"]
        self.head = SegHead(tuple(cfg.widths[2:]), HEADS[("b1", "cityscapes")], _ACTS[cfg.act], cfg.bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _time_round(fn, x, seconds: float) -> list[float]:
    out: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(out) < 3:
        t0 = time.perf_counter_ns()
        fn(x)
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def compare(height: int, width: int, rounds: int, round_time: float, channels_last: bool) -> dict:
    ours = to_deploy(efficientvit_seg("b1", "cityscapes", "msla"), channels_last=channels_last, fold=True)
    ref = TimmSeg().eval()
    if channels_last:
        ref = ref.to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, height, width)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    samples: dict[str, list[float]] = {"ours": [], "timm": []}
    with torch.inference_mode():
        for m in (ours, ref):  # warm-up: first-call allocation and oneDNN primitive creation
            for _ in range(3):
                m(x)
        for r in range(rounds):
            order = (("ours", ours), ("timm", ref)) if r % 2 == 0 else (("timm", ref), ("ours", ours))
            for name, m in order:
                samples[name] += _time_round(m, x, round_time)
    a, b = np.array(samples["timm"]), np.array(samples["ours"])
    ratio, lo, hi = bootstrap_ratio_ci(a, b, seed=0)
    return {"res": f"{height}x{width}", "channels_last": channels_last,
            "ours_ms": summarize(b)["median"], "timm_ms": summarize(a)["median"],
            "ratio": ratio, "ratio_ci": (lo, hi), "n": (len(b), len(a))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--res", default="512,1024x2048", help="comma list of resolutions (default 512,1024x2048)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds per model (default 6)")
    p.add_argument("--round-time", type=float, default=2.0, help="seconds per round (default 2)")
    p.add_argument("--channels-last", choices=["no", "yes", "both"], default="both")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    formats = {"no": [False], "yes": [True], "both": [False, True]}[args.channels_last]
    print(f"evit-b1:msla (ours, conv+BN folded) vs timm efficientvit_b1 backbone + same head; CPU fp32, "
          f"{args.threads} threads, torch {torch.__version__}")
    print(f"{'resolution':>11} {'layout':>13} {'ours ms':>9} {'timm ms':>9} {'ours/timm':>9}  95% CI")
    for res in args.res.split(","):
        h, w = parse_resolution(res)
        for cl in formats:
            r = compare(h, w, args.rounds, args.round_time, cl)
            print(f"{r['res']:>11} {'channels_last' if cl else 'contiguous':>13} {r['ours_ms']:9.2f} "
                  f"{r['timm_ms']:9.2f} {r['ratio']:9.3f}  [{r['ratio_ci'][0]:.3f}, {r['ratio_ci'][1]:.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
