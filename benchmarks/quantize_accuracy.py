"""Accuracy of trained models through each deployment path: float32, bfloat16, onnxruntime fp32 / INT8, OpenVINO INT8,
and INT8 after quantization-aware training (issue 17's "at most 0.5 points lost").

    .venv/bin/python benchmarks/quantize_accuracy.py [--cifar RUN] [--qat RUN] [--camvid RUN] [--no-bf16-camvid]

Models (trained here with the existing recipes; benchmarks/distill_simmim_cifar10_mini.py, segment_camvid.py):
- cifar10-mini: the `--recipe small` student (benchmarks/runs/c10_student), 2,000 val images, top-1;
- the same after `swinkit train --qat --pretrained c10_student/best.pt` (made here when --qat's folder is missing:
  3 epochs, lr 1e-4, no warmup), quantized the same way;
- CamVid: the 20-minute UPerNet (benchmarks/runs/panoptic_budget/upernet_20min), 101 val images at the size
  `swinkit eval` reads them (360x480), mIoU.
Paths: `swinkit eval` in float32 and with `--dtype bfloat16`; the model exported by swinkit (`export`, at the eval
size) in onnxruntime fp32; `swinkit quantize` (onnxruntime static INT8, 64 calibration images from the training
split; 16 for CamVid) in onnxruntime; NNCF INT8 of the same export in OpenVINO (same calibration images, the settings
deploy_cpu.NNCF_BEST that benchmarks/openvino_int8.py chose). Every path sees the images exactly as `swinkit eval`
prepares them.

Writes benchmarks/quantize_accuracy.csv and .md.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deploy_cpu import nncf_quantize
from swinkit.cli import main as swinkit
from swinkit.data import ImageFolderDataset, eval_transform
from swinkit.inference.load import load_trained
from swinkit.tasks import segment as S
from swinkit.tools.export import export, read_metadata
from swinkit.tools.quantize import _inputs, calibration_files, quantize_onnx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared" / "data"
RUNS = HERE / "runs"
CSV, MD = HERE / "quantize_accuracy.csv", HERE / "quantize_accuracy.md"


def eval_cli(run: Path, data: Path, dtype: str) -> tuple[float, float]:
    """(primary metric in %, seconds) of `swinkit eval --checkpoint RUN --data DATA --dtype DTYPE --json`."""
    import contextlib
    import io

    out, t0 = io.StringIO(), time.perf_counter()
    with contextlib.redirect_stdout(out):
        assert swinkit(["eval", "--checkpoint", str(run), "--data", str(data), "--json", "--dtype", dtype]) == 0
    r = json.loads(out.getvalue().strip().splitlines()[-1])
    return (r["top1"] if "top1" in r else 100 * r["miou"]), time.perf_counter() - t0


def dataset(loaded, data: Path):
    """(val dataset as `swinkit eval` reads it, metric(list of logits, list of targets) -> %)."""
    meta = loaded.meta
    if loaded.task.name == "classify":
        d = meta["data"]
        ds = ImageFolderDataset(data / "val", eval_transform(d["img_size"], d["crop_pct"], d["mean"], d["std"]),
                                classes=meta["class_names"])
        return ds, lambda logits, ys: 100 * float(np.mean(np.concatenate(logits).argmax(1) == np.array(ys)))
    names, _, ignore = S.resolve_labels(data)
    d = meta["data"]
    ds = S.SegmentationFolder(data / "val", len(names), ignore, S.eval_transform(d["mean"], d["std"]))

    def miou(logits, ys):
        cm = 0
        for out, y in zip(logits, ys):
            out = torch.from_numpy(out)
            if out.shape[-2:] != y.shape[-2:]:  # as swinkit's infer: logits brought to the label's size
                out = torch.nn.functional.interpolate(out, size=y.shape[-2:], mode="bilinear", align_corners=False)
            cm = cm + S.confusion_matrix(out.argmax(1), y[None], len(names), ignore)
        return 100 * S.segmentation_metrics(cm)["miou"]
    return ds, miou


def run_path(fn, ds, batch: int) -> tuple[list, list, float]:
    logits, ys, t0 = [], [], time.perf_counter()
    for i in range(0, len(ds), batch):
        items = [ds[j] for j in range(i, min(i + batch, len(ds)))]
        x = np.ascontiguousarray(torch.stack([a for a, _ in items]).numpy())
        logits.append(fn(x))
        ys += [b for _, b in items]
    return logits, ys, time.perf_counter() - t0


def ort(path: Path):
    import onnxruntime as ort_

    so = ort_.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    sess = ort_.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def openvino_int8(path: Path, calib: list[np.ndarray]):
    """NNCF INT8 of an ONNX file with deploy_cpu's settings (NNCF_BEST), compiled for this CPU."""
    import openvino as ov

    q = nncf_quantize(path, np.concatenate(calib))
    compiled = ov.Core().compile_model(q, "CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads(),
                                                  "INFERENCE_PRECISION_HINT": "f32"})
    return lambda x: compiled(x)[0]


def measure(name: str, run: Path, data: Path, calib_dir: Path, n_calib: int, bf16: bool, log,
            ref: float | None = None) -> list[dict]:
    """Rows of every path for one trained model; deltas against `ref` (default: its own float32 eval)."""
    loaded = load_trained(run)
    ds, metric = dataset(loaded, data)
    size = tuple(ds[0][0].shape[-2:])
    batch = 100 if loaded.task.name == "classify" else 1
    rows = []

    def add(path: str, value: float, seconds: float, note: str = ""):
        rows.append({"model": name, "task": loaded.task.name, "path": path, "metric": "top-1" if batch > 1 else "mIoU",
                     "value": f"{value:.2f}", "delta": "", "images": len(ds), "seconds": f"{seconds:.0f}",
                     "note": note, "run": str(run.relative_to(ROOT))})
        log(f"{name}: {path} {value:.2f} ({seconds:.0f} s)")

    for dtype in ("float32", "bfloat16") if bf16 else ("float32",):
        add(f"swinkit eval --dtype {dtype}", *eval_cli(run, data, dtype))
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "m.onnx", Path(tmp) / "m.int8.onnx"
        export(loaded.model, fp32, "onnx", size, meta=loaded.meta, log=lambda _: None)
        logits, ys, sec = run_path(ort(fp32), ds, batch)
        add("swinkit export -> onnxruntime fp32", metric(logits, ys), sec)
        files = calibration_files(calib_dir, n_calib)
        info = quantize_onnx(fp32, int8, files)
        logits, ys, sec = run_path(ort(int8), ds, batch)
        add("swinkit quantize -> onnxruntime INT8", metric(logits, ys), sec,
            f"{info['quantized_nodes']} nodes, {info['fp32_mb']:.1f} -> {info['int8_mb']:.1f} MB")
        calib = _inputs(files, read_metadata(fp32))
        logits, ys, sec = run_path(openvino_int8(fp32, calib), ds, batch)
        add("swinkit export -> NNCF INT8 -> OpenVINO", metric(logits, ys), sec)
    ref = float(rows[0]["value"]) if ref is None else ref
    for r in rows:
        r["delta"] = f"{float(r['value']) - ref:+.2f}"
    return rows


def make_qat(student: Path, out: Path) -> None:
    """`swinkit train --qat` from the student: 3 epochs at lr 1e-4 without warmup, 2 processes."""
    cmd = [str(ROOT / ".venv" / "bin" / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "swinkit", "train",
           "--data", str(SHARED / "cifar10-mini"), "--recipe", "small", "--pretrained", str(student / "best.pt"),
           "--qat", "--epochs", "3", "--warmup-epochs", "0", "--lr", "1e-4", "--out", str(out)]
    print("==", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar", type=Path, default=RUNS / "c10_student")
    p.add_argument("--qat", type=Path, default=RUNS / "c10_qat")
    p.add_argument("--camvid", type=Path, default=RUNS / "panoptic_budget" / "upernet_20min")
    p.add_argument("--no-bf16-camvid", action="store_true", help="skip CamVid's bf16 eval (slow on CPUs without "
                                                                  "AVX-512 BF16, where bf16 is emulated)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    log = lambda s: print(s, flush=True)  # noqa: E731
    c10 = SHARED / "cifar10-mini"
    if not (args.qat / "summary.json").exists():
        make_qat(args.cifar, args.qat)
    rows = measure("cifar10-mini student", args.cifar, c10, c10 / "train", 64, True, log)
    rows += measure("cifar10-mini student after --qat", args.qat, c10, c10 / "train", 64, False, log,
                    ref=float(rows[0]["value"]))  # against the student in float32
    rows += measure("CamVid UPerNet", args.camvid, SHARED / "camvid", SHARED / "camvid" / "train" / "images", 16,
                    not args.no_bf16_camvid, log)
    with open(CSV, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [f"# Accuracy through the deployment paths ({time.strftime('%Y-%m-%d')}, {args.threads} threads)", "",
             "delta: points against the same model's `swinkit eval` in float32 (the QAT rows: against the student's).", "",
             "| model | path | metric | value | delta | images | s | note |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['path']} | {r['metric']} | {r['value']}% | {r['delta']} | {r['images']} | "
              f"{r['seconds']} | {r['note']} |" for r in rows]
    MD.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
