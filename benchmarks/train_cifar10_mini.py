"""Train a small Swin from scratch on cifar10-mini with the documented small-data recipe and record the result.

    .venv/bin/python benchmarks/train_cifar10_mini.py [--nproc 2] [--data DIR] [--note TEXT] [-- swinkit train flags]

Runs the exact command a user types (`swinkit train --data ... --recipe small ...`, under torchrun with --nproc
processes), then appends one row to
benchmarks/train_cifar10_mini.csv (val top-1/top-5, images/s, training and wall seconds, the machine's load
average, which matters on a shared machine) and rewrites benchmarks/train_cifar10_mini.md from every row.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
CSV, MD = HERE / "train_cifar10_mini.csv", HERE / "train_cifar10_mini.md"
FIELDS = ["date", "command", "params_m", "epochs", "val_top1", "val_top5", "best_val_top1", "images_per_sec",
          "train_minutes", "wall_minutes", "processes", "threads", "cpus", "load_before", "load_after", "torch", "note"]
BIN = ROOT / ".venv" / "bin"


def run_training(data: Path, out: Path, nproc: int, extra: list[str]) -> tuple[str, dict, float, float]:
    """(command, summary.json, load average before, after) of one `swinkit train` run."""
    launch = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(nproc), "-m", "swinkit"] if nproc > 1 \
        else [str(BIN / "swinkit")]
    cmd = [*launch, "train", "--data", str(data), "--recipe", "small", "--out", str(out), *extra]
    before = os.getloadavg()[0]
    subprocess.run(cmd, check=True)
    summary = json.loads((out / "summary.json").read_text())
    shown = [Path(cmd[0]).name, *cmd[1:]]
    shown[shown.index("--data") + 1] = os.path.relpath(data, ROOT)
    shown[shown.index("--out") + 1] = os.path.relpath(out, ROOT)
    return shlex.join(shown), summary, before, os.getloadavg()[0]


def row_of(command: str, s: dict, before: float, after: float, extra: list[str], note: str) -> dict:
    default = "1" if s["world_size"] > 1 else str(torch.get_num_threads())  # torchrun sets OMP_NUM_THREADS=1
    threads = extra[extra.index("--threads") + 1] if "--threads" in extra else default
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "command": command, "params_m": f"{s['params'] / 1e6:.2f}",
            "epochs": s["epochs"], "val_top1": f"{s['val_top1']:.2f}", "val_top5": f"{s['val_top5']:.2f}",
            "best_val_top1": f"{s['best_val_top1']:.2f}", "images_per_sec": f"{s['images_per_sec']:.0f}",
            "train_minutes": f"{s['train_seconds'] / 60:.1f}", "wall_minutes": f"{s['wall_seconds'] / 60:.1f}",
            "processes": s["world_size"], "threads": threads, "cpus": os.cpu_count(), "load_before": f"{before:.1f}",
            "load_after": f"{after:.1f}", "torch": torch.__version__, "note": note}


def write_tables(row: dict) -> list[dict]:
    rows = list(csv.DictReader(open(CSV))) if CSV.exists() else []
    rows.append(row)
    with open(CSV, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    lines = [f"# cifar10-mini from scratch ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)", "",
             "Goal: >= 60% val top-1 within 10 minutes of training. Load = 1-minute load average before/after "
             "(the machine is shared: a load above the core count means other jobs took CPU time).", "",
             "| date | val top-1 | val top-5 | images/s | train min | wall min | processes x threads | load | command "
             "| note |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['date']} | {r['val_top1']}% | {r['val_top5']}% | {r['images_per_sec']} | {r['train_minutes']} | "
              f"{r['wall_minutes']} | {r['processes']} x {r['threads']} | {r['load_before']}/{r['load_after']} | "
              f"`{r['command']}` | {r['note']} |" for r in rows]
    MD.write_text("\n".join(lines) + "\n")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10-mini")
    p.add_argument("--out", type=Path, help="run directory (default: benchmarks/runs/cifar10_mini-<time>)")
    p.add_argument("--nproc", type=int, default=2, help="training processes (torchrun); 1 runs swinkit directly")
    p.add_argument("--note", default="", help="free text for the table (e.g. what else ran on the machine)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: flags passed to swinkit train")
    args = p.parse_args()
    if not (args.data / "train").is_dir():
        print(f"no cifar10-mini at {args.data} (expected train/ and val/ class folders); pass --data DIR")
        return 1
    extra = [a for a in args.extra if a != "--"]
    out = args.out or HERE / "runs" / time.strftime("cifar10_mini-%Y%m%d-%H%M%S")
    command, summary, before, after = run_training(args.data, out, args.nproc, extra)
    row = row_of(command, summary, before, after, extra, args.note)
    write_tables(row)
    print(f"val top-1 {row['val_top1']}%  {row['images_per_sec']} images/s  {row['train_minutes']} min training "
          f"(load {row['load_before']} -> {row['load_after']}); tables: {CSV.name}, {MD.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
