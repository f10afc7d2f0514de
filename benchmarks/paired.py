"""swinkit against its peers in ONE process, steps alternated round by round (A B C, C B A, ...), so that both
steps of every pair see the same host speed. `swinkit bench` gives each library a fresh process instead, which
is the fair setting for memory and the allocator but lets a drifting host (the matmul rate here moves between
about 100 and 190 GFLOP/s within a run) move the ratios by 0.1. All libraries share the tuned allocator here.

    .venv/bin/python benchmarks/paired.py --model swin_tiny_patch4_window7_224 --mode infer --rounds 12
    .venv/bin/python benchmarks/paired.py --model swinv2_tiny_window8_256 --libs swinkit,timm,transformers

Prints each library's median step and the median over rounds of (peer's step / swinkit's step); writes
benchmarks/paired_<model>_<mode>_b<batch>.csv.
"""
import argparse
import csv
import statistics
import time
from pathlib import Path

import torch

import swinkit
from swinkit.tools import bench
from swinkit.config import SwinConfig

HERE = Path(__file__).resolve().parent


def build(lib: str, name: str) -> torch.nn.Module:
    if lib != "timm-sdpa":
        return bench.build_model(lib, name)
    from timm.layers import set_fused_attn

    set_fused_attn(True, experimental=True)  # what TIMM_FUSED_ATTN=2 does, for models built from here on
    try:
        return bench.build_model(lib, name)
    finally:
        set_fused_attn(True)  # timm's default: its Swin keeps the explicit path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="swin_tiny_patch4_window7_224")
    parser.add_argument("--mode", choices=["infer", "train"], default="infer")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--libs", default="swinkit,timm,timm-sdpa")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    libs = args.libs.split(",")
    if libs[0] != "swinkit":
        parser.error("--libs must start with swinkit (the ratios are against it)")
    swinkit.tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    cfg = SwinConfig.from_name(args.model)
    x = torch.randn(args.batch_size, 3, *cfg.img_size)
    steps = {}
    for lib in libs:
        model = build(lib, args.model).train(args.mode == "train")
        steps[lib] = bench._step_fn(model, x, args.mode, torch.float32, cfg.num_classes)
        for _ in range(args.warmup):
            steps[lib]()
    times = {lib: [] for lib in libs}
    for r in range(args.rounds):
        for lib in libs if r % 2 == 0 else libs[::-1]:
            t0 = time.perf_counter()
            steps[lib]()
            times[lib].append(time.perf_counter() - t0)
    rows = []
    for lib in libs:
        ratios = [p / s for p, s in zip(times[lib], times["swinkit"])]  # > 1: swinkit faster in that round
        row = dict(lib=lib, median_step_s=round(statistics.median(times[lib]), 4),
                   swinkit_speedup_median=round(statistics.median(ratios), 3),
                   swinkit_speedup_min=round(min(ratios), 3), swinkit_speedup_max=round(max(ratios), 3))
        rows.append(row)
        print(f"{lib:13s} {row['median_step_s']:.3f} s/step   swinkit speed-up x{row['swinkit_speedup_median']:.3f}"
              f" (rounds: {row['swinkit_speedup_min']:.3f}-{row['swinkit_speedup_max']:.3f})")
    path = HERE / f"paired_{args.model}_{args.mode}_b{args.batch_size}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
