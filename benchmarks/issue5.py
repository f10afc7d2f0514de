"""Issue 5's measurements, each one `swinkit bench` command, and the issue's targets checked from their CSVs.

    .venv/bin/python benchmarks/issue5.py                       # every run but the compiled ones (2-3 h, 2 cores)
    .venv/bin/python benchmarks/issue5.py --only swin_t_infer   # one of them
    .venv/bin/python benchmarks/issue5.py --summary-only        # re-read the CSVs, print the target table
    .venv/bin/python benchmarks/issue5.py --only swin_t_bf16_b256_cuda_compile   # on a CUDA machine

Writes benchmarks/<run>.csv and .png per run, and benchmarks/issue5_summary.csv (one row per target).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import shlex
import sys
from pathlib import Path

from swinkit.tools import bench
from swinkit.cli import main as swinkit

HERE = Path(__file__).resolve().parent
ALL = "swinkit,timm,timm-sdpa,torchvision,transformers"
RUNS = {  # name -> `swinkit bench` arguments (--out, --name and --threads are added)
    # warm-up steps let every library's allocator settle: a fresh process page-faults its first steps' memory
    "swin_t_infer": f"--model swin_tiny_patch4_window7_224 --batch-size 16 --mode infer --repeats 5 --warmup 3 "
                    f"--libs {ALL}",
    "swinv2_t_w8_infer": "--model swinv2_tiny_window8_256 --batch-size 16 --mode infer --repeats 5 --warmup 3 "
                         "--libs swinkit,timm,torchvision,transformers",
    # training steps take 2-4 s: 8 s of timed steps gives each process a median of 3-5 steps, not a single one
    "swin_t_train_b8": f"--model swin_tiny_patch4_window7_224 --batch-size 8 --mode train --repeats 5 --warmup 2 "
                       f"--min-time 8 --libs {ALL}",
    "swin_t_train_b16": f"--model swin_tiny_patch4_window7_224 --batch-size 16 --mode train --repeats 3 --warmup 2 "
                        f"--min-time 8 --libs {ALL}",
    "swinv2_t_w16_sweep": "--model swinv2_tiny_window16_256 --sweep 512 1024 1536 2048 --batch-size 1 --repeats 3 "
                          "--libs swinkit,timm",
    "swinv2_t_w16_4096": "--model swinv2_tiny_window16_256 --sweep 4096 --batch-size 1 --repeats 1 --libs swinkit",
    "swin_t_infer_compile": "--model swin_tiny_patch4_window7_224 --batch-size 16 --mode infer --repeats 3 --compile "
                            "--warmup 2 --libs swinkit,timm,timm-sdpa",
    "swin_t_bf16_b256_cuda_compile": "--model swin_tiny_patch4_window7_224 --batch-size 256 --dtype bfloat16 "
                                     "--device cuda --compile --mode infer --repeats 5 --libs swinkit,timm",
}
# the same runs with every library's process on swinkit's tuned allocator (swinkit.allocator), as swinkit's commands
# run; Swin-T against timm's two paths only, to keep these runs short
TUNED = ("swin_t_infer", "swinv2_t_w8_infer", "swin_t_train_b8", "swin_t_train_b16", "swinv2_t_w16_sweep")
RUNS.update({f"{name}_tuned": RUNS[name].replace(f"--libs {ALL}", "--libs swinkit,timm,timm-sdpa")
             + " --allocator tuned" for name in TUNED})
CPU_RUNS = [name for name in RUNS if "compile" not in name]  # the default set; compiled runs on request


def command(name: str, threads: int) -> list[str]:
    return ["bench", *shlex.split(RUNS[name]), "--threads", str(threads), "--out", str(HERE), "--name", name]


def read(name: str) -> list[dict]:
    path = HERE / f"{name}.csv"
    if not path.exists():
        return []
    with open(path) as f:
        return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _num(v: str):
    try:
        return float(v) if "." in v or "e" in v else int(v)
    except ValueError:
        return v or None


def _best_timm(rows: list[dict], mode: str = "infer") -> float | None:
    speeds = [r["img_per_s"] for r in rows if r["lib"] in ("timm", "timm-sdpa") and r["mode"] == mode
              and r["img_per_s"]]
    return max(speeds) if speeds else None


def _ours(rows: list[dict], **match) -> dict:
    return next((r for r in rows if r["lib"] == "swinkit" and all(r[k] == v for k, v in match.items())), {})


def targets(name: str, rows: list[dict]) -> list[tuple[str, float | None, float, str]]:
    """(target, measured, bound, "<=" or ">=") for the issue's targets that this run measures."""
    name, ours = name.removesuffix("_tuned"), _ours(rows)
    if name in ("swin_t_infer", "swin_t_infer_compile", "swin_t_train_b8", "swin_t_train_b16",
                "swin_t_bf16_b256_cuda_compile"):
        best = _best_timm(rows, ours.get("mode"))
        speed = ours["img_per_s"] / best if ours.get("img_per_s") and best else None
        out = [("speed / best timm (default or SDPA path)", speed, 1.0 if "compile" in name else 1.3, ">=")]
        if name == "swin_t_infer":
            out.append(("fraction of the matmul-bound limit", ours.get("fraction_of_limit"), 0.8, ">="))
        return out
    if name == "swinv2_t_w8_infer":
        return [("speed / fastest peer", ours.get("speed_vs_best_peer"), 1.3, ">=")]
    if name == "swinv2_t_w16_4096":  # runs at all within this machine's 24 GB (GB above the model's own)
        mem = _ours(rows, img_size=4096).get("peak_mem_mb")
        return [("4096^2 peak GB above the model", mem and mem / 1024, 24.0, "<=")]
    out = []
    for size in (1536, 2048):
        r = _ours(rows, img_size=size)
        out += [(f"{size}^2 peak memory / timm", r.get("mem_vs_best_peer"), 0.5, "<="),
                (f"{size}^2 time / timm", r.get("time_vs_best_peer"), 0.5, "<=")]
    return out + [("time growth 512^2 -> 2048^2 vs linear in pixels", ours.get("time_growth_vs_linear"), 1.1, "<=")]


def summary(names: list[str]) -> list[dict]:
    out = []
    for name in names:
        rows = read(name)
        for target, value, bound, op in targets(name, rows):
            met = None if value is None else (value >= bound if op == ">=" else value <= bound)
            verdict = {None: "not measured", True: "yes", False: "no"}[met]
            if "fraction" in target and value is not None and value > 1:  # impossible: the host's speed moved
                verdict = "invalid (above the limit: the host's matmul rate changed during the run)"
            out.append(dict(run=name, target=f"{target} {op} {bound:g}", measured=value, met=verdict,
                            date=rows[0]["date"] if rows else None, machine=rows[0]["machine"] if rows else None))
    return out


def print_summary(rows: list[dict]) -> None:
    print("| run | target | measured | met |\n| --- | --- | --- | --- |")
    for r in rows:
        value = "-" if r["measured"] is None else f"{r['measured']:.2f}"
        print(f"| {r['run']} | {r['target']} | {value} | {r['met']} |")


def print_results(name: str) -> None:
    """The run's CSV as a markdown table (medians; ratios to the best peer of the same mode and size)."""
    rows = read(name)
    if not rows:
        return
    num = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    print(f"\n{name} ({rows[0]['date']}, {rows[0]['machine']}, matmul {num(rows[0]['matmul_gflops'], '.0f')} "
          f"GFLOP/s)\n\n| lib | mode | size | img/s | s/step | x best peer | peak MB above model | "
          f"x best peer | GMACs | % of matmul limit |\n" + "| --- " * 10 + "|")
    for r in rows:
        print(f"| {r['lib']} | {r['mode']} | {r['img_size']} | {num(r['img_per_s'], '.2f')} | "
              f"{num(r['step_time_s'], '.3f')} | {num(r['speed_vs_best_peer'], '.2f')} | "
              f"{num(r['peak_mem_mb'], '.0f')} | {num(r['mem_vs_best_peer'], '.2f')} | "
              f"{num(r['macs_per_image'] and r['macs_per_image'] / 1e9, '.2f')} | "
              f"{num(r['fraction_of_limit'] and 100 * r['fraction_of_limit'], '.0f')} |")
    for r in {r["lib"]: r for r in rows if r["time_exponent"] is not None}.values():
        print(f"\n{r['lib']}: time ~ pixels^{r['time_exponent']:.2f} ({r['time_growth_vs_linear']:.2f}x linear "
              f"from the smallest to the largest size), memory ~ pixels^{num(r['mem_exponent'], '.2f')} "
              f"({num(r['mem_growth_vs_linear'], '.2f')}x linear)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(RUNS), help="runs to do (default: every CPU run)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for every measurement")
    parser.add_argument("--summary-only", action="store_true", help="skip measuring; summarise existing CSVs")
    args = parser.parse_args()
    names = args.only or CPU_RUNS
    for name in [] if args.summary_only else names:
        argv = command(name, args.threads)
        print(f"\n## {name}: swinkit {shlex.join(argv)}  ({datetime.datetime.now():%Y-%m-%d %H:%M})", flush=True)
        swinkit(argv)
    for name in RUNS:
        print_results(name)
    rows = summary(list(RUNS))  # every target, "not measured" where a run's CSV is missing
    print()
    print_summary(rows)
    bench.write_csv(rows, HERE / "issue5_summary.csv", list(rows[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
