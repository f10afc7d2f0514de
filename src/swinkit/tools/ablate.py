"""`swinkit ablate`: one command, honest tables. Every configuration of a grid of SwinConfig fields (and any timm
baselines) is trained with the same recipe, seeds and budget by `swinkit train`, evaluated on val, and reported in
OUT/ablation.csv, ablation.md and ablation.png: top-1 mean +- std over seeds with a note where rows are within noise,
parameters and MACs (matched by width), training throughput, peak memory and robustness.

    swinkit ablate --data DIR --vary mixer=shifted_window,window,global --vary window_size=4,8 --seeds 3 \\
        --budget-minutes 2 --baseline timm:convnext_atto

Each run is `python -m swinkit train ...` in a fresh process (its own peak memory, the loop's exact resume), in
OUT/runs/<config>-seed<k>/; rerunning the command skips the runs that completed and resumes the others, so a killed
ablation loses at most what its last checkpoint had not saved. The machinery here (grid parsing, width matching, a
run planned for a time budget, running and reading runs, the noise rule) is shared with `swinkit search`.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime
import importlib.util
import itertools
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..config import SwinConfig
from ..counting import count_params
from ..data import build_datasets
from ..factory import create_model
from ..io.files import atomic_write, dumps, write_json
from ..tasks.base import LOOP_SETTINGS, AMP_DTYPES, Env, TrainSettings, add_settings_arguments, autocast
from ..tasks.classify import ARCH_KEYS, ClassifySettings, ClassifyTask, TIMM_PREFIX, timm_classifier
from .bench import forward_macs

NOISE_SE = 2.0  # two rows are within noise when their means differ by less than this many pooled standard errors
# training settings that ablate and search set themselves
MANAGED = ("data", "out", "seed", "resume", "recipe", "model", "model_kwargs", "pretrained")
PROBE_STEPS = 4  # timed training steps (after one warm-up) that plan a run for a time budget
ROBUST_KEYS = ("clean", "mean", "cyclic_mean", "pad_mean")  # the robustness figures in the markdown table


class AblateError(ValueError):
    """Settings or a state of OUT that cannot work; the message says what to change."""


# ----------------------------------------------------------------------------------------------------------
# the grid: --vary KEY=V1,V2 over SwinConfig fields, --set KEY=VALUE


STAGE_WINDOWS = ("window_size", "pretrained_window_sizes")  # per-stage entries that are (h, w) windows


def model_fields() -> dict[str, object]:
    """SwinConfig field -> default, for the fields a grid may change (num_classes comes from the data)."""
    return {f.name: f.default for f in dataclasses.fields(SwinConfig) if f.name not in ("name", "num_classes")}


def parse_value(key: str, text: str):
    """One value of SwinConfig field `key` as typed on the command line: true / false for a switch, a number, a name,
    or one entry per stage joined by '-' (window_size=4-4-8-8, mixer=window-global, depths=2-2-6-2); none for a
    field whose default is None."""
    default, hint = model_fields()[key], SwinConfig.__annotations__[key]
    if default is None and text.lower() == "none":
        return None
    if hint == "bool":
        if text.lower() not in ("true", "false"):
            raise AblateError(f"{key}={text}: expected true or false")
        return text.lower() == "true"
    if "float" in hint:
        try:
            return float(text)
        except ValueError:
            raise AblateError(f"{key}={text}: expected a number") from None
    parts = text.split("-")
    if "" in parts:
        raise AblateError(f"{key}={text}: an empty entry; join one entry per stage with '-', e.g. {key}=4-4-8-8")
    if not isinstance(default, str) and hint != "str":
        try:
            parts = [int(p) for p in parts]
        except ValueError:
            raise AblateError(f"{key}={text}: expected an integer, or one per stage joined by '-'") from None
    per_stage = "tuple" in hint or default is None  # depths, num_heads, dims: always one entry per stage
    return tuple(parts) if len(parts) > 1 or per_stage else parts[0]


def _field_error(what: str, key: str) -> AblateError:
    return AblateError(f"{what} {key}: not a SwinConfig field; expected one of {', '.join(sorted(model_fields()))}")


def parse_vary(texts: list[str], what: str = "--vary") -> list[tuple[str, list]]:
    """[(field, [values])] from --vary KEY=V1,V2,... (repeatable: the grid is the cartesian product)."""
    out: dict[str, list] = {}
    for text in texts:
        key, sep, values = text.partition("=")
        if not sep or not values:
            raise AblateError(f"{what} {text!r}: expected KEY=V1,V2,..., e.g. {what} window_size=4,7")
        if key not in model_fields():
            raise _field_error(what, key)
        if key in out:
            raise AblateError(f"{what} {key} is given twice: list all its values in one {what} {key}=V1,V2,...")
        out[key] = [parse_value(key, v) for v in values.split(",")]
        if len({repr(v) for v in out[key]}) < len(out[key]):
            raise AblateError(f"{what} {key}: a value is listed twice ({values})")
    return list(out.items())


def grid(vary: list[tuple[str, list]]) -> list[dict]:
    """Every combination of the values, in order (the last key varies fastest); [{}] without --vary."""
    keys = [k for k, _ in vary]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in vary))]


def format_value(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (tuple, list)):
        return "-".join(format_value(x) for x in v)
    return "none" if v is None else str(v)


def config_id(changes: dict) -> str:
    """"window_size=4,shift=false": the name of a grid point in tables and run directories ("base": no change)."""
    return ",".join(f"{k}={format_value(v)}" for k, v in changes.items()) or "base"


def train_keys() -> dict[str, object]:
    """Flat key -> default of every `swinkit train --task classify` flag that --set may give."""
    fields = [f for g in (*LOOP_SETTINGS.values(), ClassifySettings) for f in dataclasses.fields(g)]
    keys = {f.metadata.get("flag") or f.name for f in fields if f.metadata.get("cli", True)}
    defaults = TrainSettings.defaults(ClassifySettings)
    return {k: defaults[k] for k in sorted(keys - set(MANAGED) - set(model_fields()))}


def parse_set(texts: list[str]) -> tuple[dict, dict[str, str]]:
    """--set KEY=VALUE -> ({SwinConfig field: value}, {training setting: text as its flag takes it}). A list setting
    takes its values separated by spaces (--set "scale=0.7 1.0")."""
    model, train = {}, {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not value:
            raise AblateError(f"--set {text!r}: expected KEY=VALUE, e.g. --set batch_size=64 or --set shift=false")
        if key in model_fields():
            model[key] = parse_value(key, value)
        elif key in train_keys():
            if isinstance(train_keys()[key], bool) and value.lower() not in ("true", "false"):
                raise AblateError(f"--set {key}={value}: expected true or false")
            train[key] = value
        elif key in MANAGED:
            raise AblateError(f"--set {key}: set by the command itself (--data, --out, --seeds, --recipe, --baseline)")
        else:
            raise AblateError(f"--set {key}: neither a SwinConfig field nor a training setting (`swinkit train "
                              f"--help` lists the settings: --batch-size is batch_size)")
    return model, train


def setting_flags(train: dict[str, str]) -> list[str]:
    """{training setting: text} -> `swinkit train` flags."""
    out = []
    for key, value in train.items():
        flag = key.replace("_", "-")
        if isinstance(train_keys()[key], bool):
            out.append(f"--{flag}" if value.lower() == "true" else f"--no-{flag}")
        else:
            out += [f"--{flag}", *value.split()]
    return out


# ----------------------------------------------------------------------------------------------------------
# configurations: what is trained, counted on the meta device


@dataclasses.dataclass
class Config:
    """One row: a grid point (a Swin with `kwargs` over the recipe's model) or an external baseline (`model` is
    "timm:NAME")."""
    id: str
    model: str
    kwargs: dict  # SwinConfig fields over the recipe's model, passed as --model-kwargs
    size: int = 0  # training size: the model's img_size
    params: int = 0
    macs: int = 0
    match: dict = dataclasses.field(default_factory=dict)  # width matching: embed_dim, ratio, note

    def __post_init__(self):
        # one square window per stage: SwinConfig reads a bare pair of ints as one (h, w) window for every stage
        self.kwargs = {k: [[w, w] for w in v] if k in STAGE_WINDOWS and isinstance(v, (tuple, list))
                       and all(isinstance(w, int) for w in v) else v for k, v in self.kwargs.items()}

    @property
    def external(self) -> bool:
        return self.model.startswith(TIMM_PREFIX)


def recipe_model(recipe: str) -> tuple[str, dict]:
    """(variant name, SwinConfig fields) of the model a classification recipe trains."""
    r = ClassifyTask.recipes[recipe]
    arch = {k: r[k] for k in (*ARCH_KEYS, "drop_path_rate") if r.get(k) is not None}
    return r.get("model", ClassifySettings.model), arch


def build_classifier(cfg: Config, recipe: str, num_classes: int, device: str | torch.device = "meta",
                     **extra) -> torch.nn.Module:
    """The model `swinkit train --recipe RECIPE` builds for `cfg` (random weights; on the meta device: no memory)."""
    with torch.device(device):
        if cfg.external:
            return timm_classifier(cfg.model[len(TIMM_PREFIX):], num_classes)
        name, arch = recipe_model(recipe)
        return create_model(name, num_classes=num_classes, **{**arch, **cfg.kwargs, **extra})


def count(cfg: Config, s: Setup, **extra) -> tuple[int, int]:
    """(parameters, MACs of one image at cfg's training size) of cfg's model, with `extra` SwinConfig fields."""
    model = build_classifier(cfg, s.recipe, s.num_classes, **extra).eval()
    return count_params(model), forward_macs(model, torch.zeros(1, 3, cfg.size, cfg.size, device="meta"))


def width_step(num_heads: tuple[int, ...]) -> int:
    """The smallest embed_dim step that keeps every stage's width embed_dim * 2**i divisible by its heads."""
    return math.lcm(*(h // math.gcd(h, 2**i) for i, h in enumerate(num_heads)))


def match_width(cfg: Config, s: Setup, target: int, tolerance: float) -> dict:
    """cfg's own embed_dim when its MACs are within `tolerance` of `target`, else the embed_dim (in width_step steps,
    up to 4x its own) whose MACs are closest to `target` (MACs grow with the width: a bisection), with the ratio
    reached and a note when it still misses `tolerance`."""
    built = build_classifier(cfg, s.recipe, s.num_classes).cfg
    own, step, ratio = built.embed_dim, width_step(built.num_heads), cfg.macs / target
    if abs(ratio - 1) <= tolerance or built.dims is not None:
        note = "" if abs(ratio - 1) <= tolerance else "dims gives the widths: not adjusted"
        return {"embed_dim": own, "base_embed_dim": own, "ratio": ratio, "matched": not note, "note": note}
    macs = {}

    def at(k: int) -> int:
        if k not in macs:
            macs[k] = count(cfg, s, embed_dim=k * step)[1]
        return macs[k]

    lo, hi = 1, max(2, math.ceil(4 * own / step))
    if at(hi) < target:
        lo = hi
    while hi - lo > 1:  # at(lo) < target <= at(hi), or the ends
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if at(mid) < target else (lo, mid)
    k = min((lo, hi), key=lambda j: abs(math.log(at(j) / target)))
    ratio = at(k) / target
    matched = abs(ratio - 1) <= tolerance
    note = "" if matched else (f"cannot be matched within {tolerance:.0%}: the closest width, C {k * step}, gives "
                               f"{ratio:.2f}x the reference's MACs")
    return {"embed_dim": k * step, "base_embed_dim": own, "ratio": ratio, "matched": matched, "note": note}


def plan_configs(changes: list[dict], s: Setup, baselines: list[str], match: str | None,
                 tolerance: float) -> list[Config]:
    """The rows, counted, with widths matched to the reference `match` (a configuration id; None: no matching)."""
    configs = [Config(config_id(c), "", {**s.set_model, **c}) for c in changes]
    configs += [Config(name.replace(":", "-"), name, {}, match={"note": "external baseline: not adjusted"})
                for name in baselines]
    for c in configs:
        c.size = c.kwargs.get("img_size", s.size)
        c.params, c.macs = count(c, s)
    if match is not None:
        ids = [c.id for c in configs]
        if match not in ids:
            raise AblateError(f"--match-flops {match}: no such configuration; expected one of {', '.join(ids)}")
        ref = configs[ids.index(match)]
        width = None if ref.external else build_classifier(ref, s.recipe, s.num_classes).cfg.embed_dim
        ref.match = {"embed_dim": width, "base_embed_dim": width, "ratio": 1.0, "matched": True, "note": "reference"}
        for c in configs:
            if c is not ref and not c.external:
                c.match = match_width(c, s, ref.macs, tolerance)
                if c.match["embed_dim"] != c.match["base_embed_dim"]:
                    c.kwargs = {**c.kwargs, "embed_dim": c.match["embed_dim"]}
                    c.params, c.macs = count(c, s)
            elif c is not ref:
                c.match["ratio"] = c.macs / ref.macs
    return configs


# ----------------------------------------------------------------------------------------------------------
# one run: `swinkit train` in a fresh process, planned for a time budget, skipped when complete


def train_argv(cfg: Config, s: Setup) -> list[str]:
    """`swinkit train` arguments of cfg's runs (no --out, --seed, --epochs); the data's size follows the model's."""
    if not isinstance(cfg.size, int):
        raise AblateError(f"{cfg.id}: img_size must be one integer (square images are trained), got {cfg.size}")
    argv = ["--data", s.data, "--recipe", s.recipe, *setting_flags(s.set_train), "--img-size", str(cfg.size)]
    if cfg.external:
        return [*argv, "--model", cfg.model]
    return [*argv, "--model-kwargs", dumps(cfg.kwargs)] if cfg.kwargs else argv


def settings_of(argv: list[str]) -> TrainSettings:
    """The settings `swinkit train ARGV` runs with (its flags, recipe and the task's resolve), to probe in-process."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--recipe")
    for group in LOOP_SETTINGS.values():
        add_settings_arguments(parser, group)
    ClassifyTask.add_arguments(parser)
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    recipe = given.pop("recipe")
    flat = {**TrainSettings.defaults(ClassifySettings), **ClassifyTask.recipes[recipe], **given, "recipe": recipe,
            "given": sorted(given)}
    return TrainSettings.from_flat(ClassifyTask.resolve(flat, given), ClassifySettings)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """torch's CPU threads set to `n` (None: unchanged) inside the block: measure with the runs' --threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n or previous)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def probe(argv: list[str]) -> dict:
    """Seconds per training image of the run `swinkit train ARGV` would make: PROBE_STEPS timed steps (data loading,
    forward, backward, AdamW) of the task's own model, data and loss, after one warm-up; the images one epoch trains;
    and, on a GPU, the peak memory torch allocated."""
    s = settings_of(argv)
    device = torch.device(s.device.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp = AMP_DTYPES[s.device.amp if s.device.amp != "auto" else ("bf16" if device.type == "cuda" else "none")]
    with torch_threads(s.device.threads):
        task = ClassifyTask(s, Env(device, amp_dtype=amp))
        train, _ = task.build_datasets()
        torch.manual_seed(0)
        model = task.build_model().to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
        batch_size, fits = s.loader.batch_size, len(train) // s.optim.accum_steps
        if 0 < fits < batch_size and "batch_size" not in s.run.given:  # as the loop fits a default to small data
            batch_size = 2 ** int(math.log2(fits))
        step = batch_size * s.optim.accum_steps
        if step > len(train):
            raise AblateError(f"{len(train)} training images are fewer than one update's batch {batch_size} x "
                              f"accumulation {s.optim.accum_steps}: lower --set batch_size")
        loader = DataLoader(train, batch_size, shuffle=True, drop_last=True, collate_fn=task.collate_fn,
                            generator=torch.Generator().manual_seed(0))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times, batches = [], iter(())
        t0 = time.perf_counter()
        for i in range(PROBE_STEPS + 1):
            batch = next(batches, None) or next(batches := iter(loader))
            with autocast(device, amp):
                loss = task.loss(model, batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t1 = time.perf_counter()
            times.append((t1 - t0) / batch_size)
            t0 = t1
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"seconds_per_image": statistics.median(times[1:]), "images_per_epoch": len(train) // step * step,
            "peak_gpu_mb": peak, "device": str(device)}


def plan_epochs(minutes: float, probed: dict) -> int:
    """Epochs whose training fills `minutes` at the probed speed (at least one)."""
    per_epoch = probed["seconds_per_image"] * max(probed["images_per_epoch"], 1)
    return max(1, math.floor(minutes * 60 / per_epoch))


def budget_flags(epochs: int, recipe: str, train: dict[str, str]) -> list[str]:
    """--epochs for a budget, and the recipe's warmup scaled to the same fraction of the run (unless --set)."""
    r = {**TrainSettings.defaults(ClassifySettings), **ClassifyTask.recipes[recipe]}
    flags = ["--epochs", str(epochs)]
    if "warmup_epochs" not in train:
        flags += ["--warmup-epochs", f"{r['warmup_epochs'] * epochs / r['epochs']:.6g}"]
    return flags


class Probes:
    """Probe results kept in OUT/probes.json, keyed by the run's arguments, so a rerun plans the same epochs."""

    def __init__(self, path: Path):
        self.path = path
        self.known = json.loads(path.read_text()) if path.is_file() else {}

    def __call__(self, argv: list[str]) -> dict:
        key = shlex.join(argv)
        if key not in self.known:
            self.known[key] = probe(argv)
            write_json(self.path, self.known)
        return self.known[key]


def run_training(run_dir: Path, argv: list[str]) -> dict:
    """Train `swinkit train ARGV --out RUN_DIR` in a fresh process, resume it when it has a last.pt, or skip it when
    it completed. Returns {"status", "summary", "max_rss_mb", "error"}; raises KeyboardInterrupt after the run saved
    its state on Ctrl-C, and AblateError when RUN_DIR holds a run of other arguments."""
    spec_file, proc_file = run_dir / "ablate.json", run_dir / "process.json"
    if spec_file.is_file() and json.loads(spec_file.read_text())["argv"] != argv:
        raise AblateError(f"{run_dir} holds a run of other settings (see its ablate.json): move it away, or use "
                          "another --out for these settings")
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    before = json.loads(proc_file.read_text()) if proc_file.is_file() else {}
    if summary.get("status") == "completed":
        return {"status": "skipped", "summary": summary, "max_rss_mb": before.get("max_rss_mb"), "error": None}
    write_json(spec_file, {"argv": argv})
    resume = (run_dir / "last.pt").is_file()
    cmd = [sys.executable, "-m", "swinkit", "train",
           *(["--resume", str(run_dir)] if resume else [*argv, "--out", str(run_dir)])]
    with open(run_dir / "train.log", "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # wait4: this child's own rusage (its peak memory)
        except KeyboardInterrupt:  # the child had the same Ctrl-C: it saves last.pt and exits
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            raise
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    rss = max(_rss_mb(usage), before.get("max_rss_mb") or 0.0)
    write_json(proc_file, {"max_rss_mb": rss, "exit_code": code})
    if code == 130:
        raise KeyboardInterrupt
    if code != 0:
        lines = [ln for ln in (run_dir / "train.log").read_text().splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1] if lines else f"exit {code}")
        return {"status": "failed", "summary": {}, "max_rss_mb": rss, "error": why}
    return {"status": "resumed" if resume else "trained", "summary": json.loads(summary_file.read_text()),
            "max_rss_mb": rss, "error": None}


def _rss_mb(usage) -> float:
    """Peak resident memory of a child from its rusage, in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    return usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def run_robustness(run_dir: Path, data: str, images: int, max_shift: int) -> dict | None:
    """Translation consistency and corruption accuracy (swinkit.metrics.robustness, as `swinkit eval --robustness`)
    of the run's final weights on `images` val images of its own split (a fixed subset: the first `images` of a
    seeded permutation), cached in RUN_DIR/robustness.json; None when swinkit has no robustness module."""
    cache, spec = run_dir / "robustness.json", {"images": images, "max_shift": max_shift}
    if cache.is_file() and json.loads(cache.read_text())["spec"] == spec:
        return json.loads(cache.read_text())["result"]
    try:
        from ..tasks.classify import robustness
    except ImportError:
        return None
    ck = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    loaded, a = ClassifyTask.load(run_dir / "last.pt", ck), ck["args"]
    verify = a["verify_images"] and not (Path(data) / "val").is_dir()  # a split depends on the files dropped
    _, val = build_datasets(data, None, None, a["val_fraction"], a["seed"], verify)
    subset = sorted(torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[:images].tolist())
    device = "cuda" if torch.cuda.is_available() and not str(a.get("device") or "").startswith("cpu") else "cpu"
    how = argparse.Namespace(device=device, amp="none", img_size=None, crop_pct=None, batch_size=64, workers=0,
                             max_shift=max_shift)
    with torch_threads(a.get("threads")):
        result = robustness(loaded.model.to(device), val.subset(subset, None), loaded.meta["data"], how, None)
    write_json(cache, {"spec": spec, "result": result})
    return result


# ----------------------------------------------------------------------------------------------------------
# statistics: mean +- std over seeds, and when two rows are within noise


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation) of per-seed values; std None for one value, both None for none."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def within_noise(a: list[float], b: list[float], k: float = NOISE_SE) -> bool | None:
    """Whether the means of two rows' per-seed values differ by less than k pooled standard errors,
    k * sqrt(s_a^2 / n_a + s_b^2 / n_b) (s: sample standard deviation, n: seeds); equal means always are. None
    when a side has fewer than two seeds: there is no estimate of the noise."""
    if len(a) < 2 or len(b) < 2:
        return None
    diff = abs(statistics.fmean(a) - statistics.fmean(b))
    return diff == 0 or diff < k * math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))


def noise_notes(values: dict[str, list[float]]) -> dict[str, str]:
    """Each row against the row of the best mean: "best", "within noise of BEST", "-1.20 vs BEST" (beyond noise)
    or "one seed: no noise estimate"."""
    done = {k: v for k, v in values.items() if v}
    if not done:
        return {k: "" for k in values}
    best = max(done, key=lambda k: statistics.fmean(done[k]))
    notes = {}
    for k, v in values.items():
        w = within_noise(v, done[best]) if v and k != best else None
        notes[k] = ("" if not v else "best" if k == best else "one seed: no noise estimate" if w is None else
                    f"within noise of {best}" if w else
                    f"{statistics.fmean(v) - statistics.fmean(done[best]):+.2f} vs {best}")
    return notes


def noise_pairs(values: dict[str, list[float]]) -> list[tuple[str, str]]:
    """Every pair of rows whose means are within noise of each other (within_noise)."""
    return [(a, b) for a, b in itertools.combinations([k for k, v in values.items() if v], 2)
            if within_noise(values[a], values[b])]


# ----------------------------------------------------------------------------------------------------------
# the table: one row per configuration


COLUMNS = ["config", "model", "seeds", "top1_mean", "top1_std", "top1_seeds", "vs_best", "params_m", "gmacs",
           "gmacs_vs_ref", "embed_dim", "base_embed_dim", "width_note", "epochs", "train_min", "img_per_s",
           "peak_mem_mb", "peak_mem", "robust_clean", "robust_mean", "robust_cyclic_mean", "robust_pad_mean",
           "robust_relative_mce", "errors"]


def _mean_of(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def table_rows(configs: list[Config], runs: dict[str, dict[int, dict]], ref: str | None) -> list[dict]:
    """One row per configuration from its runs ({seed: run_training's result + "robustness"}): per-seed val top-1
    of the final weights, their mean and std, the noise note; counts; planned epochs, measured training time,
    throughput and peak memory; robustness means over seeds (percent) with relative mCE against `ref`'s."""
    top1 = top1_of(configs, runs)
    notes = noise_notes(top1)
    robust = {c.id: {k: _mean_of([(r.get("robustness") or {}).get(k) for r in runs[c.id].values()])
                     for k in _robust_keys(runs[c.id])} for c in configs}
    rows = []
    for c in configs:
        done = [r for r in runs[c.id].values() if r["summary"]]
        mean, std = mean_std(top1[c.id])
        gpu = [r.get("peak_gpu_mb") for r in done if r.get("peak_gpu_mb") is not None]
        rss = [r["max_rss_mb"] for r in done if r.get("max_rss_mb") is not None]
        rob = robust[c.id]
        rows.append({
            "config": c.id, "model": done[0]["summary"].get("model") if done else c.model or "",
            "seeds": len(top1[c.id]), "top1_mean": mean, "top1_std": std, "top1_seeds": ";".join(
                f"{v:.2f}" for v in top1[c.id]), "vs_best": notes[c.id], "params_m": c.params / 1e6,
            "gmacs": c.macs / 1e9, "gmacs_vs_ref": c.match.get("ratio"), "embed_dim": c.match.get("embed_dim"),
            "base_embed_dim": c.match.get("base_embed_dim"), "width_note": c.match.get("note", ""),
            "epochs": _mean_of([r["summary"].get("epochs") for r in done]),
            "train_min": _mean_of([r["summary"].get("train_seconds", 0) / 60 for r in done]),
            "img_per_s": _mean_of([r["summary"].get("images_per_sec") for r in done]),
            "peak_mem_mb": max(gpu) if gpu else max(rss) if rss else None,
            "peak_mem": "GPU, torch allocated (probe)" if gpu else "process RSS" if rss else "",
            **{f"robust_{k}": 100 * rob[k] if rob.get(k) is not None else None for k in ROBUST_KEYS},
            "robust_relative_mce": _relative_mce(rob, robust.get(ref)) if ref else None,
            "errors": "; ".join(f"seed {s}: {r['error']}" for s, r in sorted(runs[c.id].items()) if r["error"])})
    return rows


def top1_of(configs: list[Config], runs: dict[str, dict[int, dict]]) -> dict[str, list[float]]:
    """config -> the val top-1 of its completed runs, in seed order."""
    return {c.id: [r["summary"]["val_top1"] for _, r in sorted(runs[c.id].items())
                   if r["summary"].get("val_top1") is not None] for c in configs}


def _robust_keys(runs: dict[int, dict]) -> list[str]:
    return list(dict.fromkeys(k for r in runs.values() for k in (r.get("robustness") or {})))


def _relative_mce(result: dict, baseline: dict | None) -> float | None:
    """Relative mCE (swinkit.metrics.robustness) of a row's mean robustness against the reference row's."""
    if not result or not baseline or "clean" not in result or "clean" not in baseline:
        return None
    from ..metrics.robustness import relative_mce

    with warnings.catch_warnings():  # corruptions the reference lost nothing to are left out, as the md says
        warnings.simplefilter("ignore")
        return relative_mce(result, baseline)


def write_csv(rows: list[dict], path: Path, columns: list[str]) -> None:
    def write(p: Path) -> None:
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            w.writerows({k: "" if r.get(k) is None else f"{r[k]:.8g}" if isinstance(r[k], float) else r[k]
                         for k in columns} for r in rows)
    atomic_write(path, write)


def _f(v, fmt: str = ".2f", none: str = "-") -> str:
    return none if v is None else format(v, fmt)


def markdown(rows: list[dict], command: str, facts: list[str], ref: str | None, tolerance: float,
             pairs: list[tuple[str, str]]) -> str:
    """ablation.md: the command, what was trained, the table, and how to read it."""
    lines = ["# Ablation", "", "```", command, "```", "", *facts, "",
             "| configuration | top-1 % (mean ± std, seeds) | vs best | params (M) | GMACs | C | epochs | train min | "
             "img/s | peak MiB | corruption acc. % | cyclic shift % | padded shift % | rel. mCE |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        top1 = "-" if r["top1_mean"] is None else f"{r['top1_mean']:.2f} ± {_f(r['top1_std'], '.2f', 'n/a')} " \
                                                   f"({r['seeds']})"
        ratio = f" ({r['gmacs_vs_ref']:.2f}x)" if r["gmacs_vs_ref"] is not None else ""
        width = "-" if r["embed_dim"] is None else str(r["embed_dim"]) + (
            f" (was {r['base_embed_dim']})" if r["base_embed_dim"] not in (None, r["embed_dim"]) else "")
        lines.append(f"| {r['config']} | {top1} | {r['vs_best']} | {r['params_m']:.3f} | {r['gmacs']:.4f}{ratio} | "
                     f"{width} | {_f(r['epochs'], '.0f')} | {_f(r['train_min'])} | {_f(r['img_per_s'], '.0f')} | "
                     f"{_f(r['peak_mem_mb'], '.0f')} | {_f(r['robust_mean'], '.1f')} | "
                     f"{_f(r['robust_cyclic_mean'], '.1f')} | {_f(r['robust_pad_mean'], '.1f')} | "
                     f"{_f(r['robust_relative_mce'])} |")
    lines += ["", "How to read it:", "",
              f"- **Noise**: two rows are *within noise* when their mean top-1 differ by less than {NOISE_SE:g} pooled "
              f"standard errors, {NOISE_SE:g} x sqrt(s1²/n1 + s2²/n2) (s: the standard deviation over seeds, n: the "
              "seeds). `vs best` compares each row with the best mean; with one seed there is no estimate. "
              "Pairs within noise: " + (", ".join(f"{a} ~ {b}" for a, b in pairs) or "none") + ".",
              "- **top-1**: val top-1 of the final weights (the last epoch, not the best one: picking the best epoch "
              "on val would flatter the noisier rows)."]
    if ref:
        lines.append(f"- **Width**: a Swin row whose MACs differ by more than {tolerance:.0%} from those of {ref}, "
                     "the reference, had its embed_dim C changed (in steps that keep every stage's width divisible by "
                     "its heads, `was` giving the one before) to bring them closest; GMACs shows the ratio to the "
                     "reference. " + " ".join(
                         f"{r['config']}: {r['width_note']}." for r in rows
                         if r["width_note"] and r["width_note"] != "reference"))
    lines += ["- **img/s**: training images per second during the runs (data loading included, validation not), "
              "mean over seeds. **peak MiB**: the peak resident memory of the training process (its ru_maxrss: "
              "Python, torch, data and model together), or on a GPU the most torch allocated during the timed steps "
              "that planned the run.",
              "- **Robustness** (swinkit.metrics.robustness, as `swinkit eval --robustness`): on a fixed subset of "
              "each run's val images, final weights, mean over seeds: mean accuracy under 6 corruptions x 5 "
              "severities, and the share of top-1 unchanged under cyclic and padded shifts"
              + (f"; relative mCE against {ref} (corruptions that cost it no accuracy are left out)." if ref
                 else ".")]
    errors = [f"- {r['config']}: {r['errors']}" for r in rows if r["errors"]]
    return "\n".join(lines + (["", "Failed runs:", "", *errors] if errors else [])) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """ablation.png: top-1 mean +- std per configuration, and top-1 against GMACs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["top1_mean"] is not None]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    names, means, stds = [r["config"] for r in done], [r["top1_mean"] for r in done], \
        [r["top1_std"] or 0.0 for r in done]
    a.errorbar(means, range(len(done)), xerr=stds, fmt="o", capsize=4)  # points, not bars: no axis from zero to hide
    a.set_yticks(range(len(done)), names, fontsize=8)
    a.invert_yaxis()
    a.set(xlabel="val top-1 % (mean ± std over seeds)", title="top-1")
    b.errorbar([r["gmacs"] for r in done], means, yerr=stds, fmt="o", capsize=4)
    for r in done:
        b.annotate(r["config"], (r["gmacs"], r["top1_mean"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    b.set(xlabel="GMACs per image", ylabel="val top-1 %", title="accuracy against compute")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------
# command line


def add_common_arguments(parser: argparse.ArgumentParser, out: str) -> None:
    """The flags `swinkit ablate` and `swinkit search` share."""
    a = parser.add_argument
    a("--data", required=True, help="image folder: train/ and val/ class folders, or class folders that are split "
                                    "as swinkit train splits them")
    a("--set", action="append", default=[], metavar="KEY=VALUE",
      help="a fixed SwinConfig field (embed_dim=48, shift=false, window_size=4-4-8-8: one entry per stage joined by "
           "'-') or training setting (batch_size=64, amp=bf16, \"scale=0.7 1.0\") for every run; repeatable")
    a("--recipe", default="small", choices=list(ClassifyTask.recipes), help="the recipe of every run and its model "
                                                                            "(default small)")
    a("--out", type=Path, default=Path(out), help=f"output folder; rerun with the same one to continue (default "
                                                  f"{out})")


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    add_common_arguments(parser, "ablation")
    a = parser.add_argument
    a("--vary", action="append", default=[], metavar="KEY=V1,V2,...",
      help="a SwinConfig field and its values (true/false, numbers, names; one entry per stage joined by '-', e.g. "
           "window_size=4,4-4-8-8); repeatable: the grid is the product")
    a("--baseline", action="append", default=[], metavar="timm:NAME",
      help="also train timm's model NAME (random weights) with the same recipe and budget; repeatable")
    a("--seeds", type=int, default=3, help="runs per configuration, seeds 0..N-1 (default 3)")
    a("--budget-minutes", type=float, help="training minutes per run: the epochs are planned from a timing of the "
                                           "configuration (default: the recipe's epochs, or --set epochs=N)")
    a("--match-flops", metavar="CONFIG", help="the configuration whose MACs the others are matched to by width "
                                              "(default: the first)")
    a("--no-match", action="store_true", help="keep every configuration's width")
    a("--tolerance", type=float, default=0.10, help="width matching: the MAC ratio counted as matched (default 0.1)")
    a("--robust-images", type=int, default=500, help="val images per run for the robustness figures (0: none)")
    a("--max-shift", type=int, default=4, help="robustness: the largest shift, in pixels")


def command_line(args: argparse.Namespace, command: str) -> str:
    """The command that gives these arguments, every setting spelled out."""
    words = ["swinkit", command]
    for k, v in vars(args).items():
        flag = "--" + k.replace("_", "-")
        if k == "command" or v is None or v is False or v == []:
            continue
        words += [flag] if v is True else [x for item in v for x in (flag, str(item))] if isinstance(v, list) \
            else [flag, str(v)]
    return shlex.join(words)


@dataclasses.dataclass
class Setup:
    """What every run of an ablation or a search shares: data, recipe, fixed settings, the training size."""
    data: str
    recipe: str
    set_model: dict
    set_train: dict[str, str]
    num_classes: int
    train_images: int
    size: int


def setup(args: argparse.Namespace) -> Setup:
    """Check the shared flags and read the data's classes and the training size."""
    if not Path(args.data).is_dir():
        raise AblateError(f"--data {args.data}: no such folder (expected train/ and val/ class folders)")
    set_model, set_train = parse_set(args.set)
    if args.budget_minutes is not None and "epochs" in set_train:
        raise AblateError("--set epochs and --budget-minutes both choose the epochs: give one of them")
    if args.budget_minutes is not None and args.budget_minutes <= 0:
        raise AblateError(f"--budget-minutes must be > 0, got {args.budget_minutes}")
    val_fraction = float(set_train.get("val_fraction", ClassifySettings.val_fraction))
    train, _ = build_datasets(args.data, None, None, val_fraction, 0, verify=False)
    base = build_classifier(Config("base", "", set_model), args.recipe, len(train.classes)).cfg
    if base.img_size[0] != base.img_size[1]:
        raise AblateError(f"img_size {base.img_size}: training uses square images; give one size")
    return Setup(str(args.data), args.recipe, set_model, set_train, len(train.classes), len(train), base.img_size[0])


def prepare(cfg: Config, s: Setup, minutes: float | None, probes: Probes) -> tuple[list[str], dict]:
    """cfg's `swinkit train` arguments, with --epochs planned for `minutes` of training (None: the recipe's), and
    the probe (timed steps) of its run."""
    argv = train_argv(cfg, s)
    try:
        probed = probes(argv)
    except (argparse.ArgumentError, ValueError, ImportError, RuntimeError) as e:
        raise AblateError(f"{cfg.id}: {e}") from None
    return ([*argv, *budget_flags(plan_epochs(minutes, probed), s.recipe, s.set_train)] if minutes else argv), probed


def train_seed(cfg: Config, argv: list[str], seed: int, run_dir: Path, probed: dict, robust_images: int,
               max_shift: int, data: str, label: str | None = None) -> dict:
    """One run of cfg with `seed` (trained, resumed or skipped), its robustness, and one line saying what happened."""
    r = run_training(run_dir, [*argv, "--seed", str(seed)])
    r["peak_gpu_mb"] = probed.get("peak_gpu_mb")
    if r["summary"] and robust_images > 0:
        r["robustness"] = run_robustness(run_dir, data, robust_images, max_shift)
    s = r["summary"]
    what = f"failed: {r['error']}" if r["error"] else (
        f"{r['status']}: top-1 {s['val_top1']:.2f}% after {s['epochs']} epoch(s), {s['train_seconds']:.1f} s "
        "of training")
    print(f"{label or cfg.id} seed {seed}: {what}", flush=True)
    return r


def check_baselines(names: list[str]) -> None:
    """AblateError for a --baseline that is not timm:NAME, or when timm is not installed."""
    for name in names:
        if not name.startswith(TIMM_PREFIX) or len(name) == len(TIMM_PREFIX):
            raise AblateError(f"--baseline {name}: expected timm:NAME, e.g. --baseline timm:convnext_atto")
        if importlib.util.find_spec("timm") is None:
            raise AblateError(f"--baseline {name} trains a timm model: pip install timm")


def run(args: argparse.Namespace) -> int:
    return guarded(ablate, args)


def guarded(command, args: argparse.Namespace) -> int:
    """command(args) -> exit status, with one line for an AblateError and the way to continue after Ctrl-C."""
    try:
        return command(args)
    except AblateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: every run saved its state; rerun the same command to continue ({args.out})",
              file=sys.stderr)
        return 130


def ablate(args: argparse.Namespace) -> int:
    """Plan, train (or skip what is done), and write ablation.csv / .md / .png after every run."""
    if args.seeds < 1:
        raise AblateError(f"--seeds must be >= 1, got {args.seeds}")
    check_baselines(args.baseline)
    vary = parse_vary(args.vary)
    if "embed_dim" in dict(vary) and not args.no_match:
        raise AblateError("--vary embed_dim: width matching adjusts embed_dim itself; add --no-match to vary it")
    s = setup(args)
    points = grid(vary)
    ref = None if args.no_match else args.match_flops or config_id(points[0])
    configs = plan_configs(points, s, args.baseline, ref, args.tolerance)
    if len({c.id for c in configs}) < len(configs):
        raise AblateError(f"two rows share a name: {[c.id for c in configs]}")
    budget = f"{args.budget_minutes:g} min of training per run" if args.budget_minutes else "the recipe's epochs"
    print(f"ablation: {len(configs)} configuration(s) x {args.seeds} seed(s), recipe {s.recipe}, {budget}, "
          f"{s.size}x{s.size} -> {args.out}")
    probes, plans = Probes(args.out / "probes.json"), {}
    for c in configs:
        plans[c.id] = prepare(c, s, args.budget_minutes, probes)
        width = f"C {c.match['embed_dim']}, " if c.match.get("embed_dim") else ""
        match = f" ({width}{c.match['ratio']:.2f}x the reference's MACs)" if "ratio" in c.match else ""
        epochs, probed = settings_of(plans[c.id][0]).schedule.epochs, plans[c.id][1]
        epoch_s = probed["seconds_per_image"] * probed["images_per_epoch"]
        over = f" (one takes ~{epoch_s:.0f} s: over the budget)" if args.budget_minutes and \
            epoch_s > 60 * args.budget_minutes else ""
        print(f"  {c.id}: {c.params / 1e6:.3f}M params, {c.macs / 1e9:.4f} GMACs{match}, {epochs} epoch(s){over}"
              + (f"  [{c.match['note']}]" if c.match.get("note") not in (None, "", "reference") else ""))
    runs: dict[str, dict[int, dict]] = {c.id: {} for c in configs}
    facts = [f"{len(configs)} configuration(s) x {args.seeds} seed(s); recipe `{s.recipe}` at {s.size}x{s.size}, "
             f"{budget}; data {s.data} ({s.train_images} training images, {s.num_classes} classes); "
             f"{datetime.date.today()}, {_device(int(s.set_train.get('threads', 0)) or None)}."]
    for seed in range(args.seeds):  # seed-major: every configuration has a row early
        for c in configs:
            argv, probed = plans[c.id]
            runs[c.id][seed] = train_seed(c, argv, seed, args.out / "runs" / f"{c.id}-seed{seed}", probed,
                                          args.robust_images, args.max_shift, s.data)
            write_ablation(configs, runs, args, ref, facts)
    failed = sum(bool(r["error"]) for per in runs.values() for r in per.values())
    print(f"done: {args.out / 'ablation.md'}" + (f" ({failed} run(s) failed: see the table)" if failed else ""))
    return 1 if failed else 0


def write_ablation(configs: list[Config], runs: dict, args: argparse.Namespace, ref: str | None,
                   facts: list[str]) -> list[dict]:
    rows, top1 = table_rows(configs, runs, ref), top1_of(configs, runs)
    write_csv(rows, args.out / "ablation.csv", COLUMNS)
    md = markdown(rows, command_line(args, "ablate"), facts, ref, args.tolerance, noise_pairs(top1))
    atomic_write(args.out / "ablation.md", lambda p: p.write_text(md))
    plot(rows, args.out / "ablation.png")
    return rows


def _device(threads: int | None) -> str:
    """The machine the runs train on: the GPU, or the CPU and the torch threads of each run."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    from ..utils.cpu import cpu_name

    return f"{cpu_name()}, {threads or torch.get_num_threads()} torch thread(s) per run"
