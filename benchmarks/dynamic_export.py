"""The cost of an any-size export (issue 28): swinkit's dynamic ONNX file beside a static one of the same model, and
beside timm's own export, in onnxruntime and OpenVINO (fp32, CPU), in one interleaved run.

    .venv/bin/python benchmarks/dynamic_export.py [--rounds 5] [--threads 2]

One model: timm's swin_tiny_patch4_window7_224 with random weights (seed 0) and swinkit's Swin-T with the same weights.
Files (benchmarks/runs/dynamic_export): swinkit `export` (dynamic height and width, one file for every size),
swinkit `export --static` at 224 and at 512, timm's export by timm's own path (timm.utils.onnx.onnx_export, opset 17,
fixed at 224). Rows: each file at 224 x 224 (batch 1 and 16) and 512 x 512 (batch 1) where it takes that size:
- onnxruntime, the file as it is;
- OpenVINO, the file reshaped to the input's static shape before compiling (what OpenVINO runs fastest);
- OpenVINO with the dynamic file compiled once for any shape (a server taking any size), dynamic file only.
Each round times every row (its order rotating between rounds); the table holds medians of --rounds rounds and the
ratios dynamic / static and swinkit / timm of the same runtime, size and batch. Outputs: every file's output at each size
it takes agrees with eager swinkit (printed). Writes benchmarks/dynamic_export.csv, .md and .png.
"""
from __future__ import annotations

import argparse
import csv
import platform
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from deploy_cpu import ort_fn, ov_fn, time_once  # ov_fn: OpenVINO reshaped to each input's static shape
from swinkit import convert_state_dict, create_model
from swinkit.tools.export import export
from swinkit.utils.cpu import cpu_flags, cpu_name

HERE = Path(__file__).resolve().parent
WORK = HERE / "runs" / "dynamic_export"
CSV, MD, PNG = HERE / "dynamic_export.csv", HERE / "dynamic_export.md", HERE / "dynamic_export.png"
FIELDS = ["file", "runtime", "size", "batch", "img_per_s", "latency_ms", "x_static", "x_timm", "runs_img_per_s",
          "threads", "machine", "date"]
CASES = [(224, 1), (224, 16), (512, 1)]


def models():
    import timm

    torch.manual_seed(0)
    tm = timm.create_model("swin_tiny_patch4_window7_224").eval()
    sk = create_model("swin_t")
    sk.load_state_dict(convert_state_dict(tm.state_dict(), src="timm"))
    return tm, sk.eval()


def files(tm, sk, log) -> dict[str, Path]:
    """name -> ONNX file, made once into WORK."""
    from timm.utils.onnx import onnx_export

    WORK.mkdir(parents=True, exist_ok=True)
    made = {"swinkit dynamic": (WORK / "swinkit_dynamic.onnx", lambda f: export(sk, f, "onnx", (224, 224), log=log)),
            "swinkit static 224": (WORK / "swinkit_static224.onnx",
                                   lambda f: export(sk, f, "onnx", (224, 224), log=log, static=True)),
            "swinkit static 512": (WORK / "swinkit_static512.onnx",
                                   lambda f: export(sk, f, "onnx", (512, 512), log=log, static=True)),
            "timm": (WORK / "timm_224.onnx", lambda f: onnx_export(tm, str(f), input_size=(3, 224, 224), batch_size=1,
                                                                   opset=17, use_dynamo=False, check=False))}
    for name, (path, make) in made.items():
        if not path.exists():
            t0 = time.perf_counter()
            make(path)
            log(f"made {path.name} in {time.perf_counter() - t0:.0f} s")
    return {name: path for name, (path, _) in made.items()}


def ov_dynamic(path: Path, threads: int):
    """OpenVINO CPU fp32 compiled once, with the file's own dynamic shapes."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                           "INFERENCE_PRECISION_HINT": "f32",
                                                           "PERFORMANCE_HINT": "LATENCY"})
    return lambda x: compiled(x)[0]


def takes(name: str, size: int) -> bool:
    return name == "swinkit dynamic" or name.endswith(str(size)) or (name == "timm" and size == 224)


def rows_to_time(paths: dict[str, Path], threads: int) -> list[tuple[str, str, int, int, object]]:
    """(file, runtime, size, batch, runner) for every row of the table."""
    out = []
    for name, path in paths.items():
        runners = [("onnxruntime", ort_fn(path, threads)), ("OpenVINO", ov_fn(path, threads, "f32"))]
        if name == "swinkit dynamic":
            runners.append(("OpenVINO dynamic shapes", ov_dynamic(path, threads)))
        for runtime, fn in runners:
            out += [(name, runtime, s, b, fn) for s, b in CASES if takes(name, s)]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement (at least 3 calls)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    log = print
    tm, sk = models()
    paths = files(tm, sk, log)
    for name, path in paths.items():
        for s in (224, 512):
            if takes(name, s):
                x = np.random.default_rng(0).standard_normal((2, 3, s, s), dtype=np.float32)
                with torch.no_grad():
                    ref = sk(torch.from_numpy(x)).numpy()
                diff = np.abs(ort_fn(path, args.threads)(x) - ref).max() / max(1.0, np.abs(ref).max())
                log(f"{name}: onnxruntime vs eager swinkit at {s}, batch 2: relative max |diff| {diff:.1e}")
    rows = rows_to_time(paths, args.threads)
    inputs = {(s, b): np.random.default_rng(s).standard_normal((b, 3, s, s), dtype=np.float32) for s, b in CASES}
    runs: dict[tuple, list[float]] = {}
    for r in range(args.rounds):
        k = r * len(rows) // max(1, args.rounds)
        for name, runtime, s, b, fn in rows[k:] + rows[:k]:
            runs.setdefault((name, runtime, s, b), []).append(time_once(fn, inputs[(s, b)], args.min_time)[0])
        log(f"round {r + 1}/{args.rounds} done")
    write(runs, args)
    return 0


def write(runs: dict, args) -> None:
    flags = cpu_flags()
    feats = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
             if f in flags]
    import onnxruntime
    import openvino

    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
    med = {k: statistics.median(v) for k, v in runs.items()}
    rows = []
    for (name, runtime, s, b), v in med.items():
        static = med.get((f"swinkit static {s}", runtime if runtime != "OpenVINO dynamic shapes" else "OpenVINO", s, b))
        timm = med.get(("timm", runtime if runtime != "OpenVINO dynamic shapes" else "OpenVINO", s, b))
        rows.append({"file": name, "runtime": runtime, "size": s, "batch": b, "img_per_s": round(v, 2),
                     "latency_ms": round(1000 * b / v, 1),
                     "x_static": f"{v / static:.3f}" if static and name.startswith("swinkit") else "",
                     "x_timm": f"{v / timm:.3f}" if timm else "",
                     "runs_img_per_s": " ".join(f"{t:.2f}" for t in runs[(name, runtime, s, b)]),
                     "threads": args.threads, "machine": cpu_name(), "date": stamp})
    rows.sort(key=lambda r: (r["size"], r["batch"], r["runtime"], r["file"]))
    with open(CSV, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        w.writerows(rows)
    lines = [f"# Any-size (dynamic) vs static ONNX exports of Swin-T, fp32, on {cpu_name()}", "",
             f"{stamp}; CPU flags: {', '.join(feats) or 'none of avx2 / avx512 / vnni / amx'}; {args.threads} threads; "
             f"median of {args.rounds} interleaved rounds; Python {platform.python_version()}, torch {torch.__version__}"
             f", onnxruntime {onnxruntime.__version__}, OpenVINO {openvino.__version__}. x static: images/s over the "
             "static file's in the same runtime, size and batch; x timm: over timm's export's.", "",
             "| file | runtime | size | batch | img/s | ms | x static | x timm |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['file']} | {r['runtime']} | {r['size']} | {r['batch']} | {r['img_per_s']} | {r['latency_ms']} | "
              f"{r['x_static']} | {r['x_timm']} |" for r in rows]
    MD.write_text("\n".join(lines) + "\n")
    plot(rows)
    print("\n".join(lines))


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [f"{s}² b{b}" for s, b in CASES]
    series = sorted({(r["file"], r["runtime"]) for r in rows})
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(series)
    for i, (name, runtime) in enumerate(series):
        ys = [next((r["img_per_s"] for r in rows if (r["file"], r["runtime"], r["size"], r["batch"]) ==
                    (name, runtime, s, b)), 0) for s, b in CASES]
        ax.bar(np.arange(len(CASES)) + i * width, ys, width, label=f"{name} / {runtime}")
    ax.set_xticks(np.arange(len(CASES)) + 0.4 - width / 2, cases)
    ax.set_ylabel("images / s")
    ax.set_title(f"Swin-T fp32, dynamic vs static ONNX ({cpu_name()})")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(PNG, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
