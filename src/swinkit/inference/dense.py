"""Whole-image inference of the dense tasks: sliding-window, multi-scale and flipped segmentation (the papers' "MS"
numbers), and restoration in overlapping tiles (as the official SwinIR test script), for images larger than a model
should see at once."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets covering [0, size): every `stride`, the last one flush with the end."""
    n = max(size - window + stride - 1, 0) // stride + 1
    return [min(i * stride, size - window) for i in range(n)]


def slide_logits(model: nn.Module, x: torch.Tensor, window: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """(B, 3, H, W) -> (B, classes, H, W) logits averaged over the windows that cover each pixel. Windows are
    `window` (h, w), clipped to the image, every `stride`; the last row and column sit at the image's edge."""
    H, W = x.shape[-2:]
    wh, ww = min(window[0], H), min(window[1], W)
    out, count = None, x.new_zeros(1, 1, H, W)
    for top in window_starts(H, wh, stride[0]):
        for left in window_starts(W, ww, stride[1]):
            y = model(x[..., top:top + wh, left:left + ww]).float()  # (B, classes, wh, ww)
            if out is None:
                out = y.new_zeros(x.shape[0], y.shape[1], H, W)
            out[..., top:top + wh, left:left + ww] += y
            count[..., top:top + wh, left:left + ww] += 1
    return out / count


def logits(model: nn.Module, x: torch.Tensor, window: tuple[int, int] | None = None,
           stride: tuple[int, int] | None = None) -> torch.Tensor:
    """Whole-image logits, or sliding-window ones when `window` is given (stride defaults to 2/3 of it)."""
    if window is None:
        return model(x).float()
    stride = stride or tuple(max(1, 2 * w // 3) for w in window)
    return slide_logits(model, x, window, stride)


@torch.no_grad()
def infer(model: nn.Module, x: torch.Tensor, window: tuple[int, int] | None = None,
          stride: tuple[int, int] | None = None, scales: tuple[float, ...] = (1.0,),
          flip: bool = False) -> torch.Tensor:
    """(B, 3, H, W) -> (B, classes, H, W) class probabilities. With several `scales` and/or `flip` (the papers'
    multi-scale "MS" numbers), the softmax of each resized / flipped pass, brought back to (H, W), is averaged."""
    H, W = x.shape[-2:]
    total, n = None, 0
    for s in scales:
        xs = x if s == 1 else F.interpolate(x, size=(max(1, round(H * s)), max(1, round(W * s))), mode="bilinear",
                                            align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            y = logits(model, xs.flip(-1) if flipped else xs, window, stride)
            y = y.flip(-1) if flipped else y
            if y.shape[-2:] != (H, W):
                y = F.interpolate(y, size=(H, W), mode="bilinear", align_corners=False)
            p = y.softmax(1)
            total, n = (p if total is None else total + p), n + 1
    return total / n


def tile_starts(n: int, tile: int, stride: int) -> list[int]:
    """Tile offsets covering [0, n): every `stride`, the last one flush with the end."""
    return [*range(0, n - tile, stride), n - tile]


@torch.no_grad()
def restore_tensor(model: nn.Module, x: torch.Tensor, scale: int, tile: int | None = None, overlap: int = 32,
                   progress: bool = False) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> (B, C, sH, sW): the whole image at once, or with `tile` overlapping tiles of at
    most tile x tile (clamped per axis to the image, so a tile no smaller than the image is one whole-image call)
    whose outputs are summed and divided by how many tiles covered each pixel, as the official test script does."""
    if not tile:
        return model(x)
    H, W = x.shape[-2:]
    th, tw = min(tile, H), min(tile, W)
    if not 0 <= overlap < min(th, tw):
        raise ValueError(f"expected 0 <= --tile-overlap < the tile ({th}x{tw} here), got {overlap}")
    corners = [(i, j) for i in tile_starts(H, th, th - overlap) for j in tile_starts(W, tw, tw - overlap)]
    out = weight = None
    from tqdm import tqdm

    for i, j in tqdm(corners, desc="tiles", leave=False, disable=not progress or len(corners) == 1):
        y = model(x[..., i:i + th, j:j + tw]).float()  # (B, C, s*th, s*tw)
        if out is None:
            out = x.new_zeros((x.shape[0], y.shape[1], H * scale, W * scale), dtype=torch.float32)
            weight = x.new_zeros((1, 1, H * scale, W * scale), dtype=torch.float32)
        out[..., i * scale:(i + th) * scale, j * scale:(j + tw) * scale] += y
        weight[..., i * scale:(i + th) * scale, j * scale:(j + tw) * scale] += 1
    return out / weight
