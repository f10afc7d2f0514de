"""Semantic segmentation: class-index mask datasets, joint image + mask transforms, mIoU metrics, whole-image /
sliding-window / multi-scale inference, and colour-palette prediction output.

A dataset folder holds `images/` and `labels/`; a label is a PNG of class indices with the image's stem and size
(`images/0001.jpg` -> `labels/0001.png`). A training root holds such folders as `train/` and `val/` (CamVid in
`../shared/data/camvid`: 11 classes, void = 11). Any model that maps (B, 3, H, W) to (B, classes, H, W) logits
works with everything here.
"""
from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..config import SEG_VARIANTS, UNET_VARIANTS, SegmentationConfig, SwinUNetConfig
from ..data import IMAGENET_MEAN, IMAGENET_STD, load_image
from ..data.segmentation import (LabelSet, SegmentationFolder, collate, colorize, eval_root, eval_transform, is_camvid,
                                 labels_note, median_frequency_weights, overlay, resolve_labels, split_root,
                                 train_transform)
from ..factory import create_segmentation_model
from ..io.files import atomic_write, dumps, plan_outputs
from ..inference.dense import infer
from ..io.images import default_palette
from ..models.segmentation import SegmentationModel
from ..models.unet import SwinUNet
from ..metrics.segmentation import confusion_matrix, segmentation_metrics
from .base import AMP_DTYPES, Loaded, Task, TaskSettings, autocast, setting


# ----------------------------------------------------------------------------------------------------------
# inference


@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, ignore_index: int, device: torch.device,
             amp_dtype: torch.dtype | None = None, **inference) -> dict:
    """{"confusion": (C, C) pixel counts, "loss": cross-entropy of the predicted probabilities per labelled pixel,
    "num_images"} of `model` over `loader` (batches from `collate`), summed over all ranks when distributed.
    `inference` goes to `infer` (window, stride, scales, flip); `amp_dtype` turns autocast on."""
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss, images
    for images, masks in loader:
        pairs = [(images, masks)] if torch.is_tensor(images) else [(i[None], m[None]) for i, m in zip(images, masks)]
        for x, y in pairs:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                probs = infer(model, x, **inference)  # (B, C, H, W)
            confusion += confusion_matrix(probs.argmax(1), y, num_classes, ignore_index)
            nll = F.nll_loss(probs.clamp_min(1e-12).log(), y, ignore_index=ignore_index, reduction="sum")
            sums += torch.stack([nll.double(), torch.tensor(float(len(x)), dtype=torch.float64, device=device)])
    if dist.is_initialized():
        dist.all_reduce(confusion)
        dist.all_reduce(sums)
    pixels = int(confusion.sum())
    return {"confusion": confusion.cpu(), "loss": sums[0].item() / max(pixels, 1), "num_images": int(sums[1])}


# ----------------------------------------------------------------------------------------------------------
# output: the confusion matrix


def save_confusion_png(confusion: torch.Tensor, names: list[str], path: str | Path) -> None:
    """Row-normalised confusion matrix (the fraction of each true class's pixels per predicted class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay


    c = confusion.double()
    rows = (c / c.sum(1, keepdim=True).clamp(min=1)).cpu().numpy()
    C = len(names)
    fig, ax = plt.subplots(figsize=(min(max(6, 3 + 0.5 * C), 30), min(max(5, 2.5 + 0.5 * C), 30)))
    ConfusionMatrixDisplay(rows, display_labels=names if C <= 50 else None).plot(
        ax=ax, include_values=C <= 20, values_format=".2f", xticks_rotation="vertical", colorbar=True, cmap="Blues",
        im_kw={"vmin": 0, "vmax": 1})
    ax.set_title("confusion matrix: each true class's pixels by predicted class", fontsize=10)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------
# the task


@dataclass
class SegmentSettings(TaskSettings):
    """Segmentation settings; the defaults are the Swin paper's UPerNet recipe for a pretrained backbone."""
    data: str | None = setting(None, "folder with train/ and val/, each with images/ and labels/ (class-index PNGs)")
    model: str = setting("upernet_swin_t", "segmentation model: upernet_* / fpn_* / swin_unet_* (`swinkit models`)")
    pretrained: str | None = setting(None, "initialise the backbone from this classification checkpoint (any "
                                           "format load_model reads) or run directory")
    # labels
    num_classes: int | None = setting(None, "classes (default: the class list's, CamVid's 11, or the largest "
                                            "label value + 1)")
    ignore_index: int | None = setting(None, "label value left out of loss and metrics (default: 11 for CamVid, "
                                             "else 255)")
    classes: str | None = setting(None, "class list, one `name` or `name R G B` a line (default: DATA/classes.txt "
                                        "when present)")
    # model overrides (None: the variant's)
    embed_dim: int | None = setting(None, "backbone width")
    depths: list[int] | None = setting(None, "backbone blocks per stage", nargs="+")
    num_heads: list[int] | None = setting(None, "backbone attention heads per stage", nargs="+")
    window_size: list[int] | None = setting(None, "one value, or one per stage", nargs="+")
    patch_size: int | None = setting(None)
    drop_path_rate: float | None = setting(None, "stochastic depth (default: the variant's)")
    head_channels: int | None = setting(None, "decode head width (UPerNet / FPN; default: the variant's)")
    aux_head: bool | None = setting(None, "auxiliary FCN head on stage 3, loss weight 0.4 (UPerNet / FPN; default "
                                          "on)")
    # data and augmentation (0 disables a step)
    crop_size: list[int] = setting([512, 512], "training crop (h w, or one value)", nargs="+")
    scale: list[float] = setting([0.5, 2.0], "random scale range, relative to the image", nargs=2)
    hflip: float = setting(0.5, "horizontal flip probability", valid="0..1")
    class_weight: str = setting("none", "loss weight per class: none, or median-freq (SegNet's median frequency "
                                        "balancing, from the training labels)", choices=["none", "median-freq"])
    jitter: float = setting(0.4, "colour jitter: brightness, contrast and saturation (hue: 1/8 of it)", valid=">= 0")
    val_fraction: float = setting(0.1, "share of a folder without val/ held out for validation", valid="[0, 1)")
    verify_images: bool = setting(True, "decode every image and label once before training and check them")
    # evaluation (also stored for `swinkit eval` / `predict`)
    eval_window: list[int] | None = setting(None, "sliding-window evaluation: window h w (default: whole image)",
                                            nargs="+")
    eval_stride: list[int] | None = setting(None, "sliding-window stride h w (default: 2/3 of the window)", nargs="+")
    eval_scales: list[float] = setting([1.0], "evaluate at these scales and average (e.g. 0.5 0.75 1 1.25 1.5 1.75)",
                                       nargs="+")
    eval_flip: bool = setting(False, "also evaluate the mirrored image and average")


RECIPES: dict[str, dict[str, Any]] = {
    # Swin paper / mmseg upernet_swin_tiny_patch4_window7_512x512_160k_ade20k: AdamW lr 6e-5 for a batch of 16,
    # weight decay 0.01, 1500 warmup iterations, 160k iterations = 127 epochs of ADE20K's 20,210 images, crop 512,
    # no clipping. For an ImageNet-pretrained backbone (--pretrained); mmseg decays the lr linearly, here by cosine.
    "default": dict(epochs=127, warmup_epochs=1.2, batch_size=16, lr=6e-5, lr_base_size=16, warmup_lr=6e-11,
                    min_lr=0.0, weight_decay=0.01, clip_grad=0.0),
    # CamVid's 367 training images (or any small dataset) from scratch on a 2-core CPU in about 20 minutes: UPerNet
    # (64 channels, aux head) on a narrow Swin (C 32, depths 2-2-2-2, window 8), 3.2M params; crops of 256x320 at
    # 0.5-1.5x, batch 8, 12 epochs at ~4 img/s. A 3-epoch run of it reached 17.9% val mIoU (Sky, Building, Road).
    "camvid": dict(model="upernet_swin_t", embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8],
                   window_size=[8], head_channels=64, drop_path_rate=0.1, crop_size=[256, 320],
                   scale=[0.5, 1.5], epochs=12, warmup_epochs=1, batch_size=8, lr=1e-3, lr_base_size=8,
                   warmup_lr=1e-6, min_lr=1e-5, weight_decay=0.05, clip_grad=5.0, class_weight="median-freq"),
}


def _pair_or_none(v: list[int] | None, what: str) -> tuple[int, int] | None:
    if v is None:
        return None
    if len(v) not in (1, 2) or min(v) < 1:
        raise ValueError(f"{what}: expected one or two positive sizes (h w), got {v}")
    return (v[0], v[-1])


def inference_options(window, stride, scales, flip) -> dict:
    """The keyword arguments of `infer`, checked, JSON-able."""
    scales = [float(s) for s in scales or [1.0]]
    if min(scales) <= 0:
        raise ValueError(f"evaluation scales must be positive, got {scales}")
    if stride is not None and window is None:
        raise ValueError("a sliding-window stride needs a window (--eval-window / --window H W)")
    return {"window": _pair_or_none(window, "window"), "stride": _pair_or_none(stride, "stride"), "scales": scales,
            "flip": bool(flip)}


def describe_inference(opts: dict) -> str:
    how = "whole image" if opts["window"] is None else \
        f"sliding {opts['window'][0]}x{opts['window'][1]} windows" + \
        (f", stride {opts['stride'][0]}x{opts['stride'][1]}" if opts["stride"] else "")
    if opts["scales"] != [1.0]:
        how += f", scales {'/'.join(f'{s:g}' for s in opts['scales'])}"
    return how + (", + flip" if opts["flip"] else "")


class SegmentTask(Task):
    """Label every pixel with one of the classes of --data's class-index masks."""

    name = "segment"
    primary_metric = "miou"
    Settings = SegmentSettings
    recipes = RECIPES
    default_recipe = "default"
    plot_metrics = ("miou", "pixel_acc", "mean_acc")
    collate_fn = staticmethod(collate)

    # ---- settings

    @classmethod
    def choose_recipe(cls, given: dict) -> tuple[str, str | None]:
        """camvid for CamVid or any training from scratch (the default recipe needs a pretrained backbone)."""
        if given.get("pretrained"):
            return "default", None
        if given.get("data") and is_camvid(given["data"]):
            return "camvid", None
        return "camvid", ("recipe camvid: training from scratch; the default recipe (the Swin paper's) is built to "
                          "fine-tune an ImageNet-pretrained backbone (--pretrained) and underfits from scratch. "
                          "--recipe default keeps it")

    @classmethod
    def resolve(cls, flat: dict, given: dict) -> dict:
        if not flat.get("data"):
            raise ValueError("--task segment needs --data: a folder with train/ and val/, each with images/ and "
                             "labels/ (class-index PNGs)")
        if flat.get("model") in UNET_VARIANTS:  # a recipe's head settings do not apply to a Swin-UNet
            flat.update({k: None for k in ("head_channels", "aux_head") if k not in given})
        return flat

    # ---- training

    def build_datasets(self):
        c = self.cfg
        names, palette, ignore = resolve_labels(c.data, c.num_classes, c.ignore_index, c.classes)
        n = len(names) if names else c.num_classes
        train_dir, val_dir = split_root(c.data)
        train = SegmentationFolder(train_dir, n, ignore, verify=c.verify_images)
        val = SegmentationFolder(val_dir, n, ignore, verify=c.verify_images) if val_dir else self._hold_out(train)
        n = n or max(train.num_classes, val.num_classes)
        train.num_classes = val.num_classes = n
        self.labels = LabelSet(names or [str(i) for i in range(n)], palette or default_palette(n), ignore)
        self.labels_note = labels_note(c.data, self.labels, c.classes)
        self.data_cfg = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
        self.inference = inference_options(c.eval_window, c.eval_stride, c.eval_scales, c.eval_flip)
        train.transform = train_transform(_pair_or_none(c.crop_size, "--crop-size"), ignore, c.scale, c.hflip,
                                          c.jitter)
        val.transform = eval_transform()
        self.train_ds, self.val_ds = train, val
        self.class_weights = None if c.class_weight == "none" else \
            median_frequency_weights([lab for _, lab in train.samples], n, ignore).to(self.env.device)
        return train, val

    def _hold_out(self, train: SegmentationFolder) -> SegmentationFolder:
        """Move a seeded `val_fraction` of `train`'s samples into a validation copy."""
        if len(train) < 2:
            raise ValueError(f"{train.root} holds {len(train)} image: holding out a validation image needs 2 or "
                             "more (or add a val/ folder)")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.settings.run.seed)).tolist()
        n_val = min(len(train) - 1, max(1, round(self.cfg.val_fraction * len(train))))
        val = copy.copy(train)
        val.samples = [train.samples[i] for i in sorted(order[:n_val])]
        train.samples = [train.samples[i] for i in sorted(order[n_val:])]
        return val

    def build_model(self, config: dict | None = None) -> nn.Module:
        return self.model_from_config(config) if config else self._new_model()

    def _overrides(self) -> dict:
        c = self.cfg
        kw = {k: getattr(c, k) for k in ("embed_dim", "depths", "num_heads", "patch_size", "drop_path_rate")}
        if c.window_size is not None:
            kw["window_size"] = c.window_size[0] if len(c.window_size) == 1 else c.window_size
        return {k: v for k, v in kw.items() if v is not None}

    def _new_model(self) -> nn.Module:
        c, n, kw = self.cfg, self.labels.num_classes, self._overrides()
        if c.model in UNET_VARIANTS:
            extra = [f for f in ("head_channels", "aux_head") if getattr(c, f) is not None]
            if extra:
                raise ValueError(f"{c.model} is a Swin-UNet: it has no {', '.join(extra)}; remove "
                                 f"{['--' + f.replace('_', '-') for f in extra]}")
            if c.pretrained:
                raise ValueError("--pretrained initialises UPerNet / FPN backbones; for a Swin-UNet use an "
                                 "upernet_* / fpn_* model or start from scratch")
            return SwinUNet(SwinUNetConfig.from_name(c.model, num_classes=n, **kw))
        if c.model not in SEG_VARIANTS:
            raise ValueError(f"unknown segmentation model {c.model!r}; choose one of "
                             f"{list(SEG_VARIANTS) + list(UNET_VARIANTS)}")
        head = {"channels": c.head_channels, "aux_head": c.aux_head}
        head = {k: v for k, v in head.items() if v is not None}
        source = Path(c.pretrained) if c.pretrained else None
        if source is not None and (source / "best.pt").is_file():
            source = source / "best.pt"
        return create_segmentation_model(c.model, num_classes=n, backbone_checkpoint=source, **head, **kw)

    def model_config(self, model: nn.Module) -> dict:
        return model.cfg.to_dict()

    @classmethod
    def model_from_config(cls, config: dict) -> nn.Module:
        if SegmentationConfig.is_segmentation_dict(config):
            return SegmentationModel(SegmentationConfig.from_dict(config))
        return SwinUNet(SwinUNetConfig.from_dict(config))

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        """Cross-entropy over the labelled pixels, plus the auxiliary head's (weighted) when the model has one."""
        x, y = (t.to(self.env.device, non_blocking=True) for t in batch)
        inner = getattr(model, "module", model)  # under DDP; only read, never called
        ce = lambda o: F.cross_entropy(o, y, self.class_weights, ignore_index=self.labels.ignore_index)  # noqa: E731
        if getattr(inner, "auxiliary_head", None) is None:
            return ce(model(x))
        out, aux = model(x, with_aux=True)
        ce = [ce(o) for o in (out, aux)]
        return ce[0] + inner.cfg.aux_loss_weight * ce[1]

    def evaluate(self, model: nn.Module, loader) -> dict[str, float]:
        m = evaluate(model, loader, self.labels.num_classes, self.labels.ignore_index, self.env.device,
                     self.env.amp_dtype, **self.inference)
        s = segmentation_metrics(m["confusion"], self.labels.names)
        per_class = {f"iou_{k}": (float("nan") if v is None else v) for k, v in s["per_class_iou"].items()}
        return {"loss": m["loss"], "miou": s["miou"], "pixel_acc": s["pixel_acc"], "mean_acc": s["mean_acc"],
                **per_class}

    def checkpoint_meta(self) -> dict:
        return {"labels": self.labels.to_dict(), "data": self.data_cfg, "inference": self.inference}

    def describe_model(self, model: nn.Module) -> str:
        return describe_segmentation_model(model)

    def describe_data(self, train, val) -> str:
        return (f"{len(train)} images / {self.labels.num_classes} classes (ignore index {self.labels.ignore_index}), "
                f"val {len(val)}")

    def notes(self) -> list[str]:
        return [self.labels_note]

    def describe(self, metrics: dict[str, float]) -> str:
        names = {"miou": "mIoU", "pixel_acc": "pixel acc", "mean_acc": "mean acc"}
        return "  ".join(f"{names[k]} {100 * v:.2f}%" for k, v in metrics.items() if k in names)

    # ---- eval and predict

    @classmethod
    def load(cls, path: Path, ck: dict | None) -> Loaded:
        """A swinkit segmentation checkpoint, or any segmentation file `swinkit.load_model` reads (its classes are
        then "0".."C-1" with the default palette and ignore index 255)."""
        if ck is not None:
            loaded = super().load(path, ck)
        else:
            from ..io.load import load_model

            model = load_model(path)
            if not isinstance(model, (SegmentationModel, SwinUNet)):
                raise ValueError(f"{path} holds a {type(model).__name__}, not a segmentation model: evaluate it "
                                 "with the classification task")
            loaded = Loaded(cls, model.eval(), {}, path)
        n = loaded.model.num_classes
        meta = loaded.meta
        meta.setdefault("labels", LabelSet([str(i) for i in range(n)], default_palette(n)).to_dict())
        meta.setdefault("data", {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)})
        meta.setdefault("inference", inference_options(None, None, [1.0], False))
        return loaded

    @staticmethod
    def _add_inference_arguments(g: argparse.ArgumentParser) -> None:
        """Inference flags; their defaults are what training evaluated with (stored in the checkpoint)."""
        g.add_argument("--window", type=int, nargs="+", metavar="H W", help="sliding-window inference: window size")
        g.add_argument("--stride", type=int, nargs="+", metavar="H W", help="sliding-window stride (default 2/3 of "
                                                                              "the window)")
        g.add_argument("--whole", action="store_true", help="whole-image inference even if training used windows")
        g.add_argument("--scales", type=float, nargs="+", help="multi-scale: average over these scales")
        g.add_argument("--flip", action=argparse.BooleanOptionalAction, help="also average the mirrored image")

    @staticmethod
    def _inference(loaded: Loaded, args: argparse.Namespace) -> dict:
        saved = loaded.meta["inference"]
        window = None if args.whole else args.window or saved["window"]
        stride = None if args.whole else args.stride or (saved["stride"] if not args.window else None)
        return inference_options(window, stride, args.scales or saved["scales"],
                                 saved["flip"] if args.flip is None else args.flip)

    @classmethod
    def add_eval_arguments(cls, parser: argparse.ArgumentParser) -> None:
        cls._add_inference_arguments(parser)

    @classmethod
    def run_eval(cls, loaded: Loaded, args: argparse.Namespace) -> tuple[dict, str]:
        labels, data_cfg = LabelSet.from_dict(loaded.meta["labels"]), loaded.meta["data"]
        device, opts = torch.device(args.device), cls._inference(loaded, args)
        folder = eval_root(args.data)
        ds = SegmentationFolder(folder, labels.num_classes, labels.ignore_index,
                                eval_transform(data_cfg["mean"], data_cfg["std"]))
        loader = DataLoader(ds, args.batch_size, num_workers=args.workers, collate_fn=collate)
        m = evaluate(loaded.model.to(device), loader, labels.num_classes, labels.ignore_index, device,
                     AMP_DTYPES[args.amp], **opts)
        png = args.confusion
        save_confusion_png(m["confusion"], labels.names, png)
        s = segmentation_metrics(m["confusion"], labels.names)
        result = {"miou": s["miou"], "pixel_acc": s["pixel_acc"], "mean_acc": s["mean_acc"],
                  "per_class_iou": s["per_class_iou"], "per_class_acc": s["per_class_acc"], "loss": m["loss"],
                  "num_images": m["num_images"], "num_pixels": s["num_pixels"], "num_classes": labels.num_classes,
                  "ignore_index": labels.ignore_index, "inference": opts, "checkpoint": str(args.checkpoint),
                  "data": str(folder), "confusion_png": str(png)}
        width = max(len(n) for n in labels.names)
        rows = "\n".join(f"  {n:<{width}}  IoU {_pct(s['per_class_iou'][n])}  acc {_pct(s['per_class_acc'][n])}"
                         for n in labels.names)
        text = (f"{args.checkpoint} on {folder} ({m['num_images']} images, {labels.num_classes} classes, "
                f"{describe_inference(opts)})\nmIoU {100 * s['miou']:.2f}%  pixel acc {100 * s['pixel_acc']:.2f}%  "
                f"mean acc {100 * s['mean_acc']:.2f}%  loss {m['loss']:.4f}\n{rows}\nconfusion matrix: {png}")
        return result, text

    @classmethod
    def add_predict_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", type=Path, default=Path("predictions"),
                            help="folder for <name>.png (palette mask) and <name>_overlay.jpg (default predictions/)")
        parser.add_argument("--alpha", type=float, default=0.5, help="overlay: weight of the mask colours")
        cls._add_inference_arguments(parser)

    @classmethod
    def run_predict(cls, loaded: Loaded, args: argparse.Namespace) -> int:
        if not 0 <= args.alpha <= 1:
            raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}")
        labels, data_cfg = LabelSet.from_dict(loaded.meta["labels"]), loaded.meta["data"]
        device, opts = torch.device(args.device), cls._inference(loaded, args)
        model, tf = loaded.model.to(device), eval_transform(data_cfg["mean"], data_cfg["std"])
        plan = plan_outputs(args.images, args.out, ("{stem}.png", "{stem}_overlay.jpg"), args.overwrite)
        args.out.mkdir(parents=True, exist_ok=True)
        failed = 0
        for path, (mask_path, overlay_path) in zip(args.images, plan):
            try:
                img = load_image(path)
            except (OSError, ValueError) as e:
                failed += 1
                print(f"error: cannot read {path}: {e}", file=sys.stderr)
                continue
            x = tf(tv_tensors.Image(v2.functional.pil_to_tensor(img)))
            with autocast(device, AMP_DTYPES[getattr(args, "amp", "none")]):
                mask = infer(model, x[None].to(device), **opts)[0].argmax(0).cpu()  # (H, W)
            atomic_write(mask_path, lambda p: colorize(mask, labels.palette).save(p, format="PNG"))
            atomic_write(overlay_path, lambda p: overlay(img, mask, labels.palette, args.alpha, labels.names).save(
                p, format="JPEG", quality=95))
            share = torch.bincount(mask.flatten(), minlength=labels.num_classes).double() / mask.numel()
            present = {labels.names[i]: share[i].item() for i in share.argsort(descending=True).tolist() if share[i]}
            if args.json:
                print(dumps({"image": str(path), "mask": str(mask_path), "overlay": str(overlay_path),
                                  "size": list(mask.shape), "class_fractions": present}))
            else:
                top = ", ".join(f"{k} {100 * v:.1f}%" for k, v in list(present.items())[:5])
                print(f"{path}: {top} -> {mask_path}, {overlay_path}")
        return 1 if failed else 0


def _pct(v: float | None) -> str:
    return "   -  " if v is None else f"{100 * v:6.2f}%"


def describe_segmentation_model(model: nn.Module) -> str:
    """What a segmentation model is: its variant name while the architecture is the variant's, else its parts
    ("UPerNet (64 ch, aux head) on custom Swin V1: patch 4, window 8, C 32, ...")."""
    cfg = model.cfg
    if isinstance(model, SwinUNet):
        ref = SwinUNetConfig.from_name(cfg.name) if cfg.name in UNET_VARIANTS else None
        if ref is not None and cfg.describe(with_size=False) == ref.describe(with_size=False) and cfg.depths_decoder == ref.depths_decoder:
            return cfg.name
        return f"Swin-UNet (decoder depths {'-'.join(map(str, cfg.depths_decoder))}) on " + \
            cfg.encoder_config().describe(with_size=False)
    head_fields = ("head", "channels", "pool_scales", "fpn_channels", "aux_head", "aux_in_index", "aux_channels",
                   "aux_num_convs")
    if cfg.name in SEG_VARIANTS:
        ref = SegmentationConfig.from_name(cfg.name)
        if all(getattr(cfg, f) == getattr(ref, f) for f in head_fields) and \
                cfg.backbone.describe(with_size=False) == ref.backbone.describe(with_size=False):
            return cfg.name
    head = {"upernet": "UPerNet", "fpn": "semantic FPN"}[cfg.head]
    return f"{head} ({cfg.channels} ch{', aux head' if cfg.aux_head else ''}) on {cfg.backbone.describe(with_size=False)}"
