"""Image classification: image folders (or the embedded digits), transforms v2 with Mixup/CutMix, a Swin
classifier, label-smoothed cross-entropy (optionally distilled from a teacher, swinkit/distill.py), quantization-aware
fine-tuning (--qat, swinkit/qat.py), top-1/top-5, and top-k class predictions.

The recipes are data: the official Swin recipe (Liu et al. 2021, configs of microsoft/Swin-Transformer) is the
settings' defaults; every other recipe lists only what it changes.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..train.distill import (DISTILL_KINDS, Distiller, Teacher, add_distillation_head, check_settings,
                       classifier_config, classifier_from_config, fold_distillation_head, has_distillation_head,
                       load_classifier)
from ..data import (IMAGENET_MEAN, IMAGENET_STD, IMG_EXTENSIONS, ImageFolderDataset, build_datasets, digits_folder,
                    eval_transform, load_image, mixup_cutmix, train_transform)
from ..factory import create_model
from ..io.files import dumps
from ..metrics.classification import evaluate, save_confusion_png
from ..metrics.robustness import corruption_keys, evaluate_robustness_batches, format_robustness
from ..models.swin import SwinTransformer
from ..train.qat import count_fake_quantized, prepare_qat
from .base import AMP_DTYPES, Loaded, Task, TaskSettings, add_settings_arguments, setting

ARCH_KEYS = ("img_size", "patch_size", "window_size", "embed_dim", "depths", "num_heads")
# from scratch on fewer training images than this (and no --recipe), the small-data recipe is picked
SMALL_DATA_IMAGES = 20_000
TIMM_PREFIX = "timm:"  # --model timm:NAME: timm's model NAME with random weights, an external baseline


def json_object(text: str) -> dict:
    """--model-kwargs: a JSON object (of SwinConfig fields)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object, e.g. '{{\"shift\": false}}', got {text!r} ({e})")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, e.g. '{{\"shift\": false}}', got {text!r}")
    return value


def timm_classifier(name: str, num_classes: int) -> nn.Module:
    """timm's model `name` with random weights and `num_classes` outputs (--model timm:NAME)."""
    try:
        import timm
    except ImportError:
        raise ImportError(f"--model {TIMM_PREFIX}{name} needs timm: pip install timm") from None
    if not timm.is_model(name):
        raise ValueError(f"--model {TIMM_PREFIX}{name}: timm has no model {name!r} (timm.list_models() lists them)")
    return timm.create_model(name, num_classes=num_classes, pretrained=False)


@dataclass
class DistillSettings:
    """Knowledge distillation from a teacher (DeiT, Touvron et al. 2021; swinkit/distill.py)."""
    teacher: str | None = setting(None, "teacher: a checkpoint or run directory of a classifier of the same classes "
                                        "(any file load_model reads), or ema: the run's own EMA (needs --ema)")
    distill: str | None = setting(None, "soft: tau^2 KL to the teacher's softened logits; hard: DeiT's hard-label "
                                        "distillation, with a distillation head whose logits are averaged with the "
                                        "class head's at inference", choices=list(DISTILL_KINDS))
    distill_tau: float = setting(1.0, "soft: temperature, as in DeiT", valid="> 0")
    distill_alpha: float = setting(0.5, "weight of the distillation loss, the labels' loss getting 1 - alpha, as in "
                                        "DeiT")


@dataclass
class ClassifySettings(DistillSettings, TaskSettings):
    """Classification settings; the defaults are the official Swin recipe."""
    data: str | None = setting(None, "image folder: train/ and val/ class folders, or class folders to split "
                                     "(default: the embedded scikit-learn digits)")
    model: str = setting("swin_tiny_patch4_window7_224", "variant name, see `swinkit models`")
    pretrained: str | None = setting(None, "start from these weights, PATH or run directory (head re-initialised "
                                           "for new classes)")
    # model overrides (None: the variant's)
    img_size: int | None = setting(None, "training and evaluation size (default: the model's)")
    patch_size: int | None = setting(None)
    window_size: list[int] | None = setting(None, "one value, or one per stage", nargs="+")
    embed_dim: int | None = setting(None)
    depths: list[int] | None = setting(None, nargs="+")
    num_heads: list[int] | None = setting(None, nargs="+")
    drop_path_rate: float | None = setting(None, "stochastic depth (default: the variant's)")
    model_kwargs: dict = setting({}, "further SwinConfig fields of a new model, a JSON object over the flags above, "
                                     "e.g. '{\"mixer\": \"pool\", \"shift\": false}'", type=json_object)
    # data and augmentation (0 disables a step)
    scale: list[float] = setting([0.08, 1.0], "random-resized-crop area range", nargs=2)
    hflip: float = setting(0.5, "horizontal flip probability", valid="0..1")
    randaug_n: int = setting(2, "RandAugment operations per image", valid=">= 0")
    randaug_m: int = setting(9, "RandAugment magnitude")
    randaug_mstd: float = setting(0.5, "RandAugment magnitude noise", valid=">= 0")
    reprob: float = setting(0.25, "random erasing probability", valid="0..1")
    mixup: float = setting(0.8, "MixUp alpha", valid=">= 0")
    cutmix: float = setting(1.0, "CutMix alpha", valid=">= 0")
    mix_switch_prob: float = setting(0.5, "probability of CutMix when both are on", valid="0..1")
    smoothing: float = setting(0.1, "label smoothing", valid="[0, 1)")
    crop_pct: float = setting(0.875, "eval: resize to img_size / crop_pct, centre crop", valid="(0, 1]")
    val_fraction: float = setting(0.1, "share of a folder without val/ held out for validation", valid="[0, 1)")
    verify_images: bool = setting(True, "decode every image once before training and skip unreadable ones")
    qat: bool = setting(False, "quantization-aware training: fine-tune the --pretrained float classifier with int8 "
                               "fake-quantized Linear layers (torchao, swinkit/qat.py); the checkpoints stay float, "
                               "ready for swinkit quantize")


RECIPES: dict[str, dict[str, Any]] = {
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
SMALL_DATA_WHY = ("the official recipe (Swin-T, 300 epochs of heavy augmentation, built for ImageNet's 1.28M images) "
                  "underfits data this small (cifar10-mini: 30% top-1 after 8 epochs with it, 61% with --recipe "
                  "small; docs/training.md)")


def count_images(data: str | Path) -> int:
    """Image files in the training part of an image folder (data/train/<class> or data/<class>)."""
    root = Path(data) / "train" if (Path(data) / "train").is_dir() else Path(data)
    if not root.is_dir():
        return 0
    return sum(1 for c in os.scandir(root) if c.is_dir() for f in os.scandir(c.path)
               if f.name.lower().endswith(IMG_EXTENSIONS))


def check_qat_settings(pretrained: str | None) -> None:
    """ValueErrors for --qat settings that cannot work, each saying what to change."""
    if pretrained is None:
        raise ValueError("--qat starts from a float checkpoint: pass --pretrained RUN/best.pt (a trained classifier)")
    if importlib.util.find_spec("torchao") is None:
        raise ValueError("--qat needs torchao for its fake quantization: pip install torchao")


# ----------------------------------------------------------------------------------------------------------
# metrics and predictions


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, class_names: list[str], topk: int = 5) -> list[list[dict]]:
    """images (B, 3, H, W) -> per image, the top-k [{"class", "index", "prob"}], most probable first."""
    probs = model(images).float().softmax(dim=-1)  # (B, C)
    p, idx = probs.topk(min(topk, probs.shape[1]), dim=-1)  # (B, k)
    return [[{"class": class_names[i], "index": i, "prob": q} for q, i in zip(pr.tolist(), ix.tolist())]
            for pr, ix in zip(p, idx)]


def eval_folder(data: Path) -> Path:
    """`data/val` when it exists (a training tree), else `data` itself."""
    return data / "val" if (data / "val").is_dir() else data


def read_robustness_baseline(path: Path) -> dict:
    """The robustness results in an earlier `swinkit eval --robustness --json` output (or a bare results dict)."""
    obj = json.loads(Path(path).read_text())
    results = obj.get("robustness", obj) if isinstance(obj, dict) else {}
    corruption_keys(results, f"--robustness-baseline {path}")
    return results


def robustness(model: nn.Module, ds: ImageFolderDataset, data_cfg: dict, args: argparse.Namespace,
               baseline: dict | None) -> dict:
    """Translation consistency and corruption accuracy (swinkit/metrics/robustness.py) of `ds` read in [0, 1]: the
    eval transform with Normalize(0, 1), the identity; the checkpoint's normalisation moves into `predict`, and
    padded shifts fill with its mean colour, so the network sees zeros there."""
    device, amp = torch.device(args.device), AMP_DTYPES[args.amp]
    mean, std = (torch.tensor(data_cfg[k], device=device).view(1, 3, 1, 1) for k in ("mean", "std"))

    @torch.no_grad()
    def predict(x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) in [0, 1] -> (N,) top-1
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            return model((x.to(device) - mean) / std).argmax(1)

    ds.transform = eval_transform(args.img_size or data_cfg["img_size"], args.crop_pct or data_cfg["crop_pct"],
                                  (0.0,) * 3, (1.0,) * 3)
    loader = DataLoader(ds, args.batch_size, num_workers=args.workers)
    return evaluate_robustness_batches(predict, loader, args.max_shift, baseline=baseline, fill=data_cfg["mean"])


def default_data_config(model: SwinTransformer) -> dict:
    timm_model = hasattr(model, "pretrained_cfg") and not hasattr(model, "cfg")  # --model timm:NAME
    size = model.pretrained_cfg["input_size"][1:] if timm_model else model.cfg.img_size
    return {"img_size": size[0] if size[0] == size[1] else list(size), "crop_pct": 0.875,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


# ----------------------------------------------------------------------------------------------------------
# the task


class ClassifyTask(Task):
    """Classify images into the class folders of --data (or the embedded digits)."""

    name = "classify"
    primary_metric = "top1"
    Settings = ClassifySettings
    recipes = RECIPES
    default_recipe = "official"
    plot_metrics = ("top1", "top5")

    # ---- settings

    @classmethod
    def choose_recipe(cls, given: dict) -> tuple[str, str | None]:
        """digits with no --data, finetune with --pretrained; from scratch on fewer than SMALL_DATA_IMAGES
        training images, small (or, when the architecture was chosen by flags, official with a hint)."""
        if not given.get("data"):
            return "digits", None
        if given.get("pretrained"):
            return "finetune", None
        n = count_images(given["data"])
        if not 0 < n < SMALL_DATA_IMAGES:
            return "official", None
        width = [k for k in ("model", "embed_dim", "depths", "num_heads") if k in given]
        if width:  # the user chose the model: keep the official recipe around it
            return "official", f"hint: {n} training images from scratch: consider --recipe small; {SMALL_DATA_WHY}"
        # input size, patch and window flags alone keep the small model, with those changed
        return "small", (f"recipe small: {n} training images from scratch (fewer than {SMALL_DATA_IMAGES:,}); "
                         f"{SMALL_DATA_WHY}. --recipe official keeps the official one")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The task's flags, the distillation ones in a group of their own."""
        distill = tuple(f.name for f in dataclasses.fields(DistillSettings))
        add_settings_arguments(parser.add_argument_group(f"{cls.name} task"), cls.Settings, skip=distill)
        add_settings_arguments(parser.add_argument_group("knowledge distillation"), DistillSettings)

    @classmethod
    def resolve(cls, flat: dict, given: dict) -> dict:
        check_settings(flat["teacher"], flat["distill"], flat["distill_tau"], flat["distill_alpha"], flat["ema"])
        if flat["qat"]:
            check_qat_settings(flat["pretrained"])
        if given.get("pretrained"):
            clash = [k for k in ("model", *ARCH_KEYS[1:], "model_kwargs") if k in given]
            if clash:
                raise ValueError(f"--pretrained takes the architecture from the checkpoint; remove "
                                 f"{['--' + k.replace('_', '-') for k in clash]}")
            flat.update({k: None for k in ARCH_KEYS[1:]})
        clash = [k for k in (*ARCH_KEYS[1:], "drop_path_rate", "model_kwargs") if k in given]
        if flat["model"].startswith(TIMM_PREFIX) and clash:
            raise ValueError(f"--model {flat['model']} is timm's architecture; remove "
                             f"{['--' + k.replace('_', '-') for k in clash]}")
        if isinstance(flat["window_size"], list) and len(flat["window_size"]) == 1:
            flat["window_size"] = flat["window_size"][0]
        return flat

    # ---- training

    def build_datasets(self):
        c = self.cfg
        self.train_ds, self.val_ds = build_datasets(c.data or digits_folder(), None, None, c.val_fraction,
                                                    self.settings.run.seed, c.verify_images)
        if len(self.val_ds) == 0:
            raise ValueError(f"no validation images in {c.data}: add a val/ folder or raise --val-fraction")
        self.classes = self.train_ds.classes
        self.mix = mixup_cutmix(len(self.classes), c.mixup, c.cutmix, c.mix_switch_prob)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=c.smoothing)
        return self.train_ds, self.val_ds

    def build_model(self, config: dict | None = None) -> SwinTransformer:
        """The model, then the transforms at --img-size or the model's own size."""
        model = self.model_from_config(config) if config else self._new_model()
        timm_size = None if isinstance(model, SwinTransformer) else model.pretrained_cfg["input_size"][-1]
        c, size = self.cfg, self.cfg.img_size or timm_size or model.cfg.img_size[0]
        if c.distill == "hard" and not has_distillation_head(model):
            add_distillation_head(model)
        if c.qat:  # on resume too: the saved weights are float, the fake quantizers come back here
            prepare_qat(model)
        self.distiller = None
        if c.distill and c.teacher != "ema":  # --teacher ema: set_ema, once the loop has made its EMA
            teacher = Teacher.from_checkpoint(c.teacher, self.classes, self.env.device)
            self.distiller = Distiller(c.distill, teacher, self.criterion, c.distill_alpha, c.distill_tau)
        self.data_cfg = {"img_size": size, "crop_pct": c.crop_pct, "mean": list(IMAGENET_MEAN),
                         "std": list(IMAGENET_STD)}
        self.train_ds.transform = train_transform(size, c.scale, c.hflip, c.randaug_n, c.randaug_m, c.randaug_mstd,
                                                  c.reprob)
        self.val_ds.transform = eval_transform(size, c.crop_pct)
        return model

    def _new_model(self) -> SwinTransformer:
        c, n = self.cfg, len(self.classes)
        if c.pretrained:
            model = load_classifier(c.pretrained)[0]
            if has_distillation_head(model) and (c.distill != "hard" or model.num_classes != n):
                fold_distillation_head(model)  # the distilled model (averaged heads) as one head
            if model.num_classes != n:
                model.reset_classifier(n)
            if c.drop_path_rate is not None:
                model.set_drop_path(c.drop_path_rate)
            return model
        if c.model.startswith(TIMM_PREFIX):
            return timm_classifier(c.model[len(TIMM_PREFIX):], n)
        arch = {k: getattr(c, k) for k in (*ARCH_KEYS, "drop_path_rate") if getattr(c, k) is not None}
        model = create_model(c.model, num_classes=n, **{**arch, **c.model_kwargs})
        if model.cfg.describe().startswith("custom"):
            model.cfg.name = "custom"  # a variant's name stays only on the variant's architecture
        return model

    def model_config(self, model: SwinTransformer) -> dict:
        if not isinstance(model, SwinTransformer):  # --model timm:NAME
            return {"timm": model.pretrained_cfg["architecture"], "num_classes": model.num_classes}
        return classifier_config(model)

    @classmethod
    def model_from_config(cls, config: dict) -> SwinTransformer:
        """A SwinTransformer of `config`, with a distillation head when the config says so (timm's model for a
        --model timm:NAME run)."""
        if "timm" in config:
            return timm_classifier(config["timm"], config["num_classes"])
        return classifier_from_config(config)

    def set_ema(self, ema: nn.Module | None) -> None:
        """The loop's EMA of the weights (AveragedModel.module; None without --ema), handed over after build_model:
        the teacher of --teacher ema."""
        c = self.cfg
        if c.teacher == "ema" and ema is not None:
            self.distiller = Distiller(c.distill, Teacher(ema), self.criterion, c.distill_alpha, c.distill_tau)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = (t.to(self.env.device, non_blocking=True) for t in batch)
        if self.mix is not None:
            x, y = self.mix(x, y)  # y: (B, C) soft targets
        if not self.cfg.distill:
            return self.criterion(model(x), y)
        if self.distiller is None:
            raise ValueError("--teacher ema: the training loop did not hand its EMA to the task (expected a call to "
                             "ClassifyTask.set_ema after the EMA is made); distill from a checkpoint --teacher instead")
        return self.distiller(x, model(x), y)  # the teacher sees the mixed images, as in DeiT

    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        m = evaluate(model, loader, self.env.device, self.env.amp_dtype)
        return {"loss": m["loss"], "top1": m["top1"], "top5": m["top5"]}

    def checkpoint_meta(self) -> dict:
        return {"class_names": self.classes, "data": self.data_cfg}

    def summary_extra(self) -> dict:
        skipped = len(self.train_ds.skipped) + (len(self.val_ds.skipped) if self.val_ds.root != self.train_ds.root
                                                else 0)
        return {"skipped_files": skipped}

    def describe_model(self, model: SwinTransformer) -> str:
        if not isinstance(model, SwinTransformer):
            return f"timm {model.pretrained_cfg['architecture']}"
        qat = f" + int8 fake quantization ({count_fake_quantized(model)} Linear layers)" if self.cfg.qat else ""
        return model.cfg.describe() + (" + distillation head" if has_distillation_head(model) else "") + qat

    def describe_data(self, train, val) -> str:
        return f"{len(train)} images / {len(self.classes)} classes, val {len(val)}"

    def describe(self, metrics: dict[str, float]) -> str:
        names = {"top1": "top-1", "top5": "top-5"}
        return "  ".join(f"{names[k]} {v:.2f}%" for k, v in metrics.items() if k in names)

    # ---- eval and predict

    @classmethod
    def load(cls, path: Path, ck: dict | None) -> Loaded:
        """A swinkit checkpoint, or any file `swinkit.load_model` reads (class names then come from
        the checkpoint when it has them, else "0".."C-1")."""
        if ck is not None:
            model = cls.model_from_config(ck["config"])
            model.load_state_dict(ck["model"])
            names, data_cfg = ck.get("class_names"), ck.get("data", {})
        else:
            from ..io.load import load_model

            model = load_model(path)
            names, data_cfg = getattr(model, "class_names", None), {}
        meta = {"class_names": list(names or [str(i) for i in range(model.num_classes)]),
                "data": {**default_data_config(model), **data_cfg}}
        return Loaded(cls, model.eval(), meta, path)

    @classmethod
    def add_eval_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--img-size", type=int, help="evaluation size (default: the checkpoint's)")
        parser.add_argument("--crop-pct", type=float, help="resize to img_size / crop_pct, then centre crop")
        parser.add_argument("--robustness", action="store_true",
                            help="also translation consistency (shifts of 1..--max-shift pixels, cyclic and padded) "
                                 "and accuracy under 6 corruptions x 5 severities (docs/robustness.md)")
        parser.add_argument("--max-shift", type=int, default=4, help="--robustness: the largest shift, in pixels")
        parser.add_argument("--robustness-baseline", type=Path, metavar="EVAL_JSON",
                            help="--robustness: relative mCE against this earlier `swinkit eval --robustness --json` "
                                 "output")

    @classmethod
    def run_eval(cls, loaded: Loaded, args: argparse.Namespace) -> tuple[dict, str]:
        names, data_cfg, device = loaded.meta["class_names"], loaded.meta["data"], torch.device(args.device)
        if args.robustness_baseline and not args.robustness:
            raise ValueError("--robustness-baseline is used by --robustness: add --robustness")
        baseline = read_robustness_baseline(args.robustness_baseline) if args.robustness_baseline else None
        tf = eval_transform(args.img_size or data_cfg["img_size"], args.crop_pct or data_cfg["crop_pct"],
                            data_cfg["mean"], data_cfg["std"])
        folder = eval_folder(Path(args.data))
        ds = ImageFolderDataset(folder, tf, classes=names, classes_from=f"checkpoint {args.checkpoint}")
        loader = DataLoader(ds, args.batch_size, num_workers=args.workers)
        m = evaluate(loaded.model.to(device), loader, device, AMP_DTYPES[args.amp], num_classes=len(names))
        save_confusion_png(m["confusion"], names, args.confusion)
        result = {"top1": m["top1"], "top5": m["top5"], "loss": m["loss"], "num_images": m["num_images"],
                  "num_classes": len(names), "skipped_files": len(ds.skipped), "checkpoint": str(args.checkpoint),
                  "data": str(folder), "confusion_png": str(args.confusion)}
        text = (f"{args.checkpoint} on {folder} ({m['num_images']} images, {len(names)} classes)\n"
                f"top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  loss {m['loss']:.4f}\n"
                f"confusion matrix: {args.confusion}")
        if args.robustness:
            result["robustness"] = robustness(loaded.model, ds, data_cfg, args, baseline)
            result["robustness_baseline"] = str(args.robustness_baseline) if baseline else None
            text += "\n" + format_robustness(result["robustness"])
        return result, text

    @classmethod
    def add_predict_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--topk", type=int, default=5, help="classes to show per image")

    @classmethod
    def run_predict(cls, loaded: Loaded, args: argparse.Namespace) -> int:

        if args.topk < 1:
            raise ValueError(f"--topk must be >= 1, got {args.topk}")
        names, data_cfg, device = loaded.meta["class_names"], loaded.meta["data"], torch.device(args.device)
        model = loaded.model.to(device)
        tf = eval_transform(data_cfg["img_size"], data_cfg["crop_pct"], data_cfg["mean"], data_cfg["std"])
        failed = 0
        for start in range(0, len(args.images), args.batch_size):
            paths, batch = [], []
            for path in args.images[start:start + args.batch_size]:
                try:
                    batch.append(tf(load_image(path)))
                    paths.append(path)
                except (OSError, ValueError) as e:
                    failed += 1
                    print(f"error: cannot read {path}: {e}", file=sys.stderr)
            if not batch:
                continue
            for path, top in zip(paths, predict(model, torch.stack(batch).to(device), names, args.topk)):
                if args.json:
                    print(dumps({"image": path, "predictions": top}))
                else:
                    print(f"{path}: " + ", ".join(f"{t['class']} {100 * t['prob']:.1f}%" for t in top))
        return 1 if failed else 0
