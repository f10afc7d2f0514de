"""torch.compile against eager for swinkit inference, in ONE process with the variants alternated round by round.
torch.compile traces the plain path (the windows path's per-group Python loop is eager-only), so it is compared
with both eager paths: eager plain is what compile starts from, eager auto is what a user gets without compile.

    .venv/bin/python benchmarks/compile_paths.py                 # Swin-T, batch 16 and 1, fp32, inductor
    .venv/bin/python benchmarks/compile_paths.py --batches 16 --rounds 8

Prints median images/s per variant and the ratios; writes benchmarks/compile_paths.csv.
"""
import argparse
import statistics
import time
from pathlib import Path

import torch

import swinkit
from swinkit.tools import bench

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="swin_tiny_patch4_window7_224")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 1])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = swinkit.create_model(args.model).eval()
    size = model.cfg.img_size
    rows = []
    for batch in args.batches:
        x = torch.randn(batch, 3, *size)
        compiled = torch.compile(model, dynamic=False)
        t0 = time.perf_counter()
        with torch.inference_mode():
            compiled(x)  # compiles
        compile_s = time.perf_counter() - t0

        def run(fn, path):
            model.set_inference_path(path)
            with torch.inference_mode():
                fn(x)
        variants = {"eager auto": lambda: run(model, "auto"), "eager plain": lambda: run(model, "plain"),
                    "compiled": lambda: run(compiled, "auto")}
        for fn in variants.values():
            fn()
        times = {k: [] for k in variants}
        names = list(variants)
        for r in range(args.rounds):
            for k in names if r % 2 == 0 else names[::-1]:
                t0 = time.perf_counter()
                variants[k]()
                times[k].append(time.perf_counter() - t0)
        row = dict(model=args.model, batch=batch, compile_s=round(compile_s, 1))
        for k in names:
            row[f"{k} img/s"] = round(batch / statistics.median(times[k]), 2)
        row["compiled / eager plain"] = round(statistics.median(
            [p / c for p, c in zip(times["eager plain"], times["compiled"])]), 3)
        row["compiled / eager auto"] = round(statistics.median(
            [a / c for a, c in zip(times["eager auto"], times["compiled"])]), 3)
        rows.append(row)
        print(" | ".join(f"{k}: {v}" for k, v in row.items()), flush=True)
    bench.write_csv(rows, HERE / "compile_paths.csv", list(rows[0]))  # atomic, like every swinkit CSV
    print(f"wrote {HERE / 'compile_paths.csv'}")


if __name__ == "__main__":
    main()
