"""Inference throughput against batch size, swinkit's automatic path beside its two explicit paths and timm, in
ONE process with the libraries alternated round by round (A B C D, D C B A, ...), so that every round compares
them at the same host speed. fp32, and bfloat16 autocast.

    .venv/bin/python benchmarks/batch_sweep.py                      # Swin-T 224^2, batches 1..64, both dtypes
    .venv/bin/python benchmarks/batch_sweep.py --batches 1 2 4 --dtypes float32 --rounds 5
    .venv/bin/python benchmarks/batch_sweep.py --before 1061ed9 --libs "swinkit auto" "swinkit before" timm

--before REV adds "swinkit before": the same model with the same weights built from swinkit's source at git
revision REV (loaded as the package swinkit_before), so a change's cost is measured in the same run; the table then
adds "auto / before" (> 1: this checkout is faster).

Prints a table (images/s, median of the rounds; ratio = swinkit auto's speed over timm's, median over rounds)
and writes benchmarks/batch_sweep_<model>_<allocator>.csv and .png.
"""
import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
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


def swinkit_at(rev: str):
    """swinkit's package as it was at git revision `rev`, imported under the name swinkit_before."""
    root = Path(tempfile.mkdtemp(prefix="swinkit_before_"))
    archive = subprocess.run(["git", "archive", rev, "src/swinkit"], cwd=HERE.parent, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    pkg = root / "src" / "swinkit"
    spec = importlib.util.spec_from_file_location("swinkit_before", pkg / "__init__.py",
                                                  submodule_search_locations=[str(pkg)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["swinkit_before"] = module
    spec.loader.exec_module(module)
    return module


def sweep(model_name: str, batches: list[int], dtypes: list[str], rounds: int, warmup: int, libs: list[str],
          before: str | None) -> list[dict]:
    ours = bench.build_model("swinkit", model_name).eval()
    peer = bench.build_model("timm", model_name).eval() if "timm" in libs else None
    old = None
    if before:
        old = swinkit_at(before).create_model(model_name).eval()
        old.load_state_dict(ours.state_dict())
    ours_paths = {"swinkit auto": "auto", "swinkit windows": "windows", "swinkit plain": "plain"}
    size = swinkit.SwinConfig.from_name(model_name).img_size
    rows = []
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        for batch in batches:
            x = torch.randn(batch, 3, *size)
            steps = {}
            for lib in libs:
                model = {"timm": peer, "swinkit before": old}.get(lib, ours)
                run = step_fn(model, x, dtype)
                if lib in ours_paths:
                    path = ours_paths[lib]
                    run = (lambda run=run, path=path: (ours.set_inference_path(path), run()))
                steps[lib] = run
                for _ in range(warmup):
                    run()
            times = {lib: [] for lib in libs}
            for r in range(rounds):
                for lib in libs if r % 2 == 0 else libs[::-1]:
                    t0 = time.perf_counter()
                    steps[lib]()
                    times[lib].append(time.perf_counter() - t0)
            row = dict(model=model_name, dtype=dtype_name, batch=batch)
            for lib in libs:
                row[f"{lib} img/s"] = round(batch / statistics.median(times[lib]), 2)
            for other, key in (("timm", "auto / timm"), ("swinkit before", "auto / before")):
                if other in libs:  # > 1: swinkit (this checkout, auto path) faster
                    ratios = [t / s for t, s in zip(times[other], times["swinkit auto"])]
                    row[key] = round(statistics.median(ratios), 3)
                    row[f"{key} min"] = round(min(ratios), 3)
            rows.append(row)
            print(" | ".join(f"{row[k]}" for k in row), flush=True)
    return rows


def plot(rows: list[dict], path: Path, libs: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtypes = sorted({r["dtype"] for r in rows})
    fig, axes = plt.subplots(1, len(dtypes), figsize=(6 * len(dtypes), 4), squeeze=False)
    for ax, dtype in zip(axes[0], dtypes):
        sub = [r for r in rows if r["dtype"] == dtype]
        for lib in libs:
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
    parser.add_argument("--libs", nargs="+", default=list(LIBS), choices=[*LIBS, "swinkit before"],
                        help="what to time (swinkit auto is always kept: the ratios are against it)")
    parser.add_argument("--before", metavar="REV", help="also time swinkit at this git revision (swinkit before)")
    parser.add_argument("--allocator", choices=["system", "tuned"], default="system",
                        help="system: what a Python process gets; tuned: what swinkit's commands use")
    args = parser.parse_args()
    if args.allocator == "tuned":
        swinkit.tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.rounds} rounds, {args.allocator} allocator")
    libs = list(dict.fromkeys(["swinkit auto", *args.libs, *(["swinkit before"] if args.before else [])]))
    if "swinkit before" in libs and not args.before:
        parser.error("swinkit before needs --before REV")
    rows = sweep(args.model, args.batches, args.dtypes, args.rounds, args.warmup, libs, args.before)
    out = HERE / f"batch_sweep_{args.model}_{args.allocator}{'_before_after' if args.before else ''}"
    bench.write_csv(rows, out.with_suffix(".csv"), list(rows[0]))  # atomic, like every swinkit CSV
    plot(rows, out.with_suffix(".png"), libs)
    print(f"wrote {out}.csv and .png")


if __name__ == "__main__":
    main()
