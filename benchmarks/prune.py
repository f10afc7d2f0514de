"""Structured pruning of the cifar10-mini student: accuracy and CPU latency before and after a short fine-tune.

    .venv/bin/python benchmarks/prune.py [--ratios 0.25 0.5] [--epochs 4] [--rounds 15]

The student is benchmarks/runs/c10_student (`swinkit train --data ../shared/data/cifar10-mini --recipe small`: Swin
V1, C 64, depths 2-2, heads 2-4, 32x32). For each ratio R, with the commands a user types:
1. `swinkit prune --checkpoint STUDENT --heads R --mlp R --out runs/prune/rR` (R of each block's heads, at least one
   kept, and R of its MLP hidden units removed, the smallest weights first);
2. `swinkit train --pretrained runs/prune/rR --data DATA --recipe small --epochs E --warmup-epochs 0.5 --lr 5e-4
   --out runs/prune/rR_ft`: a short fine-tune (the recipe's 60 epochs shortened to E, its peak lr halved); the
   unpruned student gets the same fine-tune (runs/prune/r0_ft), the control that tells what the extra epochs alone
   give;
3. every model: val top-1 with `swinkit eval --json`, parameters and multiply-adds per image (swinkit.counting);
4. latency, in one process run under `flock /tmp/swinkit_timing.lock` so that no other timing run overlaps it: eager
   fp32 (torch.inference_mode, the model as `swinkit eval` loads it) and OpenVINO fp32 (the ONNX file of
   swinkit.tools.export.export, reshaped to a static batch and compiled for "CPU" with the LATENCY hint), at batch 1
   and 16. Every round times every model at every batch (the order rotating between rounds, so the unpruned model
   is interleaved with the pruned ones); the table holds the medians of --rounds rounds and the speedups against
   the unpruned model of the same run. One thread (--threads 1) by default: this 2-core host is shared, other jobs
   hold a core, and two OpenMP threads then wait for each other at every small op (the student at batch 1 on
   2026-12-08, load average 1.2-2.4: median 320 ms per call with 2 threads, 3.8 ms with 1).
Finished rows are kept in prune.csv and not redone while their weights are unchanged (delete a row, or the file, to
measure it again); pruned and fine-tuned runs are reused while they are newer than the checkpoint they come from.

Writes benchmarks/prune.csv, prune.md and prune.png (val top-1 against latency).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT.parent / "shared" / "data" / "cifar10-mini"
STUDENT = HERE / "runs" / "c10_student"
WORK = HERE / "runs" / "prune"
CSV, MD, PNG = HERE / "prune.csv", HERE / "prune.md", HERE / "prune.png"
SWINKIT = str(ROOT / ".venv" / "bin" / "swinkit")
LOCK = "/tmp/swinkit_timing.lock"
BATCHES = (1, 16)
TIMED = [f"{kind}_b{b}_ms" for kind in ("eager", "ov") for b in BATCHES]
FIELDS = ["model", "ratio", "finetune_epochs", "finetune_min", "params", "heads", "mlp_units", "mmacs", "top1",
          "top5", *TIMED, *[t.replace("_ms", "_speedup") for t in TIMED], "ov_max_abs_diff", "rounds", "threads",
          "load", "cpu", "date", "weights_mtime"]


def swinkit(*args: str) -> str:
    """Run a swinkit command, echoing it; its stdout."""
    print("$ swinkit " + " ".join(args), flush=True)
    done = subprocess.run([SWINKIT, *args], stdout=subprocess.PIPE, text=True)
    if done.returncode:
        sys.exit(f"swinkit {args[0]} failed (exit {done.returncode})")
    return done.stdout


def lscpu() -> tuple[str, str]:
    """(model name, which of avx2 / avx512 / vnni / amx the CPU has) from lscpu."""
    fields = dict(line.split(":", 1) for line in subprocess.run(["lscpu"], stdout=subprocess.PIPE, text=True)
                  .stdout.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    groups = {"avx2": ["avx2"], "avx512": [f for f in flags if f.startswith("avx512")],
              "vnni": [f for f in flags if "vnni" in f], "amx": [f for f in flags if f.startswith("amx")]}
    have = [f"{k} ({' '.join(v)})" if k != "avx2" else k for k, v in groups.items() if v and set(v) <= set(flags)]
    lack = [k for k, v in groups.items() if not (v and set(v) <= set(flags))]
    return fields.get("Model name", "unknown").strip(), f"has {', '.join(have) or 'none'}; no {', '.join(lack)}"


# ---- rows


def read_rows() -> dict[str, dict]:
    if not CSV.exists():
        return {}
    with CSV.open() as f:
        return {r["model"]: r for r in csv.DictReader(f)}


def write_rows(rows: dict[str, dict]) -> None:
    tmp = CSV.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        w.writerows(rows.values())
    os.replace(tmp, CSV)


def stale(made: Path, source: Path) -> bool:
    """Whether `made` is missing or older than the file it was made from."""
    return not made.exists() or made.stat().st_mtime < source.stat().st_mtime


def finetune(src: Path, out: Path, epochs: int) -> Path:
    """`swinkit train --pretrained src` for `epochs` epochs into `out`, unless out is newer than src."""
    if stale(out / "summary.json", src / "best.pt"):
        shutil.rmtree(out, ignore_errors=True)  # train refuses to overwrite a run
        swinkit("train", "--pretrained", str(src), "--data", str(DATA), "--recipe", "small", "--epochs", str(epochs),
                "--warmup-epochs", "0.5", "--lr", "5e-4", "--out", str(out))
    return out


def models(ratios: list[float], epochs: int) -> dict[str, tuple[Path, float, int]]:
    """name -> (run directory, ratio, fine-tune epochs): the student, the student fine-tuned as the pruned models are
    (the control: is a gain the fine-tune's or the pruning's?), each pruned run and its fine-tune (made here when
    missing or older than what they come from)."""
    if not ((STUDENT / "best.pt").exists() and (STUDENT / "summary.json").exists()):
        sys.exit(f"{STUDENT} has no best.pt and summary.json yet: train the student first (module docstring)")
    out = {"unpruned": (STUDENT, 0.0, 0), "unpruned + fine-tune": (finetune(STUDENT, WORK / "r0_ft", epochs), 0.0,
                                                                    epochs)}
    for r in ratios:
        pruned = WORK / f"r{r}"
        if stale(pruned / "best.pt", STUDENT / "best.pt"):
            swinkit("prune", "--checkpoint", str(STUDENT), "--heads", str(r), "--mlp", str(r), "--out", str(pruned),
                    "--overwrite")
        out[f"pruned {r}"] = (pruned, r, 0)
        out[f"pruned {r} + fine-tune"] = (finetune(pruned, WORK / f"r{r}_ft", epochs), r, epochs)
    return out


def describe(name: str, run: Path, ratio: float, epochs: int) -> dict:
    """A row without its timings: sizes, val accuracy, the fine-tune's minutes."""
    from swinkit.counting import count_macs
    from swinkit.inference.load import load_trained
    from swinkit.tools.prune import count

    model = load_trained(run).model
    params, heads, units = count(model)
    result = json.loads(swinkit("eval", "--checkpoint", str(run), "--data", str(DATA), "--json").strip()
                        .splitlines()[-1])
    summary = json.loads((run / "summary.json").read_text()) if epochs else {}
    return {"model": name, "ratio": ratio, "finetune_epochs": epochs,
            "finetune_min": round(summary["wall_seconds"] / 60, 2) if epochs else "", "params": params,
            "heads": heads, "mlp_units": units, "mmacs": round(count_macs(model, model.cfg.img_size) / 1e6, 2),
            "top1": round(result["top1"], 2), "top5": round(result["top5"], 2)}


def export_onnx(run: Path) -> Path:
    """The run's model as ONNX (swinkit.tools.export), re-exported when the checkpoint is newer."""
    from swinkit.inference.load import load_trained
    from swinkit.tools.export import export

    onnx = WORK / "onnx" / f"{run.name}.onnx"
    if not onnx.exists() or onnx.stat().st_mtime < (run / "best.pt").stat().st_mtime:
        loaded = load_trained(run)
        export(loaded.model, onnx, "onnx", meta=loaded.meta, log=lambda _: None)
    return onnx


# ---- the timed section (a separate process, under flock)


def time_models(job: dict) -> dict:
    """{name: {eager_b1_ms: ..., ...}}: medians over rounds, each round every model at every batch in rotating
    order."""
    import numpy as np
    import openvino as ov
    import torch

    from swinkit.inference.load import load_trained

    core = ov.Core()
    threads = job["threads"]
    torch.set_num_threads(threads)
    runners, diffs = {}, {}
    for name, (run, onnx) in job["models"].items():
        model = load_trained(run).model
        size = model.cfg.img_size
        for b in BATCHES:
            x = torch.randn(b, 3, *size)
            net = core.read_model(onnx)
            net.reshape([b, 3, *size])
            compiled = core.compile_model(net, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                                "INFERENCE_NUM_THREADS": threads})
            with torch.inference_mode():
                ref = model(x).numpy()
            diffs[name] = max(diffs.get(name, 0.0), float(np.abs(compiled([x.numpy()])[0] - ref).max()))
            runners[(name, "eager", b)] = (lambda m, x: lambda: m(x))(model, x)
            runners[(name, "ov", b)] = (lambda c, x: lambda: c([x]))(compiled, x.numpy())
    times: dict = {k: [] for k in runners}
    keys = list(runners)
    load = os.getloadavg()[0]
    with torch.inference_mode():
        for k in keys:  # warm-up
            for _ in range(3):
                runners[k]()
        for r in range(job["rounds"]):
            for k in keys[r % len(keys):] + keys[:r % len(keys)]:
                n = 20 if k[2] == 1 else 4
                start = time.perf_counter()
                for _ in range(n):
                    runners[k]()
                times[k].append((time.perf_counter() - start) / n * 1e3)
    load = f"{load:.1f}-{os.getloadavg()[0]:.1f}"  # 1-minute load average at the start and end
    out = {name: {"ov_max_abs_diff": f"{diffs[name]:.1e}", "load": load} for name in job["models"]}
    for (name, kind, b), t in times.items():
        out[name][f"{kind}_b{b}_ms"] = round(statistics.median(t), 3)
    return out


def timed(todo: dict[str, Path], rounds: int, threads: int) -> dict:
    """time_models on the student and `todo` in a fresh process under flock (so no other timing run overlaps)."""
    job = {"models": {n: [str(run), str(export_onnx(run))] for n, run in {"unpruned": STUDENT, **todo}.items()},
           "rounds": rounds, "threads": threads}
    WORK.mkdir(parents=True, exist_ok=True)
    job_file, result_file = WORK / "timing_job.json", WORK / "timing_result.json"
    job_file.write_text(json.dumps(job))
    print(f"timing {len(job['models'])} models under flock {LOCK} ...", flush=True)
    subprocess.run(["flock", LOCK, sys.executable, __file__, "--time", str(job_file), str(result_file)], check=True)
    return json.loads(result_file.read_text())


# ---- outputs


def write_md(rows: dict[str, dict], cpu: tuple[str, str], epochs: int) -> None:
    head = ["model", "params", "heads", "MLP units", "MMACs", "val top-1 %", "eager b1 ms", "eager b16 ms",
            "OpenVINO b1 ms", "OpenVINO b16 ms"]
    first = next(iter(rows.values()))
    lines = ["# Structured pruning of the cifar10-mini student (benchmarks/prune.py)", "",
             f"CPU: {cpu[0]}, {os.cpu_count()} cores ({cpu[1]}); {first['threads']} thread(s) (torch and OpenVINO); "
             f"float32 everywhere; measured {first['date']}, 1-minute load average {first['load']} during the timing. "
             f"Latency: median ms per call over {first['rounds']} "
             "interleaved rounds, in brackets the speedup against the unpruned model of the same run. Fine-tune: "
             f"`swinkit train --pretrained PRUNED --recipe small --epochs {epochs} --warmup-epochs 0.5 --lr 5e-4` "
             "on cifar10-mini's 10,000 training images; val top-1 on its 2,000 val images (`swinkit eval`).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows.values():
        ft = f" ({r['finetune_min']} min)" if r["finetune_epochs"] not in ("", "0", 0) else ""
        cells = [r["model"] + ft, f"{int(r['params']):,}", r["heads"], r["mlp_units"], r["mmacs"], r["top1"]]
        for t in TIMED:
            speed = float(r[t.replace("_ms", "_speedup")])
            cells.append(f"{float(r[t]):.2f}" + ("" if r["model"] == "unpruned" else f" ({speed:.2f}x)"))
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    MD.write_text("\n".join(lines) + "\n")


def write_png(rows: dict[str, dict]) -> None:
    """Val top-1 against ms per call: one panel per runtime and batch; each point labelled with its pruning ratio
    (+ft: fine-tuned)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), sharey=True)
    labels = [f"{float(r['ratio']):g}" + (" +ft" if "fine-tune" in r["model"] else "") for r in rows.values()]
    ys = [float(r["top1"]) for r in rows.values()]
    for (kind, title), row in zip((("eager", "eager PyTorch fp32"), ("ov", "OpenVINO fp32")), axes):
        for b, ax in zip(BATCHES, row):
            xs = [float(r[f"{kind}_b{b}_ms"]) for r in rows.values()]
            ax.scatter(xs, ys, c=["C0" if "+ft" in label else "C1" for label in labels])
            for x, y, label in zip(xs, ys, labels):
                ax.annotate(label, (x, y), fontsize=8, xytext=(4, 2), textcoords="offset points")
            ax.set_title(f"{title}, batch {b}")
            ax.set_xlabel("ms per call (median)")
            ax.grid(alpha=0.3)
        row[0].set_ylabel("val top-1 %")
    fig.suptitle("Pruning the cifar10-mini student (label: share of heads and MLP units removed; +ft: fine-tuned)")
    fig.tight_layout()
    tmp = PNG.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, PNG)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--epochs", type=int, default=4, help="fine-tune epochs (about 3 minutes on 2 cores)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1, help="torch and OpenVINO threads in the timed section (module "
                                                         "docstring: why 1)")
    p.add_argument("--time", nargs=2, metavar=("JOB", "RESULT"), help=argparse.SUPPRESS)  # the timed process
    args = p.parse_args()
    if args.time:
        result = time_models(json.loads(Path(args.time[0]).read_text()))
        Path(args.time[1]).write_text(json.dumps(result))
        return
    cpu = lscpu()
    rows = read_rows()
    todo = {}
    for name, (run, ratio, epochs) in models(args.ratios, args.epochs).items():
        stamp = str((run / "best.pt").stat().st_mtime_ns)
        if rows.get(name, {}).get("weights_mtime") != stamp:  # new weights: sizes and accuracy again
            rows[name] = {**describe(name, run, ratio, epochs), "cpu": cpu[0], "weights_mtime": stamp}
            write_rows(rows)
        if not all(rows[name].get(t) for t in TIMED) or str(rows[name].get("threads")) != str(args.threads):
            todo[name] = run
    if todo:
        times = timed({n: r for n, r in todo.items() if n != "unpruned"}, args.rounds, args.threads)
        base = times["unpruned"]
        date = datetime.date.today().isoformat()
        for name in todo:
            rows[name].update(times[name], date=date, rounds=args.rounds, threads=args.threads)
            for t in TIMED:
                rows[name][t.replace("_ms", "_speedup")] = round(base[t] / times[name][t], 3)
        write_rows(rows)
    order = ["unpruned", "unpruned + fine-tune"] + [n for r in args.ratios
                                                   for n in (f"pruned {r}", f"pruned {r} + fine-tune")]
    rows = {n: rows[n] for n in order}
    write_md(rows, cpu, args.epochs)
    write_png(rows)
    print(MD.read_text())


if __name__ == "__main__":
    main()
