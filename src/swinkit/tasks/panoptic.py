"""Panoptic and semantic segmentation with Mask2Former (transformers' Mask2FormerForUniversalSegmentation, its
losses and its post-processing) on a swinkit Swin (models/panoptic.py).

Data: a COCO panoptic folder (swinkit.data.panoptic: annotations/panoptic_{split}.json, the PNGs, the images; COCO128
converts to it with `swinkit data coco128-panoptic`), or with --semantic a folder of class-index label maps in the
segment task's layout (train/ and val/, each with images/ and labels/; CamVid's). Every segment of an image is one
mask target (crowd segments are left out); a semantic map gives one mask per class present. Metrics: PQ / SQ / RQ
over all classes, things and stuff (torchmetrics' PanopticQuality, swinkit.metrics.panoptic), or mIoU with
--semantic. Prediction writes a COCO panoptic PNG whose colours are its segment ids (one colour per segment), an
overlay and a JSON of the segments; with --semantic, a palette mask and an overlay as the segment task does.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..config import PANOPTIC_VARIANTS, PanopticConfig
from ..data import IMAGENET_MEAN, IMAGENET_STD, load_image
from ..data.panoptic import PanopticDataset, find_splits, panoptic_map, rgb2id, semantic_targets
from ..data.segmentation import (SegmentationFolder, colorize, eval_root, eval_transform, overlay, resolve_labels,
                                 split_root, train_transform)
from ..factory import create_panoptic_model
from ..io.files import atomic_write, dumps, plan_outputs
from ..io.images import default_palette, draw_legend
from ..metrics.panoptic import VOID, PanopticMeter
from ..metrics.segmentation import confusion_matrix, segmentation_metrics
from ..models.panoptic import PanopticModel, post_process_panoptic
from .base import AMP_DTYPES, Loaded, Task, TaskSettings, autocast, setting

COCO_THINGS = 80  # COCO panoptic's 133 classes: 80 things, then 53 stuff (transformers' id2label order)


# ----------------------------------------------------------------------------------------------------------
# data: images with one mask per segment


def _split(root: Path, which: str, given: str | None) -> str:
    """The panoptic split to read: `given`, else the one whose name says `which` ("train" / "val")."""
    splits = find_splits(root)
    if given:
        if given not in splits:
            raise ValueError(f"--{which}-split {given!r}: {root}/annotations has no panoptic_{given}.json; splits "
                             f"there: {splits}")
        return given
    match = [s for s in splits if s.startswith(which)]
    if not match:
        raise ValueError(f"{root}: no {which} split (annotations/panoptic_{which}*.json); splits there: {splits}. "
                         f"Name one with --{which}-split, or pass --semantic for a folder of label maps")
    return match[0]


class MaskTargets(Dataset):
    """(image, {"masks": (N, H, W) bool, "labels": (N,) int64}) from a PanopticDataset (crowd segments dropped) or a
    SegmentationFolder (one mask per class present); `transform` (transforms v2) sees the image with its uint8
    masks or its label map, and masks emptied by a crop are dropped. The val side keeps "panoptic": the (H, W, 2)
    (category, instance) map the metric compares, crowd pixels void. `repeat`: the base's items this many times
    over (mmdetection's RepeatDataset)."""

    def __init__(self, base: Dataset, transform, ignore_index: int | None = None, repeat: int = 1):
        self.base, self.transform, self.ignore_index, self.repeat = base, transform, ignore_index, repeat

    def __len__(self) -> int:
        return len(self.base) * self.repeat

    def __getitem__(self, index: int):
        index %= len(self.base)
        if isinstance(self.base, SegmentationFolder):
            img, label = self.transform(*self.base.load(index))
            masks, labels = semantic_targets(label.as_subclass(torch.Tensor), self.ignore_index)
            return img, {"masks": masks, "labels": labels, "semantic": label.as_subclass(torch.Tensor)}
        img, t = self.base.load(index)
        t["masks"] = tv_tensors.Mask(t["masks"].to(torch.uint8))
        img, t = self.transform(img, t)
        masks = t["masks"].as_subclass(torch.Tensor).bool()
        keep = ~t["iscrowd"] & masks.flatten(1).any(1)
        target = {"masks": masks[keep], "labels": t["labels"][keep]}
        crowd = masks[t["iscrowd"]].any(0) if t["iscrowd"].any() else None
        pan = panoptic_map(masks[keep], t["labels"][keep], VOID)  # (H, W, 2)
        if crowd is not None:
            pan[crowd] = torch.tensor([VOID, 0])
        return img, {**target, "panoptic": pan}


def collate(batch: list) -> tuple:
    """Images stacked (B, 3, H, W) when they share a size, else a list; targets a list."""
    images, targets = zip(*batch)
    images = [i.as_subclass(torch.Tensor) for i in images]
    same = len({tuple(i.shape) for i in images}) == 1
    return (torch.stack(images) if same else images), list(targets)


# ----------------------------------------------------------------------------------------------------------
# inference: padded batches, the official post-processing


SIZE_DIVISOR, MIN_SIZE = 32, 64


def pad_batch(images: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Normalised (3, h, w) images -> one (B, 3, H, W) batch, each image at the top left and zero-padded (the mean
    colour) to a common size that is a multiple of 32 and at least 64 (the official Mask2Former's size
    divisibility; its pixel decoder normalises the stride-32 map in groups that need more than one pixel), and each
    image's (h, w)."""
    sizes = [tuple(i.shape[-2:]) for i in images]
    hw = [max(MIN_SIZE, -(-max(s[k] for s in sizes) // SIZE_DIVISOR) * SIZE_DIVISOR) for k in (0, 1)]
    batch = images[0].new_zeros(len(images), images[0].shape[0], *hw)
    for b, (img, (h, w)) in enumerate(zip(images, sizes)):
        batch[b, :, :h, :w] = img
    return batch, sizes


def predict_panoptic(model: nn.Module, batch: torch.Tensor, sizes: list[tuple[int, int]], stuff: set[int],
                     opts: dict, outputs=None) -> list[dict]:
    """A padded batch (pad_batch) -> per image {"segmentation": (h, w) segment ids (0 = void), "segments": [{"id",
    "label", "score"}]} by Mask2Former's panoptic inference (models.panoptic.post_process_panoptic: queries above
    `threshold`, mask pixels above `mask_threshold`, segments keeping `overlap` of their area; `stuff` fused)."""
    outputs = outputs if outputs is not None else model(pixel_values=batch)
    res = post_process_panoptic(outputs, tuple(batch.shape[-2:]), image_sizes=sizes, threshold=opts["threshold"],
                                mask_threshold=opts["mask_threshold"], overlap=opts["overlap"], label_ids_to_fuse=stuff)
    out = []
    for r in res:
        seg = r["segmentation"].long().cpu()  # (h, w); -1 everywhere when no query is kept
        segments = [{"id": int(s["id"]), "label": int(s["label_id"]), "score": float(s["score"])}
                    for s in r["segments_info"] if int(s["id"]) > 0]
        out.append({"segmentation": seg.clamp(min=0), "segments": segments})
    return out


def predicted_map(pred: dict) -> torch.Tensor:
    """predict_panoptic's result -> the (H, W, 2) (category, instance) map PanopticMeter compares."""
    seg = pred["segmentation"]
    cats = torch.full_like(seg, VOID)
    for s in pred["segments"]:
        cats[seg == s["id"]] = s["label"]
    return torch.stack([cats, torch.where(cats == VOID, 0, seg)], -1)


def predict_semantic(model: nn.Module, batch: torch.Tensor, sizes: list[tuple[int, int]],
                     outputs=None) -> list[torch.Tensor]:
    """A padded batch -> per image (h, w) class indices by Mask2Former's semantic inference: per pixel, the class of
    the largest sum over queries of class probability x mask probability."""
    outputs = outputs if outputs is not None else model(pixel_values=batch)
    masks = F.interpolate(outputs.masks_queries_logits, size=batch.shape[-2:], mode="bilinear",
                          align_corners=False)  # (B, Q, H, W)
    probs = outputs.class_queries_logits.softmax(-1)[..., :-1]  # (B, Q, C): "no object" left out
    scores = torch.einsum("bqc,bqhw->bchw", probs, masks.sigmoid())  # (B, C, H, W)
    return [sc[:, :h, :w].argmax(0).cpu() for sc, (h, w) in zip(scores, sizes)]


@torch.no_grad()
def evaluate(model: nn.Module, loader, labels: dict, semantic: bool, device: torch.device, opts: dict,
             amp_dtype: torch.dtype | None = None) -> dict:
    """Mask2Former's loss, and PQ / SQ / RQ (all, things, stuff) or, with `semantic`, the confusion matrix of `model`
    over `loader` (batches from `collate`), summed over ranks when distributed."""
    model.eval()
    n, things = len(labels["names"]), {i for i, t in enumerate(labels["is_thing"]) if t}
    meter = None if semantic else PanopticMeter(things, set(range(n)) - things)
    confusion = torch.zeros(n, n, dtype=torch.long)
    sums = torch.zeros(2, dtype=torch.float64)  # loss x images, images
    for images, targets in loader:
        batch, sizes = pad_batch(list(images))
        masks = [F.pad(t["masks"].float(), (0, batch.shape[-1] - w, 0, batch.shape[-2] - h))
                 for t, (h, w) in zip(targets, sizes)]  # (n_i, H, W): padding in no mask
        with autocast(device, amp_dtype):
            out = model(pixel_values=batch.to(device), mask_labels=[m.to(device) for m in masks],
                        class_labels=[t["labels"].to(device) for t in targets])
        sums += torch.tensor([float(out.loss) * len(sizes), len(sizes)], dtype=torch.float64)
        out.class_queries_logits, out.masks_queries_logits = (out.class_queries_logits.float(),
                                                              out.masks_queries_logits.float())
        if semantic:
            for pred, t in zip(predict_semantic(model, batch, sizes, out), targets):
                confusion += confusion_matrix(pred, t["semantic"], n, labels["ignore_index"])
        else:
            for pred, t in zip(predict_panoptic(model, batch, sizes, set(range(n)) - things, opts, out), targets):
                meter.update(predicted_map(pred), t["panoptic"])
    if dist.is_initialized():
        dist.all_reduce(sums)
        dist.all_reduce(confusion)
    result = {"loss": sums[0].item() / max(sums[1].item(), 1), "num_images": int(sums[1])}
    if semantic:
        return {**result, "confusion": confusion}
    return {**result, **meter.compute()}  # (PQ under DDP: each rank's own images; swinkit eval runs on one)


# ----------------------------------------------------------------------------------------------------------
# output: segment colours, PNG, overlay, JSON


def segment_colours(segments: list[dict], palette: list[tuple[int, int, int]]) -> dict:
    """Segment id -> a distinct RGB colour: its class's palette colour, shifted for each further instance of a thing
    class (as COCO's panopticapi does), never black (void) and never another segment's."""
    used, out = {(0, 0, 0)}, {}
    rng = np.random.default_rng(0)
    for s in segments:
        colour = tuple(palette[s["label"]])
        while colour in used:
            colour = tuple(int(v) for v in np.clip(np.array(colour) + rng.integers(-30, 31, 3), 0, 255))
        used.add(colour)
        out[s["id"]] = colour
    return out


def write_panoptic(pred: dict, img: Image.Image, names: list[str], is_thing: list[bool], palette: list,
                   png: Path, overlay_path: Path, alpha: float) -> list[dict]:
    """The COCO panoptic PNG (each segment's colour is its id: id = R + 256 G + 256^2 B), the overlay with a legend,
    and the segments as COCO's segments_info (with names and scores)."""
    colours = segment_colours(pred["segments"], palette)
    seg = pred["segmentation"].numpy()
    rgb = np.zeros((*seg.shape, 3), dtype=np.uint8)
    info, shown = [], []
    for s in pred["segments"]:
        m = seg == s["id"]
        if not m.any():
            continue
        colour = colours[s["id"]]
        rgb[m] = colour
        ys, xs = np.nonzero(m)
        info.append({"id": int(rgb2id(np.array(colour))), "category_id": s["label"], "category": names[s["label"]],
                     "isthing": is_thing[s["label"]], "score": round(s["score"], 4), "area": int(m.sum()),
                     "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                              int(ys.max() - ys.min() + 1)]})
        shown.append((f"{names[s['label']]} {s['score']:.2f}", colour))
    atomic_write(png, lambda p: Image.fromarray(rgb).save(p, format="PNG"))
    blended = Image.blend(img.convert("RGB"), Image.fromarray(rgb), alpha)
    blended.paste(img.convert("RGB"), mask=Image.fromarray((seg == 0).astype(np.uint8) * 255))  # void unchanged
    atomic_write(overlay_path, lambda p: draw_legend(blended, shown[:40]).save(p, format="JPEG", quality=95))
    return info


# ----------------------------------------------------------------------------------------------------------
# the task


@dataclass
class PanopticSettings(TaskSettings):
    """Mask2Former settings; the defaults are the Mask2Former paper's COCO panoptic recipe."""
    data: str | None = setting(None, "COCO panoptic folder (annotations/panoptic_{split}.json, its PNG folder, the "
                                     "images in {split}/); with --semantic a folder with train/ and val/, each with "
                                     "images/ and labels/ (class-index PNGs)")
    model: str = setting("mask2former_swin_t", "Mask2Former variant (`swinkit models`)")
    pretrained: str | None = setting(None, "initialise the backbone from this checkpoint (any format load_model "
                                           "reads) or run directory")
    semantic: bool = setting(False, "semantic segmentation from class-index label maps (reports mIoU)")
    train_split: str | None = setting(None, "panoptic split to train on (default: the one named train*)")
    val_split: str | None = setting(None, "panoptic split to validate on (default: the one named val*)")
    # --semantic labels
    num_classes: int | None = setting(None, "--semantic: classes (default: the class list's, CamVid's 11, or the "
                                            "largest label value + 1)")
    ignore_index: int | None = setting(None, "--semantic: label value left out (default: 11 for CamVid, else 255)")
    classes: str | None = setting(None, "--semantic: class list, one `name` or `name R G B` a line")
    # model overrides (None: the variant's)
    embed_dim: int | None = setting(None, "backbone width")
    depths: list[int] | None = setting(None, "backbone blocks per stage", nargs="+")
    num_heads: list[int] | None = setting(None, "backbone attention heads per stage", nargs="+")
    window_size: list[int] | None = setting(None, "one value, or one per stage", nargs="+")
    drop_path_rate: float | None = setting(None, "stochastic depth (default: the variant's)")
    hidden_dim: int | None = setting(None, "Mask2Former width: pixel decoder, mask features and transformer decoder "
                                           "(a multiple of 32)")
    dim_feedforward: int | None = setting(None, "MLP width of the pixel decoder's and the transformer decoder's "
                                                "layers")
    num_queries: int | None = setting(None, "object queries")
    encoder_layers: int | None = setting(None, "pixel decoder (deformable attention) layers")
    decoder_layers: int | None = setting(None, "transformer decoder layers")
    train_num_points: int | None = setting(None, "points sampled per mask for the mask losses")
    # data and augmentation (0 disables a step)
    crop_size: list[int] = setting([1024, 1024], "training crop (h w, or one value)", nargs="+")
    scale: list[float] = setting([0.1, 2.0], "random scale range, relative to the image", nargs=2)
    hflip: float = setting(0.5, "horizontal flip probability", valid="0..1")
    jitter: float = setting(0.0, "colour jitter: brightness, contrast and saturation (hue: 1/8 of it)", valid=">= 0")
    repeat: int = setting(1, "pass over the training images this many times per epoch (fewer, longer epochs: "
                             "validation runs once an epoch)", valid=">= 1")
    val_images: int | None = setting(None, "validate each epoch on the first N val images (PQ costs about a second "
                                           "per image on a CPU); `swinkit eval` always takes them all", valid=">= 1")
    # inference (also stored for `swinkit eval` / `predict`)
    threshold: float = setting(0.8, "panoptic: keep queries whose class score exceeds this", valid="0..1")
    mask_threshold: float = setting(0.5, "panoptic: mask probability threshold", valid="0..1")
    overlap: float = setting(0.8, "panoptic: drop segments keeping less of their mask than this", valid="0..1")


RECIPES: dict[str, dict[str, Any]] = {
    # Mask2Former paper / facebookresearch/Mask2Former maskformer2_swin_tiny_bs16_50ep (COCO panoptic): AdamW lr 1e-4
    # for a batch of 16, weight decay 0.05, backbone lr x0.1, 368,750 iterations = 50 epochs of COCO's 118K images,
    # large-scale jitter (scale 0.1-2.0, crop 1024), full-model gradient clipping at 0.01. For an ImageNet-pretrained
    # backbone (--pretrained).
    "default": dict(epochs=50, warmup_epochs=0.0, batch_size=16, lr=1e-4, lr_base_size=16, weight_decay=0.05,
                    backbone_lr_scale=0.1, clip_grad=0.01, min_lr=0.0, crop_size=[1024, 1024], scale=[0.1, 2.0]),
    # From scratch on a 2-core CPU in 20 minutes of training: a narrow Swin (C 32, depths 2-2-2-2, window 8) under a
    # small Mask2Former (64 wide, 2 pixel-decoder and 3 decoder layers, 30 queries, 3,136 points per mask), crops of
    # 256x256 at 0.5-1.5x, batch 4, COCO128's 100 images ten times an epoch, validation on 20 images. Measured
    # (AMD EPYC Zen 3, 2 threads, 5.7 img/s): `swinkit train --task panoptic --data coco128_panoptic --recipe cpu`
    # trains 20.2 minutes and reaches PQ 0.0 at the official threshold 0.8 (0.2% at --threshold 0.25): the losses
    # fall (45 -> 36), but 7,000 crops teach Mask2Former no confident segment. With --semantic on CamVid, give
    # --repeat 1 --epochs 17 (benchmarks/panoptic_budget.py).
    "cpu": dict(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=[8], drop_path_rate=0.1,
                hidden_dim=64, dim_feedforward=256, num_queries=30, encoder_layers=2, decoder_layers=3,
                train_num_points=3136, crop_size=[256, 256], scale=[0.5, 1.5], jitter=0.2, repeat=10, val_images=20,
                epochs=7, warmup_epochs=1, batch_size=4, lr=3e-4, lr_base_size=4, warmup_lr=1e-6, min_lr=1e-5,
                weight_decay=0.05, clip_grad=1.0),
}


def _pair(v: list[int]) -> tuple[int, int]:
    if len(v) not in (1, 2) or min(v) < 1:
        raise ValueError(f"--crop-size: expected one or two positive sizes (h w), got {v}")
    return (v[0], v[-1])


class PanopticTask(Task):
    """Segment every pixel into things (instances) and stuff with Mask2Former, or classes with --semantic."""

    name = "panoptic"
    primary_metric = "pq"
    Settings = PanopticSettings
    recipes = RECIPES
    default_recipe = "default"
    plot_metrics = ("pq", "pq_th", "pq_st")
    collate_fn = staticmethod(collate)

    def __init__(self, settings, env):
        super().__init__(settings, env)
        if self.cfg.semantic:  # the loop reads these from the instance
            self.primary_metric, self.plot_metrics = "miou", ("miou", "pixel_acc", "mean_acc")

    @classmethod
    def choose_recipe(cls, given: dict) -> tuple[str, str | None]:
        if given.get("pretrained"):
            return "default", None
        return "cpu", ("recipe cpu: training from scratch; the default recipe (the Mask2Former paper's) fine-tunes an "
                       "ImageNet-pretrained backbone (--pretrained) for 50 epochs of COCO. --recipe default keeps it")

    @classmethod
    def resolve(cls, flat: dict, given: dict) -> dict:
        if not flat.get("data"):
            raise ValueError("--task panoptic needs --data: a COCO panoptic folder (annotations/panoptic_{split}.json; "
                             "`swinkit data coco128-panoptic` makes one from COCO128), or with --semantic a folder "
                             "with train/ and val/, each with images/ and labels/")
        if min(flat.get("crop_size") or [64]) < 64:
            raise ValueError(f"--crop-size {' '.join(map(str, flat['crop_size']))}: Mask2Former needs crops of at least "
                             "64 px (its pixel decoder normalises the stride-32 map in groups that need more than one "
                             "value each)")
        if flat.get("model") not in PANOPTIC_VARIANTS:
            raise ValueError(f"unknown Mask2Former model {flat.get('model')!r}; choose one of "
                             f"{list(PANOPTIC_VARIANTS)}")
        return flat

    # ---- training

    def build_datasets(self):
        c, root = self.cfg, Path(self.cfg.data)
        crop = _pair(c.crop_size)
        if c.semantic:
            names, palette, ignore = resolve_labels(root, c.num_classes, c.ignore_index, c.classes)
            n = len(names) if names else c.num_classes
            train_dir, val_dir = split_root(root)
            if val_dir is None:
                raise ValueError(f"--semantic: {root} has no val/ folder: expected train/ and val/, each with images/ "
                                 "and labels/")
            train_base, val_base = (SegmentationFolder(d, n, ignore) for d in (train_dir, val_dir))
            n = n or max(train_base.num_classes, val_base.num_classes)
            train_base.num_classes = val_base.num_classes = n
            names = names or [str(i) for i in range(n)]
            self.labels = {"names": names, "is_thing": [False] * n, "palette": palette or default_palette(n),
                           "ignore_index": ignore}
            train_tf = train_transform(crop, ignore, c.scale, c.hflip, c.jitter)
        else:
            train_base = PanopticDataset(root, _split(root, "train", c.train_split))
            val_base = PanopticDataset(root, _split(root, "val", c.val_split))
            if [x["id"] for x in train_base.categories] != [x["id"] for x in val_base.categories]:
                raise ValueError(f"{root}: the train and val splits list different categories; expected the same "
                                 "'categories' in both JSON files")
            n, ignore = len(train_base.class_names), 0
            self.labels = {"names": train_base.class_names, "is_thing": train_base.is_thing,
                           "category_ids": train_base.category_ids, "palette": default_palette(n),
                           "ignore_index": None}
            train_tf = train_transform(crop, 0, c.scale, c.hflip, c.jitter)  # masks: crops padded with 0
        if c.val_images is not None:  # both datasets list their files in .samples
            val_base.samples = val_base.samples[:c.val_images]
        train = MaskTargets(train_base, train_tf, ignore, c.repeat)
        val = MaskTargets(val_base, eval_transform(), ignore)
        self.data_cfg = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
        self.inference = {"threshold": c.threshold, "mask_threshold": c.mask_threshold, "overlap": c.overlap}
        return train, val

    def build_model(self, config: dict | None = None) -> nn.Module:
        if config:
            return self.model_from_config(config)
        c = self.cfg
        kw = {k: getattr(c, k) for k in ("embed_dim", "depths", "num_heads", "drop_path_rate", "num_queries",
                                         "encoder_layers", "decoder_layers", "train_num_points")}
        if c.hidden_dim is not None:
            kw.update(hidden_dim=c.hidden_dim, feature_size=c.hidden_dim, mask_feature_size=c.hidden_dim)
        if c.dim_feedforward is not None:
            kw.update(dim_feedforward=c.dim_feedforward, encoder_feedforward_dim=c.dim_feedforward)
        if c.window_size is not None:
            kw["window_size"] = c.window_size[0] if len(c.window_size) == 1 else c.window_size
        source = Path(c.pretrained) if c.pretrained else None
        if source is not None and (source / "best.pt").is_file():
            source = source / "best.pt"
        things = tuple(i for i, t in enumerate(self.labels["is_thing"]) if t)
        model = create_panoptic_model(c.model, num_classes=len(self.labels["names"]), thing_classes=things,
                                      backbone_checkpoint=source, **{k: v for k, v in kw.items() if v is not None})
        model.class_names = list(self.labels["names"])
        return model

    def model_config(self, model: nn.Module) -> dict:
        return model.cfg.to_dict()

    @classmethod
    def model_from_config(cls, config: dict) -> nn.Module:
        return PanopticModel(PanopticConfig.from_dict(config))

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        """Mask2Former's Hungarian-matched class, mask (sigmoid CE) and dice losses, with its auxiliary losses."""
        images, targets = batch
        if isinstance(images, list):
            raise ValueError("training images of different sizes in one batch: set --crop-size")
        d = self.env.device
        out = model(pixel_values=images.to(d, non_blocking=True),
                    mask_labels=[t["masks"].to(d, torch.float32) for t in targets],
                    class_labels=[t["labels"].to(d) for t in targets])
        return out.loss

    def evaluate(self, model: nn.Module, loader) -> dict[str, float]:
        m = evaluate(model, loader, self.labels, self.cfg.semantic, self.env.device, self.inference,
                     self.env.amp_dtype)
        if not self.cfg.semantic:
            return {k: v for k, v in m.items() if k != "num_images"}
        s = segmentation_metrics(m["confusion"], self.labels["names"])
        per_class = {f"iou_{k}": (float("nan") if v is None else v) for k, v in s["per_class_iou"].items()}
        return {"loss": m["loss"], "miou": s["miou"], "pixel_acc": s["pixel_acc"], "mean_acc": s["mean_acc"],
                **per_class}

    def checkpoint_meta(self) -> dict:
        return {"labels": self.labels, "semantic": self.cfg.semantic, "data": self.data_cfg,
                "inference": self.inference}

    def describe_model(self, model: nn.Module) -> str:
        return describe_panoptic_model(model.cfg)

    def describe_data(self, train, val) -> str:
        what = "label maps" if self.cfg.semantic else "panoptic images"
        things, times = sum(self.labels["is_thing"]), f" x {train.repeat}" if train.repeat > 1 else ""
        return (f"{len(train.base)}{times} {what} / {len(self.labels['names'])} classes ({things} things), val "
                f"{len(val)}")

    def describe(self, metrics: dict[str, float]) -> str:
        if self.cfg.semantic:
            names = {"miou": "mIoU", "pixel_acc": "pixel acc", "mean_acc": "mean acc"}
        else:
            names = {"pq": "PQ", "sq": "SQ", "rq": "RQ", "pq_th": "PQ things", "pq_st": "PQ stuff"}
        return "  ".join(f"{names[k]} {100 * v:.2f}%" for k, v in metrics.items() if k in names)

    # ---- eval and predict

    @classmethod
    def load(cls, path: Path, ck: dict | None) -> Loaded:
        """A swinkit Mask2Former run, or a transformers Mask2Former directory: its thing classes, or for 133 classes
        COCO panoptic's (80 things then 53 stuff, `facebook/mask2former-swin-*`); other class lists count as
        things."""
        if ck is not None:
            return super().load(path, ck)
        from ..io.load import load_model

        model = load_model(path)
        if not isinstance(model, PanopticModel):
            raise ValueError(f"{path} holds a {type(model).__name__}, not a Mask2Former model")
        n = model.cfg.num_classes
        names = list(getattr(model, "class_names", None) or [str(i) for i in range(n)])
        things = model.cfg.thing_classes
        is_thing = [i in things if things is not None else (n != 133 or i < COCO_THINGS) for i in range(n)]
        meta = {"labels": {"names": names, "is_thing": is_thing, "palette": default_palette(n), "ignore_index": None},
                "semantic": False, "data": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
                "inference": {"threshold": 0.8, "mask_threshold": 0.5, "overlap": 0.8}}
        return Loaded(cls, model.eval(), meta, path)

    @staticmethod
    def _add_inference_arguments(g) -> None:
        g.add_argument("--threshold", type=float, help="panoptic: class score threshold (default: the run's)")
        g.add_argument("--mask-threshold", type=float, help="panoptic: mask probability threshold")
        g.add_argument("--overlap", type=float, help="panoptic: minimum kept share of a segment's mask")

    @staticmethod
    def _inference(loaded: Loaded, args) -> dict:
        opts = dict(loaded.meta["inference"])
        for k in opts:
            if getattr(args, k, None) is not None:
                opts[k] = getattr(args, k)
        bad = [k for k, v in opts.items() if not 0 <= v <= 1]
        if bad:
            raise ValueError(f"--{bad[0].replace('_', '-')} must be in [0, 1], got {opts[bad[0]]}")
        return opts

    @classmethod
    def add_eval_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--split", help="panoptic split to evaluate (default: the one named val*)")
        cls._add_inference_arguments(parser)

    @classmethod
    def run_eval(cls, loaded: Loaded, args: argparse.Namespace) -> tuple[dict, str]:
        meta, labels = loaded.meta, loaded.meta["labels"]
        device, opts, root = torch.device(args.device), cls._inference(loaded, args), Path(args.data)
        tf = eval_transform(meta["data"]["mean"], meta["data"]["std"])
        if meta["semantic"]:
            folder = eval_root(root)
            ds = MaskTargets(SegmentationFolder(folder, len(labels["names"]), labels["ignore_index"]), tf,
                             labels["ignore_index"])
        else:
            split = _split(root, "val", args.split)
            base = PanopticDataset(root, split)
            if len(base.class_names) != len(labels["names"]):
                raise ValueError(f"{root} ({split}) has {len(base.class_names)} categories, the model "
                                 f"{len(labels['names'])}: evaluate on data with the model's classes")
            folder, ds = root / split, MaskTargets(base, tf)
        loader = DataLoader(ds, args.batch_size, num_workers=args.workers, collate_fn=collate)
        m = evaluate(loaded.model.to(device), loader, labels, meta["semantic"], device, opts, AMP_DTYPES[args.amp])
        head = f"{args.checkpoint} on {folder} ({m['num_images']} images, {len(labels['names'])} classes)"
        if meta["semantic"]:
            s = segmentation_metrics(m["confusion"], labels["names"])
            result = {"miou": s["miou"], "pixel_acc": s["pixel_acc"], "mean_acc": s["mean_acc"],
                      "per_class_iou": s["per_class_iou"], "loss": m["loss"], "num_images": m["num_images"]}
            rows = "\n".join(f"  {k:<16} IoU {'  -  ' if v is None else f'{100 * v:6.2f}%'}"
                             for k, v in s["per_class_iou"].items())
            return result, f"{head}\nmIoU {100 * s['miou']:.2f}%  pixel acc {100 * s['pixel_acc']:.2f}%\n{rows}"
        result = {k: m[k] for k in ("pq", "sq", "rq", "pq_th", "sq_th", "rq_th", "pq_st", "sq_st", "rq_st", "loss",
                                    "num_images")}
        result.update(inference=opts, checkpoint=str(args.checkpoint), data=str(folder))
        rows = "\n".join(f"  {name:<7} PQ {_pct(m['pq' + s])}  SQ {_pct(m['sq' + s])}  RQ {_pct(m['rq' + s])}"
                         for name, s in (("all", ""), ("things", "_th"), ("stuff", "_st")))
        return result, f"{head}\n{rows}\nloss {m['loss']:.4f}"

    @classmethod
    def add_predict_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", type=Path, default=Path("predictions"),
                            help="folder for <name>.png (COCO panoptic PNG, or a palette mask with --semantic "
                                 "models), <name>_overlay.jpg and <name>.json (default predictions/)")
        parser.add_argument("--alpha", type=float, default=0.5, help="overlay: weight of the segment colours")
        cls._add_inference_arguments(parser)

    @classmethod
    def run_predict(cls, loaded: Loaded, args: argparse.Namespace) -> int:
        if not 0 <= args.alpha <= 1:
            raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}")
        meta, labels = loaded.meta, loaded.meta["labels"]
        device, opts = torch.device(args.device), cls._inference(loaded, args)
        model, tf = loaded.model.to(device), eval_transform(meta["data"]["mean"], meta["data"]["std"])
        names, palette = labels["names"], [tuple(c) for c in labels["palette"]]
        stuff = {i for i, t in enumerate(labels["is_thing"]) if not t}
        plan = plan_outputs(args.images, args.out, ("{stem}.png", "{stem}_overlay.jpg", "{stem}.json"),
                            args.overwrite)
        args.out.mkdir(parents=True, exist_ok=True)
        failed = 0
        for path, (png, overlay_path, json_path) in zip(args.images, plan):
            try:
                img = load_image(path)
            except (OSError, ValueError) as e:
                failed += 1
                print(f"error: cannot read {path}: {e}", file=sys.stderr)
                continue
            batch, sizes = pad_batch([tf(tv_tensors.Image(v2.functional.pil_to_tensor(img)))])  # (1, 3, H, W)
            with torch.no_grad(), autocast(device, AMP_DTYPES[getattr(args, "amp", "none")]):
                out = model(pixel_values=batch.to(device))
                out.class_queries_logits, out.masks_queries_logits = (out.class_queries_logits.float(),
                                                                      out.masks_queries_logits.float())
                if meta["semantic"]:
                    mask = predict_semantic(model, batch, sizes, out)[0]
                else:
                    pred = predict_panoptic(model, batch, sizes, stuff, opts, out)[0]
            if meta["semantic"]:
                atomic_write(png, lambda p: colorize(mask, palette).save(p, format="PNG"))
                atomic_write(overlay_path, lambda p: overlay(img, mask, palette, args.alpha, names).save(
                    p, format="JPEG", quality=95))
                share = torch.bincount(mask.flatten(), minlength=len(names)).double() / mask.numel()
                record = {"image": str(path), "mask": str(png), "overlay": str(overlay_path),
                          "class_fractions": {names[i]: share[i].item() for i in share.argsort(descending=True)
                                              .tolist() if share[i]}}
            else:
                segments = write_panoptic(pred, img, names, labels["is_thing"], palette, png, overlay_path,
                                          args.alpha)
                record = {"image": str(path), "png": str(png), "overlay": str(overlay_path),
                          "size": [img.height, img.width], "segments_info": segments}
            atomic_write(json_path, lambda p: p.write_text(dumps(record)))
            if args.json:
                print(dumps(record))
            else:
                what = (f"{len(record['segments_info'])} segments" if not meta["semantic"] else
                        ", ".join(f"{k} {100 * v:.1f}%" for k, v in list(record["class_fractions"].items())[:5]))
                print(f"{path}: {what} -> {png}, {overlay_path}, {json_path}")
        return 1 if failed else 0


HEAD_FIELDS = ("num_queries", "hidden_dim", "feature_size", "mask_feature_size", "encoder_layers", "decoder_layers",
               "dim_feedforward", "encoder_feedforward_dim", "num_attention_heads")


def describe_panoptic_model(cfg: PanopticConfig) -> str:
    """Its variant name while the architecture is the variant's, else its parts ("Mask2Former (64 wide, 30 queries,
    2 + 3 layers) on custom Swin V1: ...")."""
    if cfg.name in PANOPTIC_VARIANTS:
        ref = PanopticConfig.from_name(cfg.name)
        if all(getattr(cfg, f) == getattr(ref, f) for f in HEAD_FIELDS) and \
                cfg.backbone.describe(with_size=False) == ref.backbone.describe(with_size=False):
            return cfg.name
    return (f"Mask2Former ({cfg.hidden_dim} wide, {cfg.num_queries} queries, {cfg.encoder_layers} pixel-decoder + "
            f"{cfg.decoder_layers} decoder layers) on {cfg.backbone.describe(with_size=False)}")


def _pct(v: float) -> str:
    return "   -  " if v != v else f"{100 * v:6.2f}%"
