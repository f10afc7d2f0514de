"""The embedded default data: scikit-learn's handwritten digits, written once to swinkit's cache as an image
folder and read through the same pipeline as a user's images."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..io.files import cache_dir
from .folders import split_indices


def digits_folder(root: str | Path | None = None, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """The 1,797 8x8 handwritten digits bundled with scikit-learn (17 gray levels) as an image folder
    `<root>/digits/{train,val}/<digit>/<n>.png`, written once (atomically) and reused. Returns the folder."""
    from sklearn.datasets import load_digits

    out = Path(root or cache_dir()) / "digits"
    if (out / "train").is_dir() and (out / "val").is_dir():
        return out
    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8), values 0..16 -> 0..255
    split = split_indices(digits.target.tolist(), val_fraction, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".digits-"))
    for name, indices in zip(("train", "val"), split):
        for i in indices:
            folder = tmp / name / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[i]).save(folder / f"{i:04d}.png")
    try:
        os.rename(tmp, out)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(tmp)
    return out
