"""Image folders for classification: one sub-folder per class (torchvision's ImageFolder layout), as `train/` and
`val/` or one folder split with a fixed seed. Every image becomes RGB, files that do not decode are skipped with a
warning and counted, and an empty class folder, a val class unknown to train or a folder of one class is an error
before any training starts."""
from __future__ import annotations

import copy
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import datasets

from ..io.images import IMG_EXTENSIONS, load_image


def check_image(path: str) -> str | None:
    """None when `path` decodes completely, else the reason. JPEGs decode at 1/8 scale: every byte is still read,
    so truncation is caught at a fraction of the cost."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (1, 1))
            img.load()
    except Exception as e:  # noqa: BLE001 - any decoder failure means "skip this file"
        return f"{type(e).__name__}: {e}"
    return None


class ImageFolderDataset(datasets.ImageFolder):
    """torchvision ImageFolder that returns RGB images, skips files that do not decode (listed in `.skipped` as
    (path, reason)), rejects empty class folders, and can take its class list from another split (`classes=`), so
    val indices match train's and a val class unknown to train is an error."""

    def __init__(self, root: str | Path, transform=None, classes: list[str] | None = None,
                 classes_from: str = "the training set", verify: bool = True):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"expected an image folder at {root} (one sub-folder per class), "
                                    "but it does not exist")
        self._given_classes, self._classes_from = classes, classes_from
        super().__init__(str(root), transform=transform, loader=load_image, allow_empty=True)
        self.skipped: list[tuple[str, str]] = []
        if verify:
            self._drop_unreadable()
        self._check_not_empty()

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        found = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        if not found:
            raise FileNotFoundError(f"expected one sub-folder per class in {directory}, found none: put each "
                                    "class's images in <folder>/<class name>/")
        if self._given_classes is None:
            return found, {c: i for i, c in enumerate(found)}
        unknown = sorted(set(found) - set(self._given_classes))
        if unknown:
            raise ValueError(f"{directory} has class folders that {self._classes_from} does not have: {unknown}; "
                             f"expected only its classes {list(self._given_classes)}. Rename or remove those folders")
        return list(self._given_classes), {c: i for i, c in enumerate(self._given_classes)}

    def _drop_unreadable(self) -> None:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            reasons = list(pool.map(check_image, (p for p, _ in self.samples)))
        self.skipped = [(p, r) for (p, _), r in zip(self.samples, reasons) if r is not None]
        if self.skipped:
            self._set_samples([s for s, r in zip(self.samples, reasons) if r is None])
            first = "\n".join(f"  {p}: {r}" for p, r in self.skipped[:5])
            warnings.warn(f"skipped {len(self.skipped)} unreadable image file(s) in {self.root}:\n{first}"
                          + ("\n  ..." if len(self.skipped) > 5 else ""), stacklevel=3)

    def _check_not_empty(self) -> None:
        counts = np.bincount(self.targets, minlength=len(self.classes))
        present = {e.name for e in os.scandir(self.root) if e.is_dir()}
        empty = [c for c, n in zip(self.classes, counts) if n == 0 and c in present]
        if empty:
            raise ValueError(f"class folder(s) {empty} in {self.root} hold no readable images (extensions "
                             f"{', '.join(IMG_EXTENSIONS)}); add images or remove the folder(s)")

    def _set_samples(self, samples: list[tuple[str, int]]) -> None:
        self.samples = self.imgs = samples
        self.targets = [t for _, t in samples]

    def subset(self, indices, transform) -> "ImageFolderDataset":
        """A copy holding only `indices`, with its own transform."""
        ds = copy.copy(self)
        ds._set_samples([self.samples[i] for i in indices])
        ds.transform = transform
        return ds

    def __getitem__(self, index: int):
        """(transformed image, class index). A file that stopped decoding since the scan is replaced by the next
        sample, with a warning."""
        self.samples[index]  # IndexError past the end, as iteration expects
        for attempt in range(len(self.samples)):
            path, target = self.samples[(index + attempt) % len(self.samples)]
            try:
                img = self.loader(path)
                break
            except (OSError, ValueError) as e:
                warnings.warn(f"could not read {path} ({e}); using the next image instead", stacklevel=2)
        else:
            raise RuntimeError(f"no image in {self.root} can be read")
        return (self.transform(img) if self.transform else img), target


def split_indices(targets: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified split: per class, a seeded shuffle puts round(val_fraction * n) images (at least one when the class
    has two or more) in val. Returns sorted (train, val) indices."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    g = torch.Generator().manual_seed(seed)
    targets_t = torch.as_tensor(targets)
    train, val = [], []
    for c in torch.unique(targets_t).tolist():
        idx = torch.nonzero(targets_t == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)].tolist()
        n_val = max(1, round(val_fraction * len(idx))) if len(idx) > 1 else 0
        val += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(val)


def build_datasets(data: str | Path, train_tf, eval_tf, val_fraction: float = 0.1, seed: int = 0,
                   verify: bool = True) -> tuple[ImageFolderDataset, ImageFolderDataset]:
    """(train, val) datasets from `data`: `data/train` + `data/val`, or `data/train` alone or `data` itself (class
    folders) split with `val_fraction` and `seed`. Val indices follow train's classes."""
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root}: expected a folder with train/ and val/ sub-folders, or one "
                                "sub-folder per class; it does not exist")
    if (root / "train").is_dir():
        train = ImageFolderDataset(root / "train", train_tf, verify=verify)
        _two_classes(train, root / "train")
        if (root / "val").is_dir():
            return train, ImageFolderDataset(root / "val", eval_tf, classes=train.classes, verify=verify)
        full = train
    else:
        full = ImageFolderDataset(root, verify=verify)
        _two_classes(full, root)
    train_idx, val_idx = split_indices(full.targets, val_fraction, seed)
    return full.subset(train_idx, train_tf), full.subset(val_idx, eval_tf)


def _two_classes(ds: ImageFolderDataset, folder: Path) -> None:
    """A classifier of one class learns nothing (its loss is 0 from the start and every prediction is right): a
    ValueError that says so."""
    if len(ds.classes) < 2:
        raise ValueError(f"{folder} has {len(ds.classes)} class folder ({', '.join(ds.classes)}): a classifier "
                         "needs two or more, one sub-folder of images per class. For images of one kind without "
                         "labels, pre-train with --task pretrain")
