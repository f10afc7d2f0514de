"""What the tuned allocator (swinkit.allocator, on in every `swinkit` command) is worth: the same measurement with
glibc's default malloc and with the tuned one, interleaved in one run, for swinkit and timm alike.

    .venv/bin/python benchmarks/allocator.py                 # Swin-T inference and training step, batch 16
    .venv/bin/python benchmarks/allocator.py --repeats 5 --modes train

Each measurement is `swinkit bench`'s own (a fresh process per library, mode and allocator); the order within a
repeat is lib x mode x allocator, so both allocators see the same host load. Prints a markdown table of medians
and writes benchmarks/allocator.csv.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from swinkit.tools import bench
from swinkit.config import SwinConfig

HERE = Path(__file__).resolve().parent
ALLOCATORS = ("system", "tuned")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="swin_tiny_patch4_window7_224")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--modes", nargs="+", choices=("infer", "train"), default=["infer", "train"])
    parser.add_argument("--libs", nargs="+", default=["swinkit", "timm"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model = bench.canonical(args.model)
    size = SwinConfig.from_name(model).img_size[0]
    base = dict(model=model, img_size=size, batch_size=args.batch_size, dtype="float32", device="cpu",
                threads=args.threads, compile=False, iters=0, min_time=2.0, count_macs=False, swinkit_config={})
    speeds: dict[tuple, list[float]] = {}
    for rep in range(args.repeats):
        for lib in args.libs:
            for mode in args.modes:
                for allocator in ALLOCATORS:
                    spec = dict(base, lib=lib, mode=mode, allocator=allocator, warmup=3 if mode == "infer" else 2)
                    res = bench.measure_isolated(spec)
                    if res.get("error"):
                        raise SystemExit(f"{lib} {mode} {allocator}: {res['error']}")
                    speed = args.batch_size / res["step_time_s"]
                    speeds.setdefault((lib, mode, allocator), []).append(speed)
                    print(f"repeat {rep + 1}: {lib:8} {mode:5} {allocator:6} {speed:.2f} img/s", flush=True)
    rows = []
    for lib in args.libs:
        for mode in args.modes:
            system, tuned = (statistics.median(speeds[lib, mode, a]) for a in ALLOCATORS)
            rows.append(dict(model=model, lib=lib, mode=mode, batch_size=args.batch_size, threads=args.threads,
                             repeats=args.repeats, system_img_per_s=round(system, 3), tuned_img_per_s=round(tuned, 3),
                             tuned_vs_system=round(tuned / system, 3),
                             runs_system=" ".join(f"{v:.2f}" for v in speeds[lib, mode, "system"]),
                             runs_tuned=" ".join(f"{v:.2f}" for v in speeds[lib, mode, "tuned"]),
                             machine=bench.machine("cpu")))
    print("\n| lib | mode | system img/s | tuned img/s | tuned / system |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['lib']} | {r['mode']} | {r['system_img_per_s']:.2f} | {r['tuned_img_per_s']:.2f} | "
              f"{r['tuned_vs_system']:.2f}x |")
    bench.write_csv(rows, HERE / "allocator.csv", list(rows[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
