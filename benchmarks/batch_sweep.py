"""Inference throughput against batch size, swinkit's automatic path beside its two explicit paths and timm, in
ONE process with the libraries alternated round by round (A B C D, D C B A, ...), so that every round compares
them at the same host speed. fp32, and bfloat16 autocast.

    .venv/bin/python benchmarks/batch_sweep.py                      # Swin-T 224^2, batches 1..64, both dtypes
    .venv/bin/python benchmarks/batch_sweep.py --batches 1 2 4 --dtypes float32 --rounds 5

Prints a table (images/s, median of the rounds; ratio = swinkit auto's speed over timm's, median over rounds)
and writes benchmarks/batch_sweep_<model>_<allocator>.csv and .png.
"""
import argparse
import statistics
import time
from pathlib import Path

import torch

import swinkit
from swinkit.tools import bench

HERE = Path(__file__).resolve().parent
LIBS = ("swinkit auto", "swinkit windows", "swinkit plain", "timm")


def step_fn(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype):
    def step():
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            model(x)
    return step


def sweep(model_name: str, batches: list[int], dtypes: list[str], rounds: int, warmup: int) -> list[dict]:
    ours = bench.build_model("swinkit", model_name).eval()
    peer = bench.build_model("timm", model_name).eval()
    ours_paths = {"swinkit auto": "auto", "swinkit windows": "windows", "swinkit plain": "plain"}
    size = swinkit.SwinConfig.from_name(model_name).img_size
    rows = []
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        for batch in batches:
            x = torch.randn(batch, 3, *size)
            steps = {}
            for lib in LIBS:
                model = peer if lib == "timm" else ours
                run = step_fn(model, x, dtype)
                if lib != "timm":
                    path = ours_paths[lib]
                    run = (lambda run=run, path=path: (ours.set_inference_path(path), run()))
                steps[lib] = run
                for _ in range(warmup):
                    run()
            times = {lib: [] for lib in LIBS}
            for r in range(rounds):
                for lib in LIBS if r % 2 == 0 else LIBS[::-1]:
                    t0 = time.perf_counter()
                    steps[lib]()
                    times[lib].append(time.perf_counter() - t0)
            row = dict(model=model_name, dtype=dtype_name, batch=batch)
            for lib in LIBS:
                row[f"{lib} img/s"] = round(batch / statistics.median(times[lib]), 2)
            ratios = [t / s for t, s in zip(times["timm"], times["swinkit auto"])]  # > 1: swinkit faster
            row["auto / timm"] = round(statistics.median(ratios), 3)
            row["auto / timm min"] = round(min(ratios), 3)
            rows.append(row)
            print(" | ".join(f"{row[k]}" for k in row), flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtypes = sorted({r["dtype"] for r in rows})
    fig, axes = plt.subplots(1, len(dtypes), figsize=(6 * len(dtypes), 4), squeeze=False)
    for ax, dtype in zip(axes[0], dtypes):
        sub = [r for r in rows if r["dtype"] == dtype]
        for lib in LIBS:
            ax.plot([r["batch"] for r in sub], [r[f"{lib} img/s"] for r in sub], marker="o", label=lib)
        ax.set(xscale="log", xlabel="batch", ylabel="images/s", title=f"{sub[0]['model']} inference, {dtype}")
        ax.set_xticks([r["batch"] for r in sub], [str(r["batch"]) for r in sub])
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="swin_tiny_patch4_window7_224")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--allocator", choices=["system", "tuned"], default="system",
                        help="system: what a Python process gets; tuned: what swinkit's commands use")
    args = parser.parse_args()
    if args.allocator == "tuned":
        swinkit.tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.rounds} rounds, {args.allocator} allocator")
    rows = sweep(args.model, args.batches, args.dtypes, args.rounds, args.warmup)
    out = HERE / f"batch_sweep_{args.model}_{args.allocator}"
    bench.write_csv(rows, out.with_suffix(".csv"), list(rows[0]))  # atomic, like every swinkit CSV
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out}.csv and .png")


if __name__ == "__main__":
    main()
