"""`swinkit bench`: swinkit against timm, torchvision and transformers on the same variant, input size, dtype and
thread count - throughput (inference, training step), peak memory, parameters, MACs - and against the machine's
own matmul rate. Every measurement runs in a fresh subprocess (clean peak memory, no allocator or cache state
shared between libraries); the libraries alternate within each repeat (A B C A B C ...) so that load from other
processes falls on all of them alike, and medians over repeats are reported.

Python: `rows = benchmark("swin_t", batch_size=16, libs=["swinkit", "timm"])`; `write_csv(rows, path)`.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib.util
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from ..utils.allocator import tune_cpu_allocator
from ..utils.cpu import cpu_name
from ..io.files import atomic_write
from ..config import ALIASES, SwinConfig

LIBS = ("swinkit", "timm", "timm-sdpa", "torchvision", "transformers")  # timm-sdpa: timm with TIMM_FUSED_ATTN=2
TORCHVISION_NAMES = {
    "swin_tiny_patch4_window7_224": "swin_t", "swin_small_patch4_window7_224": "swin_s",
    "swin_base_patch4_window7_224": "swin_b", "swinv2_tiny_window8_256": "swin_v2_t",
    "swinv2_small_window8_256": "swin_v2_s", "swinv2_base_window8_256": "swin_v2_b",
}
TRAIN_PASSES = 3  # a training step costs about 3 forward passes of MACs (forward + backward for inputs and weights)
RESULT_TAG = "SWINKIT_BENCH_RESULT "
COLUMNS = [
    "model", "lib", "lib_model", "mode", "device", "dtype", "img_size", "batch_size", "threads", "compile",
    "allocator", "repeats", "params", "macs_per_image", "img_per_s", "step_time_s", "speed_vs_best_peer",
    "time_vs_best_peer", "peak_mem_mb", "mem_vs_best_peer", "model_mem_mb", "matmul_gflops", "limit_img_per_s",
    "fraction_of_limit", "time_exponent", "time_growth_vs_linear", "mem_exponent", "mem_growth_vs_linear",
    "runs_img_per_s", "runs_peak_mem_mb", "error", "lib_version", "torch_version", "machine", "date",
]


# ----------------------------------------------------------------------------------------------------------
# the same variant in every library (random weights, never downloaded)


def canonical(name: str) -> str:
    SwinConfig.from_name(name)  # raises the usual error listing the valid names
    return ALIASES.get(name, name)


def peer_name(lib: str, name: str) -> str | None:
    """The name under which `lib` builds swinkit's variant `name`; None when `lib` has no such model."""
    name = canonical(name)
    if lib == "torchvision":
        return TORCHVISION_NAMES.get(name)
    if lib == "transformers":
        return ("Swinv2" if SwinConfig.from_name(name).version == 2 else "Swin") + "ForImageClassification"
    if lib in ("swinkit", "timm", "timm-sdpa"):
        return name
    raise ValueError(f"unknown library {lib!r}; choose from {', '.join(LIBS)}")


class Logits(nn.Module):
    """transformers' classifier returning the logits tensor, like the other libraries."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def _transformers_model(cfg: SwinConfig, img_size: int) -> nn.Module:
    import transformers

    kw = dict(image_size=img_size, patch_size=cfg.patch_size, num_channels=cfg.in_chans, embed_dim=cfg.embed_dim,
              depths=list(cfg.depths), num_heads=list(cfg.num_heads), window_size=cfg.window_size[0][0],
              mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, drop_path_rate=cfg.drop_path_rate,
              num_labels=cfg.num_classes)
    if cfg.version == 2:
        kw["pretrained_window_sizes"] = [w[0] for w in cfg.pretrained_window_sizes]
        return Logits(transformers.Swinv2ForImageClassification(transformers.Swinv2Config(**kw)))
    return Logits(transformers.SwinForImageClassification(transformers.SwinConfig(**kw)))


def build_model(lib: str, name: str, img_size: int | None = None, **swinkit_overrides) -> nn.Module:
    """`lib`'s model of swinkit's variant `name` with random weights, same classes and stochastic depth,
    built for `img_size` (default: the variant's). Raises ValueError when `lib` has no equivalent."""
    cfg = SwinConfig.from_name(name)
    img_size = img_size or cfg.img_size[0]
    lib_name = peer_name(lib, name)
    if lib_name is None:
        raise ValueError(f"{lib} has no model equivalent to {name}; torchvision has {sorted(TORCHVISION_NAMES)}")
    if lib == "swinkit":
        from ..factory import create_model

        return create_model(name, img_size=img_size, **swinkit_overrides)
    if lib in ("timm", "timm-sdpa"):
        import timm

        return timm.create_model(lib_name, img_size=img_size, num_classes=cfg.num_classes,
                                 drop_path_rate=cfg.drop_path_rate)
    if lib == "torchvision":
        import torchvision

        # the builders fix stochastic depth at the variants' rates (0.2 / 0.3 / 0.5), equal to cfg.drop_path_rate
        return getattr(torchvision.models, lib_name)(weights=None, num_classes=cfg.num_classes)
    return _transformers_model(cfg, img_size)


def installed(lib: str) -> bool:
    return lib == "swinkit" or importlib.util.find_spec(lib.split("-")[0]) is not None


def default_libs(name: str) -> list[str]:
    """Every library with this variant (timm-sdpa only for V1: timm's Swin V2 has no fused path)."""
    v1 = SwinConfig.from_name(name).version == 1
    return [lib for lib in LIBS if peer_name(lib, name) and (v1 or lib != "timm-sdpa")]


# ----------------------------------------------------------------------------------------------------------
# the machine's limit


def matmul_gflops(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int | None = None,
                  reps: int = 3) -> float:
    """Rate of one large (n, n) @ (n, n) torch.mm in GFLOP/s (2 n^3 FLOPs), median of `reps` after a warm-up."""
    n = n or (8192 if device.startswith("cuda") else 2048)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    times = []
    for _ in range(reps + 1):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times[1:]) / 1e9


def matmul_limit(gflops: float, macs_per_image: float, mode: str = "infer") -> float:
    """Images/s if every MAC ran at the matmul rate: rate / (2 * MACs per image * passes), where a training
    step counts TRAIN_PASSES passes."""
    passes = TRAIN_PASSES if mode == "train" else 1
    return gflops * 1e9 / (2 * macs_per_image * passes)


def fit_growth(pixels: list[float], values: list[float]) -> tuple[float, float]:
    """Least-squares exponent k of values ~ pixels^k (log-log), and the fitted growth from the smallest to the
    largest size relative to linear in pixels: (max/min pixels)^(k - 1); 1.0 = exactly linear."""
    x, y = [math.log(p) for p in pixels], [math.log(v) for v in values]
    mx, my = statistics.fmean(x), statistics.fmean(y)
    k = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)
    return k, (max(pixels) / min(pixels)) ** (k - 1)


# ----------------------------------------------------------------------------------------------------------
# one measurement (run inside a fresh process by measure_isolated)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rss() -> int:
    """Resident memory of this process now, in bytes."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _memory(device: str) -> int:
    return torch.cuda.memory_allocated() if device.startswith("cuda") else _rss()


def _reset_peak(device: str) -> None:
    """Start peak tracking now. On CPU Linux resets the process's peak RSS (clear_refs 5); elsewhere the peak
    stays the lifetime peak, which the measured steps dominate."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def forward_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on x (torch.utils.flop_counter: matmuls, convs, attention).
    Adds the CPU kernel of scaled_dot_product_attention, which torch's flop counter leaves out, so that fused
    and explicit attention count alike."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    cpu_sdpa = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=cpu_sdpa) as counter:
        model(x)
    return counter.get_total_flops() // 2


def _step_fn(model: nn.Module, x: torch.Tensor, mode: str, dtype: torch.dtype, num_classes: int):
    """A zero-argument function running one inference or training step (forward + backward + AdamW)."""
    if mode == "infer":
        def step():
            with torch.inference_mode():
                model(x)
        return step
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    target = torch.randint(0, num_classes, (x.shape[0],), device=x.device)
    device_type = x.device.type

    def step():
        with torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32):
            loss = nn.functional.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def _time_steps(step, device: str, warmup: int, iters: int, min_time: float) -> list[float]:
    """Seconds per step after `warmup` steps: `iters` steps, or (iters=0) as many as fill `min_time`."""
    for _ in range(warmup):
        step()
    times: list[float] = []
    while len(times) < iters or (iters == 0 and sum(times) < min_time):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def measure(spec: dict) -> dict:
    """One library, one mode: build, time, read the peak memory above what the process held once the model
    and input were built (model_mem_mb: the model's own parameters and buffers); count MACs if asked.
    spec keys: lib, model, img_size, batch_size, dtype, mode, device, threads, compile, warmup, iters, min_time,
    count_macs, swinkit_config, allocator. Meant for a fresh process (see measure_isolated): the peak is per
    process, and allocator="tuned" changes the process's malloc (swinkit.utils.allocator) before anything is built."""
    if spec.get("allocator") == "tuned":
        tune_cpu_allocator()
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device, dtype, mode = spec["device"], getattr(torch, spec["dtype"]), spec["mode"]
    model = build_model(spec["lib"], spec["model"], spec["img_size"], **spec.get("swinkit_config", {}))
    model = model.to(device, dtype if mode == "infer" else torch.float32).train(mode == "train")
    x = torch.randn(spec["batch_size"], 3, spec["img_size"], spec["img_size"], device=device,
                    dtype=dtype if mode == "infer" else torch.float32)
    run_model = torch.compile(model, dynamic=False) if spec["compile"] else model
    overrides = spec.get("swinkit_config", {}) if spec["lib"] == "swinkit" else {}
    step = _step_fn(run_model, x, mode, dtype, SwinConfig.from_name(spec["model"], **overrides).num_classes)
    baseline = _memory(device)
    _reset_peak(device)
    times = _time_steps(step, device, spec["warmup"], spec["iters"], spec["min_time"])
    peak = max(_peak(device) - baseline, 0)
    own = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    out = dict(step_time_s=statistics.median(times), iters=len(times), peak_mem_mb=peak / 2**20,
               model_mem_mb=own / 2**20, params=sum(p.numel() for p in model.parameters()))
    if spec.get("count_macs"):
        out["macs_per_image"] = forward_macs(model.eval(), x[:1].to(next(model.parameters()).dtype))
    return out


def _child_env(lib: str, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TIMM_FUSED_ATTN"}  # timm: the library's default path
    if lib == "timm-sdpa":
        env["TIMM_FUSED_ATTN"] = "2"  # timm's experimental scaled_dot_product_attention path for Swin
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def measure_isolated(spec: dict, timeout: float | None = None) -> dict:
    """measure(spec) in a fresh Python process; {"error": why} when it fails, is killed or times out."""
    return run_isolated([sys.executable, "-m", "swinkit.tools.bench", json.dumps(spec)], timeout,
                        _child_env(spec["lib"], spec["threads"]))


def run_worker(script: str | Path, spec: dict) -> dict:
    """A benchmark script's own worker mode, `python SCRIPT --worker JSON(spec)`, in a fresh process (run_isolated)."""
    return run_isolated([sys.executable, str(script), "--worker", json.dumps(spec)])


def run_isolated(cmd: list[str], timeout: float | None = None, env: dict | None = None) -> dict:
    """Run `cmd` in a fresh process and return the JSON of its last stdout line starting with RESULT_TAG (what a
    benchmark worker prints); {"error": why} when it fails, is killed or times out."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    if proc.returncode < 0:
        return {"error": f"killed by signal {-proc.returncode} (out of memory?)"}
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return {"error": lines[-1] if lines else f"exit code {proc.returncode}"}


# ----------------------------------------------------------------------------------------------------------
# interleaved runs -> medians, ratios, limits, growth


def summarize(runs: list[dict]) -> list[dict]:
    """Per-repeat runs (lib, mode, img_size, step_time_s, peak_mem_mb, matmul_gflops, ... or error) -> one row
    per (mode, img_size, lib) with medians; speed and memory ratios to the best peer (every lib but swinkit) of
    the same mode and size; fraction of the matmul-bound limit; growth with resolution when several sizes."""
    rows: dict[tuple, dict] = {}
    for r in runs:
        key = (r["mode"], r["img_size"], r["lib"])
        row = rows.setdefault(key, {**{k: v for k, v in r.items() if k in COLUMNS}, "_runs": [], "_errors": []})
        (row["_errors"] if r.get("error") else row["_runs"]).append(r)
    for row in rows.values():
        _medians(row)
    for (mode, size, _), row in rows.items():
        peers = [p for (m, s, lib), p in rows.items() if (m, s) == (mode, size) and lib != "swinkit"
                 and p["img_per_s"] is not None]
        _ratios(row, peers)
    _growth(list(rows.values()))
    return [{c: row.get(c) for c in COLUMNS} for row in rows.values()]


def _medians(row: dict) -> None:
    runs = row.pop("_runs")
    errors = row.pop("_errors")
    row["error"] = errors[0]["error"] if errors else None
    row["repeats"] = len(runs)
    if not runs:
        row["img_per_s"] = row["step_time_s"] = row["peak_mem_mb"] = None
        return
    ips = [row["batch_size"] / r["step_time_s"] for r in runs]
    mem = [r["peak_mem_mb"] for r in runs]
    row.update(img_per_s=statistics.median(ips), step_time_s=statistics.median(r["step_time_s"] for r in runs),
               peak_mem_mb=statistics.median(mem), model_mem_mb=statistics.median(r["model_mem_mb"] for r in runs),
               matmul_gflops=statistics.median(r["matmul_gflops"] for r in runs),
               runs_img_per_s=" ".join(f"{v:.3g}" for v in ips), runs_peak_mem_mb=" ".join(f"{v:.0f}" for v in mem))
    for k in ("params", "macs_per_image"):
        row[k] = next((r[k] for r in runs if r.get(k) is not None), None)
    if row["macs_per_image"]:
        row["limit_img_per_s"] = matmul_limit(row["matmul_gflops"], row["macs_per_image"], row["mode"])
        row["fraction_of_limit"] = row["img_per_s"] / row["limit_img_per_s"]


def _ratios(row: dict, peers: list[dict]) -> None:
    if row["img_per_s"] is None or not peers:
        return
    row["speed_vs_best_peer"] = row["img_per_s"] / max(p["img_per_s"] for p in peers)
    row["time_vs_best_peer"] = 1 / row["speed_vs_best_peer"]
    mems = [p["peak_mem_mb"] for p in peers if p["peak_mem_mb"] > 0]
    if mems:
        row["mem_vs_best_peer"] = row["peak_mem_mb"] / min(mems)


def _growth(rows: list[dict]) -> None:
    for lib in {r["lib"] for r in rows}:
        mine = [r for r in rows if r["lib"] == lib and r["img_per_s"] is not None]
        if len({r["img_size"] for r in mine}) < 2:
            continue
        pixels = [r["img_size"] ** 2 for r in mine]
        t_k, t_g = fit_growth(pixels, [r["step_time_s"] for r in mine])
        m_k, m_g = (fit_growth(pixels, [r["peak_mem_mb"] for r in mine])
                    if all(r["peak_mem_mb"] > 0 for r in mine) else (None, None))
        for r in mine:
            r.update(time_exponent=t_k, time_growth_vs_linear=t_g, mem_exponent=m_k, mem_growth_vs_linear=m_g)


# ----------------------------------------------------------------------------------------------------------
# the benchmark


def machine(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else cpu_name()


def _lib_version(lib: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(lib.split("-")[0])
    except PackageNotFoundError:
        return ""


def benchmark(model: str = "swin_tiny_patch4_window7_224", img_sizes: list[int] | None = None, batch_size: int = 16,
              dtype: str = "float32", modes: tuple[str, ...] = ("infer",), repeats: int = 5, device: str = "cpu",
              libs: list[str] | None = None, threads: int | None = None, compile: bool = False, warmup: int = 1,
              iters: int = 0, min_time: float = 2.0, timeout: float | None = None,
              swinkit_config: dict | None = None, allocator: str = "system", log=print) -> list[dict]:
    """Interleaved, isolated measurements of `libs` (default: every installed one) -> summary rows (COLUMNS).
    Per repeat: the matmul rate, then for each size and mode every library once. A library that fails (no
    equivalent model, out of memory, timeout) is recorded with its error and not retried at that size/mode.
    allocator: "system" (the C library's defaults) or "tuned" (swinkit.utils.allocator), the same for every library."""
    threads, previous_threads = threads or torch.get_num_threads(), torch.get_num_threads()
    img_sizes = img_sizes or [SwinConfig.from_name(model).img_size[0]]
    libs = list(libs or default_libs(model))
    for lib in [lib for lib in libs if not installed(lib)]:
        log(f"skipping {lib}: not installed")
        libs.remove(lib)
    base = dict(model=canonical(model), batch_size=batch_size, dtype=dtype, device=device, threads=threads,
                compile=compile, allocator=allocator, warmup=warmup, iters=iters, min_time=min_time,
                swinkit_config=swinkit_config or {})
    stamp = dict(machine=machine(device), date=datetime.datetime.now().isoformat(timespec="seconds"),
                 torch_version=torch.__version__)
    torch.set_num_threads(threads)
    runs, failed = [], set()
    for rep in range(repeats):
        gflops = matmul_gflops(device, getattr(torch, dtype))
        log(f"repeat {rep + 1}/{repeats}: matmul {gflops:.0f} GFLOP/s ({dtype}, {threads} threads)")
        for size in img_sizes:
            for mode in modes:
                for lib in libs:
                    if (lib, mode, size) in failed:
                        continue
                    spec = dict(base, lib=lib, img_size=size, mode=mode, count_macs=rep == 0)
                    res = measure_isolated(spec, timeout)
                    if res.get("error"):
                        failed.add((lib, mode, size))
                    log(_progress(lib, mode, size, batch_size, res))
                    runs.append({**spec, **res, **stamp, "matmul_gflops": gflops,
                                 "lib_model": peer_name(lib, model), "lib_version": _lib_version(lib)})
    torch.set_num_threads(previous_threads)
    return summarize(runs)


def _progress(lib: str, mode: str, size: int, batch: int, res: dict) -> str:
    head = f"  {lib:13} {mode:5} {size:5}px"
    if res.get("error"):
        return f"{head}  FAILED: {res['error']}"
    return (f"{head}  {batch / res['step_time_s']:8.2f} img/s  {res['step_time_s']:8.3f} s/step  "
            f"peak +{res['peak_mem_mb']:.0f} MB")


# ----------------------------------------------------------------------------------------------------------
# output: table, CSV, PNG


def write_csv(rows: list[dict], path: str | Path, columns: list[str] = COLUMNS) -> None:
    """rows -> CSV with `columns`, written atomically."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows({c: _fmt(r.get(c)) for c in columns} for r in rows)

    atomic_write(path, write)


def _fmt(v):
    return "" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)


def print_table(rows: list[dict]) -> None:
    cells = [("lib", "mode", "size", "img/s", "s/step", "x best peer", "peak MB", "mem x peer", "params M",
              "GMACs", "% limit")]
    num = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        cells.append((r["lib"], r["mode"], str(r["img_size"]), num(r["img_per_s"], ".2f"), num(r["step_time_s"], ".3f"),
                      num(r["speed_vs_best_peer"], ".2f"), num(r["peak_mem_mb"], ".0f"),
                      num(r["mem_vs_best_peer"], ".2f"), num(r["params"] and r["params"] / 1e6, ".2f"),
                      num(r["macs_per_image"] and r["macs_per_image"] / 1e9, ".2f"),
                      num(r["fraction_of_limit"] and 100 * r["fraction_of_limit"], ".0f")))
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))
    for r in rows:
        if r["error"]:
            print(f"{r['lib']} {r['mode']} {r['img_size']}: {r['error']}")
    for lib in dict.fromkeys(r["lib"] for r in rows if r["time_exponent"] is not None):
        r = next(r for r in rows if r["lib"] == lib and r["time_exponent"] is not None)
        print(f"{lib}: time ~ pixels^{r['time_exponent']:.2f} (fitted growth {r['time_growth_vs_linear']:.2f}x "
              f"linear), memory ~ pixels^{num(r['mem_exponent'], '.2f')} "
              f"({num(r['mem_growth_vs_linear'], '.2f')}x linear)")


def plot_throughput(rows: list[dict], path: str | Path) -> None:
    """One bar chart per mode: img/s per library, with the ratio to the best peer and the matmul-bound limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(r["mode"] for r in rows))
    fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        mine = [r for r in rows if r["mode"] == mode and r["img_per_s"] is not None]
        bars = ax.bar([r["lib"] for r in mine], [r["img_per_s"] for r in mine],
                      color=["tab:red" if r["lib"] == "swinkit" else "tab:gray" for r in mine])
        ax.bar_label(bars, [f"{r['img_per_s']:.1f}" + (f"\n{r['speed_vs_best_peer']:.2f}x"
                                                         if r["speed_vs_best_peer"] else "") for r in mine],
                     fontsize=8)
        limits = [r["limit_img_per_s"] for r in mine if r["limit_img_per_s"]]
        if limits:
            ax.axhline(statistics.median(limits), ls="--", color="k", lw=1,
                       label=f"matmul-bound limit (mm at {mine[0]['matmul_gflops']:.0f} GFLOP/s)")
            ax.legend(loc="upper right", fontsize=8)
        r0 = rows[0]
        ax.set_title(f"{mode}: {r0['model']}\n{r0['batch_size']} x {r0['img_size']}^2, {r0['dtype']}, "
                     f"{r0['device']}, {r0['threads']} threads", fontsize=9)
        ax.set_ylabel("images / s (median)")
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def plot_sweep(rows: list[dict], path: str | Path) -> None:
    """Time and peak memory against pixels (log-log) per library, with lines proportional to pixels and to
    pixels^2 through swinkit's (else the first library's) smallest size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    ok = [r for r in rows if r["img_per_s"] is not None]
    for ax, key, label in zip(axes, ("step_time_s", "peak_mem_mb"), ("seconds per step", "peak MB above model")):
        for lib in dict.fromkeys(r["lib"] for r in ok):
            mine = sorted((r for r in ok if r["lib"] == lib), key=lambda r: r["img_size"])
            ax.plot([r["img_size"] ** 2 for r in mine], [r[key] for r in mine], "o-", label=lib)
        ref = min((r for r in ok if r[key] > 0), key=lambda r: (r["lib"] != "swinkit", r["img_size"]), default=None)
        if ref is not None:
            p0, sizes = ref["img_size"] ** 2, sorted({r["img_size"] for r in ok})
            xs = [s**2 for s in sizes]
            ax.plot(xs, [ref[key] * x / p0 for x in xs], "k--", lw=1, label="linear in pixels")
            ax.plot(xs, [ref[key] * (x / p0) ** 2 for x in xs], "k:", lw=1, label="quadratic in pixels")
        ax.set_xscale("log")
        ax.set_yscale("log")
        if ref is not None:  # after set_xscale, which would replace them: one labelled tick per measured size
            ax.minorticks_off()
            ax.set_xticks(xs, [f"{s}²" for s in sizes])
        ax.set_xlabel("input pixels")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    r0 = rows[0]
    fig.suptitle(f"{r0['model']}, batch {r0['batch_size']}, {r0['dtype']}, {r0['device']}, {r0['threads']} threads",
                 fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------
# command line


def _key_value(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (a SwinConfig field), got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--model", default="swin_tiny_patch4_window7_224", help="swinkit variant name (or alias)")
    parser.add_argument("--img-size", type=int, help="input size (default: the variant's)")
    parser.add_argument("--sweep", type=int, nargs="+", metavar="SIZE",
                        help="resolution sweep: inference time and memory at each size (default libs swinkit,timm)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="inference: model and input in this dtype; train: float32 weights under autocast")
    parser.add_argument("--mode", choices=("infer", "train", "both"), default="infer",
                        help="train = forward + backward + AdamW step")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (medians are reported)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--libs", type=lambda s: s.split(","),
                        help=f"comma-separated subset of {','.join(LIBS)} (default: all installed)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's current)")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model (static shapes)")
    parser.add_argument("--allocator", choices=("system", "tuned"), default="system",
                        help="every library's process: the C library's malloc as configured, or tuned as swinkit's "
                             "other commands run (large blocks reused instead of page-faulted afresh; glibc only)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per measurement")
    parser.add_argument("--iters", type=int, default=0, help="timed steps per measurement (0: fill --min-time)")
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds of timed steps when --iters is 0")
    parser.add_argument("--timeout", type=float, help="seconds allowed per measurement")
    parser.add_argument("--swinkit-config", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="SwinConfig override for swinkit's model (repeatable), e.g. fused_attn=false")
    parser.add_argument("--out", type=Path, help="directory for <name>.csv and <name>.png")
    parser.add_argument("--name", help="file stem in --out (default: from model, size, batch, dtype, mode)")


def _validate(args: argparse.Namespace) -> None:
    canonical(args.model)
    unknown = set(args.libs or ()) - set(LIBS)
    if unknown:
        raise SystemExit(f"swinkit bench: unknown --libs {sorted(unknown)}; choose from {','.join(LIBS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("swinkit bench: --device cuda but torch sees no CUDA device; use --device cpu")
    if min([args.batch_size, args.repeats, *(args.sweep or [])]) < 1 or (args.img_size or 1) < 1:
        raise SystemExit("swinkit bench: --batch-size, --repeats, --img-size and --sweep sizes must be >= 1")


def run(args: argparse.Namespace) -> int:
    _validate(args)
    sizes = args.sweep or ([args.img_size] if args.img_size else None)
    modes = ("infer", "train") if args.mode == "both" else (args.mode,)
    libs = args.libs or (["swinkit", "timm"] if args.sweep else None)
    rows = benchmark(args.model, sizes, args.batch_size, args.dtype, ("infer",) if args.sweep else modes,
                     args.repeats, args.device, libs, args.threads, args.compile, args.warmup, args.iters,
                     args.min_time, args.timeout, dict(args.swinkit_config), args.allocator)
    print_table(rows)
    if args.out:
        r0 = rows[0]
        size = f"sweep{min(args.sweep)}-{max(args.sweep)}" if args.sweep else r0["img_size"]
        name = args.name or (f"{r0['model']}_{size}_b{args.batch_size}_{args.dtype}_{args.mode}_{args.device}"
                             + ("_tuned" if args.allocator == "tuned" else ""))
        write_csv(rows, args.out / f"{name}.csv")
        (plot_sweep if args.sweep else plot_throughput)(rows, args.out / f"{name}.png")
        print(f"wrote {args.out / name}.csv and .png")
    return 0


if __name__ == "__main__":  # worker: python -m swinkit.tools.bench '<spec json>' (see measure_isolated)
    print(RESULT_TAG + json.dumps(measure(json.loads(sys.argv[1]))), flush=True)
