"""INT8 in OpenVINO: which NNCF settings make swinkit's export fast and accurate, beside timm's export.

    .venv/bin/python benchmarks/openvino_int8.py [--rounds 5] [--threads 2] [--variants NAME ...] [--skip-speed]
                                                 [--skip-accuracy]

Speed: Swin-T 224x224 with random weights (seed 0), the same in timm and swinkit (deploy_cpu.Builder: timm's own
ONNX export, `swinkit export`), each export through NNCF post-training INT8 with every setting of
deploy_cpu.NNCF_VARIANTS (64 COCO128 calibration images) and in OpenVINO fp32, all timed in one interleaved run
(deploy_cpu.interleave: medians of --rounds rounds, batch 16 and 1, --threads threads) while holding
/tmp/swinkit_timing.lock (flock), so that no other timing run overlaps it. Where the time goes: OpenVINO's own
profile (PERF_COUNT) of the NNCF_BEST graph of each export, in ms per image by executed node type and kernel, and
the number of executed nodes that run in int8 (compiled.get_runtime_model(): runtimePrecision u8 / i8).
Accuracy: the same settings on the trained models of benchmarks/quantize_accuracy.py, each against its export in
OpenVINO fp32: the cifar10-mini student (2,000 val images, top-1), the student after `swinkit train --qat` (made
when missing, after the student; its rows also against the student's fp32) and the CamVid UPerNet (101 val images
at 720x960, mIoU). Settings that change no graph, only values (full bias correction), are timed once as what they
equal. The NNCF files stay in benchmarks/runs/openvino_int8 and are reused: delete it after changing a setting.

Writes benchmarks/openvino_int8.csv and .md.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import fcntl
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import deploy_cpu as D
import quantize_accuracy as A
from swinkit.inference.load import load_trained
from swinkit.tools.export import export, read_metadata
from swinkit.tools.quantize import _inputs, calibration_files
from swinkit.utils.cpu import describe as describe_cpu

HERE = Path(__file__).resolve().parent
CSV, MD = HERE / "openvino_int8.csv", HERE / "openvino_int8.md"
WORK = HERE / "runs" / "openvino_int8"
LOCK = Path("/tmp/swinkit_timing.lock")
SAME_GRAPH = {"transformer, full bias correction": "transformer"}  # only bias values differ: the same speed
FIELDS = ["part", "model", "export", "variant", "batch", "img_per_s", "latency_ms", "runs_img_per_s", "int8_nodes",
          "metric", "value", "delta", "vs_student", "images", "seconds", "build_s", "file_mb", "threads", "cpu",
          "date"]
TRAINED = {  # name -> (run, data, calibration folder, calibration images)
    "cifar10-mini student": (A.RUNS / "c10_student", A.SHARED / "cifar10-mini", A.SHARED / "cifar10-mini" / "train", 64),
    "cifar10-mini student after --qat": (A.RUNS / "c10_qat", A.SHARED / "cifar10-mini",
                                         A.SHARED / "cifar10-mini" / "train", 64),
    "CamVid UPerNet": (A.RUNS / "panoptic_budget" / "upernet_20min", A.SHARED / "camvid",
                       A.SHARED / "camvid" / "train" / "images", 16),
}


@contextlib.contextmanager
def timing_lock():
    """Hold /tmp/swinkit_timing.lock as `flock /tmp/swinkit_timing.lock CMD` does (flock(2), exclusive)."""
    with open(LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def compiled(model_file: Path, batch: int, threads: int, profile: bool = False):
    """An OpenVINO CPU compilation of model_file at a static batch, as deploy_cpu.ov_fn compiles it."""
    import openvino as ov

    core = ov.Core()
    m = core.read_model(str(model_file))
    m.reshape([batch, *m.inputs[0].get_partial_shape().to_shape()[1:]])
    return core.compile_model(m, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
                                         "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": profile})


def int8_nodes(model_file: Path, threads: int) -> str:
    """'int8 / all' executed nodes of OpenVINO's runtime model (constants left out)."""
    precisions = [op.get_rt_info()["runtimePrecision"].astype(str) for op in
                  compiled(model_file, 1, threads).get_runtime_model().get_ordered_ops()
                  if op.get_rt_info()["layerType"].astype(str) != "Const"]
    return f"{sum(p in ('u8', 'i8') for p in precisions)} / {len(precisions)}"


def profile(model_file: Path, batch: int, threads: int, calls: int = 5) -> collections.Counter:
    """(node type, kernel) -> ms per image, from OpenVINO's per-node profile, averaged over `calls` calls."""
    request = compiled(model_file, batch, threads, profile=True).create_infer_request()
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    request.infer({0: x})
    ms = collections.Counter()
    for _ in range(calls):
        request.infer({0: x})
        for p in request.get_profiling_info():
            if p.status == p.Status.EXECUTED:
                ms[(p.node_type, p.exec_type)] += p.real_time.total_seconds() * 1e3 / calls / batch
    return ms


def speed(args, variants: list[str], log) -> tuple[list[dict], dict]:
    """Rows of the interleaved timing of Swin-T through each export and setting, and the `profiled` ones' profiles."""
    builder = D.Builder(argparse.Namespace(threads=args.threads, calib=64, batches=args.batches), WORK, log)
    paths, meta, irs = [], {}, {}
    for lib in ("timm", "swinkit"):
        src = (builder.tm_onnx if lib == "timm" else builder.sk_onnx)[0]
        paths.append(D.Path_(f"{lib} fp32", "openvino", "fp32", D.ov_fn(src, args.threads, "f32"), src))
        meta[paths[-1].name] = (lib, "fp32 (no NNCF)")
        for v in variants:
            if v in SAME_GRAPH:
                continue
            ir, s = builder.file(f"{lib}_swin_t.nncf_{D.slug(v)}.xml",
                                 lambda f: D.nncf_int8(src, builder.calib[1], f, v))
            paths.append(D.Path_(f"{lib} {v}", "openvino", "int8", D.ov_fn(ir, args.threads, "f32"), ir, s))
            meta[paths[-1].name], irs[(lib, v)] = (lib, v), ir
    ort = "swinkit -> onnxruntime INT8 (swinkit quantize)"  # swinkit's own INT8 path, for reference
    paths.append(builder.paths()[ort]())
    meta[ort] = ("swinkit", "onnxruntime INT8 (swinkit quantize)")
    xs = builder.calib[1]
    with timing_lock():
        load = os.getloadavg()[0]
        runs = D.interleave(paths, xs, args.batches, args.rounds, args.min_time, log)
        profiles = {(v, lib, b): profile(irs[(lib, v)], b, args.threads)
                    for v in profiled(variants) for lib in ("timm", "swinkit") for b in args.batches}
        load = (load, os.getloadavg()[0])
    rows = []
    for q in paths:
        nodes = int8_nodes(q.file, args.threads) if (q.runtime, q.dtype) == ("openvino", "int8") else ""
        for b in args.batches:
            ips = [r[0] for r in runs[(q.name, b)]]
            rows.append({"part": "speed", "model": "Swin-T 224 (random weights)", "export": meta[q.name][0],
                         "variant": meta[q.name][1], "batch": b, "img_per_s": f"{statistics.median(ips):.2f}",
                         "latency_ms": f"{1000 * statistics.median(r[1] for r in runs[(q.name, b)]):.1f}",
                         "runs_img_per_s": " ".join(f"{v:.2f}" for v in ips), "int8_nodes": nodes,
                         "build_s": f"{q.build_s:.0f}", "file_mb": f"{file_mb(q.file):.1f}"})
    return rows, {"profiles": profiles, "load": load}


def file_mb(path: Path) -> float:
    """Size of an ONNX file, or of an OpenVINO IR (.xml + .bin), in MB."""
    return sum(p.stat().st_size for p in {path, path.with_suffix(".bin")} if p.exists()) / 1e6


def accuracy(name: str, variants: list[str], threads: int, log) -> list[dict]:
    """Rows of one trained model: its export in OpenVINO fp32, then through NNCF with each setting."""
    run, data, calib_dir, n_calib = TRAINED[name]
    loaded = load_trained(run)
    ds, metric = A.dataset(loaded, data)
    batch = 100 if loaded.task.name == "classify" else 1
    work = WORK / D.slug(name)
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "fp32.onnx"
    if not fp32.exists():
        export(loaded.model, fp32, "onnx", tuple(ds[0][0].shape[-2:]), meta=loaded.meta, log=lambda _: None)
    calib = np.concatenate(_inputs(calibration_files(calib_dir, n_calib), read_metadata(fp32)))
    rows = []
    for v in ["fp32 (no NNCF)", *variants]:
        path, t0 = fp32, time.perf_counter()
        if v != "fp32 (no NNCF)":
            path = work / f"nncf_{D.slug(v)}.xml"
            if not path.exists():
                D.nncf_int8(fp32, calib, path, v)
        build = time.perf_counter() - t0
        logits, ys, sec = A.run_path(D.ov_fn(path, threads, "f32"), ds, batch)
        value = metric(logits, ys)
        rows.append({"part": "accuracy", "model": name, "export": "swinkit", "variant": v, "batch": batch,
                     "metric": "top-1" if batch > 1 else "mIoU", "value": f"{value:.2f}", "images": len(ds),
                     "seconds": f"{sec:.0f}", "build_s": f"{build:.0f}", "file_mb": f"{file_mb(path):.1f}"})
        log(f"{name}: {v} {value:.2f} ({sec:.0f} s)")
    return rows


def with_deltas(rows: list[dict]) -> list[dict]:
    """Each accuracy row's delta in points against its model's OpenVINO fp32; the QAT student's rows also against the
    float student's (vs_student)."""
    fp32 = {r["model"]: float(r["value"]) for r in rows if r["variant"] == "fp32 (no NNCF)"}
    student = fp32.get("cifar10-mini student")
    for r in rows:
        r["delta"] = f"{float(r['value']) - fp32[r['model']]:+.2f}"
        if r["model"].endswith("--qat") and student is not None:
            r["vs_student"] = f"{float(r['value']) - student:+.2f}"
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    D.timing_arguments(p)
    p.add_argument("--variants", nargs="+", default=list(D.NNCF_VARIANTS), choices=list(D.NNCF_VARIANTS))
    p.add_argument("--models", nargs="+", default=list(TRAINED), choices=list(TRAINED))
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-accuracy", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    log = lambda s: print(s, flush=True)  # noqa: E731
    rows, info = [], {}
    if not args.skip_accuracy:
        student, qat = TRAINED["cifar10-mini student"][0], TRAINED["cifar10-mini student after --qat"][0]
        if "cifar10-mini student after --qat" in args.models and not (qat / "summary.json").exists():
            A.make_qat(student, qat)
        for name in args.models:
            rows += accuracy(name, args.variants, args.threads, log)
        rows = with_deltas(rows)
    if not args.skip_speed:
        speed_rows, info = speed(args, args.variants, log)
        rows = speed_rows + rows
    stamp = {"threads": args.threads, "cpu": describe_cpu(), "date": time.strftime("%Y-%m-%d %H:%M")}
    rows = [{**dict.fromkeys(FIELDS, ""), **r, **stamp} for r in rows]
    with open(CSV, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    MD.write_text(report(rows, info, args))
    print(MD.read_text())
    return 0


def versions() -> str:
    import nncf
    import onnxruntime
    import openvino
    import timm

    return (f"OpenVINO {openvino.__version__.split('-')[0]}, NNCF {nncf.__version__}, torch {torch.__version__}, "
            f"timm {timm.__version__}, onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}")


def report(rows: list[dict], info: dict, args) -> str:
    r0 = rows[0]
    lines = [f"# INT8 in OpenVINO: NNCF settings on timm's and swinkit's export ({r0['date']})", "",
             f"CPU: {r0['cpu']}; {os.cpu_count()} CPUs, {r0['threads']} threads. {versions()}.", "",
             f"deploy_cpu.py's OpenVINO INT8 rows use {D.NNCF_BEST!r} (deploy_cpu.NNCF_BEST) on both exports.", ""]
    speed_rows = [r for r in rows if r["part"] == "speed"]
    if speed_rows:
        cell = {(r["export"], r["variant"], int(r["batch"])): r for r in speed_rows}
        best_timm = {b: max(float(r["img_per_s"]) for r in speed_rows if r["export"] == "timm" and
                            r["variant"] != "fp32 (no NNCF)" and int(r["batch"]) == b) for b in args.batches}
        lines += ["## Speed: Swin-T 224x224, random weights (seed 0), the same in both exports", "",
                  f"Median of {args.rounds} interleaved rounds (1-min load average {info['load'][0]:.1f} at the "
                  f"start, {info['load'][1]:.1f} at the end). x timm: against timm's export with the same setting; "
                  "x best timm: against the fastest INT8 setting on timm's export at that batch. int8 nodes: "
                  "executed nodes of OpenVINO's runtime model that run in u8 / i8.", "",
                  "| export | NNCF setting | " + " | ".join(f"b{b} img/s | b{b} x timm | b{b} x best timm"
                                                         for b in args.batches) + " | int8 nodes | IR MB | build s |",
                  "|---|---|" + "---|" * (3 * len(args.batches)) + "---|---|---|"]
        for lib, v in dict.fromkeys((r["export"], r["variant"]) for r in speed_rows):
            cs = [cell[(lib, v, b)] for b in args.batches]
            lines.append(f"| {lib} | {v} | " + " | ".join(
                f"{c['img_per_s']} | {ratio(c, cell.get(('timm', v, b)))} | {float(c['img_per_s']) / best_timm[b]:.2f}x"
                for b, c in zip(args.batches, cs))
                + f" | {cs[0]['int8_nodes']} | {cs[0]['file_mb']} | {cs[0]['build_s']} |")
        lines += ["", "Same graph as a timed row (not timed again): "
                  + ", ".join(f"{k} = {v}" for k, v in SAME_GRAPH.items()) + ".", ""]
        lines += profile_table(info["profiles"])
    acc = [r for r in rows if r["part"] == "accuracy"]
    if acc:
        lines += ["## Accuracy: swinkit's export of the trained models", "",
                  "delta: points against the same model's export in OpenVINO fp32; vs student: the QAT student's "
                  "points against the float student's fp32 (QAT trained 3 more epochs).", "",
                  "| model | NNCF setting | metric | value | delta | vs student | images | eval s | build s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['variant']} | {r['metric']} | {r['value']}% | {r['delta']} | {r['vs_student']} "
                  f"| {r['images']} | {r['seconds']} | {r['build_s']} |" for r in acc]
    return "\n".join(lines) + "\n"


def ratio(row: dict, base: dict | None) -> str:
    """row's images/s over base's ('' without a base)."""
    return f"{float(row['img_per_s']) / float(base['img_per_s']):.2f}x" if base else ""


def profiled(variants: list[str]) -> list[str]:
    """The settings whose graphs are profiled: NNCF_BEST and "transformer" (this benchmark's starting point)."""
    return [v for v in dict.fromkeys([D.NNCF_BEST, "transformer"]) if v in variants]


def profile_table(profiles: dict, top: int = 24) -> list[str]:
    """Markdown: ms per image by (node type, kernel) for each profiled setting, export and batch, the largest first."""
    keys = sorted({k for p in profiles.values() for k in p}, key=lambda k: -sum(p[k] for p in profiles.values()))
    cols = list(profiles)
    lines = ["### Where the time goes: OpenVINO's profile (PERF_COUNT), ms per image", "",
             "| node type | kernel | " + " | ".join(f"{lib} b{b} {v}" for v, lib, b in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    rest = {c: sum(v for k, v in profiles[c].items() if k not in keys[:top]) for c in cols}
    lines += [f"| {k[0]} | {k[1]} | " + " | ".join(f"{profiles[c][k]:.2f}" for c in cols) + " |" for k in keys[:top]]
    lines += ["| (the rest) | | " + " | ".join(f"{rest[c]:.2f}" for c in cols) + " |",
              "| **sum** | | " + " | ".join(f"**{sum(profiles[c].values()):.2f}**" for c in cols) + " |", ""]
    return lines


if __name__ == "__main__":
    sys.exit(main())
