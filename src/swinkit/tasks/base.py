"""What a task supplies to the one training loop, and the loop's typed settings.

A task (classification, segmentation, ...) is one file in swinkit/tasks/ with a `Task` subclass and a
`TaskSettings` subclass. The loop in swinkit/train/loop.py owns everything that does not depend on the task (AMP,
DDP/FSDP, EMA, clipping, accumulation, exact resume, the run directory and its logs, Ctrl-C, non-finite losses);
`swinkit eval` and `swinkit predict` read the task's name from the checkpoint and hand over to the same class.

Settings are dataclasses, one per concern; every field is one command-line flag (`--batch-size` for
`LoaderSettings.batch_size`) and one *flat key* (the flag with underscores, `batch_size`). Flat keys are unique
across all settings classes, so a recipe stays a plain dict of flat key -> value that may set any field, the
loop's or the task's, and `config.json` stores the run's settings as one flat dict (`"args"`).

Writing a task, in the order the loop calls it (see ClassifyTask in classify.py for a full example):

    @dataclass
    class SegmentSettings(TaskSettings):           # data, model, pretrained come from TaskSettings
        crop_size: int = setting(512, "training crop")
        ignore_index: int = setting(255, "label value left out of loss and metrics")

    class SegmentTask(Task):
        name, primary_metric, Settings = "segment", "miou", SegmentSettings
        recipes = {"default": {}, "camvid": dict(epochs=80, lr=6e-5, crop_size=384)}
        default_recipe = "default"

        def build_datasets(self): ...               # (train, val)
        def build_model(self, config=None): ...     # config: model_config() of a run being resumed
        def model_config(self, model): ...          # JSON-able; `model_from_config` rebuilds from it
        @classmethod
        def model_from_config(cls, config): ...
        def loss(self, model, batch): ...           # one micro-batch -> scalar loss (the loop autocasts)
        def evaluate(self, model, loader): ...      # {"loss": ..., "miou": ..., ...}, reduced over ranks
        def checkpoint_meta(self): ...              # {"class_names": ..., "palette": ..., "data": ...}
        @classmethod
        def add_eval_arguments(cls, parser): ...    # `swinkit eval` flags of this task
        @classmethod
        def run_eval(cls, loaded, args): ...        # -> (JSON result, text report)
        @classmethod
        def add_predict_arguments(cls, parser): ...
        @classmethod
        def run_predict(cls, loaded, args): ...     # writes/prints predictions -> exit status

and one line in swinkit/tasks/__init__.py's TASKS. Optional: `choose_recipe` (pick a recipe for the data and say
why in one line), `resolve` (reject or clear settings), `describe_model` / `describe_data` / `describe` (log
lines), `summary_extra`, `load` (other checkpoint formats), `collate_fn`, `plot_metrics`, `set_ema`.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16/fp16 autocast on `device`, or a no-op when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------
# settings: one dataclass per concern; each field is a flag


def setting(default: Any, help: str = "", *, flag: str | None = None, nargs: str | int | None = None,
            choices: list | None = None, type: Any = None, cli: bool = True, valid: str | None = None) -> Any:
    """A settings field. `flag`: its flat key / flag name when not the field's name (EmaSettings.decay is
    `ema_decay`, `--ema-decay`); `nargs`, `choices`, `type`: passed to argparse (type defaults to the field's
    annotation, bools become --x/--no-x); `cli=False`: set by recipes and the loop only, no flag. `valid`: the
    values that make sense, checked before a run starts (VALID: ">= 1", "> 0", ">= 0", "0..1", "(0, 1]")."""
    assert valid is None or valid in VALID, valid
    meta = {"help": help, "flag": flag, "nargs": nargs, "choices": choices, "type": type, "cli": cli,
            "valid": valid}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


VALID = {">= 1": lambda v: v >= 1, "> 0": lambda v: v > 0, ">= 0": lambda v: v >= 0,
         "0..1": lambda v: 0 <= v <= 1, "[0, 1)": lambda v: 0 <= v < 1, "(0, 1]": lambda v: 0 < v <= 1}


def check_valid(group) -> None:
    """ValueError naming the flag of the first field of `group` whose value makes no sense (see setting's valid)."""
    for f in dataclasses.fields(group):
        rule, value = f.metadata.get("valid"), getattr(group, f.name)
        if rule is None or value is None:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if not VALID[rule](v):
                raise ValueError(f"--{flat_key(f).replace('_', '-')} must be {rule}, got {v}")


def flat_key(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or f.name


@dataclass
class RunSettings:
    """Run and output."""
    task: str = setting("classify", "what to train (see swinkit.tasks.TASKS)", cli=False)
    recipe: str | None = setting(None, cli=False)  # the flag is added with the task's recipe names as choices
    recipe_note: str | None = setting(None, "why the recipe was picked (Task.choose_recipe)", cli=False)
    given: list[str] = setting([], "the settings given as flags (the others came from defaults and the recipe, and "
                                   "the loop may fit them to the data)", cli=False)
    out: str | None = setting(None, "run directory (default: runs/<date-time>)")
    resume: str | None = setting(None, "continue the run in RUN_DIR exactly where it stopped", cli=False)
    seed: int = setting(0, "seed of weights, data order and augmentation")
    ckpt_every: int = setting(0, "also save last.pt every N updates", valid=">= 0")
    log_every: int = setting(50, "TensorBoard step-log interval in updates", valid=">= 1")
    deterministic: bool = setting(False, "deterministic algorithms")


@dataclass
class OptimSettings:
    """AdamW: lrs are per `lr_base_size` images and scale linearly with the total batch (batch_size x
    accum_steps x processes)."""
    lr: float = setting(5e-4, "peak lr per --lr-base-size images", valid="> 0")
    lr_base_size: int = setting(512, "the batch the lrs are given for", valid=">= 1")
    weight_decay: float = setting(0.05, "none on norms, biases, position tables, logit scale, CPB MLP", valid=">= 0")
    layer_decay: float = setting(1.0, "layer-wise lr decay over the Swin's blocks (1 = off)", valid="(0, 1]")
    backbone_lr_scale: float = setting(1.0, "lr factor of the Swin backbone (every parameter of a Swin but its "
                                            "classifier head); fine-tuning recipes such as Video Swin's use 0.1",
                                  valid=">= 0")
    clip_grad: float = setting(5.0, "max grad norm (0 = off)", valid=">= 0")
    betas: list[float] = setting([0.9, 0.999], "AdamW betas", nargs=2, valid="[0, 1)")
    accum_steps: int = setting(1, "gradient accumulation steps", valid=">= 1")


@dataclass
class ScheduleSettings:
    """Linear warmup from warmup_lr to lr, then cosine to min_lr (or steps), stepped every update."""
    epochs: int = setting(300, valid=">= 1")
    warmup_epochs: float = setting(20.0, "linear warmup, then the schedule per iteration", valid=">= 0")
    warmup_lr: float = setting(5e-7, valid=">= 0")
    min_lr: float = setting(5e-6, "cosine: the final lr", valid=">= 0")
    schedule: str = setting("cosine", "after warmup: cosine to --min-lr, or step: the lr times --gamma at each of "
                                      "--milestones", choices=["cosine", "step"])
    milestones: list[float] = setting([0.5, 0.8, 0.9, 0.95], "step: where the lr drops, as fractions of the run",
                                      nargs="+", valid="0..1")
    gamma: float = setting(0.5, "step: lr factor at each milestone", valid="> 0")


@dataclass
class LoaderSettings:
    """Data loading."""
    batch_size: int = setting(128, "per process", valid=">= 1")
    workers: int | None = setting(None, "data-loading processes per training process (default: 0 on CPU, "
                                        "where compute needs the cores; up to 8 per GPU)", valid=">= 0")


@dataclass
class DeviceSettings:
    """Device, processes, precision and memory."""
    device: str | None = setting(None, "default: cuda:LOCAL_RANK when available, else cpu")
    threads: int | None = setting(None, "torch CPU threads (default: torch's choice)", valid=">= 1")
    amp: str = setting("auto", "autocast: auto = bf16 on GPU, none on CPU", choices=["auto", *AMP_DTYPES])
    fsdp: bool = setting(False, "shard with FSDP under torchrun")
    grad_checkpointing: bool = setting(False, "recompute activations in the backward pass")


@dataclass
class EmaSettings:
    """An exponential moving average of the weights, evaluated beside them; best.pt then holds it."""
    enabled: bool = setting(False, "keep an EMA of the weights", flag="ema")
    decay: float = setting(0.9998, flag="ema_decay", valid="[0, 1)")


@dataclass
class TaskSettings:
    """Fields every task has; a task's settings class adds its own (and its defaults) by subclassing."""
    data: str | None = setting(None, "training data")
    model: str = setting("swin_tiny_patch4_window7_224", "model name")
    pretrained: str | None = setting(None, "start from these weights")


LOOP_SETTINGS = {"run": RunSettings, "optim": OptimSettings, "schedule": ScheduleSettings, "loader": LoaderSettings,
                 "device": DeviceSettings, "ema": EmaSettings}


@dataclass
class TrainSettings:
    """Every setting of a run: the loop's concerns and the task's own (`task`, an instance of Task.Settings)."""
    run: RunSettings
    optim: OptimSettings
    schedule: ScheduleSettings
    loader: LoaderSettings
    device: DeviceSettings
    ema: EmaSettings
    task: TaskSettings

    @classmethod
    def defaults(cls, task_settings: type[TaskSettings]) -> dict[str, Any]:
        """Flat key -> default of every field (the loop's and the task's)."""
        out = {}
        for group in (*LOOP_SETTINGS.values(), task_settings):
            for f in dataclasses.fields(group):
                out[flat_key(f)] = f.default_factory() if f.default is dataclasses.MISSING else f.default
        return out

    @classmethod
    def from_flat(cls, flat: dict[str, Any], task_settings: type[TaskSettings]) -> "TrainSettings":
        """Distribute flat keys to their dataclasses; an unknown key is an error."""
        known = cls.defaults(task_settings)
        unknown = sorted(set(flat) - set(known))
        if unknown:
            raise ValueError(f"unknown settings {unknown}; expected flat keys of the loop's and the task's settings "
                             f"({', '.join(sorted(known))})")
        groups = {name: _fill(group, flat) for name, group in LOOP_SETTINGS.items()}
        settings = cls(**groups, task=_fill(task_settings, flat))
        for group in (*groups.values(), settings.task):
            check_valid(group)
        return settings

    def to_flat(self) -> dict[str, Any]:
        """The inverse of from_flat: one JSON-able dict (config.json's "args")."""
        out = {}
        for group in (self.run, self.optim, self.schedule, self.loader, self.device, self.ema, self.task):
            for f in dataclasses.fields(group):
                out[flat_key(f)] = getattr(group, f.name)
        return out


def _fill(group: type, flat: dict[str, Any]):
    return group(**{f.name: flat[flat_key(f)] for f in dataclasses.fields(group) if flat_key(f) in flat})


def add_settings_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, group: type,
                           skip: tuple[str, ...] = ()) -> None:
    """One flag per field of a settings dataclass, with default None (so recipes can fill what is not given)
    and the field's default shown in the help."""
    hints = typing.get_type_hints(group)
    for f in dataclasses.fields(group):
        key, m = flat_key(f), f.metadata
        if not m.get("cli", True) or key in skip:
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        help_ = " ".join(filter(None, [m["help"], f"(default {default})" if default is not None else ""]))
        kw: dict[str, Any] = {"help": help_, "dest": key}
        typ = m["type"] or _scalar_type(hints[f.name])
        if typ is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = typ
            if m["nargs"] is not None:
                kw["nargs"] = m["nargs"]
            if m["choices"] is not None:
                kw["choices"] = m["choices"]
        parser.add_argument("--" + key.replace("_", "-"), **kw)


def _scalar_type(hint) -> type:
    """int | None -> int; list[float] -> float (the flag then needs nargs); bool stays bool."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (list, tuple):
        return args[0]
    if args:
        return _scalar_type(args[0])
    return hint


# ----------------------------------------------------------------------------------------------------------
# the task interface


@dataclass
class Env:
    """Where a task runs, set up by the loop (or by eval / predict with rank 0 of 1)."""
    device: torch.device
    rank: int = 0
    world: int = 1
    amp_dtype: torch.dtype | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class Loaded:
    """A trained model read back for `swinkit eval` / `swinkit predict`: the model in eval mode on CPU, and the
    task's `checkpoint_meta()` saved beside it (class names, eval transform, palette, ...)."""
    task: type["Task"]
    model: nn.Module
    meta: dict
    path: Path


class Task:
    """A task for the training loop. Subclasses set the class attributes and implement the methods below.

    The command line resolves the settings as: the settings' defaults < `recipes[name]` (name from --recipe, else
    `choose_recipe`) < the flags given, then `resolve`. The loop constructs `Task(settings, env)` on every process
    and calls, in order:
    `build_datasets()`, `build_model()` (after the datasets, so it may read them, e.g. the class count, and
    finish them, e.g. transforms at the model's input size), then per micro-batch `loss(model, batch)` and per
    epoch `evaluate(model, loader)`. Checkpoints hold `{"task": name, "config": model_config(model), "model":
    state_dict, **checkpoint_meta(), ...}`.

    Augmentation must draw from torch's default generator (as torchvision transforms v2 do): the loop seeds it
    per (seed, epoch, index) for every training sample, which makes runs exact to resume and independent of the
    worker and process count.
    """

    name: ClassVar[str]                       # "classify", "segment"; stored in every checkpoint
    primary_metric: ClassVar[str]             # a key of evaluate()'s result, higher is better; best.pt follows it
    Settings: ClassVar[type[TaskSettings]]    # the task's settings dataclass (its flags and defaults)
    recipes: ClassVar[dict[str, dict[str, Any]]] = {}  # name -> flat overrides of any setting (loop's or task's)
    default_recipe: ClassVar[str]             # used when choose_recipe has nothing better to say
    plot_metrics: ClassVar[tuple[str, ...]] = ()  # evaluate() keys drawn in curves.png (default: primary_metric)
    collate_fn: ClassVar[Any] = None          # DataLoader collate_fn for this task's samples (None: torch's)

    def __init__(self, settings: TrainSettings, env: Env):
        self.settings, self.cfg, self.env = settings, settings.task, env

    # ---- settings

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The task's training flags: one per field of `Settings` by default."""
        add_settings_arguments(parser.add_argument_group(f"{cls.name} task"), cls.Settings)

    @classmethod
    def choose_recipe(cls, given: dict[str, Any]) -> tuple[str, str | None]:
        """(recipe, reason) when no --recipe is given. `given`: the flat settings from the command line. The
        reason, one line saying which recipe was picked and why, is printed before training; None says nothing
        (the default recipe needs no explanation). Override to pick by the data, e.g. its size."""
        return cls.default_recipe, None

    @classmethod
    def resolve(cls, flat: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
        """The last word on the flat settings (defaults < recipe < `given` flags) before they become dataclasses:
        reject combinations that cannot work (raise ValueError saying what to change), clear what does not apply."""
        return flat

    # ---- training

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """(train, val) datasets; samples are whatever `loss` and `evaluate` take from the loader."""
        raise NotImplementedError

    def build_model(self, config: dict | None = None) -> nn.Module:
        """A new model (may load --pretrained weights into a backbone), or with `config` (a `model_config()` saved
        by the run being resumed) that architecture with any weights: the loop loads them."""
        raise NotImplementedError

    def model_config(self, model: nn.Module) -> dict:
        """JSON-able description from which `model_from_config` rebuilds the architecture."""
        raise NotImplementedError

    @classmethod
    def model_from_config(cls, config: dict) -> nn.Module:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        """One training micro-batch (as the loader yields it, on the CPU) -> scalar loss. Move it to
        `self.env.device`; the loop runs this under autocast and does the backward pass. `model` may be wrapped
        (DDP/FSDP): call it, do not reach into it."""
        raise NotImplementedError

    def set_ema(self, ema: nn.Module | None) -> None:
        """The loop's EMA of the weights (None without --ema), handed over after build_model: a task may use it,
        e.g. as a self-distillation teacher."""

    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        """Metrics over this rank's shard of the validation set, reduced over all ranks (torch.distributed when
        initialised): "loss" and `primary_metric` at least. Run under `autocast(self.env.device,
        self.env.amp_dtype)`; the loop calls model.eval() before and model.train() after."""
        raise NotImplementedError

    def checkpoint_meta(self) -> dict:
        """JSON-able facts stored beside the weights in last.pt, best.pt and config.json, all that eval and
        predict need besides the model (class names, the eval transform, a palette)."""
        return {}

    def summary_extra(self) -> dict:
        """JSON-able facts added to summary.json (e.g. the number of unreadable files skipped)."""
        return {}

    def describe_model(self, model: nn.Module) -> str:
        """What the model is, for the log and summary.json ("swin_t", "upernet_swin_t", "custom Swin V1: patch 4,
        ..."): never a variant's name for a model that is not that variant. The loop adds the parameter count."""
        return type(model).__name__

    def describe_data(self, train: Dataset, val: Dataset) -> str:
        return f"{len(train)} training samples, {len(val)} val"

    def notes(self) -> list[str]:
        """Lines printed before training starts: settings the task took from the data, and why."""
        return []

    def describe(self, metrics: dict[str, float]) -> str:
        """The metrics of `evaluate` (or a subset) for one log line, e.g. "top-1 98.05%  top-5 100.00%"."""
        return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "loss")

    # ---- eval and predict (classmethods: they start from a checkpoint, not from training settings)

    @classmethod
    def load(cls, path: Path, ck: dict | None) -> Loaded:
        """The model and meta of `path`; `ck` is its content when it is a swinkit checkpoint (a dict with "model"
        and "config"), else None (a foreign format the task may know how to read)."""
        if ck is None:
            raise ValueError(f"{path}: expected a checkpoint written by `swinkit train --task {cls.name}`")
        model = cls.model_from_config(ck["config"])
        model.load_state_dict(ck["model"])
        meta = {k: v for k, v in ck.items() if k not in ("model", "config", "optimizer", "ema", "rng")}
        return Loaded(cls, model.eval(), meta, path)

    @classmethod
    def add_eval_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """`swinkit eval` flags beyond --checkpoint, --data, --batch-size, --workers, --device, --amp, --json and
        --confusion (a PNG path, set to confusion_matrix.png beside the checkpoint when not given)."""

    @classmethod
    def run_eval(cls, loaded: Loaded, args: argparse.Namespace) -> tuple[dict, str]:
        """Evaluate `loaded` on args.data -> (the --json result, the text report)."""
        raise NotImplementedError

    @classmethod
    def add_predict_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """`swinkit predict` flags beyond --checkpoint, the image paths, --batch-size, --device, --json."""

    @classmethod
    def run_predict(cls, loaded: Loaded, args: argparse.Namespace) -> int:
        """Predict for args.images, print or write the results; returns the exit status (1 if a file failed)."""
        raise NotImplementedError
