"""`swinkit train`: the one training loop every task uses, from one CPU core to many GPUs.

A task (swinkit/tasks/: classify by default, `--task NAME` for another) supplies the datasets, the model, the loss,
the metrics and what its checkpoints hold; this loop owns the rest: AdamW with linear-scaled lr, warmup + cosine
per update, layer-wise lr decay and weight-decay groups for any model that contains a Swin, gradient
accumulation and clipping, AMP, EMA, gradient checkpointing, DDP or FSDP under torchrun, seeded per-sample
augmentation, exact resume, Ctrl-C and non-finite-loss handling. Rank 0 alone writes the run directory:

    config.json  metrics.csv  events.out.tfevents.*  curves.png  summary.json  last.pt  best.pt

last.pt holds the full training state (model, optimizer, scheduler, grad scaler, EMA, sampler position, RNG
states), so `--resume RUN_DIR` continues exactly; best.pt holds the weights of the best validation value of the
task's primary metric. Both name their task, so `swinkit eval` and `swinkit predict` know how to read them.
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

from .. import __version__
from ..io.files import CheckpointError, atomic_write, read_weights, write_json
from ..tasks import DEFAULT_TASK, TASKS, get_task
from .sampling import SeededSamples
from ..tasks.base import AMP_DTYPES, LOOP_SETTINGS, Env, Task, TrainSettings, add_settings_arguments, autocast

RESUME_FLAGS = {"resume", "workers", "threads"}  # the flags --resume allows: they change only how fast it runs
GROUP_TITLES = {"run": "run and output", "optim": "optimisation (lrs are per --lr-base-size images, scaled by the "
                                                  "total batch)",
                "schedule": "schedule", "loader": "data loading", "device": "device, precision and scale",
                "ema": "weight averaging"}


class TrainingError(RuntimeError):
    """Stops a run with a message for the user (non-finite loss, bad settings)."""


# ----------------------------------------------------------------------------------------------------------
# command line


def _task_of(argv: list[str]) -> type[Task]:
    """The task that `argv` trains: --task, else the resumed run's, else the default."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task")
    pre.add_argument("--resume")
    known = pre.parse_known_args(argv)[0]
    name = known.task
    if name is None and known.resume:
        with contextlib.suppress(OSError, ValueError, KeyError):
            name = json.loads((Path(known.resume) / "config.json").read_text())["args"].get("task")
    return get_task(name if name in TASKS else DEFAULT_TASK)


def add_arguments(parser: argparse.ArgumentParser, command: str, argv: list[str] | None = None) -> None:
    """The loop's flags and those of the task named by --task in `argv` (the default task without one)."""
    task = _task_of(argv or [])
    a = parser.add_argument
    a("--task", choices=list(TASKS), help=f"what to train (default {DEFAULT_TASK}); `swinkit train --task NAME "
                                          "--help` lists that task's flags")
    a("--recipe", choices=list(task.recipes), help=f"default settings of the {task.name} task (default: picked "
                                                   "from the data and --pretrained)")
    a("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped")
    for name, group in LOOP_SETTINGS.items():
        add_settings_arguments(parser.add_argument_group(GROUP_TITLES[name]), group)
    task.add_arguments(parser)


def resolve_settings(args: argparse.Namespace) -> TrainSettings:
    """The run's settings: the settings' defaults, then the recipe's, then the flags given. With --resume, the
    saved settings."""
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
        task = get_task(saved.get("task", DEFAULT_TASK))
        return TrainSettings.from_flat({**saved, **given, "out": str(args.resume)}, task.Settings)
    task = get_task(given.pop("task", DEFAULT_TASK))
    recipe, note = (given["recipe"], None) if "recipe" in given else task.choose_recipe(given)
    if recipe not in task.recipes:
        raise TrainingError(f"unknown recipe {recipe!r} for task {task.name}; expected one of {list(task.recipes)}")
    flat = {**TrainSettings.defaults(task.Settings), **task.recipes[recipe], **given, "recipe": recipe,
            "recipe_note": note, "task": task.name, "given": sorted(given)}
    return TrainSettings.from_flat(task.resolve(flat, given), task.Settings)


# ----------------------------------------------------------------------------------------------------------
# optimiser and schedule: parameter groups from what the model says of itself


def layered(model: nn.Module) -> list[tuple[str, dict[str, int], int]]:
    """(prefix, {name: layer id}, top id) of each outermost submodule of `model` that gives layer ids for layer-wise
    lr decay (its `layer_ids()`, as timm's group_matcher): "" for the model itself, "backbone." for a segmentation
    model's Swin, "encoder." for a Swin-UNet's."""
    found: list[tuple[str, dict[str, int], int]] = []
    for name, m in model.named_modules():
        if callable(getattr(m, "layer_ids", None)) and not any((name + ".").startswith(p) for p, _, _ in found):
            found.append((name + "." if name else "", *m.layer_ids()))
    return found


def no_weight_decay(model: nn.Module) -> set[str]:
    """Names exempt from weight decay: every parameter of at most one dimension (norms, biases, scales)
    and the names each submodule lists in its own `no_weight_decay()` (position tables, V2 logit scale and CPB
    MLP), prefixed with where that submodule sits."""
    names = {n for n, p in model.named_parameters() if p.ndim <= 1}
    for prefix, m in model.named_modules():
        listed = getattr(m, "no_weight_decay", None)
        if callable(listed):
            names |= {f"{prefix}.{n}" if prefix else n for n in listed()}
    return names


def param_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float,
                 backbone_lr_scale: float = 1.0) -> list[dict]:
    """AdamW groups: weight decay except on `no_weight_decay(model)`; lr scaled by layer_decay ** (top - layer), the
    layer given by the submodule that holds the parameter (`layered`; parameters outside any are top), and by
    backbone_lr_scale on the parameters such a submodule numbers (a Swin's, not its classifier head)."""
    backbones = layered(model)
    top = max((t for _, _, t in backbones), default=0)
    skip_decay, groups = no_weight_decay(model), {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        pre, ids = next(((pre, ids) for pre, ids, _ in backbones if name.startswith(pre)), ("", {}))
        rel = name[len(pre):]
        layer, in_backbone = ids.get(rel, top), rel in ids  # a classifier head is not in its Swin's ids
        scale = layer_decay ** (top - layer) * (backbone_lr_scale if in_backbone else 1.0)
        skip = name in skip_decay
        group = groups.setdefault((scale, skip), {"params": [], "lr": lr * scale, "lr_scale": scale,
                                                  "weight_decay": 0.0 if skip else weight_decay})
        group["params"].append(p)
    return list(groups.values())


class WarmupCosine:
    """lr factor for LambdaLR, per optimiser update: linear warmup_lr -> lr over `warmup` updates, then cosine
    lr -> min_lr until `total`; or, with `milestones` (fractions of `total`), the lr times gamma at each one
    passed (the step schedule of SwinIR's recipe)."""

    def __init__(self, lr: float, warmup_lr: float, min_lr: float, warmup: int, total: int,
                 milestones: list[float] | None = None, gamma: float = 0.5):
        self.lr, self.warmup_lr, self.min_lr, self.warmup, self.total = lr, warmup_lr, min_lr, warmup, total
        self.steps, self.gamma = None if milestones is None else [round(m * total) for m in milestones], gamma

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (self.warmup_lr + (self.lr - self.warmup_lr) * step / self.warmup) / self.lr
        if self.steps is not None:
            return self.gamma ** sum(step >= s for s in self.steps)
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return (self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * t))) / self.lr


# ----------------------------------------------------------------------------------------------------------
# processes, RNG and signals


def setup_distributed(d) -> tuple[int, int, torch.device]:
    """(rank, world size, device) from DeviceSettings; joins the process group when launched by torchrun (gloo
    on CPU, NCCL on GPU)."""
    world, rank, local = (int(os.environ.get(k, v)) for k, v in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)))
    cuda = torch.cuda.is_available() and not (d.device or "").startswith("cpu")
    device = torch.device(d.device or (f"cuda:{local}" if cuda else "cpu"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if d.threads:
        torch.set_num_threads(d.threads)
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
    """One training run: the task, its datasets and model (DDP/FSDP-wrapped in `self.net`), optimiser, schedule
    and run state."""

    def __init__(self, settings: TrainSettings):
        s = self.s = settings
        self.rank, self.world, self.device = setup_distributed(s.device)
        self.main = self.rank == 0
        self.run_dir = self._run_dir()
        resume = self._read_last() if s.run.resume else None
        self.amp_dtype = self._amp_dtype()
        self.task = get_task(s.run.task)(s, Env(self.device, self.rank, self.world, self.amp_dtype))
        self._build_data()
        seed_everything(s.run.seed)  # identical initial weights on every rank
        self.model = self.task.build_model(resume["config"] if resume else None).to(self.device)
        seed_everything(s.run.seed + self.rank)
        self._build_training()
        self.stopping = False
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.metric = self.task.primary_metric
        self.history, self.best = [], {self.metric: -math.inf, "epoch": 0}
        self.partial = {"loss_sum": 0.0, "images": 0, "seconds": 0.0}
        self.totals = {"train_images": 0, "train_seconds": 0.0, "wall_seconds": 0.0}
        if resume:
            self._restore(resume)

    # ---- construction

    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.s.device.amp if self.s.device.amp != "auto" else ("bf16" if self.device.type == "cuda" else "none")
        if amp == "fp16" and self.device.type != "cuda":
            raise TrainingError("--amp fp16 needs a GPU (its grad scaler is CUDA-only); use --amp bf16 on CPU")
        return AMP_DTYPES[amp]

    def _build_data(self) -> None:
        s = self.s
        self.train_ds, self.val_ds = self.task.build_datasets()
        self.train_data = SeededSamples(self.train_ds, s.run.seed)
        per_rank = len(self.train_ds) // self.world
        fits = per_rank // s.optim.accum_steps
        if 0 < fits < s.loader.batch_size and "batch_size" not in s.run.given:  # a default too large for the data
            fitted = 2 ** int(math.log2(fits))
            tqdm.write(f"batch size {fitted} instead of {s.loader.batch_size}: the training set has {per_rank} images "
                       f"per process (--batch-size sets it; the lr scales with it)")
            s.loader.batch_size = fitted
        self.updates_per_epoch = per_rank // (s.loader.batch_size * s.optim.accum_steps)
        if self.updates_per_epoch == 0:
            raise TrainingError(f"the training set has {per_rank} images per process, fewer than one update's "
                                f"--batch-size {s.loader.batch_size} x --accum-steps {s.optim.accum_steps}; lower them")

    def _build_training(self) -> None:
        s, model = self.s, self.model
        if s.ema.enabled and s.device.fsdp and self.world > 1:
            raise TrainingError("--ema keeps a full copy of the weights and is not supported with --fsdp")
        if s.run.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if s.device.grad_checkpointing:
            if not hasattr(model, "set_grad_checkpointing"):
                raise TrainingError(f"--grad-checkpointing: {type(model).__name__} has no set_grad_checkpointing(); "
                                    "train without it")
            model.set_grad_checkpointing()
        self.ema = None
        if s.ema.enabled:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(s.ema.decay), use_buffers=True)
        self.task.set_ema(self.ema.module if self.ema is not None else None)
        self.net = self._wrap(model)
        o = s.optim
        scale = s.loader.batch_size * o.accum_steps * self.world / o.lr_base_size
        self.lrs = {"lr": o.lr * scale, "warmup_lr": s.schedule.warmup_lr * scale, "min_lr": s.schedule.min_lr * scale}
        groups = param_groups(model, self.lrs["lr"], o.weight_decay, o.layer_decay, o.backbone_lr_scale)
        self.opt = torch.optim.AdamW(groups, lr=self.lrs["lr"], betas=tuple(o.betas))
        sc = s.schedule
        total = sc.epochs * self.updates_per_epoch
        warmup = min(round(sc.warmup_epochs * self.updates_per_epoch), total)
        milestones = sc.milestones if sc.schedule == "step" else None
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, WarmupCosine(
            self.lrs["lr"], self.lrs["warmup_lr"], self.lrs["min_lr"], warmup, total, milestones, sc.gamma))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.world == 1:
            return model
        if self.s.device.fsdp:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(self.device.type, (self.world,))
            blocks = tuple({t for m in model.modules() for t in getattr(m, "block_types", ())})  # the model's own
            for blk in (m for m in model.modules() if blocks and isinstance(m, blocks)):
                fully_shard(blk, mesh=mesh)
            return fully_shard(model, mesh=mesh)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def _run_dir(self) -> Path:
        out = [self.s.run.out or time.strftime("runs/%Y%m%d-%H%M%S")]
        if self.world > 1:
            dist.broadcast_object_list(out)  # one name for all ranks
        run_dir = Path(out[0])
        if not self.s.run.resume and (run_dir / "last.pt").exists():
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
        base = {"task": self.task.name, "config": self.task.model_config(self.model), **self.task.checkpoint_meta(),
                "args": self.s.to_flat(), "epoch": self.epoch, "history": self.history}
        state = {**base, "model": model_sd, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                 "optimizer": opt_sd, "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                 "rng": rngs, "best": self.best, "partial": self.partial, "totals": self.totals,
                 "world_size": self.world}
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

    # ---- loops

    def _train_loader(self) -> DataLoader:
        """This epoch's batches for this rank, from the sampler position (so a resumed epoch skips what it did)."""
        sampler = DistributedSampler(self.train_ds, self.world, self.rank, shuffle=True, seed=self.s.run.seed,
                                     drop_last=True)
        sampler.set_epoch(self.epoch)
        self.train_data.set_epoch(self.epoch)
        bs = self.s.loader.batch_size
        n = self.updates_per_epoch * self.s.optim.accum_steps * bs
        indices = list(sampler)[self.step_in_epoch * bs:n]
        return DataLoader(self.train_data, bs, sampler=indices, num_workers=self.workers, drop_last=True,
                          collate_fn=self.task.collate_fn, pin_memory=self.device.type == "cuda",
                          worker_init_fn=_ignore_sigint,
                          generator=torch.Generator())  # own generator: loaders never draw from the global RNG

    def _val_loader(self) -> DataLoader:
        indices = list(range(self.rank, len(self.val_ds), self.world))  # disjoint shards, no padding
        return DataLoader(self.val_ds, self.s.loader.batch_size, sampler=indices, num_workers=self.workers,
                          collate_fn=self.task.collate_fn)

    @property
    def workers(self) -> int:
        if self.s.loader.workers is not None:
            return self.s.loader.workers
        return 0 if self.device.type == "cpu" else max(1, min(8, (os.cpu_count() or 1) // self.world - 1))

    def _no_sync(self, sync: bool):
        """Skip the gradient all-reduce on accumulation micro-steps that do not end an update."""
        fsdp = self.s.device.fsdp
        if self.world > 1 and fsdp:
            self.net.set_requires_gradient_sync(sync)
        if sync or self.world == 1 or fsdp:
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

    def _read_last(self) -> dict:
        """last.pt of the run being resumed; a TrainingError that offers what is left when it does not read."""
        last = self.run_dir / "last.pt"
        try:
            return read_weights(last)[0]
        except CheckpointError as e:
            best = self.run_dir / "best.pt"
            why = str(e).removesuffix(" Re-download or re-save it.")  # CheckpointError's advice is for downloads
            offer = f"fine-tune from its best weights with --pretrained {best}, or " if best.is_file() else ""
            raise TrainingError(f"cannot resume {self.run_dir}: {why} Instead, {offer}start a fresh run with "
                                "another --out") from None

    def _nonfinite_message(self, what: str) -> str:
        last = self.run_dir / "last.pt"
        kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint was written yet"
        return (f"non-finite {what} at epoch {self.epoch + 1}, step {self.step_in_epoch + 1}, lr "
                f"{max(g['lr'] for g in self.opt.param_groups):.3g}: training stopped; {kept}. Try a lower --lr, "
                "a longer --warmup-epochs, --clip-grad, or --amp none")

    def _micro_step(self, batch, sync: bool, stop: list) -> float:
        with self._no_sync(sync):
            with autocast(self.device, self.amp_dtype):
                loss = self.task.loss(self.net, batch)
            mean_loss = self._check(loss, stop)
            self.scaler.scale(loss / self.s.optim.accum_steps).backward()
        return mean_loss

    def _update(self) -> None:
        self.scaler.unscale_(self.opt)
        norm = nn.utils.clip_grad_norm_(self.net.parameters(), self.s.optim.clip_grad or math.inf)
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
        accum, bs = self.s.optim.accum_steps, self.s.loader.batch_size
        loader = self._train_loader()
        bar = tqdm(loader, desc=f"epoch {self.epoch + 1}", leave=False, disable=None if self.main else True,
                   initial=self.step_in_epoch, total=self.updates_per_epoch * accum)
        t0 = time.perf_counter() - self.partial["seconds"]
        for batch in bar:
            loss = self._micro_step(batch, (self.step_in_epoch + 1) % accum == 0, stop)
            self.step_in_epoch += 1
            self.partial["loss_sum"] += loss * bs * self.world
            self.partial["images"] += bs * self.world
            if self.step_in_epoch % accum:
                continue
            self._update()
            self.partial["seconds"] = time.perf_counter() - t0
            self._log_step(loss, bar)
            every = self.s.run.ckpt_every
            if self.stopping or (every and self.global_step % every == 0):
                self._save()
            if self.stopping:
                return False
        return True

    def _log_step(self, loss: float, bar) -> None:
        lr = max(g["lr"] for g in self.opt.param_groups)
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", refresh=False)
        if self.main and self.global_step % self.s.run.log_every == 0:
            self.writer.add_scalar("train/loss_step", loss, self.global_step)
            self.writer.add_scalar("train/lr", lr, self.global_step)

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        try:
            return self.task.evaluate(model, self._val_loader())
        finally:
            model.train()

    def _validate(self) -> dict:
        row = {f"val_{k}": v for k, v in self._evaluate(self.net).items()}
        if self.ema is not None:
            row.update({f"ema_val_{k}": v for k, v in self._evaluate(self.ema.module).items()})
        return row

    def _end_epoch(self) -> None:
        p = self.partial
        row = {"epoch": self.epoch + 1, "train_loss": p["loss_sum"] / max(p["images"], 1), **self._validate(),
               "lr": max(g["lr"] for g in self.opt.param_groups),
               "images_per_sec": p["images"] / max(p["seconds"], 1e-9), "epoch_seconds": p["seconds"]}
        self.history.append(row)
        self.totals["train_images"] += p["images"]
        self.totals["train_seconds"] += p["seconds"]
        value = row[f"ema_val_{self.metric}" if self.ema is not None else f"val_{self.metric}"]
        improved = value > self.best[self.metric]
        if improved:
            self.best = {self.metric: value, "epoch": self.epoch + 1}
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
        plot_curves(self.history, self.run_dir / "curves.png", self.task.plot_metrics or (self.metric,))
        val = {k[4:]: v for k, v in row.items() if k.startswith("val_")}
        ema = f"ema_val_{self.metric}"
        val_loss = f"val loss {row['val_loss']:.4f}  " if math.isfinite(row["val_loss"]) else ""  # detectors: none
        tqdm.write(f"epoch {row['epoch']}/{self.s.schedule.epochs}  train loss {row['train_loss']:.4f}  "
                   f"{val_loss}{self.task.describe(val)}"
                   + (f"  (EMA {self.task.describe({self.metric: row[ema]})})" if ema in row else "")
                   + f"  lr {row['lr']:.2e}  {row['images_per_sec']:.0f} img/s")

    def summary(self, status: str) -> dict:
        last = self.history[-1] if self.history else {}
        t, m = self.totals, self.metric
        return {"status": status, "task": self.task.name, "epochs": self.epoch, f"val_{m}": None,
                **{k: v for k, v in last.items() if k.startswith(("val_", "ema_val_"))},
                f"best_val_{m}": self.best[m] if self.best["epoch"] else None, "best_epoch": self.best["epoch"],
                "images_per_sec": t["train_images"] / max(t["train_seconds"], 1e-9),
                "train_seconds": t["train_seconds"], "wall_seconds": t["wall_seconds"], **self.task.summary_extra(),
                "model": self.task.describe_model(self.model),
                "params": sum(p.numel() for p in self.model.parameters()), "world_size": self.world,
                "run_dir": str(self.run_dir)}

    def result_line(self, summary: dict) -> str:
        """"val top-1 98.05%  top-5 100.00%  (best top-1 98.05% at epoch 29)" from a summary."""
        m = self.metric
        val = {k[4:]: v for k, v in summary.items() if k.startswith("val_") and v is not None}
        best = f"  (best {self.task.describe({m: summary[f'best_val_{m}']})} at epoch {summary['best_epoch']})" \
            if summary["best_epoch"] else ""
        return f"val {self.task.describe(val)}{best}"

    def _write_config(self) -> None:
        config = {"task": self.task.name, "args": self.s.to_flat(), "model": self.task.model_config(self.model),
                  **self.task.checkpoint_meta(), "world_size": self.world, "command": sys.argv,
                  "versions": {"swinkit": __version__, "torch": torch.__version__}}
        write_json(self.run_dir / "config.json", config)

    # ---- the run

    def fit(self) -> dict:
        """Train to the last epoch (or until SIGINT/SIGTERM, after saving). Returns the summary."""
        start = time.perf_counter()
        if self.main:
            from torch.utils.tensorboard import SummaryWriter

            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_config()
            self.writer = SummaryWriter(str(self.run_dir), purge_step=self.global_step if self.s.run.resume else None)
            self._announce()
        status = "completed"
        epochs = self.s.schedule.epochs
        with stop_requests() as stop:
            bar = tqdm(range(self.epoch, epochs), desc="epochs", initial=self.epoch, total=epochs,
                       disable=None if self.main else True)
            for _ in bar:
                if not self._train_epoch(stop):
                    status = "interrupted"
                    break
                self._end_epoch()
        self.totals["wall_seconds"] += time.perf_counter() - start
        summary = self.summary(status)
        if self.main:
            write_json(self.run_dir / "summary.json", summary)
            self.writer.close()
        return summary

    def _announce(self) -> None:
        s, n = self.s, sum(p.numel() for p in self.model.parameters())
        if s.run.recipe_note and not s.run.resume:
            tqdm.write(s.run.recipe_note)
        for note in self.task.notes():
            tqdm.write(note)
        total = s.loader.batch_size * s.optim.accum_steps * self.world
        tqdm.write(f"{'resuming' if s.run.resume else 'training'} {self.task.describe_model(self.model)} "
                   f"({n / 1e6:.2f}M params, task {self.task.name}, recipe {s.run.recipe}) on "
                   f"{self.task.describe_data(self.train_ds, self.val_ds)}; {self.world} process(es) on "
                   f"{self.device}; batch {total}, lr {self.lrs['lr']:.2e}; {s.schedule.epochs} epochs -> "
                   f"{self.run_dir}")


def _write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def plot_curves(history: list[dict], path: Path, metrics: tuple[str, ...]) -> None:
    """curves.png: train/val loss, and the validation `metrics` (with their EMA values when kept), per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [r["train_loss"] for r in history], label="train")
    a.plot(ep, [r["val_loss"] for r in history], label="val")
    for k in [f"{pre}val_{m}" for m in metrics for pre in ("", "ema_")]:
        if k in history[-1]:
            b.plot(ep, [r[k] for r in history], label=k.replace("_", " "))
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    b.set(xlabel="epoch", title="validation")
    for ax in (a, b):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)


def train(settings: TrainSettings) -> dict:
    """Run training with resolved settings (see `resolve_settings`); returns summary.json's content."""
    return _train(settings)[1]


def _train(settings: TrainSettings) -> tuple[Trainer, dict]:
    try:
        trainer = Trainer(settings)
        summary = trainer.fit()
        if dist.is_initialized():
            dist.barrier()  # no rank tears the group down while another still talks to it
        return trainer, summary
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run(args: argparse.Namespace) -> int:
    try:
        trainer, summary = _train(resolve_settings(args))
    except (TrainingError, FileNotFoundError, ValueError, ImportError) as e:  # ImportError: an optional extra
        print(f"error: {e}", file=sys.stderr)
        return 1
    if trainer.main:
        if summary["status"] == "interrupted":
            print(f"interrupted after {summary['epochs']} epoch(s): state saved; continue with "
                  f"swinkit train --resume {summary['run_dir']}")
        else:
            print(f"done: {trainer.result_line(summary)}  {summary['images_per_sec']:.0f} img/s  "
                  f"{summary['wall_seconds']:.0f} s  -> {summary['run_dir']}")
    return 130 if summary["status"] == "interrupted" else 0
