"""Image restoration: super-resolution, denoising and JPEG artefact removal with SwinIR-style models.

Training data are folders of high-quality (HR) photographs; the low-quality (LQ) inputs are made on the fly:
bicubic down-scaling (torch's antialiased bicubic, `F.interpolate(antialias=True)`, the kernel of PIL's resize; the
MATLAB `imresize` the SR papers' LR files come from differs slightly), Gaussian noise of sigma/255 (not clipped, as
the official code), or real JPEG encoding at quality q with PIL. Training crops a random patch (the model's img_size
in LQ pixels), flips and rotates it by multiples of 90 degrees. Evaluation runs whole images; a folder with `HR/`
and `LR_bicubic/X{s}/` (Set5, Set14, ... as the SR papers ship them) uses the stored LR files.

Metrics follow the protocol of the SR papers (SwinIR's utils/util_calculate_psnr_ssim.py): the output is rounded
to 8 bits, the HR is cropped to the output's size, `border` pixels are shaved per side (the scale for SR, 0 for
denoising and JPEG), PSNR and SSIM (11x11 Gaussian window, sigma 1.5, valid region) on the Y channel of ITU-R BT.601
YCbCr, and PSNR over the RGB channels. Images are averaged, as the papers' tables are.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import struct
import sys
import warnings
import zlib
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

from ..config import SWINIR_VARIANTS, SwinIRConfig
from ..inference.dense import restore_tensor
from ..io.files import atomic_write, plan_outputs
from ..io.images import IMG_EXTENSIONS, expand_inputs, image_files
from ..models.swinir import SwinIR
from .base import AMP_DTYPES, Loaded, Task, TaskSettings, autocast, setting

KINDS = ("sr", "denoise", "jpeg")
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma of RGB, as PIL's and OpenCV's grey conversion


# ----------------------------------------------------------------------------------------------------------
# image files: 1 (grey) or 3 (RGB) channels in [0, 1], alpha kept apart, 8 or 16 bits


@dataclass
class Picture:
    """A decoded image: `pixels` (C, H, W) float32 in [0, 1] with C = 1 (grey) or 3 (RGB), `alpha` (1, H, W) or
    None, `bits` 8 or 16 (what a restored copy is written with)."""
    pixels: torch.Tensor
    alpha: torch.Tensor | None = None
    bits: int = 8


def _png_bit_depth(path: Path) -> int:
    """Bit depth of a PNG from its IHDR chunk (0 when `path` is not a PNG)."""
    with open(path, "rb") as f:
        head = f.read(25)
    return head[24] if len(head) == 25 and head[:8] == b"\x89PNG\r\n\x1a\n" else 0


def read_picture(path: str | Path) -> Picture:
    """Decode any PIL-readable image. Grey stays grey (1 channel), palette images become RGB(A), alpha is split
    off, and 16-bit files (PNG through torchvision, which keeps 16 bits where PIL drops them for RGB; 16-bit grey
    TIFF through PIL) are scaled by 65535. Raises OSError / ValueError when the file does not decode."""
    path = Path(path)
    if _png_bit_depth(path) == 16:
        from torchvision.io import ImageReadMode, decode_png, read_file

        with warnings.catch_warnings():  # torchvision deprecates its decoders for torchcodec, which reads no PNG
            warnings.simplefilter("ignore", DeprecationWarning)
            t = decode_png(read_file(str(path)), mode=ImageReadMode.UNCHANGED)  # (C, H, W) uint16, C in 1..4
        x, bits = t.to(torch.int32).float() / 65535, 16
    else:
        with Image.open(path) as img:
            img.load()
            x, bits = _pil_pixels(img)
    if x.shape[0] in (2, 4):  # grey + alpha, RGB + alpha
        return Picture(x[:-1].contiguous(), x[-1:].contiguous(), bits)
    return Picture(x, None, bits)


def _pil_pixels(img: Image.Image) -> tuple[torch.Tensor, int]:
    """(C, H, W) float in [0, 1] with C in 1..4, and the bit depth, from a PIL image of any mode."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        a = np.asarray(img, dtype=np.float64)
        full = 65535.0 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        return torch.from_numpy(np.clip(a / full, 0, 1)).float()[None], 16 if full > 255 else 8
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode not in ("L", "LA", "RGB", "RGBA"):
        img = img.convert("L" if img.mode == "1" else "RGBA" if "A" in img.mode else "RGB")
    a = np.asarray(img, dtype=np.uint8)
    a = a[..., None] if a.ndim == 2 else a  # (H, W, C)
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255, 8


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(C, H, W) -> (channels, H, W): grey repeated to RGB, or RGB to its BT.601 luma."""
    if x.shape[-3] == channels:
        return x
    if channels == 3:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * w).sum(-3, keepdim=True)


def quantize(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """[0, 1] floats -> integer levels of `bits` bits (as float64), rounded as the official test scripts do."""
    top = 2**bits - 1
    return (x.double().clamp(0, 1) * top).round()


def _png16(a: np.ndarray) -> bytes:
    """A 16-bit PNG of (H, W, C) uint16 values, C in 1..4 (PIL writes 16 bits only for grey)."""
    h, w, c = a.shape
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[c]  # grey, grey + alpha, RGB, RGBA
    rows = np.ascontiguousarray(a.astype(">u2")).reshape(h, w * c).view(np.uint8)  # (H, 2WC) big-endian bytes
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter type 0 before each row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def write_picture(path: str | Path, pic: Picture) -> Path:
    """Write a PNG with `pic.bits` bits per sample (grey, grey + alpha, RGB or RGBA), atomically."""
    x = pic.pixels if pic.alpha is None else torch.cat([pic.pixels, pic.alpha])
    a = quantize(x, pic.bits).permute(1, 2, 0).numpy()  # (H, W, C)
    if pic.bits == 16:
        data = _png16(a.astype(np.uint16))
        return atomic_write(path, lambda tmp: tmp.write_bytes(data))
    img = Image.fromarray(a.astype(np.uint8)[..., 0] if a.shape[2] == 1 else a.astype(np.uint8))
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


# ----------------------------------------------------------------------------------------------------------
# degradations: (C, H, W) or (B, C, H, W) floats in [0, 1] -> the low-quality input


def bicubic_downscale(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic down-scaling by an integer factor (torch's PIL-compatible kernel), rounded to 8 bits
    as stored LR files are. H and W must be multiples of `scale` (see crop_to_multiple)."""
    H, W = x.shape[-2:]
    if H % scale or W % scale:
        raise ValueError(f"expected H and W divisible by the scale {scale}, got {H}x{W}; crop_to_multiple first")
    y = F.interpolate(x.reshape(-1, *x.shape[-3:]), size=(H // scale, W // scale), mode="bicubic",
                      antialias=True, align_corners=False)  # (B, C, H/s, W/s)
    return (quantize(y) / 255).float().reshape(*x.shape[:-2], H // scale, W // scale)


def crop_to_multiple(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop the bottom and right so that H and W are multiples of `scale` (the papers' HR crop)."""
    H, W = x.shape[-2:]
    return x[..., :H - H % scale, :W - W % scale]


def add_noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Additive white Gaussian noise of standard deviation sigma/255, not clipped (as the official code)."""
    return x + torch.randn(x.shape, generator=generator, dtype=x.dtype) * (sigma / 255)


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """(C, H, W) with C = 1 or 3 -> the same image encoded and decoded as a PIL JPEG at `quality` (1..95)."""
    a = quantize(x).to(torch.uint8).permute(1, 2, 0).numpy()  # (H, W, C)
    buf = io.BytesIO()
    Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).save(buf, format="JPEG", quality=quality)
    with Image.open(buf) as img:
        b = np.asarray(img)
    b = b[..., None] if b.ndim == 2 else b
    return torch.from_numpy(b.copy()).permute(2, 0, 1).float() / 255


@dataclass
class Degradation:
    """What makes the LQ input from an HR image: kind sr (bicubic by `scale`), denoise (`sigma`) or jpeg
    (`quality`)."""
    kind: str = "sr"
    scale: int = 1
    sigma: float = 25.0
    quality: int = 40

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown restoration task {self.kind!r}; expected one of {list(KINDS)}")
        if self.scale < 1 or (self.kind != "sr" and self.scale != 1):
            raise ValueError(f"expected scale >= 1 for sr and 1 for {self.kind}, got {self.scale}")
        if self.kind == "jpeg" and not 1 <= self.quality <= 95:
            raise ValueError(f"expected a JPEG quality in 1..95, got {self.quality}")

    def __call__(self, hr: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(C, H, W) HR (H, W multiples of the scale) -> (C, H/scale, W/scale) LQ."""
        if self.kind == "sr":
            return bicubic_downscale(hr, self.scale)
        if self.kind == "denoise":
            return add_noise(hr, self.sigma, generator)
        return jpeg(hr, self.quality)

    def describe(self) -> str:
        return {"sr": f"x{self.scale} super-resolution", "denoise": f"denoising (sigma {self.sigma:g})",
                "jpeg": f"JPEG artefact removal (quality {self.quality})"}[self.kind]

    @property
    def border(self) -> int:
        """Pixels shaved per side for the metrics: the scale for SR, none otherwise (the papers' protocol)."""
        return self.scale if self.kind == "sr" else 0


# ----------------------------------------------------------------------------------------------------------
# metrics on 8-bit values (float64 tensors in [0, 255])


def to_y(x: torch.Tensor) -> torch.Tensor:
    """(3, H, W) RGB in [0, 255] -> (1, H, W) Y of ITU-R BT.601 YCbCr in [16, 235] (not rounded); grey passes."""
    if x.shape[0] == 1:
        return x
    w = torch.tensor([65.481, 128.553, 24.966], dtype=x.dtype).view(3, 1, 1)
    return 16 + (x * w).sum(0, keepdim=True) / 255


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two [0, 255] images (inf when equal)."""
    mse = (a.double() - b.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-(torch.arange(size, dtype=torch.float64) - size // 2) ** 2 / (2 * sigma**2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM of two (C, H, W) [0, 255] images, the channels' mean: Wang et al.'s 11x11 Gaussian window (sigma 1.5),
    statistics over the valid region only (no padding), C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2."""
    g = _gaussian_window()
    k = (g[:, None] * g[None, :])[None, None]  # (1, 1, 11, 11)
    x, y = a.double()[:, None], b.double()[:, None]  # (C, 1, H, W): channels as a batch

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, k)  # valid region: (C, 1, H - 10, W - 10)

    if min(x.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels after the border crop, got "
                         f"{x.shape[-2]}x{x.shape[-1]}")
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).mean().item()


def restoration_metrics(out: torch.Tensor, hr: torch.Tensor, border: int) -> dict[str, float]:
    """psnr_y, ssim_y and psnr_rgb of a restored (C, H, W) image in [0, 1] against its HR, the papers' way:
    both rounded to 8 bits, the HR cropped to the output's size, `border` pixels shaved on each side."""
    H, W = out.shape[-2:]
    if hr.shape[-2] < H or hr.shape[-1] < W:
        raise ValueError(f"the output ({H}x{W}) is larger than its HR image ({hr.shape[-2]}x{hr.shape[-1]})")
    a, b = quantize(out), quantize(hr[..., :H, :W])
    if border:
        a, b = a[..., border:-border, border:-border], b[..., border:-border, border:-border]
    ya, yb = to_y(a), to_y(b)
    return {"psnr_y": psnr(ya, yb), "ssim_y": ssim(ya, yb), "psnr_rgb": psnr(a, b)}


# ----------------------------------------------------------------------------------------------------------
# inference: whole images or overlapping tiles


def restore_picture(model: nn.Module, pic: Picture, scale: int, in_chans: int, device: torch.device,
                    amp_dtype: torch.dtype | None = None, tile: int | None = None, overlap: int = 32,
                    progress: bool = False) -> Picture:
    """Restore one decoded image: grey is fed to an RGB model as three equal channels and comes back grey (their
    mean); alpha is up-scaled bicubically (SR) or kept; the bit depth is kept."""
    if pic.pixels.shape[0] == 3 and in_chans == 1:
        raise ValueError("the model restores grey images (1 channel) and this one is RGB: convert it to grey "
                         "first, or use a colour model")
    x = to_channels(pic.pixels, in_chans)[None].to(device)  # (1, C, H, W)
    with autocast(device, amp_dtype):
        y = restore_tensor(model, x, scale, tile, overlap, progress).float().clamp(0, 1)[0].cpu()  # (C, sH, sW)
    if pic.pixels.shape[0] == 1 and y.shape[0] == 3:
        y = y.mean(0, keepdim=True)
    alpha = pic.alpha
    if alpha is not None and scale > 1:
        alpha = F.interpolate(alpha[None], scale_factor=scale, mode="bicubic", antialias=True)[0].clamp(0, 1)
    return Picture(y, alpha, pic.bits)


def restore_files(model: nn.Module, meta: dict, inputs: list, out: Path, device: torch.device,
                  amp_dtype: torch.dtype | None = None, tile: int | None = None, overlap: int = 32,
                  overwrite: bool = False) -> int:
    """Restore image files (folders: the images under them) into PNGs `out/<stem>.png` (16-bit for 16-bit inputs,
    grey for grey, with alpha for alpha). An output that would replace an input, or an existing file without
    `overwrite`, is an OutputError before any work; a file that fails gets one error line and the rest go on;
    returns 1 if any failed, else 0."""
    from tqdm import tqdm

    paths, errors = expand_inputs(inputs)
    plan = plan_outputs(paths, out, ("{stem}.png",), overwrite)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    failed, written = len(errors), 0
    for path, (dest,) in tqdm(list(zip(paths, plan)), desc="images", disable=len(paths) < 2):
        try:
            pic = restore_picture(model, read_picture(path), meta["scale"], meta["in_chans"], device, amp_dtype,
                                  tile, overlap, progress=True)
            write_picture(dest, pic)
            written += 1
        except (OSError, ValueError) as e:
            failed += 1
            tqdm.write(f"error: cannot restore {path}: {e}", file=sys.stderr)
    print(f"restored {written} of {len(paths)} image(s) -> {out}")
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------------------
# datasets


def probe(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """((H, W), None) for an image whose header reads, else (None, the reason)."""
    try:
        with Image.open(path) as img:
            return (img.height, img.width), None
    except Exception as e:  # noqa: BLE001 - any decoder failure means "skip this file"
        return None, f"{type(e).__name__}: {e}"


class PatchDataset(Dataset):
    """Training pairs (LQ, HR) cut from HR photographs: a random HR patch of patch x scale pixels (patch: the LQ
    size, set by the task from the model's img_size), a random flip and rotation by k x 90 degrees, and its
    degraded copy. `repeat` patches per image per epoch. Images smaller than the patch and files that do not read
    are left out and listed in `.skipped` as (path, reason). Randomness comes from torch's default generator."""

    def __init__(self, files: list[Path], degradation: Degradation, patch: int, channels: int = 3,
                 augment: bool = True, repeat: int = 1):
        if patch < 1 or repeat < 1:
            raise ValueError(f"expected patch size and --repeat >= 1, got {patch} and {repeat}")
        self.degradation, self.patch, self.channels, self.augment, self.repeat = \
            degradation, patch, channels, augment, repeat
        hr = patch * degradation.scale
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            probes = list(pool.map(probe, files))
        self.skipped = [(str(f), r) for f, (_, r) in zip(files, probes) if r]
        self.skipped += [(str(f), f"{s[0]}x{s[1]} is smaller than the {hr}x{hr} training patch")
                         for f, (s, r) in zip(files, probes) if not r and min(s) < hr]
        self.files = [f for f, (s, r) in zip(files, probes) if not r and min(s) >= hr]
        if self.skipped:
            listed = "\n".join(f"  {p}: {r}" for p, r in self.skipped[:5]) + ("\n  ..." if len(self.skipped) > 5
                                                                               else "")
            warnings.warn(f"left out {len(self.skipped)} training image(s):\n{listed}", stacklevel=2)
        if not self.files:
            raise ValueError(f"no training image of at least {hr}x{hr} pixels among {len(files)} file(s); add "
                             "larger photographs or lower --img-size")

    def __len__(self) -> int:
        return len(self.files) * self.repeat

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_channels(read_picture(self.files[index % len(self.files)]).pixels, self.channels)
        size = self.patch * self.degradation.scale
        top = int(torch.randint(x.shape[1] - size + 1, ()))
        left = int(torch.randint(x.shape[2] - size + 1, ()))
        hr = x[:, top:top + size, left:left + size]
        if self.augment:
            if torch.rand(()) < 0.5:
                hr = hr.flip(-1)
            hr = torch.rot90(hr, int(torch.randint(4, ())), dims=(1, 2))
        hr = hr.contiguous()
        return self.degradation(hr), hr


class EvalDataset(Dataset):
    """Whole-image (LQ, HR) pairs. `root/HR/` with `root/LR_bicubic/X{s}/<stem>x{s}.png` (the SR test sets'
    layout) uses the stored LR files for SR; otherwise every image under `root` (or `root/HR`) is degraded on the
    fly, the HR cropped to a multiple of the scale, with noise seeded per file name (the same noise every time)."""

    def __init__(self, root: str | Path | list[Path], degradation: Degradation, channels: int = 3):
        self.degradation, self.channels = degradation, channels
        if isinstance(root, list):
            self.root, self.files, self.lr_dir = None, root, None
        else:
            self.root = Path(root)
            if not self.root.is_dir():
                raise FileNotFoundError(f"expected an evaluation folder at {self.root} (images, or HR/ with "
                                        "LR_bicubic/X{s}/), but it does not exist")
            hr_dir = self.root / "HR" if (self.root / "HR").is_dir() else self.root
            lr_dir = self.root / "LR_bicubic" / f"X{degradation.scale}"
            self.lr_dir = lr_dir if degradation.kind == "sr" and hr_dir != self.root and lr_dir.is_dir() else None
            self.files = image_files(hr_dir)
        if not self.files:
            raise ValueError(f"no images ({', '.join(IMG_EXTENSIONS)}) in {self.root}")

    def lr_file(self, hr: Path) -> Path:
        s = self.degradation.scale
        return self.lr_dir / f"{hr.stem}x{s}{hr.suffix}"

    def describe(self) -> str:
        how = f"stored LR files {self.lr_dir}" if self.lr_dir else "LQ made on the fly"
        return f"{len(self.files)} images, {how}"

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, s = self.files[index], self.degradation.scale
        hr = to_channels(read_picture(path).pixels, self.channels)
        if self.lr_dir is not None:
            lr_path = self.lr_file(path)
            if not lr_path.is_file():
                raise FileNotFoundError(f"{path} has no LR file: expected {lr_path}")
            lq = to_channels(read_picture(lr_path).pixels, self.channels)
            return lq, hr[:, :lq.shape[1] * s, :lq.shape[2] * s]
        hr = crop_to_multiple(hr, s)
        g = torch.Generator().manual_seed(zlib.crc32(path.name.encode()))
        return self.degradation(hr, g), hr


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]):
    """Stack (LQ, HR) pairs when they share a size (training patches), else keep lists (whole images)."""
    lq, hr = zip(*batch)
    if len({tuple(t.shape) for t in hr}) == 1 and len({tuple(t.shape) for t in lq}) == 1:
        return torch.stack(lq), torch.stack(hr)
    return list(lq), list(hr)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, border: int, amp_dtype: torch.dtype | None = None,
             tile: int | None = None, overlap: int = 32, scale: int | None = None) -> dict:
    """L1 loss, psnr_y, ssim_y and psnr_rgb averaged over the images of `loader` (whole images, one at a time;
    `tile`: tiled inference), summed across ranks when distributed."""
    sums = torch.zeros(5, dtype=torch.float64)  # loss, psnr_y, ssim_y, psnr_rgb, images
    for lq, hr in loader:
        for x, y in zip(lq, hr):
            s = scale or y.shape[-1] // x.shape[-1]
            with autocast(device, amp_dtype):
                out = restore_tensor(model, x[None].to(device), s, tile, overlap).float().cpu()[0]  # (C, sH, sW)
            if out.shape[-2:] != y.shape[-2:]:
                raise ValueError(f"the model's output is {out.shape[-2]}x{out.shape[-1]} for an HR image of "
                                 f"{y.shape[-2]}x{y.shape[-1]}: is the model's scale the data's ({s})?")
            m = restoration_metrics(out.clamp(0, 1), y, border)
            sums += torch.tensor([(out - y).abs().mean().item(), m["psnr_y"], m["ssim_y"], m["psnr_rgb"], 1.0],
                                 dtype=torch.float64)
    if dist.is_initialized():
        sums = sums.to(device)
        dist.all_reduce(sums)
        sums = sums.cpu()
    loss, py, sy, prgb, n = sums.tolist()
    n = max(n, 1)
    return {"loss": loss / n, "psnr_y": py / n, "ssim_y": sy / n, "psnr_rgb": prgb / n, "num_images": int(n)}


# ----------------------------------------------------------------------------------------------------------
# settings, recipes and model names


@dataclass
class RestoreSettings(TaskSettings):
    """Restoration settings; the recipes hold the official SwinIR optimisation."""
    data: list[str] | None = setting(None, "folders of HR photographs (any PIL-readable images, searched "
                                           "recursively); several allowed", nargs="+")
    model: str | None = setting(None, "restoration variant, see swinkit.list_restoration_models() (default: the "
                                      "recipe's for --task-kind, --scale, --sigma / --quality)")
    pretrained: str | None = setting(None, "start from these weights: a SwinIR / Swin2SR file, a checkpoint or run "
                                           "directory, or 'official' for the variant's released weights")
    task_kind: str = setting("sr", "what to restore: sr (super-resolution), denoise or jpeg", choices=list(KINDS))
    scale: int | None = setting(None, "sr: up-scaling factor (default 2, or the --model's); 1 for denoise / jpeg")
    sigma: float = setting(25.0, "denoise: Gaussian noise sigma on the 0-255 scale", valid=">= 0")
    quality: int = setting(40, "jpeg: JPEG quality of the inputs (1-95)")
    loss: str | None = setting(None, "l1 (default for sr) or charbonnier (default for denoise / jpeg), as the "
                                     "official code", choices=["l1", "charbonnier"])
    charbonnier_eps: float = setting(1e-9, "charbonnier: sqrt(d^2 + eps^2)", valid="> 0")
    val_data: str | None = setting(None, "validation folder: HR/ with LR_bicubic/X{s}/ (Set5, ...) or images "
                                         "degraded on the fly (default: --val-images held out of --data)")
    val_images: int = setting(4, "images of --data held out for validation when there is no --val-data", valid=">= 1")
    repeat: int = setting(1, "random patches per training image per epoch", valid=">= 1")
    augment: bool = setting(True, "random flips and 90-degree rotations of the training patches")
    border: int | None = setting(None, "pixels shaved per side for the metrics (default: the scale for sr, 0 "
                                       "otherwise)")
    # model overrides (None: the variant's)
    img_size: int | None = setting(None, "training patch in input pixels (default: the model's img_size)")
    window_size: int | None = setting(None)
    embed_dim: int | None = setting(None)
    depths: list[int] | None = setting(None, "one entry per residual Swin transformer block group", nargs="+")
    num_heads: list[int] | None = setting(None, nargs="+")
    in_chans: int | None = setting(None, "1 for a grey model (default: the variant's)")
    drop_path_rate: float | None = setting(None, "stochastic depth (default: the variant's)")


ARCH_KEYS = ("img_size", "window_size", "embed_dim", "depths", "num_heads", "in_chans", "drop_path_rate")
# The official SwinIR optimisation (KAIR's train_swinir_*.json, the SwinIR paper): Adam (AdamW with weight decay 0)
# with betas (0.9, 0.99), lr 2e-4, no clipping or warmup, the lr halved at 50/80/90/95% of the run (500k
# iterations there). lrs are per the recipe's batch (lr_base_size). SR only: denoising and JPEG use the same with
# 128 / 126-pixel patches from their variants.
_OFFICIAL = dict(lr=2e-4, weight_decay=0.0, clip_grad=0.0, warmup_epochs=0.0, warmup_lr=2e-4, betas=[0.9, 0.99],
                 schedule="step", milestones=[0.5, 0.8, 0.9, 0.95], gamma=0.5, epochs=100)
RECIPES: dict[str, dict[str, Any]] = {
    "classical": dict(_OFFICIAL, batch_size=32, lr_base_size=32),     # SwinIR-M, 64-pixel patches (DF2K)
    "lightweight": dict(_OFFICIAL, batch_size=64, lr_base_size=64),   # SwinIR-S, 64-pixel patches (DIV2K)
}


def default_model(kind: str, scale: int, sigma: float, quality: int, recipe: str = "classical",
                  in_chans: int = 3) -> str:
    """The variant the SwinIR model zoo has for a task: classical / lightweight SR at `scale`, colour or grey
    denoising at the nearest trained sigma, JPEG at the nearest trained quality (the architecture is the same for
    every sigma / quality; the name picks the released weights)."""
    colour = "gray" if in_chans == 1 else "color"
    if kind == "denoise":
        return f"swinir_{colour}_dn_{min((15, 25, 50), key=lambda n: abs(n - sigma))}"
    if kind == "jpeg":
        return f"swinir_{colour}_jpeg_{min((10, 20, 30, 40), key=lambda q: abs(q - quality))}"
    name = f"swinir_{recipe}_x{scale}"
    if name not in SWINIR_VARIANTS:
        have = sorted(n for n in SWINIR_VARIANTS if n.startswith(f"swinir_{recipe}_x"))
        raise ValueError(f"no {recipe} SwinIR for x{scale} (there are {have}); pick --scale from those or a --model "
                         "(its architecture is then trained at --scale)")
    return name


def check_model_fits(cfg: SwinIRConfig, kind: str, scale: int) -> None:
    """Raise when a model's scale or reconstruction head cannot do the task."""
    if cfg.upscale != scale:
        raise ValueError(f"{cfg.name} up-scales x{cfg.upscale}, the task is x{scale}; choose a model of that scale")
    if (kind == "sr") != (cfg.upsampler != "none"):
        raise ValueError(f"{cfg.name} ({cfg.upsampler} head, x{cfg.upscale}) does not do {kind}: SR models have an "
                         "up-sampling head, denoising / JPEG models upsampler 'none'")


def charbonnier(x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.sqrt((x - y) ** 2 + eps**2).mean()


def split_files(folders: list[str], held_out: int, seed: int) -> tuple[list[Path], list[Path]]:
    """Image files of the training folders -> (train, val): `held_out` images drawn with `seed` go to val."""
    files = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"expected a folder of HR photographs at {folder}, but it does not exist")
        found = image_files(folder)
        if not found:
            raise ValueError(f"no images ({', '.join(IMG_EXTENSIONS)}) under {folder}")
        files += found
    if held_out and len(files) <= held_out:
        raise ValueError(f"{len(files)} image(s) in --data, too few to hold out --val-images {held_out} and train "
                         "on the rest; add images, lower --val-images or give --val-data")
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    val = sorted(files[i] for i in order[:held_out])
    return [files[i] for i in sorted(order[held_out:])], val


def restoration_meta(kind: str, scale: int, sigma: float, quality: int, border: int | None, in_chans: int) -> dict:
    """What a restoration checkpoint stores beside its weights (checkpoint_meta's "restoration")."""
    d = Degradation(kind, scale, sigma, quality)
    return {"task_kind": kind, "scale": scale, "sigma": sigma if kind == "denoise" else None,
            "quality": quality if kind == "jpeg" else None, "border": d.border if border is None else border,
            "in_chans": in_chans}


# ----------------------------------------------------------------------------------------------------------
# the task


class RestoreTask(Task):
    """Restore images (super-resolve, denoise, remove JPEG artefacts) learnt from folders of HR photographs."""

    name = "restore"
    primary_metric = "psnr_y"  # higher is better, as the loop's best.pt assumes
    Settings = RestoreSettings
    recipes = RECIPES
    default_recipe = "classical"
    plot_metrics = ("psnr_y", "psnr_rgb")
    collate_fn = staticmethod(collate)

    # ---- settings

    @classmethod
    def choose_recipe(cls, given: dict) -> tuple[str, str | None]:
        """lightweight for a lightweight --model, else classical."""
        return ("lightweight" if "lightweight" in (given.get("model") or "") else "classical"), None

    @classmethod
    def resolve(cls, flat: dict, given: dict) -> dict:
        """The scale (2, or the --model's, for sr; 1 otherwise), the model (default_model), the loss, and checks
        that the model can do the task."""
        if not flat["data"]:
            raise ValueError("the restore task trains on folders of HR photographs: pass --data DIR [DIR ...]")
        kind = flat["task_kind"]
        if flat["pretrained"] and flat["pretrained"] != "official":
            clash = [k for k in ("model", *ARCH_KEYS[1:]) if k in given]
            if clash:
                raise ValueError(f"--pretrained takes the architecture from the checkpoint; remove "
                                 f"{['--' + k.replace('_', '-') for k in clash]}")
        if flat["scale"] is None:
            named = flat["model"] in SWINIR_VARIANTS and kind == "sr"
            flat["scale"] = SwinIRConfig.from_name(flat["model"]).upscale if named else 2 if kind == "sr" else 1
        if flat["model"] is None:
            flat["model"] = default_model(kind, flat["scale"], flat["sigma"], flat["quality"], flat["recipe"],
                                          flat["in_chans"] or 3)
        if flat["model"] not in SWINIR_VARIANTS:
            raise ValueError(f"unknown restoration model {flat['model']!r}; choose one of {list(SWINIR_VARIANTS)}")
        Degradation(kind, flat["scale"], flat["sigma"], flat["quality"])  # validates them
        if not flat["pretrained"] or flat["pretrained"] == "official":
            check_model_fits(cls._config(flat), kind, flat["scale"])
        flat["img_size"] = flat["img_size"] or SwinIRConfig.from_name(flat["model"]).img_size
        flat["loss"] = flat["loss"] or ("l1" if kind == "sr" else "charbonnier")
        if flat["val_images"] < 0 or flat["repeat"] < 1:
            raise ValueError(f"expected --val-images >= 0 and --repeat >= 1, got {flat['val_images']} and "
                             f"{flat['repeat']}")
        return flat

    @staticmethod
    def _overrides(flat: dict) -> dict:
        """SwinIRConfig overrides of the variant: the architecture flags given, and the task's scale."""
        arch = {k: flat[k] for k in ARCH_KEYS if flat.get(k) is not None}
        if flat["task_kind"] == "sr" and SwinIRConfig.from_name(flat["model"]).upscale != flat["scale"]:
            arch["upscale"] = flat["scale"]
        return arch

    @classmethod
    def _config(cls, flat: dict) -> SwinIRConfig:
        cfg = SwinIRConfig.from_name(flat["model"], **cls._overrides(flat))
        if cfg.describe().startswith("custom"):
            cfg.name = "custom"  # a variant's name stays only on the variant's architecture
        return cfg

    # ---- training

    @property
    def degradation(self) -> Degradation:
        c = self.cfg
        return Degradation(c.task_kind, c.scale, c.sigma, c.quality)

    def build_datasets(self):
        """Training patches of --img-size input pixels (the variant's img_size by default) from --data, and whole
        validation images from --val-data or held out of --data."""
        c = self.cfg
        held_out = 0 if c.val_data else c.val_images
        train_files, val_files = split_files(c.data, held_out, self.settings.run.seed)
        if not c.val_data and not val_files:
            raise ValueError("no validation images: give --val-data DIR or --val-images N >= 1")
        self.train_ds = PatchDataset(train_files, self.degradation, c.img_size, augment=c.augment, repeat=c.repeat)
        self.val_ds = EvalDataset(Path(c.val_data) if c.val_data else val_files, self.degradation)
        return self.train_ds, self.val_ds

    def build_model(self, config: dict | None = None) -> nn.Module:
        """The model; the datasets then read images with its channel count (grey or RGB)."""
        model = self.model_from_config(config) if config else self._new_model()
        check_model_fits(model.cfg, self.cfg.task_kind, self.cfg.scale)
        self.in_chans = self.train_ds.channels = self.val_ds.channels = model.cfg.in_chans
        return model

    def _new_model(self) -> nn.Module:
        c = self.cfg
        if c.pretrained == "official":
            from ..factory import create_restoration_model

            return create_restoration_model(c.model, pretrained=True, **self._overrides(vars(c)))
        if c.pretrained:
            return load_restoration_model(c.pretrained)[0]
        return self.model_from_config(self._config(vars(c)).to_dict())

    def model_config(self, model: nn.Module) -> dict:
        return model.cfg.to_dict()

    @classmethod
    def model_from_config(cls, config: dict) -> nn.Module:
        return SwinIR(SwinIRConfig.from_dict(config))

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        lq, hr = (t.to(self.env.device, non_blocking=True) for t in batch)
        out = model(lq).float()
        if self.cfg.loss == "l1":
            return F.l1_loss(out, hr)
        return charbonnier(out, hr, self.cfg.charbonnier_eps)

    def evaluate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        border = self.meta["border"]
        m = evaluate(model, loader, self.env.device, border, self.env.amp_dtype, scale=self.cfg.scale)
        return {k: m[k] for k in ("loss", "psnr_y", "ssim_y", "psnr_rgb")}

    @property
    def meta(self) -> dict:
        c = self.cfg
        return restoration_meta(c.task_kind, c.scale, c.sigma, c.quality, c.border, self.in_chans)

    def checkpoint_meta(self) -> dict:
        return {"restoration": self.meta}

    def summary_extra(self) -> dict:
        return {"skipped_files": len(self.train_ds.skipped)}

    def describe_model(self, model: nn.Module) -> str:
        return model.cfg.describe()

    def describe_data(self, train, val) -> str:
        return (f"{len(self.train_ds.files)} training images ({len(train)} patches of {self.train_ds.patch}px per "
                f"epoch), val {val.describe()}; {self.degradation.describe()}")

    def describe(self, metrics: dict[str, float]) -> str:
        return describe_metrics(metrics)

    # ---- eval and predict

    @classmethod
    def load(cls, path: Path, ck: dict | None) -> Loaded:
        """A restoration checkpoint of `swinkit train`, or a SwinIR / Swin2SR file (see load_restoration_model)."""
        model, meta = load_restoration_model(path)
        return Loaded(cls, model, meta, path)

    @classmethod
    def add_eval_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--sigma", type=float, help="denoise: noise sigma (default: the checkpoint's)")
        parser.add_argument("--quality", type=int, help="jpeg: JPEG quality (default: the checkpoint's)")
        parser.add_argument("--border", type=int, help="pixels shaved per side (default: the checkpoint's)")
        add_tile_arguments(parser)

    @classmethod
    def run_eval(cls, loaded: Loaded, args: argparse.Namespace) -> tuple[dict, str]:
        m, device = loaded.meta, torch.device(args.device)
        if m["task_kind"] is None:
            raise ValueError(f"{loaded.path} does not say whether it denoises or removes JPEG artefacts; evaluate "
                             "a checkpoint of `swinkit train --task restore`")
        d = Degradation(m["task_kind"], m["scale"], args.sigma or m["sigma"] or 0.0, args.quality or m["quality"] or 40)
        border = m["border"] if args.border is None else args.border
        ds = EvalDataset(args.data, d, m["in_chans"])
        loader = DataLoader(ds, 1, num_workers=args.workers, collate_fn=collate)
        r = evaluate(loaded.model.to(device), loader, device, border, AMP_DTYPES[args.amp], args.tile,
                     args.tile_overlap, scale=m["scale"])
        result = {**{k: r[k] for k in ("psnr_y", "ssim_y", "psnr_rgb", "loss", "num_images")},
                  "task": d.describe(), "border": border, "checkpoint": str(args.checkpoint), "data": str(args.data),
                  "lq": "stored" if ds.lr_dir else "on the fly"}
        text = (f"{args.checkpoint} on {args.data} ({ds.describe()}; {d.describe()}, border {border})\n"
                f"{describe_metrics(r)}")
        return result, text

    @classmethod
    def add_predict_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", type=Path, default=Path("restored"), help="folder for the restored PNGs")
        add_tile_arguments(parser)

    @classmethod
    def run_predict(cls, loaded: Loaded, args: argparse.Namespace) -> int:
        """Restore args.images into args.out (as `swinkit restore --checkpoint`)."""
        return restore_files(loaded.model.to(args.device), loaded.meta, args.images, args.out,
                             torch.device(args.device), None, args.tile, args.tile_overlap, args.overwrite)


def load_restoration_model(path: str | Path) -> tuple[nn.Module, dict]:
    """(model in eval mode, its restoration meta) from a run directory (its best.pt), a `swinkit train --task
    restore` checkpoint, or a SwinIR / Swin2SR file that swinkit.load_model reads (the meta then follows from the
    model: sr when it up-scales, else task_kind None: denoising and JPEG models look alike)."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: expected a run directory of `swinkit train --task restore`, "
                                "its best.pt, or a SwinIR / Swin2SR weights file")
    ck = torch.load(path, map_location="cpu", weights_only=True) if path.suffix in (".pt", ".pth") else None
    if isinstance(ck, dict) and "model" in ck and "config" in ck:
        if ck.get("task") != "restore":
            raise ValueError(f"{path} is a checkpoint of the {ck.get('task', 'classify')} task, not a restoration "
                             "model; pass one of `swinkit train --task restore`")
        model = RestoreTask.model_from_config(ck["config"])
        model.load_state_dict(ck["model"])
        return model.eval(), dict(ck["restoration"])
    from ..io.load import load_model

    model = load_model(path)
    if not isinstance(model, SwinIR):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a restoration model (SwinIR / Swin2SR)")
    c = model.cfg
    meta = restoration_meta("sr", c.upscale, 0, 0, None, c.in_chans) if c.upscale > 1 else \
        {"task_kind": None, "scale": 1, "sigma": None, "quality": None, "border": 0, "in_chans": c.in_chans}
    return model.eval(), meta


def describe_metrics(m: dict) -> str:
    return "  ".join(f"{name} {m[k]:.{p}f}{unit}" for k, name, p, unit in (
        ("psnr_y", "PSNR-Y", 2, " dB"), ("ssim_y", "SSIM-Y", 4, ""), ("psnr_rgb", "PSNR-RGB", 2, " dB")) if k in m)


def add_tile_arguments(parser) -> None:
    parser.add_argument("--tile", type=int, help="restore in overlapping tiles of at most N x N input pixels "
                                                 "(default: whole images)")
    parser.add_argument("--tile-overlap", type=int, default=32, help="pixels tiles overlap by (default 32)")
