"""Which INT8 format keeps its accuracy on this CPU, and what it costs in speed (issue 24).

    .venv/bin/python benchmarks/int8_formats.py [--rounds 5] [--batches 1 8] [--threads 2]

Formats (onnxruntime static QDQ, per-channel weights, MinMax calibration, as `swinkit quantize` makes them):
    u8s8 w8   uint8 activations x int8 weights (swinkit quantize before issue 24)
    u8s8 w7   the same with 7-bit weights (reduce_range; swinkit quantize's default now)
    s8s8 w8   int8 activations x int8 weights (onnxruntime's general advice for QDQ)
    u8u8 w8   uint8 activations x uint8 weights
Accuracy: the digits classifier `swinkit train` makes by default (trained once into benchmarks/runs/int8_digits),
exported and quantized in each format with 64 calibration digits from train/; top-1 agreement with the fp32 file on
the 359 held-out val digits, through this CPU's int8 kernels and through the file's QDQ arithmetic in float
(onnxruntime without graph optimisation), which no CPU changes. Speed: Swin-T at 224x224 with random weights
(seed 0; no downloads here), calibrated on 16 cifar10-mini val photographs; each round times every format at every
batch size (order rotated), and the table holds medians over rounds, as ratios to fp32 and to u8s8 w8.

Writes benchmarks/int8_formats.csv and .md.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from swinkit import create_model
from swinkit.utils import cpu
from swinkit.data import digits_folder
from swinkit.io.load import load_model
from swinkit.tools import bench
from swinkit.tools.export import OnnxModel, export
from swinkit.tools.quantize import _inputs, calibration_files, quantize_onnx

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
WORK = HERE / "runs" / "int8_formats"
DIGITS_RUN = HERE / "runs" / "int8_digits"
FORMATS = {"u8s8 w8": (("QUInt8", "QInt8"), False), "u8s8 w7": (("QUInt8", "QInt8"), True),
           "s8s8 w8": (("QInt8", "QInt8"), False), "u8u8 w8": (("QUInt8", "QUInt8"), False)}
FIELDS = ["model", "format", "batch", "img_per_s", "x_fp32", "x_u8s8_w8", "agreement_kernels", "agreement_float_qdq",
          "images", "threads", "machine", "date"]


def quantize_all(fp32: Path, calib: list[Path], tag: str) -> dict[str, Path]:
    """fp32 plus every format's file of `fp32`."""
    files = {"fp32": fp32}
    for name, (types, reduce_range) in FORMATS.items():
        out = WORK / f"{tag}.{name.replace(' ', '_')}.onnx"
        quantize_onnx(fp32, out, calib, reduce_range=reduce_range, types=types)
        files[name] = out
    return files


def accuracy_rows(threads: int) -> list[dict]:
    if not (DIGITS_RUN / "best.pt").exists():
        subprocess.run([sys.executable, "-m", "swinkit", "train", "--out", str(DIGITS_RUN), "--threads", str(threads)],
                       check=True)
    ck = torch.load(DIGITS_RUN / "best.pt", weights_only=True, map_location="cpu")
    fp32 = WORK / "digits.fp32.onnx"
    export(load_model(DIGITS_RUN / "best.pt"), fp32, "onnx", meta={"class_names": ck["class_names"], "data": ck["data"]},
           log=lambda _: None)
    files = quantize_all(fp32, calibration_files(digits_folder() / "train", 64), "digits")
    val = calibration_files(digits_folder() / "val", None)
    ref = OnnxModel(files["fp32"])
    x = np.concatenate(_inputs(val, ref.meta))
    want = ref(x).argmax(1)
    rows = []
    for name, path in files.items():
        got = {opt: OnnxModel(path, optimized=opt)(x).argmax(1) for opt in (True, False)}
        rows.append(dict(model="digits (swinkit train default)", format=name, images=len(val),
                         agreement_kernels=float(np.mean(got[True] == want)),
                         agreement_float_qdq=float(np.mean(got[False] == want))))
    return rows


def speed_rows(rounds: int, batches: list[int], threads: int) -> list[dict]:
    import onnxruntime as ort

    torch.manual_seed(0)
    model = create_model("swin_tiny_patch4_window7_224").eval()
    fp32 = WORK / "swin_t.fp32.onnx"
    export(model, fp32, "onnx", (224, 224), log=lambda _: None)
    files = quantize_all(fp32, calibration_files(SHARED / "cifar10-mini" / "val", 16), "swin_t")
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sessions = {n: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for n, p in files.items()}
    rng = np.random.default_rng(0)
    times: dict[tuple[str, int], list[float]] = {(n, b): [] for n in files for b in batches}
    for r in range(rounds):
        names = list(files)[r % len(files):] + list(files)[:r % len(files)]
        for b in batches:
            x = rng.standard_normal((b, 3, 224, 224), dtype=np.float32)
            for n in names:
                s = sessions[n]
                s.run(None, {s.get_inputs()[0].name: x})  # warm
                t0, k = time.perf_counter(), 0
                while time.perf_counter() - t0 < 1.0 or k < 2:
                    s.run(None, {s.get_inputs()[0].name: x})
                    k += 1
                times[n, b].append(b * k / (time.perf_counter() - t0))
        print(f"round {r + 1}/{rounds} done", flush=True)
    rows = []
    for b in batches:
        med = {n: statistics.median(times[n, b]) for n in files}
        for n in files:
            rows.append(dict(model="Swin-T 224 (random weights)", format=n, batch=b, img_per_s=round(med[n], 2),
                             x_fp32=round(med[n] / med["fp32"], 3), x_u8s8_w8=round(med[n] / med["u8s8 w8"], 3)))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    stamp = dict(threads=args.threads, machine=cpu.describe(), date=time.strftime("%Y-%m-%d %H:%M"))
    rows = [{**r, **stamp} for r in accuracy_rows(args.threads) + speed_rows(args.rounds, args.batches, args.threads)]
    bench.write_csv(rows, HERE / "int8_formats.csv", FIELDS)
    lines = [f"# INT8 formats on {stamp['machine']} ({stamp['date']}, {args.threads} threads)", "",
             "| model | format | batch | img/s | x fp32 | x u8s8 w8 | top-1 agreement (int8 kernels) | "
             "(QDQ in float) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        pct = (lambda v: f"{100 * v:.1f}%" if v is not None else "")
        lines.append(f"| {r['model']} | {r['format']} | {r.get('batch', '')} | {r.get('img_per_s', '')} | "
                     f"{r.get('x_fp32', '')} | {r.get('x_u8s8_w8', '')} | {pct(r.get('agreement_kernels'))} | "
                     f"{pct(r.get('agreement_float_qdq'))} |")
    text = "\n".join(lines) + "\n"
    (HERE / "int8_formats.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
