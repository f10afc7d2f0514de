"""The one image reader of every path that feeds a model 8-bit pictures (training, eval, predict, predict --onnx,
quantize's calibration, viz): PIL and numpy only, so the torch-free `predict --onnx` reads exactly what the eager
path reads. (Restoration keeps 16 bits and has its own reader, tasks/restore.py read_picture.)"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


def to_mode(img: Image.Image, channels: int = 3) -> Image.Image:
    """Any PIL image -> 8-bit RGB (channels=3) or grey (channels=1). 16-bit, 32-bit and float images are scaled
    (not clipped) to 8 bits; palette images go through RGBA so a transparency entry is honoured; alpha is dropped."""
    if channels not in (1, 3):
        raise ValueError(f"expected 1 (grey) or 3 (RGB) channels, got {channels}")
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        a = np.asarray(img, dtype=np.float64)
        full = 65535.0 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(a * (255.0 / full), 0, 255).round().astype(np.uint8))
    elif img.mode == "P":
        img = img.convert("RGBA")
    mode = "RGB" if channels == 3 else "L"
    return img if img.mode == mode else img.convert(mode)


def load_image(path: str | Path, channels: int = 3) -> Image.Image:
    """Decode an image file fully, as to_mode makes it (raises OSError / ValueError when it does not decode)."""
    with Image.open(path) as img:
        img.load()
        return to_mode(img, channels)


def image_files(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursive, sorted, hidden files and folders left out)."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def expand_inputs(inputs) -> tuple[list[Path], list[str]]:
    """Files as given and the images under each folder (image_files): (files, an error line per folder without
    images)."""
    files, errors = [], []
    for p in map(Path, inputs):
        found = image_files(p) if p.is_dir() else [p]
        if not found:
            errors.append(f"no images ({', '.join(IMG_EXTENSIONS)}) under {p}")
        files += found
    return files, errors


def label_font() -> str | None:
    """A scalable font for labels drawn on images: matplotlib's DejaVu Sans (matplotlib is in the train extra),
    None without matplotlib (PIL's bitmap font then)."""
    try:
        from matplotlib import font_manager
    except ImportError:
        return None
    return font_manager.findfont("DejaVu Sans", fallback_to_default=True)


def draw_legend(img: Image.Image, entries: list[tuple[str, tuple[int, int, int]]]) -> Image.Image:
    """`img` with a legend below it: a colour swatch and a name for each of `entries`, in rows that fit its width."""
    from PIL import ImageDraw, ImageFont

    size = max(12, img.width // 50)
    path = label_font()
    font = ImageFont.truetype(path, size) if path else ImageFont.load_default()
    pad, swatch = size // 2, size
    items = [(name, colour, int(font.getlength(name)) + swatch + 3 * pad) for name, colour in entries]
    rows, x = [[]], 0
    for item in items:  # (name, colour, width) packed left to right
        if rows[-1] and x + item[2] > img.width:
            rows.append([])
            x = 0
        rows[-1].append(item)
        x += item[2]
    row_h = size + 2 * pad
    out = Image.new("RGB", (img.width, img.height + row_h * len(rows)), (255, 255, 255))
    out.paste(img.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(out)
    for r, row in enumerate(rows):
        x, y = pad, img.height + r * row_h + pad
        for name, colour, width in row:
            draw.rectangle([x, y, x + swatch, y + swatch], fill=tuple(colour), outline=(0, 0, 0))
            draw.text((x + swatch + pad, y), name, fill=(0, 0, 0), font=font)
            x += width
    return out


def default_palette(n: int) -> list[tuple[int, int, int]]:
    """n distinct colours: the bits of (index + 1) spread over the high bits of R, G and B (the PASCAL VOC
    scheme shifted by one, so class 0 is not black)."""
    out = []
    for i in range(1, n + 1):
        r = g = b = 0
        for k in range(8):
            r |= ((i >> (3 * k)) & 1) << (7 - k)
            g |= ((i >> (3 * k + 1)) & 1) << (7 - k)
            b |= ((i >> (3 * k + 2)) & 1) << (7 - k)
        out.append((r, g, b))
    return out
