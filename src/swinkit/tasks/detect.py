"""Detection and instance segmentation: torchvision's detectors on a Swin backbone (models/detection.py) trained
by the shared loop, COCO box / mask metrics from pycocotools, and drawn predictions.

Data (tasks/detect_data.py) is a COCO folder (annotations/instances_<split>.json) or YOLO text labels
(images/<split>, labels/<split>; COCO128 in ../shared/data/coco128), detected automatically. Training resizes in
the data pipeline (transforms v2: multi-scale shorter side, flip, optional large-scale jitter) and the detector's
GeneralizedRCNNTransform only normalises and batches; evaluation and prediction feed original images, which the
detector resizes to its min_size / max_size and maps back, so boxes and masks are in original pixels.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..config import DET_VARIANTS, DetectionConfig
from ..data import load_image
from ..factory import create_detector
from ..io.files import atomic_write, dumps, plan_outputs, write_json
from ..io.formats.detection import is_detection_state_dict, load_detector
from ..models.detection import SwinDetector, build_detector
from .base import AMP_DTYPES, Loaded, Task, TaskSettings, autocast, setting
from .detect_data import collate, eval_transform, has_split, open_detection_data, train_transform

# COCOeval.stats order -> our names (fractions; -1, "no such objects", becomes NaN)
STATS = ("map", "map50", "map75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100", "mar_small",
         "mar_medium", "mar_large")


# ----------------------------------------------------------------------------------------------------------
# metrics (pycocotools)


def to_coco_results(output: dict, image_id: int, mask_threshold: float = 0.5) -> list[dict]:
    """One image's detector output (boxes XYXY, labels 1..C, scores, masks (N, 1, H, W) probabilities) -> COCO
    results: bbox [x, y, w, h], category_id = label, score, and an RLE segmentation when masks are present."""
    from pycocotools import mask as mask_utils

    boxes = output["boxes"].detach().float().cpu()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
    rows = [{"image_id": int(image_id), "category_id": int(c), "bbox": [round(v, 2) for v in b], "score": float(s)}
            for b, c, s in zip(xywh, output["labels"].tolist(), output["scores"].tolist())]
    if "masks" in output:
        binary = (output["masks"][:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)  # (N, H, W)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        for row, rle in zip(rows, rles):
            row["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
    return rows


def coco_metrics(gt: dict, results: list[dict], iou_type: str = "bbox") -> dict[str, float]:
    """COCO AP / AR of `results` against the ground truth `gt` (a COCO-format dict) as fractions: map (IoU
    0.50:0.95), map50, map75, map_small / medium / large, mar_1 / 10 / 100, ...; pycocotools' COCOeval with its
    defaults. NaN where COCOeval has no objects (-1); no detections at all scores 0 wherever there are objects."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt = COCO()
        coco_gt.dataset = {"info": {}, **gt}
        coco_gt.createIndex()
        if not results or not gt.get("annotations"):
            has = bool(gt.get("annotations"))
            return {k: (0.0 if has else math.nan) for k in STATS}
        ev = COCOeval(coco_gt, coco_gt.loadRes([dict(r) for r in results]), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: (math.nan if v < 0 else float(v)) for k, v in zip(STATS, ev.stats)}


def detection_metrics(gt: dict, results: list[dict], masks: bool) -> dict[str, float]:
    """Box metrics, and with `masks` the same for masks prefixed "mask_" (mask_map, mask_map50, ...)."""
    out = coco_metrics(gt, results, "bbox")
    if masks:
        out.update({f"mask_{k}": v for k, v in coco_metrics(gt, results, "segm").items()})
    return out


@torch.no_grad()
def detect(model: nn.Module, loader, device: torch.device, amp_dtype: torch.dtype | None = None) -> list[dict]:
    """COCO results of `model` (eval mode) over `loader` (batches from detect_data.collate), gathered from every
    rank when distributed."""
    model.eval()
    results = []
    for images, targets in loader:
        with autocast(device, amp_dtype):
            outputs = model([i.to(device) for i in images])
        for out, t in zip(outputs, targets):
            results += to_coco_results({k: v.float() if v.is_floating_point() else v for k, v in out.items()},
                                       t["image_id"])
    if dist.is_initialized():
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part]
    return results


# ----------------------------------------------------------------------------------------------------------
# the task


class Repeated(Dataset):
    """`times` passes over a dataset as one (mmdetection's RepeatDataset); its other attributes are the dataset's."""

    def __init__(self, ds: Dataset, times: int):
        self.ds, self.times = ds, times

    def __len__(self) -> int:
        return len(self.ds) * self.times

    def __getitem__(self, i: int):
        return self.ds[i % len(self.ds)]

    def __getattr__(self, name: str):
        if name in ("ds", "times"):  # not set yet (unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.ds, name)


@dataclass
class DetectSettings(TaskSettings):
    """Detection data, detector and augmentation."""
    model: str = setting("maskrcnn_swin_t", f"detector: {', '.join(DET_VARIANTS)}")
    data: str | None = setting(None, "COCO folder (annotations/instances_<split>.json) or YOLO folder (images/<split>, "
                                     "labels/<split>), e.g. ../shared/data/coco128")
    val_split: str = setting("val", "split evaluated every epoch (train: evaluate on the training images)")
    img_size: int = setting(800, "shorter side of training and evaluation images", valid=">= 1")
    max_size: int | None = setting(None, "longer-side cap (default img_size * 1333 / 800)")
    multiscale: bool = setting(False, "training shorter side drawn from 0.6..1.0 x img_size in steps of 32 (the "
                                      "official 480-800)")
    lsj: bool = setting(False, "large-scale jitter (scale 0.1-2.0, img_size^2 crops) instead of resizing")
    hflip: float = setting(0.5, "horizontal flip probability", valid="0..1")
    repeat: int = setting(1, "passes over the training images per epoch (mmdet's RepeatDataset: fewer evaluations "
                             "on small data)")
    proposals: list[int] | None = setting(None, "R-CNN: proposals after the RPN in training and inference (default "
                                                "2000 1000)", nargs=2)
    roi_batch: int | None = setting(None, "R-CNN: RoIs sampled per training image (default 512)")
    detections_per_img: int | None = setting(None, "detections kept per image (default 100)")
    frozen_stages: int = setting(-1, "freeze the patch embedding (0) and stages < k of the backbone")
    frozen_norms: bool = setting(False, "the backbone's LayerNorms take no gradient")
    drop_path_rate: float | None = setting(None, "backbone stochastic depth (default: the variant's)")
    embed_dim: int | None = setting(None, "backbone width (a custom backbone for short CPU runs)")
    depths: list[int] | None = setting(None, "blocks per backbone stage (4 stages)", nargs=4)
    num_heads: list[int] | None = setting(None, "heads per backbone stage", nargs=4)
    window_size: int | None = setting(None, "backbone window")


class DetectTask(Task):
    name, primary_metric, Settings = "detect", "map", DetectSettings
    # The official Swin Mask R-CNN recipes (Swin-Transformer-Object-Detection): AdamW lr 1e-4 per 16 images, wd
    # 0.05, 500 warmup iterations (0.07 of a COCO epoch at batch 16), lr x 0.1 at epochs 8 and 11 of 12 (1x) or 27
    # and 33 of 36 (3x), multi-scale 480-800; "cpu": short from-scratch runs on small data (COCO128) at a small size.
    recipes = {
        "coco_1x": dict(epochs=12, lr=1e-4, lr_base_size=16, weight_decay=0.05, batch_size=2, warmup_epochs=0.07,
                        warmup_lr=1e-7, schedule="step", milestones=[8 / 12, 11 / 12], gamma=0.1, multiscale=True,
                        clip_grad=0.0),
        "coco_3x": dict(epochs=36, lr=1e-4, lr_base_size=16, weight_decay=0.05, batch_size=2, warmup_epochs=0.07,
                        warmup_lr=1e-7, schedule="step", milestones=[27 / 36, 33 / 36], gamma=0.1, multiscale=True,
                        clip_grad=0.0),
        "cpu": dict(epochs=40, lr=2e-4, lr_base_size=4, weight_decay=0.05, batch_size=4, warmup_epochs=1.0,
                    warmup_lr=1e-6, min_lr=1e-6, img_size=320, clip_grad=10.0, drop_path_rate=0.0),
    }
    default_recipe = "coco_1x"
    plot_metrics = ("map", "map50", "mask_map")
    collate_fn = staticmethod(collate)

    @property
    def with_masks(self) -> bool:
        return self._config().detector == "maskrcnn"

    def _config(self) -> DetectionConfig:
        if self.cfg.model not in DET_VARIANTS:
            raise ValueError(f"unknown detection model {self.cfg.model!r}; choose one of {list(DET_VARIANTS)}")
        return DetectionConfig.from_name(self.cfg.model)

    @property
    def max_size(self) -> int:
        return self.cfg.max_size or round(self.cfg.img_size * 1333 / 800)

    def train_sizes(self) -> list[int]:
        s = self.cfg.img_size
        if not self.cfg.multiscale:
            return [s]
        lo = max(32, round(0.6 * s / 32) * 32)
        return sorted({*range(lo, s + 1, 32), s})

    # ---- training

    def build_datasets(self):
        c = self.cfg
        if c.data is None:
            raise ValueError("--task detect needs --data: a COCO folder (annotations/instances_train*.json) or a YOLO "
                             "folder (images/train*, labels/train*), e.g. ../shared/data/coco128")
        masks = self.with_masks
        train = open_detection_data(c.data, "train", masks=masks)
        if not has_split(c.data, c.val_split):
            raise ValueError(f"--data {c.data} has no {c.val_split!r} split to evaluate on: add one, or pass "
                             "--val-split train to evaluate on the training images")
        val = open_detection_data(c.data, c.val_split, masks=masks, classes=train.classes)
        if c.repeat < 1:
            raise ValueError(f"--repeat must be >= 1 (passes over the training images per epoch), got {c.repeat}")
        train.transform = train_transform(self.train_sizes(), self.max_size, c.hflip, c.lsj)
        val.transform = eval_transform()
        self.classes, self.category_ids = list(train.classes), list(train.category_ids)
        self.train_ds, self.val_ds = (train if c.repeat == 1 else Repeated(train, c.repeat)), val
        return self.train_ds, val

    def build_model(self, config: dict | None = None) -> nn.Module:
        if config is not None:
            model = self.model_from_config(config)
        else:
            c = self.cfg
            arch = {k: getattr(c, k) for k in ("drop_path_rate", "embed_dim", "depths", "num_heads", "window_size")}
            arch.update(rpn_proposals=c.proposals, roi_batch=c.roi_batch, detections_per_img=c.detections_per_img)
            kw = dict(min_size=c.img_size, max_size=self.max_size, frozen_stages=c.frozen_stages,
                      frozen_norms=c.frozen_norms, **{k: v for k, v in arch.items() if v is not None})
            source = Path(c.pretrained) if c.pretrained else None
            if source is not None and (source / "best.pt").is_file():
                source = source / "best.pt"
            if source is not None and _is_detector(source):
                model = load_detector(source, num_classes=len(self.classes), **kw).train()
            else:
                model = create_detector(c.model, backbone=source, num_classes=len(self.classes), **kw)
        model.transform._skip_resize = True  # training images come resized by the data pipeline (see above)
        return model

    def model_config(self, model: nn.Module) -> dict:
        return model.cfg.to_dict()

    @classmethod
    def model_from_config(cls, config: dict) -> nn.Module:
        return build_detector(DetectionConfig.from_dict(config))

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        """The sum of the detector's losses (RPN, box, class, mask; or classification, regression, centerness)."""
        images, targets = batch
        dev = self.env.device
        images = [i.to(dev, non_blocking=True) for i in images]
        targets = [{k: (v.to(dev, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
                   for t in targets]
        return sum(model(images, targets).values())

    def evaluate(self, model: nn.Module, loader) -> dict[str, float]:
        """COCO metrics on the validation split. "loss" is NaN: torchvision detectors give no losses in eval mode."""
        results = detect(model, loader, self.env.device, self.env.amp_dtype)
        return {"loss": math.nan, **detection_metrics(self.val_ds.coco_gt(), results, self.with_masks)}

    def checkpoint_meta(self) -> dict:
        return {"class_names": self.classes, "category_ids": self.category_ids}

    def describe_model(self, model: nn.Module) -> str:
        return describe_detector(model)

    def describe_data(self, train, val) -> str:
        times = f" x {train.times} per epoch" if isinstance(train, Repeated) else ""
        return f"{train.summary()}{times}; val {val.summary()}"

    def describe(self, metrics: dict[str, float]) -> str:
        names = {"map": "box mAP", "map50": "mAP50", "mask_map": "mask mAP", "mask_map50": "mask mAP50"}
        return "  ".join(f"{names[k]} {100 * v:.2f}%" for k, v in metrics.items() if k in names)

    # ---- eval and predict

    @classmethod
    def load(cls, path: Path, ck: dict | None) -> Loaded:
        """A swinkit detection checkpoint, or any detection file swinkit.io.formats.detection reads (mmdetection,
        the official Swin detection repo: heads start fresh, so evaluate those after fine-tuning)."""
        if ck is not None:
            loaded = super().load(path, ck)
        else:

            model = load_detector(path)
            names = getattr(model, "class_names", None)
            loaded = Loaded(cls, model, {"class_names": names} if names else {}, path)
        n = loaded.model.num_classes
        loaded.meta.setdefault("class_names", [str(i) for i in range(n)])
        return loaded

    @classmethod
    def add_eval_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--split", default="val", help="the split of --data to evaluate (default val)")
        parser.add_argument("--results", type=Path, help="COCO-results JSON of the detections (default: "
                                                          "detections_<split>.json beside the checkpoint)")

    @classmethod
    def run_eval(cls, loaded: Loaded, args: argparse.Namespace) -> tuple[dict, str]:
        model, device = loaded.model, torch.device(args.device)
        masks = model.cfg.detector == "maskrcnn"
        ds = open_detection_data(args.data, args.split, masks=masks, classes=loaded.meta["class_names"])
        ds.transform = eval_transform()
        loader = DataLoader(ds, min(args.batch_size, 8), num_workers=args.workers, collate_fn=collate)
        results = detect(model.to(device), loader, device, AMP_DTYPES[args.amp])
        metrics = detection_metrics(ds.coco_gt(), results, masks)
        ck = Path(args.checkpoint)
        out = args.results or (ck if ck.is_dir() else ck.parent) / f"detections_{args.split}.json"
        atomic_write(out, lambda p: p.write_text(dumps(results)))
        result = {**metrics, "num_images": len(ds), "num_detections": len(results), "classes": len(ds.classes),
                  "checkpoint": str(args.checkpoint), "data": str(args.data), "split": args.split,
                  "results": str(out), "data_issues": ds.issues}
        pct = lambda k: "-" if metrics[k] != metrics[k] else f"{100 * metrics[k]:.2f}"  # noqa: E731
        rows = [f"box   mAP {pct('map')}  mAP50 {pct('map50')}  mAP75 {pct('map75')}  small {pct('map_small')}  "
                f"medium {pct('map_medium')}  large {pct('map_large')}  AR100 {pct('mar_100')}"]
        if masks:
            rows.append(f"mask  mAP {pct('mask_map')}  mAP50 {pct('mask_map50')}  mAP75 {pct('mask_map75')}  small "
                        f"{pct('mask_map_small')}  medium {pct('mask_map_medium')}  large {pct('mask_map_large')}")
        text = (f"{args.checkpoint} on {args.data} [{args.split}] ({ds.summary()})\n" + "\n".join(rows)
                + f"\n(COCO metrics in %, pycocotools)  detections: {out}")
        return result, text

    @classmethod
    def add_predict_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", type=Path, default=Path("predictions"),
                            help="folder for <name>.jpg (drawn detections) and <name>.json (default predictions/)")
        parser.add_argument("--score-thr", type=float, default=0.5, help="draw and list detections at or above this "
                                                                         "score (default 0.5)")
        parser.add_argument("--amp", choices=list(AMP_DTYPES), default="none", help="autocast dtype")

    @classmethod
    def run_predict(cls, loaded: Loaded, args: argparse.Namespace) -> int:
        if not 0 <= args.score_thr <= 1:
            raise ValueError(f"--score-thr must be in [0, 1], got {args.score_thr}")
        model, device, names = loaded.model, torch.device(args.device), loaded.meta["class_names"]
        model.to(device).eval()
        set_score_threshold(model, args.score_thr)
        plan = plan_outputs(args.images, args.out, ("{stem}.jpg", "{stem}.json"), args.overwrite)
        args.out.mkdir(parents=True, exist_ok=True)
        failed = 0
        for path, (image_path, json_path) in zip(args.images, plan):
            try:
                img = v2.functional.pil_to_tensor(load_image(path))  # (3, H, W) uint8
            except (OSError, ValueError) as e:
                failed += 1
                print(f"error: cannot read {path}: {e}", file=sys.stderr)
                continue
            x = v2.functional.to_dtype(tv_tensors.Image(img), torch.float32, scale=True)
            with torch.no_grad(), autocast(device, AMP_DTYPES[args.amp]):
                out = model([x.to(device)])[0]
            keep = out["scores"] >= args.score_thr
            out = {k: v[keep].float().cpu() if v.is_floating_point() else v[keep].cpu() for k, v in out.items()}
            drawn = draw_detections(img, out, names)
            atomic_write(image_path, lambda p: v2.functional.to_pil_image(drawn).save(p, format="JPEG", quality=95))
            dets = [{"label": names[int(c) - 1], "class_id": int(c) - 1, "score": round(float(s), 4),
                     "box": [round(v, 1) for v in b.tolist()]} for b, c, s in zip(out["boxes"], out["labels"],
                                                                                out["scores"])]
            record = {"image": str(path), "size": list(img.shape[1:]), "drawn": str(image_path), "detections": dets}
            write_json(json_path, record, indent=1)
            if args.json:
                print(dumps(record))
            else:
                top = ", ".join(f"{d['label']} {d['score']:.2f}" for d in dets[:5])
                print(f"{path}: {len(dets)} detection(s){': ' + top if dets else ''} -> {image_path}, {json_path}")
        return 1 if failed else 0


def _is_detector(path: Path) -> bool:
    """Whether --pretrained names a whole detector (swinkit, mmdetection, official), not a backbone."""
    from ..io.raw import read_raw

    return is_detection_state_dict(read_raw(path).state_dict)


def draw_detections(img: torch.Tensor, out: dict, names: list[str], alpha: float = 0.5) -> torch.Tensor:
    """(3, H, W) uint8 with the masks (probability > 0.5) blended in and the boxes drawn with "name score" labels,
    one colour per class (torchvision.utils.draw_segmentation_masks / draw_bounding_boxes)."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    from ..io.images import label_font
    from ..io.images import default_palette

    palette = default_palette(len(names))
    colors = [palette[int(c) - 1] for c in out["labels"]]
    if "masks" in out and len(out["masks"]):
        img = draw_segmentation_masks(img, out["masks"][:, 0] > 0.5, alpha=alpha, colors=colors)
    labels = [f"{names[int(c) - 1]} {float(s):.2f}" for c, s in zip(out["labels"], out["scores"])]
    size = max(12, min(img.shape[-2:]) // 30)  # readable at any image size (PIL's default bitmap font is 11 px)
    return draw_bounding_boxes(img, out["boxes"], labels=labels, colors=colors, width=max(2, size // 6),
                               font=label_font(), font_size=size)


def set_score_threshold(model: nn.Module, threshold: float) -> None:
    """Let a detector keep detections down to `threshold` (torchvision's default drops those under 0.05 before
    --score-thr is applied, so a young model would draw nothing at --score-thr 0)."""
    owner = getattr(model, "roi_heads", model)  # R-CNNs keep it in their box head; RetinaNet and FCOS on the model
    owner.score_thresh = min(owner.score_thresh, threshold)


def describe_detector(model: SwinDetector) -> str:
    """Its variant name while the architecture is the variant's, else its parts ("fcos on custom Swin V1: ...")."""
    cfg = model.cfg
    if cfg.name in DET_VARIANTS:
        ref = DetectionConfig.from_name(cfg.name)
        if cfg.detector == ref.detector and cfg.backbone.describe(with_size=False) == ref.backbone.describe(
                with_size=False):
            return cfg.name
    return f"{cfg.detector} on {cfg.backbone.describe(with_size=False)}"
