"""Swin-T on this CPU through every deployment path a user has, in one interleaved run (issue 17).

    .venv/bin/python benchmarks/deploy_cpu.py [--rounds 5] [--batches 16 1] [--threads 2] [--images 1000]

One model: timm's swin_tiny_patch4_window7_224 with random weights (seed 0; no downloads here), and swinkit's Swin-T
with the same weights (convert_state_dict). Paths:
- timm / swinkit eager fp32, swinkit eager bf16 autocast, swinkit compiled (torch.compile, inductor with freezing);
- swinkit's export (`swinkit export`) in onnxruntime fp32 and INT8 (`swinkit quantize`: static QDQ, 64 calibration
  images);
- timm's export by timm's own path (timm.utils.onnx.onnx_export, TorchScript exporter, opset 17) in onnxruntime fp32
  and dynamic INT8;
- OpenVINO fp32 and INT8 (NNCF post-training quantization with the settings NNCF_BEST, chosen by
  benchmarks/openvino_int8.py; the same 64 calibration images) on timm's export and on swinkit's; OpenVINO bf16 only
  on CPUs with AVX-512 BF16 / AMX.
Each round times every path at every batch size (the order rotates between rounds); the table holds medians of
--rounds rounds. Peak memory: a fresh process per path and batch makes the path (from the files the main run left
in benchmarks/runs/deploy_cpu) and runs it three times; its peak resident set (Linux VmHWM) above the interpreter
with torch, onnxruntime and OpenVINO imported, so weights, runtime buffers and activations all count. Top-1 agreement: each path's top-1 against swinkit eager fp32
on --images real photographs (cifar10-mini val, spread over the classes, resized to 224 as `swinkit predict
--onnx` prepares images); with random weights the margins between logits are small, so this is a strict test of
numerical drift, not of accuracy (benchmarks/quantize_accuracy.py measures accuracy on trained models). Limits: a
large matmul at fp32 / bf16 (torch) and int8 (onnxruntime MatMulInteger, u8 x s8) divided by 2 x MACs per image.

Writes benchmarks/deploy_cpu.csv, .md and .png.
"""
from __future__ import annotations

import argparse
import csv
import functools
import importlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from swinkit import convert_state_dict, create_model
from swinkit.tools import bench
from swinkit.io.images import load_image
from swinkit.tools.export import export, preprocess, read_metadata
from swinkit.tools.quantize import calibration_files, quantize_onnx

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
CSV, MD, PNG = HERE / "deploy_cpu.csv", HERE / "deploy_cpu.md", HERE / "deploy_cpu.png"
WORK = HERE / "runs" / "deploy_cpu"  # the exported and quantized files
FIELDS = ["path", "runtime", "dtype", "batch", "img_per_s", "latency_ms", "peak_mem_mb", "agreement",
          "agreement_images", "file_mb", "build_s", "limit_img_per_s", "fraction_of_limit", "runs_img_per_s",
          "threads", "machine", "date"]


def vm(key: str) -> float:
    """/proc/self/status field in MB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key + ":"))


class Path_:
    """One deployment path: `fn(x: (B, 3, H, W) float32) -> (B, classes) logits`, what it runs on, its file."""

    def __init__(self, name: str, runtime: str, dtype: str, fn, file: Path | None = None, build_s: float = 0.0):
        self.name, self.runtime, self.dtype, self.fn, self.file, self.build_s = name, runtime, dtype, fn, file, build_s


def torch_fn(model, autocast: bool = False):
    def fn(x):
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            return model(torch.from_numpy(x)).float().numpy()
    return fn


def ort_fn(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def ov_fn(model_file: Path, threads: int, precision: str):
    """OpenVINO on the CPU, compiled once per static batch shape (what OpenVINO runs fastest)."""
    import openvino as ov

    core, compiled = ov.Core(), {}

    def fn(x):
        if x.shape not in compiled:
            m = core.read_model(str(model_file))
            m.reshape([*x.shape])
            compiled[x.shape] = core.compile_model(m, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                              "INFERENCE_PRECISION_HINT": precision,
                                                              "PERFORMANCE_HINT": "LATENCY"})
        return compiled[x.shape](x)[0]
    return fn


def first_and_last_layers(model) -> list[str]:
    """Names of an OpenVINO model's first Convolution (the patch embedding) and its last MatMul or Convolution (the
    classifier or segmentation head)."""
    ops = model.get_ordered_ops()
    first = next(o for o in ops if o.get_type_name() == "Convolution")
    last = next(o for o in reversed(ops) if o.get_type_name() in ("MatMul", "Convolution"))
    return [first.get_friendly_name(), last.get_friendly_name()]


def _no_smooth_quant(nncf) -> dict:
    return dict(smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=-1))


# NNCF post-training settings: name -> (nncf, OpenVINO model) -> nncf.quantize keyword arguments. "transformer" was
# this script's setting until benchmarks/openvino_int8.py measured them all (speed on Swin-T, accuracy on the trained
# models); NNCF_BEST is what the OpenVINO INT8 rows use, on timm's export and on swinkit's alike
NNCF_VARIANTS = {
    "transformer": lambda nncf, m: dict(model_type=nncf.ModelType.TRANSFORMER),  # SmoothQuant 0.95, preset MIXED
    "transformer, no SmoothQuant": lambda nncf, m: dict(
        model_type=nncf.ModelType.TRANSFORMER, advanced_parameters=nncf.AdvancedQuantizationParameters(
            **_no_smooth_quant(nncf))),
    "transformer, no SmoothQuant, first + last layer fp32": lambda nncf, m: dict(
        model_type=nncf.ModelType.TRANSFORMER, ignored_scope=nncf.IgnoredScope(names=first_and_last_layers(m)),
        advanced_parameters=nncf.AdvancedQuantizationParameters(**_no_smooth_quant(nncf))),
    "transformer, preset PERFORMANCE": lambda nncf, m: dict(model_type=nncf.ModelType.TRANSFORMER,
                                                            preset=nncf.QuantizationPreset.PERFORMANCE),
    "transformer, first + last layer fp32": lambda nncf, m: dict(
        model_type=nncf.ModelType.TRANSFORMER, ignored_scope=nncf.IgnoredScope(names=first_and_last_layers(m))),
    "transformer, full bias correction": lambda nncf, m: dict(model_type=nncf.ModelType.TRANSFORMER,
                                                              fast_bias_correction=False),
    "transformer, 7-bit weights (overflow fix)": lambda nncf, m: dict(  # int16 saturation on x86 without VNNI
        model_type=nncf.ModelType.TRANSFORMER, advanced_parameters=nncf.AdvancedQuantizationParameters(
            overflow_fix=nncf.OverflowFix.ENABLE)),
    "no model type (CNN defaults)": lambda nncf, m: {},
}
NNCF_BEST = "transformer, no SmoothQuant, first + last layer fp32"


def slug(variant: str) -> str:
    """A file-name form of an NNCF_VARIANTS name."""
    return "".join(c if c.isalnum() else "_" for c in variant).strip("_")


def nncf_quantize(onnx_file: Path, calib: np.ndarray, variant: str = NNCF_BEST):
    """NNCF post-training INT8 of an ONNX file for OpenVINO (an ov.Model) with the settings NNCF_VARIANTS[variant],
    calibrated on calib (N, C, H, W) one image at a time."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(onnx_file))
    data = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))])
    settings = NNCF_VARIANTS[variant](nncf, model)
    # every setting keeps Pad's input float: OpenVINO 2026.4's CPU plugin crashes (SIGSEGV) compiling a FakeQuantize
    # right before a Pad, as NNCF puts it without SmoothQuant in front of the UPerNet's window padding at 360x480
    scope = settings.pop("ignored_scope", nncf.IgnoredScope())
    settings["ignored_scope"] = nncf.IgnoredScope(names=scope.names, types=[*scope.types, "Pad"], validate=False)
    return nncf.quantize(model, data, subset_size=len(calib), **settings)


def nncf_int8(onnx_file: Path, calib: np.ndarray, out: Path, variant: str = NNCF_BEST) -> Path:
    """nncf_quantize saved as OpenVINO IR at out."""
    import openvino as ov

    ov.save_model(nncf_quantize(onnx_file, calib, variant), str(out))
    return out


def ov_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def int8_gops(threads: int, n: int = 2048) -> float:
    """onnxruntime MatMulInteger (u8 x s8 -> s32) on (n, n) @ (n, n), in GOP/s (2 n^3 ops), median of 3."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.integers(-128, 127, (n, n), dtype=np.int8), "w")
    g = helper.make_graph([helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "mm",
                          [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])], [w])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                                so, providers=["CPUExecutionProvider"])
    a = rng.integers(0, 255, (n, n), dtype=np.uint8)
    times = []
    for _ in range(4):
        t0 = time.perf_counter()
        sess.run(None, {"a": a})
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times[1:]) / 1e9


def photographs(n: int, meta: dict) -> np.ndarray:
    """n cifar10-mini val images, spread evenly over the sorted files, prepared as predict_onnx does."""
    files = calibration_files(SHARED / "cifar10-mini" / "val", n)
    return np.stack([preprocess(load_image(f), meta) for f in files])


def run_batched(fn, xs: np.ndarray, batch: int = 16) -> np.ndarray:
    """Top-1 of fn over xs in batches of `batch` (the last one padded, so that every call has the same shape)."""
    top = []
    for i in range(0, len(xs), batch):
        x = xs[i:i + batch]
        pad = batch - len(x)
        if pad:
            x = np.concatenate([x, np.repeat(x[-1:], pad, 0)])
        top.append(fn(np.ascontiguousarray(x)).argmax(-1)[:batch - pad])
    return np.concatenate(top)


def time_once(fn, x: np.ndarray, min_time: float) -> tuple[float, float]:
    """(images/s, median seconds per call) over >= 3 calls and >= min_time seconds, after one warm-up call."""
    fn(x)
    times = []
    while len(times) < 3 or sum(times) < min_time:
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return len(x) * len(times) / sum(times), statistics.median(times)


def interleave(paths: list[Path_], xs: np.ndarray, batches: list[int], rounds: int, min_time: float,
               log) -> dict[tuple[str, int], list[tuple[float, float]]]:
    """(path name, batch) -> [(images/s, median seconds per call)] of each round: every round times every path at
    every batch (on the first images of xs), starting one path later than the round before."""
    runs: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for r in range(rounds):
        order = paths[r % len(paths):] + paths[:r % len(paths)]
        for b in batches:
            x = np.ascontiguousarray(xs[np.arange(b) % len(xs)])
            for q in order:
                runs.setdefault((q.name, b), []).append(time_once(q.fn, x, min_time if b > 1 else 1.0))
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{q.name} b{b} {runs[(q.name, b)][-1][0]:.1f}"
                                                   for b in batches for q in paths))
    return runs


class Builder:
    """Every path's model and files, each made on first use and kept in `work` (benchmarks/runs/deploy_cpu), so that
    a memory worker makes only what its path needs and reuses the files the main run wrote."""

    def __init__(self, args, work: Path, log):
        self.args, self.work, self.log, self.t = args, work, log, args.threads
        work.mkdir(parents=True, exist_ok=True)

    @functools.cached_property
    def models(self):
        import timm

        torch.manual_seed(0)
        tm = timm.create_model("swin_tiny_patch4_window7_224").eval()
        sk = create_model("swin_t")
        sk.load_state_dict(convert_state_dict(tm.state_dict(), src="timm"))
        return tm, sk.eval()

    def file(self, name: str, make) -> tuple[Path, float]:
        """(work/name, seconds spent making it now: 0 when it was there)."""
        path, t0 = self.work / name, time.perf_counter()
        if not path.exists():
            make(path)
        return path, time.perf_counter() - t0

    @functools.cached_property
    def sk_onnx(self):
        return self.file("swinkit_swin_t.onnx",
                          lambda f: export(self.models[1], f, "onnx", (224, 224), log=self.log))

    @functools.cached_property
    def tm_onnx(self):
        from timm.utils.onnx import onnx_export

        return self.file("timm_swin_t.onnx", lambda f: onnx_export(
            self.models[0], str(f), input_size=(3, 224, 224), batch_size=1, opset=17, use_dynamo=False, check=False))

    @functools.cached_property
    def calib(self) -> tuple[list[Path], np.ndarray]:
        files = calibration_files(SHARED / "coco128" / "images", self.args.calib)
        meta = read_metadata(self.sk_onnx[0])
        return files, np.stack([preprocess(load_image(f), meta) for f in files])

    def paths(self) -> dict:
        """path name -> () -> Path_."""
        from onnxruntime.quantization import QuantType, quantize_dynamic

        t = self.t
        out = {"timm eager fp32": lambda: Path_("timm eager fp32", "torch", "fp32", torch_fn(self.models[0])),
               "swinkit eager fp32": lambda: Path_("swinkit eager fp32", "torch", "fp32", torch_fn(self.models[1])),
               "swinkit eager bf16 autocast": lambda: Path_("swinkit eager bf16 autocast", "torch", "bf16",
                                                            torch_fn(self.models[1], autocast=True))}

        def compiled():
            t0 = time.perf_counter()
            torch._inductor.config.freezing = True  # fold weights into constants: oneDNN's prepacked CPU kernels
            fn = torch_fn(torch.compile(self.models[1]))
            for b in self.args.batches:  # compile every batch shape here, not in the timed loop
                fn(np.zeros((b, 3, 224, 224), np.float32))
            return Path_("swinkit compiled fp32 (inductor, freezing)", "torch", "fp32", fn,
                         build_s=time.perf_counter() - t0)
        out["swinkit compiled fp32 (inductor, freezing)"] = compiled

        def onnx_path(name, dtype, made):
            path, s = made()
            return Path_(name, "onnxruntime", dtype, ort_fn(path, t), path, s)
        out["swinkit -> onnxruntime fp32"] = lambda: onnx_path("swinkit -> onnxruntime fp32", "fp32",
                                                               lambda: self.sk_onnx)
        out["swinkit -> onnxruntime INT8 (swinkit quantize)"] = lambda: onnx_path(
            "swinkit -> onnxruntime INT8 (swinkit quantize)", "int8", lambda: self.file(
                "swinkit_swin_t.int8.onnx", lambda f: quantize_onnx(self.sk_onnx[0], f, self.calib[0])))
        out["timm -> onnxruntime fp32"] = lambda: onnx_path("timm -> onnxruntime fp32", "fp32", lambda: self.tm_onnx)
        out["timm -> onnxruntime dynamic INT8"] = lambda: onnx_path(
            "timm -> onnxruntime dynamic INT8", "int8", lambda: self.file(
                "timm_swin_t.int8dyn.onnx",
                lambda f: quantize_dynamic(str(self.tm_onnx[0]), str(f), weight_type=QuantType.QInt8)))

        def openvino(lib, precision):
            src = (self.tm_onnx if lib == "timm" else self.sk_onnx)[0]
            if precision != "int8":
                return Path_(f"{lib} -> OpenVINO {precision}", "openvino", precision, ov_fn(src, t, precision[0] + "32"
                                                                                             if precision == "fp32"
                                                                                             else "bf16"), src)
            ir, s = self.file(f"{lib}_swin_t.nncf_{slug(NNCF_BEST)}.xml", lambda f: nncf_int8(src, self.calib[1], f))
            return Path_(f"{lib} -> OpenVINO INT8 (NNCF)", "openvino", "int8", ov_fn(ir, t, "f32"),
                         ir.with_suffix(".bin"), s)
        bf16 = ov_has_bf16()
        for lib in ("timm", "swinkit"):
            out[f"{lib} -> OpenVINO fp32"] = functools.partial(openvino, lib, "fp32")
            if bf16:
                out[f"{lib} -> OpenVINO bf16"] = functools.partial(openvino, lib, "bf16")
            out[f"{lib} -> OpenVINO INT8 (NNCF)"] = functools.partial(openvino, lib, "int8")
        if not bf16:
            self.log("OpenVINO: this CPU has no BF16 capability (no AVX-512 BF16 / AMX); its default precision is "
                     "fp32, and the bf16 rows are left out")
        return out


def memory_worker(name: str, batch: int, args) -> None:
    """In a fresh process: make one path (its files already in WORK) and run it; print the peak resident set above
    the interpreter with torch, onnxruntime, OpenVINO and the models' code imported."""
    for lib in ("onnxruntime", "openvino"):  # in the baseline, as torch is
        importlib.import_module(lib)
    torch.set_num_threads(args.threads)
    base = vm("VmRSS")
    q = Builder(args, WORK, lambda s: None).paths()[name]()
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    for _ in range(3):
        q.fn(x)
    print(f"{bench.RESULT_TAG}{json.dumps({'peak_mem_mb': vm('VmHWM') - base})}")


def measure_memory(args, log) -> None:
    """Fill deploy_cpu.csv's peak_mem_mb from one fresh process per path and batch, and rewrite the table."""
    rows = list(csv.DictReader(open(CSV)))
    makers = Builder(args, WORK, log).paths()
    for r in rows:  # every file first, so that no worker counts the making of one
        if r["runtime"] != "torch":
            makers[r["path"]]()
    for r in rows:
        res = bench.run_isolated([sys.executable, __file__, "--memory-worker", r["path"], r["batch"],
                                  "--threads", r["threads"]])
        r["peak_mem_mb"] = f"{res['peak_mem_mb']:.0f}" if "peak_mem_mb" in res else ""
        log(f"{r['path']} b{r['batch']}: {r['peak_mem_mb'] or res} MB")
    macs = swin_t_macs()
    gflops = {r["dtype"]: float(r["limit_img_per_s"]) * 2 * macs / 1e9 for r in rows}  # the limits' matmul rates
    write(rows, gflops, macs, args)


def swin_t_macs() -> int:
    return bench.forward_macs(create_model("swin_t").eval(), torch.zeros(1, 3, 224, 224))


def timing_arguments(p: argparse.ArgumentParser) -> None:
    """--rounds, --batches, --threads and --min-time, as `interleave` takes them."""
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batches", type=int, nargs="+", default=[16, 1])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement (at least 3 calls)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    timing_arguments(p)
    p.add_argument("--images", type=int, default=1000, help="photographs for top-1 agreement")
    p.add_argument("--calib", type=int, default=64, help="calibration images (COCO128) for the INT8 paths")
    p.add_argument("--only", nargs="+", help="substrings of path names to keep (a quick partial run)")
    p.add_argument("--memory-only", action="store_true", help="only (re)measure the peak memory of deploy_cpu.csv's "
                                                              "rows, one fresh process each")
    p.add_argument("--memory-worker", nargs=2, metavar=("PATH", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    log = lambda s: print(s, flush=True)  # noqa: E731
    if args.memory_worker:
        memory_worker(args.memory_worker[0], int(args.memory_worker[1]), args)
        return 0
    if not args.memory_only:
        timing(args, log)
    measure_memory(args, log)
    return 0


def timing(args, log) -> None:
    """Build every path, measure top-1 agreement and the interleaved rounds, write the tables (memory left empty)."""
    builder = Builder(args, WORK, log)
    makers = builder.paths()
    if args.only:
        makers = {k: v for k, v in makers.items() if any(s in k for s in args.only)}
    paths = [make() for make in makers.values()]
    xs = photographs(args.images, read_metadata(builder.sk_onnx[0]))
    by_name = {q.name: q for q in paths}
    t0 = time.perf_counter()
    ref = run_batched(by_name["swinkit eager fp32"].fn, xs) if "swinkit eager fp32" in by_name else None
    log(f"reference top-1 over {len(xs)} images in {time.perf_counter() - t0:.0f} s; "
        f"{len(set(ref.tolist())) if ref is not None else 0} distinct classes predicted")
    agree = {}
    for q in paths:
        top = ref if q.name == "swinkit eager fp32" else run_batched(q.fn, xs)
        agree[q.name] = float(np.mean(top == ref)) if ref is not None else float("nan")
        log(f"{q.name}: top-1 agreement {100 * agree[q.name]:.1f}%")
    gflops = {"fp32": bench.matmul_gflops("cpu", torch.float32), "bf16": bench.matmul_gflops("cpu", torch.bfloat16),
              "int8": int8_gops(args.threads)}
    log("matmul: " + ", ".join(f"{k} {v:.0f} G(FL)OP/s" for k, v in gflops.items()))
    runs = interleave(paths, xs, args.batches, args.rounds, args.min_time, log)
    rows = []
    stamp = dict(threads=args.threads, machine=bench.machine("cpu"), date=time.strftime("%Y-%m-%d %H:%M"))
    macs = swin_t_macs()
    for b in args.batches:
        for q in paths:
            ips = [v[0] for v in runs[(q.name, b)]]
            limit = gflops[q.dtype] * 1e9 / (2 * macs)
            med = statistics.median(ips)
            rows.append({"path": q.name, "runtime": q.runtime, "dtype": q.dtype, "batch": b,
                         "img_per_s": f"{med:.2f}",
                         "latency_ms": f"{1000 * statistics.median(v[1] for v in runs[(q.name, b)]):.1f}",
                         "peak_mem_mb": "", "agreement": f"{100 * agree[q.name]:.1f}",
                         "agreement_images": len(xs),
                         "file_mb": f"{q.file.stat().st_size / 1e6:.1f}" if q.file else "",
                         "build_s": f"{q.build_s:.0f}", "limit_img_per_s": f"{limit:.1f}",
                         "fraction_of_limit": f"{med / limit:.2f}",
                         "runs_img_per_s": " ".join(f"{v:.2f}" for v in ips), **stamp})
    write(rows, gflops, macs, args)


def write(rows: list[dict], gflops: dict, macs: int, args) -> None:
    with open(CSV, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    batches = args.batches
    names = list(dict.fromkeys(r["path"] for r in rows))
    cell = {(r["path"], int(r["batch"])): r for r in rows}
    base = {b: float(cell[("timm -> onnxruntime fp32", b)]["img_per_s"]) for b in batches
            if ("timm -> onnxruntime fp32", b) in cell}
    r0 = rows[0]
    lines = [f"# Swin-T 224x224 deployment paths on {r0['machine']} ({os.cpu_count()} CPUs, {r0['threads']} threads)", "",
             f"{r0['date']}; median of {args.rounds} interleaved rounds; random weights (seed 0), the same in timm and "
             f"swinkit; {macs / 1e9:.2f} GMACs per image. Matmul-bound limits: "
             + ", ".join(f"{k} {v:.0f} G(FL)OP/s = {v * 1e9 / (2 * macs):.1f} img/s" for k, v in gflops.items())
             + f". Python {platform.python_version()}, torch {torch.__version__}.", "",
             "| path | dtype | " + " | ".join(f"b{b} img/s | b{b} ms | b{b} x timm-ORT | b{b} peak MB | b{b} of limit"
                                            for b in batches) + " | top-1 agreement | file MB | build s |",
             "|---|---|" + "---|" * (5 * len(batches)) + "---|---|---|"]
    for n in names:
        cs = [cell[(n, b)] for b in batches]
        lines.append(f"| {n} | {cs[0]['dtype']} | " + " | ".join(
            f"{c['img_per_s']} | {c['latency_ms']} | "
            f"{float(c['img_per_s']) / base[b]:.2f}x | {c['peak_mem_mb']} | {float(c['fraction_of_limit']):.0%}"
            if b in base else f"{c['img_per_s']} | {c['latency_ms']} | | {c['peak_mem_mb']} | "
                              f"{float(c['fraction_of_limit']):.0%}" for b, c in zip(batches, cs))
            + f" | {cs[0]['agreement']}% | {cs[0]['file_mb']} | {cs[0]['build_s']} |")
    MD.write_text("\n".join(lines) + "\n")
    plot(rows, batches, names)
    print("\n".join(lines))


def plot(rows: list[dict], batches: list[int], names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 0.35 * len(names) + 1.5), sharey=True)
    for ax, b in zip(np.atleast_1d(axes), batches):
        vals = [float(next(r["img_per_s"] for r in rows if r["path"] == n and int(r["batch"]) == b)) for n in names]
        ax.barh(range(len(names)), vals, color=["C1" if n.startswith("swinkit") else "C0" for n in names])
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("images / s")
        ax.set_title(f"Swin-T 224, batch {b}")
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.1f}", va="center", fontsize=8)
    np.atleast_1d(axes)[0].invert_yaxis()  # the first row on top (the axes share y: once)
    fig.tight_layout()
    fig.savefig(PNG, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
