"""`swinkit train`: train or fine-tune a Swin classifier on an image folder, from one CPU core to many GPUs.

With no --data it trains a small Swin on the embedded scikit-learn digits (`make demo`). The defaults follow the
official Swin recipe (AdamW, linear-scaled lr with warmup + cosine per iteration, RandAugment, Mixup/CutMix,
label smoothing, random erasing, stochastic depth, clipping); `--recipe small` is the measured small-data recipe
and `--pretrained` switches to the fine-tuning recipe (layer-wise lr decay, short warmup). Launched by torchrun it
runs data-parallel (DDP, or FSDP with --fsdp); rank 0 alone writes the run directory:

    config.json  metrics.csv  events.out.tfevents.*  curves.png  summary.json  last.pt  best.pt

last.pt holds the full training state (model, optimizer, scheduler, grad scaler, EMA, sampler position, RNG
states), so `--resume RUN_DIR` continues exactly; best.pt holds the weights of the best validation top-1.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from . import __version__
from .config import SwinConfig
from .io.checkpoint import atomic_write
from .data import (IMAGENET_MEAN, IMAGENET_STD, SeededSamples, build_datasets, digits_folder, eval_transform,
                   mixup_cutmix, train_transform)
from .evaluate import AMP_DTYPES, autocast, evaluate
from .factory import create_model
from .models.swin import SwinTransformer

ARCH_KEYS = ("img_size", "patch_size", "window_size", "embed_dim", "depths", "num_heads")

# The official Swin recipe (Liu et al. 2021, configs of microsoft/Swin-Transformer): lrs are per 512 images and
# scale linearly with the total batch. The other recipes change only the keys they list.
OFFICIAL = dict(
    model="swin_tiny_patch4_window7_224", epochs=300, warmup_epochs=20, batch_size=128, accum_steps=1,
    lr=5e-4, warmup_lr=5e-7, min_lr=5e-6, lr_base_size=512, weight_decay=0.05, layer_decay=1.0, clip_grad=5.0,
    scale=[0.08, 1.0], hflip=0.5, randaug_n=2, randaug_m=9, randaug_mstd=0.5, reprob=0.25, mixup=0.8,
    cutmix=1.0, mix_switch_prob=0.5, smoothing=0.1, crop_pct=0.875, ema=False, ema_decay=0.9998, amp="auto",
    val_fraction=0.1, seed=0, workers=None, verify_images=True, grad_checkpointing=False, fsdp=False,
    deterministic=False, ckpt_every=0, log_every=50, threads=None)
RECIPES = {
    "official": {},
    # fine-tuning (official 22k->1k configs): short warmup, small lr, no weight decay to speak of, layer decay
    "finetune": dict(epochs=30, warmup_epochs=5, lr=2e-5, warmup_lr=2e-8, min_lr=2e-7, weight_decay=1e-8,
                     layer_decay=0.9),
    # small data from scratch, measured on cifar10-mini (benchmarks/train_cifar10_mini.py, docs/training.md)
    "small": dict(model="swin_t", img_size=32, patch_size=4, window_size=4, embed_dim=64, depths=[2, 2],
                  num_heads=[2, 4], drop_path_rate=0.0, epochs=60, warmup_epochs=2, batch_size=32, lr=1e-3,
                  warmup_lr=1e-6, min_lr=1e-5, lr_base_size=32, scale=[0.7, 1.0], randaug_n=0, mixup=0.0,
                  cutmix=0.0, reprob=0.0, crop_pct=1.0),
    # the embedded digits (`make demo`): 8x8 grayscale digits read at 32x32, one token per original pixel; one
    # compute thread and one loading process use 2 cores without the two competing
    "digits": dict(model="swin_t", img_size=32, patch_size=4, window_size=4, embed_dim=32, depths=[2, 2],
                   num_heads=[2, 4], drop_path_rate=0.0, epochs=30, warmup_epochs=1, batch_size=32,
                   lr=3e-3, warmup_lr=3e-6, min_lr=3e-5, lr_base_size=32, scale=[0.8, 1.0], hflip=0.0,
                   randaug_n=0, mixup=0.0, cutmix=0.0, reprob=0.0, crop_pct=1.0, threads=1, workers=1),
}
RESUME_FLAGS = {"resume", "workers", "threads"}  # the flags --resume allows: they change only how fast it runs


class TrainingError(RuntimeError):
    """Stops a run with a message for the user (non-finite loss, bad settings)."""


# ----------------------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    d = OFFICIAL
    a = parser.add_argument
    a("--data", help="image folder: train/ and val/ class folders, or class folders to split "
                     "(default: the embedded scikit-learn digits)")
    a("--recipe", choices=list(RECIPES), help="default settings: official (with --data), finetune (with "
                                              "--pretrained), small (measured small-data recipe), digits (no --data)")
    a("--out", help="run directory (default: runs/<date-time>)")
    a("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped")
    a("--model", help=f"variant name, see `swinkit models` (default {d['model']})")
    a("--pretrained", metavar="PATH|NAME", help="start from these weights (head re-initialised for new classes)")
    g = parser.add_argument_group("model overrides")
    g.add_argument("--img-size", type=int)
    g.add_argument("--patch-size", type=int)
    g.add_argument("--window-size", type=int, nargs="+", help="one value, or one per stage")
    g.add_argument("--embed-dim", type=int)
    g.add_argument("--depths", type=int, nargs="+")
    g.add_argument("--num-heads", type=int, nargs="+")
    g.add_argument("--drop-path-rate", type=float, help="stochastic depth (default: the variant's)")
    g = parser.add_argument_group("optimisation (defaults shown: the official recipe; lrs are per --lr-base-size "
                                  "images, scaled by the total batch)")
    for flag, typ, help_ in [
            ("epochs", int, ""), ("warmup-epochs", float, "linear warmup, then cosine per iteration"),
            ("batch-size", int, "per process"), ("accum-steps", int, "gradient accumulation steps"),
            ("lr", float, ""), ("warmup-lr", float, ""), ("min-lr", float, ""), ("lr-base-size", int, ""),
            ("weight-decay", float, "none on norms, biases, position tables, logit scale, CPB MLP"),
            ("layer-decay", float, "layer-wise lr decay (1 = off)"), ("clip-grad", float, "max grad norm (0 = off)"),
            ("ema-decay", float, ""), ("seed", int, ""), ("ckpt-every", int, "also save last.pt every N updates"),
            ("log-every", int, "TensorBoard step-log interval in updates")]:
        g.add_argument(f"--{flag}", type=typ, help=f"{help_} (default {d[flag.replace('-', '_')]})".strip())
    g.add_argument("--ema", action=argparse.BooleanOptionalAction, help="keep an EMA of the weights (default off)")
    g.add_argument("--amp", choices=["auto", *AMP_DTYPES], help="autocast: auto = bf16 on GPU, none on CPU")
    g.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, help="recompute activations")
    g = parser.add_argument_group("data and augmentation (0 disables a step)")
    for flag, typ, nargs in [("scale", float, 2), ("hflip", float, None), ("randaug-n", int, None),
                             ("randaug-m", int, None), ("randaug-mstd", float, None), ("reprob", float, None),
                             ("mixup", float, None), ("cutmix", float, None), ("mix-switch-prob", float, None),
                             ("smoothing", float, None), ("crop-pct", float, None), ("val-fraction", float, None)]:
        g.add_argument(f"--{flag}", type=typ, nargs=nargs, help=f"(default {d[flag.replace('-', '_')]})")
    g.add_argument("--verify-images", action=argparse.BooleanOptionalAction,
                   help="decode every image once before training and skip unreadable ones (default on)")
    g.add_argument("--workers", type=int, help="data-loading processes per training process (default: 0 on "
                                               "CPU, where compute needs the cores; up to 8 per GPU)")
    g.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    g = parser.add_argument_group("scale")
    g.add_argument("--fsdp", action=argparse.BooleanOptionalAction, help="shard with FSDP under torchrun")
    g.add_argument("--device", help="default: cuda:LOCAL_RANK when available, else cpu")
    g.add_argument("--deterministic", action=argparse.BooleanOptionalAction, help="deterministic algorithms")


def resolve_config(args: argparse.Namespace) -> dict:
    """The run's full settings: recipe defaults, then the flags given. With --resume, the saved settings."""
    given = {k: v for k, v in vars(args).items() if v is not None and k != "command"}
    if args.resume:
        extra = sorted(set(given) - RESUME_FLAGS)
        if extra:
            raise TrainingError(f"--resume continues a run with its saved settings; got other flags too: "
                                f"{['--' + k.replace('_', '-') for k in extra]}. Start a new run instead "
                                "(--pretrained RUN_DIR/best.pt fine-tunes from it)")
        ck = Path(args.resume) / "last.pt"
        if not ck.is_file():
            raise TrainingError(f"nothing to resume: {ck} does not exist (expected a run directory written "
                                "by `swinkit train`)")
        saved = json.loads((Path(args.resume) / "config.json").read_text())["args"]
        return {**saved, **given, "out": str(args.resume)}
    recipe = args.recipe or ("digits" if not args.data else "finetune" if args.pretrained else "official")
    cfg = {**OFFICIAL, "data": None, "out": None, "pretrained": None, "resume": None, "device": None,
           "drop_path_rate": None, **{k: None for k in ARCH_KEYS}, **RECIPES[recipe], **given, "recipe": recipe}
    if args.pretrained:
        clash = [k for k in ("model", *ARCH_KEYS[1:]) if k in given]
        if clash:
            raise TrainingError(f"--pretrained takes the architecture from the checkpoint; remove "
                                f"{['--' + k.replace('_', '-') for k in clash]}")
        cfg.update({k: None for k in ARCH_KEYS[1:]})
    if isinstance(cfg["window_size"], list) and len(cfg["window_size"]) == 1:
        cfg["window_size"] = cfg["window_size"][0]
    return cfg


# ----------------------------------------------------------------------------------------------------------
# optimiser and schedule


def layer_id(name: str, depths: tuple[int, ...]) -> int:
    """Depth of a parameter for layer-wise lr decay: 0 for the patch embedding, 1 + block index for blocks (patch
    merging goes with the block before it), sum(depths) + 1 for the final norm and head."""
    if name.startswith(("patch_embed", "absolute_pos_embed")):
        return 0
    if name.startswith("layers."):
        parts = name.split(".")
        stage = int(parts[1])
        return sum(depths[:stage]) + (int(parts[3]) + 1 if parts[2] == "blocks" else 0)
    return sum(depths) + 1


def param_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float,
                 no_decay: set[str], depths: tuple[int, ...]) -> list[dict]:
    """AdamW groups: weight decay except on `no_decay` names; lr scaled by layer_decay ** (top - layer_id)."""
    top, groups = sum(depths) + 1, {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = layer_decay ** (top - layer_id(name, depths))
        skip = name in no_decay
        group = groups.setdefault((scale, skip), {"params": [], "names": [], "lr": lr * scale, "lr_scale": scale,
                                                  "weight_decay": 0.0 if skip else weight_decay})
        group["params"].append(p)
        group["names"].append(name)
    return [{k: v for k, v in g.items() if k != "names"} for g in groups.values()]


class WarmupCosine:
    """lr factor for LambdaLR, per optimiser update: linear warmup_lr -> lr over `warmup` updates, then cosine
    lr -> min_lr until `total`."""

    def __init__(self, lr: float, warmup_lr: float, min_lr: float, warmup: int, total: int):
        self.lr, self.warmup_lr, self.min_lr, self.warmup, self.total = lr, warmup_lr, min_lr, warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (self.warmup_lr + (self.lr - self.warmup_lr) * step / self.warmup) / self.lr
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return (self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * t))) / self.lr


def set_drop_path(model: SwinTransformer, rate: float) -> None:
    """Stochastic depth rising linearly from 0 to `rate` over the blocks (for a model loaded from a checkpoint)."""
    blocks = model.blocks()
    for blk, p in zip(blocks, torch.linspace(0, rate, len(blocks)).tolist()):
        blk.drop_path.p = p
    model.cfg.drop_path_rate = rate


# ----------------------------------------------------------------------------------------------------------
# processes, RNG and signals


def setup_distributed(cfg: dict) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when launched by torchrun (gloo on CPU, NCCL on GPU)."""
    world, rank, local = (int(os.environ.get(k, d)) for k, d in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)))
    cuda = torch.cuda.is_available() and not (cfg["device"] or "").startswith("cpu")
    device = torch.device(cfg["device"] or (f"cuda:{local}" if cuda else "cpu"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """This process's RNG states (torch, CUDA, numpy, python) as tensors, ints and lists (weights_only-safe)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    keys, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


@contextlib.contextmanager
def stop_requests():
    """Yields a list that SIGINT/SIGTERM append to (checked between steps); a second Ctrl-C aborts at once."""
    requests: list[int] = []

    def handler(signum, frame):
        if requests and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requests.append(signum)
        tqdm.write("stopping: saving a checkpoint after this step (Ctrl-C again to abort without saving)")

    main = threading.current_thread() is threading.main_thread()  # handlers can only be set there
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        yield requests
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _ignore_sigint(worker_id: int) -> None:
    """Data-loading workers leave Ctrl-C to the training process, which stops them after saving."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ----------------------------------------------------------------------------------------------------------
# the trainer


class Trainer:
    """One training run: datasets, model (DDP/FSDP-wrapped in `self.net`), optimiser, schedule and run state."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.rank, self.world, self.device = setup_distributed(cfg)
        self.main = self.rank == 0
        self.run_dir = self._run_dir()
        resume = torch.load(self.run_dir / "last.pt", map_location="cpu", weights_only=True) \
            if cfg["resume"] else None
        self._build_data()
        seed_everything(cfg["seed"])  # identical initial weights on every rank
        self.model = self._build_model(resume).to(self.device)
        seed_everything(cfg["seed"] + self.rank)
        self._set_transforms()
        self._build_training()
        self.stopping = False
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.history, self.best = [], {"top1": -1.0, "epoch": 0}
        self.partial = {"loss_sum": 0.0, "images": 0, "seconds": 0.0}
        self.totals = {"train_images": 0, "train_seconds": 0.0, "wall_seconds": 0.0}
        if resume:
            self._restore(resume)

    # ---- construction

    def _build_data(self) -> None:
        cfg = self.cfg
        self.train_ds, self.val_ds = build_datasets(cfg["data"] or digits_folder(), None, None,
                                                    cfg["val_fraction"], cfg["seed"], cfg["verify_images"])
        if len(self.val_ds) == 0:
            raise TrainingError(f"no validation images in {cfg['data']}: add a val/ folder or raise --val-fraction")
        self.classes = self.train_ds.classes
        self.train_data = SeededSamples(self.train_ds, cfg["seed"])
        per_rank = len(self.train_ds) // self.world
        micro = cfg["batch_size"] * cfg["accum_steps"]
        self.updates_per_epoch = per_rank // micro
        if self.updates_per_epoch == 0:
            raise TrainingError(f"the training set has {per_rank} images per process, fewer than one update's "
                                f"--batch-size {cfg['batch_size']} x --accum-steps {cfg['accum_steps']}; lower them")

    def _build_model(self, resume: dict | None) -> SwinTransformer:
        cfg, n = self.cfg, len(self.classes)
        if resume:
            return SwinTransformer(SwinConfig.from_dict(resume["config"]))
        if cfg["pretrained"]:
            from .io.checkpoint import load_model  # written alongside; imported only when fine-tuning

            source = Path(cfg["pretrained"])
            model = load_model(source / "best.pt" if (source / "best.pt").is_file() else cfg["pretrained"])
            if model.num_classes != n:
                model.reset_classifier(n)
            if cfg["drop_path_rate"] is not None:
                set_drop_path(model, cfg["drop_path_rate"])
            return model
        arch = {k: cfg[k] for k in (*ARCH_KEYS, "drop_path_rate") if cfg[k] is not None}
        return create_model(cfg["model"], num_classes=n, **arch)

    def _set_transforms(self) -> None:
        """Training and evaluation transforms at --img-size, else the model's own size."""
        cfg, size = self.cfg, self.cfg["img_size"] or self.model.cfg.img_size[0]
        self.data_cfg = {"img_size": size, "crop_pct": cfg["crop_pct"], "mean": list(IMAGENET_MEAN),
                         "std": list(IMAGENET_STD)}
        self.train_ds.transform = train_transform(size, cfg["scale"], cfg["hflip"], cfg["randaug_n"],
                                                  cfg["randaug_m"], cfg["randaug_mstd"], cfg["reprob"])
        self.val_ds.transform = eval_transform(size, cfg["crop_pct"])

    def _build_training(self) -> None:
        cfg, model = self.cfg, self.model
        amp = cfg["amp"] if cfg["amp"] != "auto" else ("bf16" if self.device.type == "cuda" else "none")
        if amp == "fp16" and self.device.type != "cuda":
            raise TrainingError("--amp fp16 needs a GPU (its grad scaler is CUDA-only); use --amp bf16 on CPU")
        if cfg["ema"] and cfg["fsdp"] and self.world > 1:
            raise TrainingError("--ema keeps a full copy of the weights and is not supported with --fsdp")
        self.amp_dtype = AMP_DTYPES[amp]
        if cfg["deterministic"]:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if cfg["grad_checkpointing"]:
            model.set_grad_checkpointing()
        self.ema = None
        if cfg["ema"]:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg["ema_decay"]), use_buffers=True)
        self.net = self._wrap(model)
        scale = cfg["batch_size"] * cfg["accum_steps"] * self.world / cfg["lr_base_size"]
        self.lrs = {k: cfg[k] * scale for k in ("lr", "warmup_lr", "min_lr")}
        groups = param_groups(model, self.lrs["lr"], cfg["weight_decay"], cfg["layer_decay"],
                              model.no_weight_decay(), model.cfg.depths)
        self.opt = torch.optim.AdamW(groups, lr=self.lrs["lr"], betas=(0.9, 0.999))
        total = cfg["epochs"] * self.updates_per_epoch
        warmup = min(round(cfg["warmup_epochs"] * self.updates_per_epoch), total)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, WarmupCosine(self.lrs["lr"], self.lrs["warmup_lr"], self.lrs["min_lr"], warmup, total))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == "fp16")
        self.mix = mixup_cutmix(len(self.classes), cfg["mixup"], cfg["cutmix"], cfg["mix_switch_prob"])
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg["smoothing"])

    def _wrap(self, model: SwinTransformer) -> nn.Module:
        if self.world == 1:
            return model
        if self.cfg["fsdp"]:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(self.device.type, (self.world,))
            for blk in model.blocks():
                fully_shard(blk, mesh=mesh)
            return fully_shard(model, mesh=mesh)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def _run_dir(self) -> Path:
        out = [self.cfg["out"] or time.strftime("runs/%Y%m%d-%H%M%S")]
        if self.world > 1:
            dist.broadcast_object_list(out)  # one name for all ranks
        run_dir = Path(out[0])
        if not self.cfg["resume"] and (run_dir / "last.pt").exists():
            raise TrainingError(f"{run_dir} already holds a run: continue it with --resume {run_dir} "
                                "or choose another --out")
        return run_dir

    # ---- checkpoints

    def _state_dicts(self) -> tuple[dict, dict]:
        """Full (unsharded, CPU) model and optimiser state dicts; collective under FSDP, empty off rank 0."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(self.net, options=opts), get_optimizer_state_dict(self.net, self.opt, options=opts)

    def _save(self, best_weights: bool = False) -> None:
        """Write last.pt (full training state) and, when `best_weights`, best.pt (the evaluated weights)."""
        model_sd, opt_sd = self._state_dicts()
        rngs = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        if not self.main:
            return
        base = {"config": self.model.cfg.to_dict(), "class_names": self.classes, "data": self.data_cfg,
                "args": self.cfg, "epoch": self.epoch, "history": self.history}
        state = {**base, "model": model_sd, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                 "optimizer": opt_sd, "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                 "rng": rngs, "best": self.best, "partial": self.partial, "totals": self.totals,
                 "world_size": self.world, "skipped_files": self.skipped_files}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        atomic_write(self.run_dir / "last.pt", lambda p: torch.save(state, p))
        if best_weights:
            weights = self.ema.module.state_dict() if self.ema is not None else model_sd
            best = {**base, "model": weights, "metrics": self.history[-1]}
            atomic_write(self.run_dir / "best.pt", lambda p: torch.save(best, p))

    def _restore(self, ck: dict) -> None:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.net, ck["model"], options=opts)
        set_optimizer_state_dict(self.net, self.opt, ck["optimizer"], options=opts)
        self.sched.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(ck["ema"])
        self.epoch, self.step_in_epoch, self.global_step = ck["epoch"], ck["step_in_epoch"], ck["global_step"]
        self.history, self.best, self.partial, self.totals = ck["history"], ck["best"], ck["partial"], ck["totals"]
        if ck["world_size"] != self.world:
            tqdm.write(f"warning: resuming a {ck['world_size']}-process run with {self.world} processes: "
                       "data order and random draws will differ from an uninterrupted run")
        set_rng_state(ck["rng"][self.rank if ck["world_size"] == self.world else 0])

    @property
    def skipped_files(self) -> int:
        return len(self.train_ds.skipped) + (len(self.val_ds.skipped) if self.val_ds.root != self.train_ds.root else 0)

    # ---- loops

    def _train_loader(self) -> DataLoader:
        """This epoch's batches for this rank, from the sampler position (so a resumed epoch skips what it did)."""
        sampler = DistributedSampler(self.train_ds, self.world, self.rank, shuffle=True, seed=self.cfg["seed"],
                                     drop_last=True)
        sampler.set_epoch(self.epoch)
        self.train_data.set_epoch(self.epoch)
        bs = self.cfg["batch_size"]
        n = self.updates_per_epoch * self.cfg["accum_steps"] * bs
        indices = list(sampler)[self.step_in_epoch * bs:n]
        return DataLoader(self.train_data, bs, sampler=indices, num_workers=self.workers, drop_last=True,
                          pin_memory=self.device.type == "cuda", worker_init_fn=_ignore_sigint,
                          generator=torch.Generator())  # own generator: loaders never draw from the global RNG

    def _val_loader(self) -> DataLoader:
        indices = list(range(self.rank, len(self.val_ds), self.world))  # disjoint shards, no padding
        return DataLoader(self.val_ds, self.cfg["batch_size"], sampler=indices, num_workers=self.workers)

    @property
    def workers(self) -> int:
        if self.cfg["workers"] is not None:
            return self.cfg["workers"]
        return 0 if self.device.type == "cpu" else max(1, min(8, (os.cpu_count() or 1) // self.world - 1))

    def _no_sync(self, sync: bool):
        """Skip the gradient all-reduce on accumulation micro-steps that do not end an update."""
        if self.world > 1 and self.cfg["fsdp"]:
            self.net.set_requires_gradient_sync(sync)
        if sync or self.world == 1 or self.cfg["fsdp"]:
            return contextlib.nullcontext()
        return self.net.no_sync()

    def _check(self, loss: torch.Tensor, stop: list) -> float:
        """All ranks agree: raise on a non-finite loss anywhere, note a stop requested anywhere. Returns the loss
        averaged over ranks."""
        here = not torch.isfinite(loss).item()
        flags = torch.tensor([float(here), float(bool(stop)), 0.0 if here else loss.item()], device=self.device)
        if self.world > 1:
            dist.all_reduce(flags)
        if flags[0] > 0:
            raise TrainingError(self._nonfinite_message(f"loss ({loss.item()})" if here else "loss in another process"))
        self.stopping |= bool(flags[1] > 0)
        return flags[2].item() / self.world

    def _nonfinite_message(self, what: str) -> str:
        last = self.run_dir / "last.pt"
        kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint was written yet"
        return (f"non-finite {what} at epoch {self.epoch + 1}, step {self.step_in_epoch + 1}, lr "
                f"{max(g['lr'] for g in self.opt.param_groups):.3g}: training stopped; {kept}. Try a lower --lr, "
                "a longer --warmup-epochs, --clip-grad, or --amp none")

    def _micro_step(self, x: torch.Tensor, y: torch.Tensor, sync: bool, stop: list) -> float:
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.mix is not None:
            x, y = self.mix(x, y)  # y: (B, C) soft targets
        with self._no_sync(sync):
            with autocast(self.device, self.amp_dtype):
                loss = self.criterion(self.net(x), y)
            mean_loss = self._check(loss, stop)
            self.scaler.scale(loss / self.cfg["accum_steps"]).backward()
        return mean_loss

    def _update(self) -> None:
        self.scaler.unscale_(self.opt)
        norm = nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg["clip_grad"] or math.inf)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a replicated DTensor
        if not self.scaler.is_enabled() and not torch.isfinite(norm):  # fp16: the scaler skips such steps
            raise TrainingError(self._nonfinite_message(f"gradient norm ({norm.item()})"))
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.global_step += 1

    def _train_epoch(self, stop: list) -> bool:
        """Train from the sampler position to the end of the epoch; False when stopped by a signal."""
        self.net.train()
        accum, bs = self.cfg["accum_steps"], self.cfg["batch_size"]
        loader = self._train_loader()
        bar = tqdm(loader, desc=f"epoch {self.epoch + 1}", leave=False, disable=None if self.main else True,
                   initial=self.step_in_epoch, total=self.updates_per_epoch * accum)
        t0 = time.perf_counter() - self.partial["seconds"]
        for x, y in bar:
            loss = self._micro_step(x, y, (self.step_in_epoch + 1) % accum == 0, stop)
            self.step_in_epoch += 1
            self.partial["loss_sum"] += loss * bs * self.world
            self.partial["images"] += bs * self.world
            if self.step_in_epoch % accum:
                continue
            self._update()
            self.partial["seconds"] = time.perf_counter() - t0
            self._log_step(loss, bar)
            if self.stopping or (self.cfg["ckpt_every"] and self.global_step % self.cfg["ckpt_every"] == 0):
                self._save()
            if self.stopping:
                return False
        return True

    def _log_step(self, loss: float, bar) -> None:
        lr = max(g["lr"] for g in self.opt.param_groups)
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", refresh=False)
        if self.main and self.global_step % self.cfg["log_every"] == 0:
            self.writer.add_scalar("train/loss_step", loss, self.global_step)
            self.writer.add_scalar("train/lr", lr, self.global_step)

    def _validate(self) -> dict:
        m = evaluate(self.net, self._val_loader(), self.device, self.amp_dtype)
        row = {"val_loss": m["loss"], "val_top1": m["top1"], "val_top5": m["top5"]}
        if self.ema is not None:
            e = evaluate(self.ema.module, self._val_loader(), self.device, self.amp_dtype)
            row.update(ema_val_loss=e["loss"], ema_val_top1=e["top1"], ema_val_top5=e["top5"])
        return row

    def _end_epoch(self) -> None:
        p = self.partial
        row = {"epoch": self.epoch + 1, "train_loss": p["loss_sum"] / max(p["images"], 1), **self._validate(),
               "lr": max(g["lr"] for g in self.opt.param_groups),
               "images_per_sec": p["images"] / max(p["seconds"], 1e-9), "epoch_seconds": p["seconds"]}
        self.history.append(row)
        self.totals["train_images"] += p["images"]
        self.totals["train_seconds"] += p["seconds"]
        top1 = row["ema_val_top1" if self.ema is not None else "val_top1"]
        improved = top1 > self.best["top1"]
        if improved:
            self.best = {"top1": top1, "epoch": self.epoch + 1}
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.partial = {"loss_sum": 0.0, "images": 0, "seconds": 0.0}
        self._save(best_weights=improved)
        if self.main:
            self._write_logs(row)

    # ---- logs

    def _write_logs(self, row: dict) -> None:
        for k, v in row.items():
            if k != "epoch":
                self.writer.add_scalar(f"epoch/{k}", v, self.global_step)
        self.writer.flush()
        fields = list(self.history[-1])
        atomic_write(self.run_dir / "metrics.csv", lambda p: _write_csv(p, fields, self.history))
        plot_curves(self.history, self.run_dir / "curves.png")
        tqdm.write(f"epoch {row['epoch']}/{self.cfg['epochs']}  train loss {row['train_loss']:.4f}  "
                   f"val loss {row['val_loss']:.4f}  top-1 {row['val_top1']:.2f}%  top-5 {row['val_top5']:.2f}%"
                   + (f"  (EMA top-1 {row['ema_val_top1']:.2f}%)" if "ema_val_top1" in row else "")
                   + f"  lr {row['lr']:.2e}  {row['images_per_sec']:.0f} img/s")

    def summary(self, status: str) -> dict:
        last = self.history[-1] if self.history else {}
        t = self.totals
        return {"status": status, "epochs": self.epoch, "val_top1": last.get("val_top1"),
                "val_top5": last.get("val_top5"), "val_loss": last.get("val_loss"),
                "ema_val_top1": last.get("ema_val_top1"), "best_val_top1": self.best["top1"],
                "best_epoch": self.best["epoch"], "images_per_sec": t["train_images"] / max(t["train_seconds"], 1e-9),
                "train_seconds": t["train_seconds"], "wall_seconds": t["wall_seconds"],
                "skipped_files": self.skipped_files, "model": self.model.cfg.name,
                "params": sum(p.numel() for p in self.model.parameters()), "world_size": self.world,
                "run_dir": str(self.run_dir)}

    def _write_config(self) -> None:
        config = {"args": self.cfg, "model": self.model.cfg.to_dict(), "class_names": self.classes,
                  "data": self.data_cfg, "world_size": self.world, "command": sys.argv,
                  "versions": {"swinkit": __version__, "torch": torch.__version__}}
        atomic_write(self.run_dir / "config.json", lambda p: p.write_text(json.dumps(config, indent=2)))

    # ---- the run

    def fit(self) -> dict:
        """Train to the last epoch (or until SIGINT/SIGTERM, after saving). Returns the summary."""
        start = time.perf_counter()
        if self.main:
            from torch.utils.tensorboard import SummaryWriter

            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_config()
            self.writer = SummaryWriter(str(self.run_dir), purge_step=self.global_step if self.cfg["resume"] else None)
            self._announce()
        status = "completed"
        with stop_requests() as stop:
            epochs = tqdm(range(self.epoch, self.cfg["epochs"]), desc="epochs", initial=self.epoch,
                          total=self.cfg["epochs"], disable=None if self.main else True)
            for _ in epochs:
                if not self._train_epoch(stop):
                    status = "interrupted"
                    break
                self._end_epoch()
        self.totals["wall_seconds"] += time.perf_counter() - start
        summary = self.summary(status)
        if self.main:
            atomic_write(self.run_dir / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2)))
            self.writer.close()
        return summary

    def _announce(self) -> None:
        c, n = self.cfg, sum(p.numel() for p in self.model.parameters())
        total = c["batch_size"] * c["accum_steps"] * self.world
        tqdm.write(f"{'resuming' if c['resume'] else 'training'} {self.model.cfg.name} ({n / 1e6:.2f}M params, "
                   f"recipe {c['recipe']}) on {len(self.train_ds)} images / {len(self.classes)} classes, "
                   f"val {len(self.val_ds)}; {self.world} process(es) on {self.device}; batch {total}, "
                   f"lr {self.lrs['lr']:.2e}; {c['epochs']} epochs -> {self.run_dir}")


def _write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def plot_curves(history: list[dict], path: Path) -> None:
    """curves.png: train/val loss and val top-1/top-5 per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [r["train_loss"] for r in history], label="train")
    a.plot(ep, [r["val_loss"] for r in history], label="val")
    for k in ("val_top1", "val_top5", "ema_val_top1"):
        if k in history[-1]:
            b.plot(ep, [r[k] for r in history], label=k.replace("_", " "))
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    b.set(xlabel="epoch", ylabel="%", title="validation accuracy")
    for ax in (a, b):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)


def train(cfg: dict) -> dict:
    """Run training with resolved settings (see `resolve_config`); returns summary.json's content."""
    try:
        summary = Trainer(cfg).fit()
        if dist.is_initialized():
            dist.barrier()  # no rank tears the group down while another still talks to it
        return summary
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run(args: argparse.Namespace) -> int:
    try:
        summary = train(resolve_config(args))
    except (TrainingError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", 0)) == 0:
        if summary["status"] == "interrupted":
            print(f"interrupted after {summary['epochs']} epoch(s): state saved; continue with "
                  f"swinkit train --resume {summary['run_dir']}")
        else:
            print(f"done: val top-1 {summary['val_top1']:.2f}%  top-5 {summary['val_top5']:.2f}%  (best "
                  f"{summary['best_val_top1']:.2f}% at epoch {summary['best_epoch']})  "
                  f"{summary['images_per_sec']:.0f} img/s  {summary['wall_seconds']:.0f} s  -> {summary['run_dir']}")
    return 130 if summary["status"] == "interrupted" else 0
