"""`swinkit viz FIGURE`: how Swin works, drawn from the model's own code - never from a re-implementation.

Windows and regions come from `window_and_shift`, `padded_size`, `window_order` (the blocks' gather) and
`shift_regions`; masks are the cached `SwinBlock.attention_mask` the blocks use in forward, with the
`window_labels` they are built from; position biases come from
`WindowAttention.position_bias`; attention maps from a real forward with `WindowAttention.keep_attn`;
receptive fields from autograd through the model; cost from `FlopCounterMode` on the models themselves.

Every figure is two functions: `<name>_data(...) -> dict` (the numbers behind it, checked by the tests) and
`<name>(...) -> (matplotlib Figure, dict)`. Sizes are (H, W) in pixels; token maps are (h, w). A video model
(swinkit.list_video_models()) takes (T, H, W) clips: `windows` and `mask` then draw the 3-D windows and mask,
frame by frame (video_windows, video_mask).
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.collections import LineCollection
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator
from torch.utils.flop_counter import FlopCounterMode

from ..io.files import atomic_write
from ..config import VIDEO_VARIANTS, SwinConfig, VideoSwinConfig
from ..counting import count_macs, count_params
from ..nn.mixers.window import GlobalMixer, WindowMixer
from ..factory import create_model
from ..models.swin import SwinTransformer
from ..models.video import VideoSwinTransformer
from ..nn.windows import (padded_size, relative_position_index, shift_regions, window_and_shift, window_labels,
                          window_order, window_partition)

Pair = tuple[int, int]
FIGURES = ("windows", "mask", "bias", "attention", "receptive-field", "complexity", "simmim")
CPU = torch.device("cpu")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet normalisation of the model's input
PAD_RGBA = (0.25, 0.25, 0.25, 0.55)  # hatch over padded tokens
REGION_COLORS = colormaps["tab10"].colors[:9]  # one colour per shift region label 0..8
STRIP_COLORS = REGION_COLORS + ((0.0, 0.0, 0.0),)  # and black for padding (label -1 indexes the last)
# global-attention ViTs at patch 16 (torchvision VisionTransformer arguments); the closest in size is compared
VITS = {
    "ViT-Ti/16": dict(hidden_dim=192, num_layers=12, num_heads=3, mlp_dim=768),
    "ViT-S/16": dict(hidden_dim=384, num_layers=12, num_heads=6, mlp_dim=1536),
    "ViT-B/16": dict(hidden_dim=768, num_layers=12, num_heads=12, mlp_dim=3072),
    "ViT-L/16": dict(hidden_dim=1024, num_layers=24, num_heads=16, mlp_dim=4096),
}


# ----------------------------------------------------------------------------------------------------------
# inputs: image, model, token maps


def load_image(path: str | Path | None = None, size: Pair | None = None) -> torch.Tensor:
    """(3, H, W) float image in [0, 1]: the file at `path` (JPEG/PNG/...), or scikit-image's astronaut
    photograph when None; resized to `size` (H, W) when given."""
    if path is None:
        from skimage import data

        img = torch.from_numpy(data.astronaut()).permute(2, 0, 1)  # (3, 512, 512) uint8
    else:
        from torchvision.io import ImageReadMode, decode_image

        if not Path(path).is_file():
            raise FileNotFoundError(f"image {path} not found: give a JPEG/PNG file, or no image to use a "
                                    "sample photograph")
        try:
            img = decode_image(str(path), mode=ImageReadMode.RGB)  # (3, H, W) uint8
        except RuntimeError as e:
            raise ValueError(f"could not decode image {path} ({e}); expected a JPEG, PNG, GIF or WEBP file") from e
    img = img.float() / 255
    return img if size is None else resize(img, size)


def resize(image: torch.Tensor, size: Pair) -> torch.Tensor:
    """(3, h, w) -> (3, H, W) in [0, 1], antialiased bilinear."""
    out = F.interpolate(image[None], size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return out[0].clamp(0, 1)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> (1, 3, H, W) model input (ImageNet mean/std)."""
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (MEAN, STD))
    return ((image - mean) / std)[None]


def stage_sizes(model: SwinTransformer, size: Pair) -> list[Pair]:
    """(h, w) token map ((t, h, w) for video) that each stage's blocks see for an input of `size`, from a
    forward of a twin of the model on the meta device (no memory, no compute)."""
    with torch.device("meta"):
        twin = type(model)(model.cfg)
    sizes = []
    for layer in twin.layers:
        layer.blocks[0].register_forward_pre_hook(lambda m, a: sizes.append(tuple(a[0].shape[1:-1])))
    twin.forward_features(torch.zeros(1, model.cfg.in_chans, *size, device="meta"))
    return sizes


def token_px(model: SwinTransformer, stage: int) -> int:
    """Pixels per token side at `stage` (patch size times the merges so far)."""
    return model.cfg.patch[-1] * 2**stage


def window_slots(feat: Pair, win: Pair, shift: Pair) -> torch.Tensor:
    """(nW, N) index into the flattened padded map of the token in each window slot: the gather order of
    SwinBlock (`window_order`: pad, roll by -shift, partition)."""
    return window_order(feat, win, shift, CPU)[0].view(-1, math.prod(win))


def window_map(slots: torch.Tensor, padded: Pair) -> torch.Tensor:
    """(nW, N) slots -> (Hp, Wp) (or (Tp, Hp, Wp)) map of the window index of every token, unrolled layout."""
    out = torch.empty(math.prod(padded), dtype=torch.long)
    out[slots.flatten()] = torch.arange(slots.shape[0]).repeat_interleave(slots.shape[1])
    return out.view(padded)


def pieces(ids: np.ndarray) -> list[tuple[int, int, int, int, int]]:
    """Rectangles (id, y0, y1, x0, x1) of a map whose ids each cover a product of row runs and column runs
    (a window, possibly split by the wrap-around of the cyclic shift)."""
    out = []
    for i in np.unique(ids):
        ys, xs = np.nonzero(ids == i)
        for y0, y1 in _runs(np.unique(ys)):
            for x0, x1 in _runs(np.unique(xs)):
                out.append((int(i), y0, y1, x0, x1))
    return out


def _runs(v: np.ndarray) -> list[Pair]:
    """Sorted integers -> [start, stop) of their consecutive runs."""
    cuts = np.nonzero(np.diff(v) > 1)[0]
    starts, stops = np.r_[v[0], v[cuts + 1]], np.r_[v[cuts] + 1, v[-1] + 1]
    return list(zip(starts.tolist(), stops.tolist()))


def parse_block(model: SwinTransformer, spec: str | tuple[int, int]) -> tuple[int, int]:
    """'S.J' (stage S, block J) or a flat block index 'K' -> (stage, block)."""
    depths = model.cfg.depths
    where = f"the model has {len(depths)} stages with depths {depths}; use STAGE.BLOCK such as 0.1"
    try:
        if isinstance(spec, tuple):
            s, j = spec
        elif "." in str(spec):
            s, j = (int(v) for v in str(spec).split("."))
        else:
            k = int(spec)
            s = next(i for i in range(len(depths)) if k < sum(depths[:i + 1]))
            j = k - sum(depths[:s])
    except (ValueError, StopIteration):
        raise ValueError(f"block {spec!r} not found: {where}") from None
    if not (0 <= s < len(depths) and 0 <= j < depths[s]):
        raise ValueError(f"block {spec!r} not found: {where}")
    return s, j


# ----------------------------------------------------------------------------------------------------------
# drawing helpers


def _edges(ax, ids: np.ndarray, t: float, border: bool = True, **kw) -> None:
    """Lines between neighbouring tokens of different ids, and the border; ids (h, w), t pixels per token."""
    h, w = ids.shape
    ys, xs = np.nonzero(ids[1:] != ids[:-1])
    segs = [((x * t, (y + 1) * t), ((x + 1) * t, (y + 1) * t)) for y, x in zip(ys, xs)]
    ys, xs = np.nonzero(ids[:, 1:] != ids[:, :-1])
    segs += [(((x + 1) * t, y * t), ((x + 1) * t, (y + 1) * t)) for y, x in zip(ys, xs)]
    if border:
        corners = [(0, 0), (w * t, 0), (w * t, h * t), (0, h * t)]
        segs += list(zip(corners, corners[1:] + corners[:1]))
    ax.add_collection(LineCollection(segs, **kw))


def _tokens_rgba(values: np.ndarray, t: int, colors, alpha: float = 1.0) -> np.ndarray:
    """(h, w) int map -> (h*t, w*t, 4) RGBA image, colors[value] or transparent where value < 0."""
    table = np.array([tuple(c)[:3] + (alpha,) for c in colors] + [(0, 0, 0, 0)])
    rgba = table[np.where(values < 0, len(colors), values)]
    return rgba.repeat(t, 0).repeat(t, 1)


def _hatch(pad: np.ndarray, t: int) -> np.ndarray:
    """(h, w) bool map -> (h*t, w*t, 4) RGBA diagonal stripes over the True tokens."""
    px = pad.repeat(t, 0).repeat(t, 1)
    yy, xx = np.indices(px.shape)
    stripes = px & ((yy + xx) % 8 < 3)
    out = np.zeros(px.shape + (4,))
    out[stripes] = PAD_RGBA
    return out


def _canvas(image: torch.Tensor, padded: Pair, t: int) -> np.ndarray:
    """The image on a light-grey (Hp*t, Wp*t, 3) canvas covering the padded token map."""
    canvas = np.full((padded[0] * t, padded[1] * t, 3), 0.85)
    img = image.permute(1, 2, 0).numpy()
    canvas[:img.shape[0], :img.shape[1]] = img[:canvas.shape[0], :canvas.shape[1]]
    return canvas


def _show(ax, rgb: np.ndarray, title: str) -> None:
    ax.imshow(rgb, extent=(0, rgb.shape[1], rgb.shape[0], 0), interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")


def _label_pieces(ax, ids: np.ndarray, t: int, corner: bool = False) -> None:
    """Write each piece's id at its centre (or its top-left corner)."""
    for i, y0, y1, x0, x1 in pieces(ids):
        y, x = (y0 * t + 2, x0 * t + 2) if corner else ((y0 + y1) / 2 * t, (x0 + x1) / 2 * t)
        ax.text(x, y, str(i), ha="left" if corner else "center", va="top" if corner else "center", fontsize=9,
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75))


# ----------------------------------------------------------------------------------------------------------
# windows: regular, shifted, cyclic shift (the papers' figures 2 and 4)


def window_mixers(model, stage: int) -> list:
    """The window mixers of stage `stage`'s blocks; ValueError when the stage mixes tokens otherwise."""
    mixers = [b.attn for b in model.layers[stage].blocks]
    if not all(isinstance(m, WindowMixer) and not isinstance(m, GlobalMixer) for m in mixers):
        raise ValueError(f"this figure draws window attention, and stage {stage} of this model uses the "
                         f"{model.cfg.mixer[stage]!r} mixer; choose a stage with shifted_window or window mixers "
                         "(--stage)")
    return mixers


def windows_data(model: SwinTransformer, size: Pair, stage: int = 0) -> dict:
    """Partition of stage `stage` for an input of `size`: regular (W-MSA) and shifted (SW-MSA) window index
    of every token (Hp, Wp), the shift regions of the rolled map, padding, and the counts."""
    feat = stage_sizes(model, size)[stage]
    blocks = window_mixers(model, stage)
    win, _ = window_and_shift(feat, blocks[0].window, blocks[0].shift)
    shifted = next((b for b in blocks if b.shift), None)
    shift = window_and_shift(feat, shifted.window, True)[1] if shifted else (0, 0)
    padded = padded_size(feat, win)
    slots_regular, slots_shifted = window_slots(feat, win, (0, 0)), window_slots(feat, win, shift)
    regions = shift_regions(feat, win, shift, CPU).clone()  # (Hp, Wp), rolled layout
    per_window = window_partition(regions[None, ..., None], win)[..., 0]  # (nW, N)
    pad = torch.ones(padded, dtype=torch.bool)
    pad[:feat[0], :feat[1]] = False
    shifted_map = window_map(slots_shifted, padded)
    return dict(size=tuple(size), stage=stage, feat=feat, window=win, shift=shift, padded=padded,
                token_px=token_px(model, stage), grid=(padded[0] // win[0], padded[1] // win[1]),
                n_windows=slots_regular.shape[0], regular=window_map(slots_regular, padded),
                shifted=shifted_map, slots_regular=slots_regular, slots_shifted=slots_shifted,
                regions=regions, regions_per_window=torch.tensor([len(r.unique()) for r in per_window]),
                n_pieces=len(pieces(shifted_map.numpy())), pad=pad, has_shifted_block=shifted is not None)


def windows(model: SwinTransformer, image: torch.Tensor, stage: int = 0, label: str | None = None):
    """Three panels over `image` (3, H, W): (a) regular windows, (b) shifted windows in image layout (same
    number = batched as one window), (c) the cyclic-shift view with its regions. Returns (Figure, data)."""
    d = windows_data(model, tuple(image.shape[1:]), stage)
    t, (gh, gw), s = d["token_px"], d["grid"], d["shift"]
    canvas, pad = _canvas(image, d["padded"], t), d["pad"].numpy()
    (h, w), (Hp, Wp), M = d["feat"], d["padded"], d["window"]
    fig = Figure(figsize=(17, 5.4 * Hp / Wp + 1.5), layout="constrained")
    axes = fig.subplots(1, 3)
    regular, shifted = d["regular"].numpy(), d["shifted"].numpy()
    _show(axes[0], canvas,
          f"(a) block {stage}.0, W-MSA: {gh}x{gw} = {d['n_windows']} windows of {M[0]}x{M[1]} tokens")
    axes[0].imshow(_tokens_rgba(regular % len(REGION_COLORS), t, REGION_COLORS, 0.18), extent=_ext(canvas))
    if max(h, w) <= 64:
        _edges(axes[0], np.arange(Hp * Wp).reshape(Hp, Wp), t, colors="white", linewidths=0.3, alpha=0.5)
    _edges(axes[0], regular, t, colors="black", linewidths=2)
    _label_pieces(axes[0], regular, t)
    if d["has_shifted_block"]:
        title = (f"(b) block {stage}.1, SW-MSA: shifted by {s} tokens: {d['n_pieces']} pieces,\n"
                 f"batched as {d['n_windows']} windows (same number = same window)")
    else:
        title = "(b) this stage has no shifted block (depth 1 or shift=False)"
    _show(axes[1], canvas, title)
    axes[1].imshow(_tokens_rgba(shifted % len(REGION_COLORS), t, REGION_COLORS, 0.35), extent=_ext(canvas))
    _edges(axes[1], shifted, t, colors="black", linewidths=2)
    _label_pieces(axes[1], shifted, t)
    _draw_cyclic(axes[2], d, canvas)
    for ax, p in zip(axes, (pad, pad, np.roll(pad, (-s[0], -s[1]), (0, 1)))):
        ax.imshow(_hatch(p, t), extent=_ext(canvas))
    H, W = d["size"]
    note = f", padded to {Hp}x{Wp} (hatched)" if (Hp, Wp) != (h, w) else ""
    fig.suptitle(f"Swin windows, stage {stage} of {label or model.cfg.name}: {H}x{W} image -> {h}x{w} tokens of "
                 f"{t}x{t} px{note}", fontsize=12)
    if note:
        fig.legend(handles=[Patch(facecolor="white", edgecolor="0.25", hatch="///", label="padding tokens "
                                  "(masked as keys with -inf)")], loc="outside lower center", fontsize=9)
    return fig, d


def _ext(rgb: np.ndarray) -> tuple:
    return (0, rgb.shape[1], rgb.shape[0], 0)


def _draw_cyclic(ax, d: dict, canvas: np.ndarray) -> None:
    """(c): the image rolled by -shift (as SwinBlock does), regular windows, tokens tinted by shift region."""
    t, s = d["token_px"], d["shift"]
    rolled = np.roll(canvas, (-s[0] * t, -s[1] * t), (0, 1))
    ids = np.roll(d["shifted"].numpy(), (-s[0], -s[1]), (0, 1))  # the windows are a regular grid again
    regions = d["regions"].numpy()
    n_sub = int(d["regions_per_window"].sum())
    _show(ax, rolled, f"(c) cyclic shift (roll by -{s}): {d['n_windows']} windows, the mask keeps\n"
                      f"their {n_sub} sub-windows apart (colour = region of shift_regions)")
    ax.imshow(_tokens_rgba(np.where(regions == 0, -1, regions), t, REGION_COLORS, 0.45),
              extent=_ext(rolled))
    _edges(ax, regions + 9 * ids, t, colors="black", linewidths=0.8, linestyles="--")
    _edges(ax, ids, t, colors="black", linewidths=2)
    _label_pieces(ax, ids, t, corner=True)


# ----------------------------------------------------------------------------------------------------------
# mask: the additive masks of a shifted block, one panel per window


def mask_data(model: SwinTransformer, size: Pair, stage: int = 0) -> dict:
    """The (nW, N, N) mask that stage `stage`'s shifted block (or its first block when none shifts) uses on
    an input of `size` - the very cached tensor of `SwinBlock.attention_mask` - and the labels it is built
    from (nW, N): the shift region of each window slot, -1 for padding (`window_labels`)."""
    feat = stage_sizes(model, size)[stage]
    blocks = window_mixers(model, stage)
    j = next((i for i, b in enumerate(blocks) if b.shift), 0)
    mask = blocks[j].attention_mask(*feat, CPU)
    if mask is None:
        raise ValueError(f"stage {stage}, block {j} uses no mask for a {size[0]}x{size[1]} input: its {feat[0]}x"
                         f"{feat[1]} token map needs neither a shift nor padding; use a larger --size")
    win, shift = window_and_shift(feat, blocks[j].window, blocks[j].shift)
    padded = padded_size(feat, win)
    regions = window_labels(feat, win, shift, CPU)  # (nW, N)
    return dict(size=tuple(size), stage=stage, block=(stage, j), feat=feat, window=win, shift=shift,
                padded=padded, grid=(padded[0] // win[0], padded[1] // win[1]), mask=mask, regions=regions)


def mask(model: SwinTransformer, size: Pair, stage: int = 0, label: str | None = None, max_side: int = 3):
    """One panel per window (the last `max_side` x `max_side` windows when there are more, where the
    regions are): 0 = attend, -100 = other region, -inf = padded key. Returns (Figure, data)."""
    d = mask_data(model, size, stage)
    (gh, gw), N = d["grid"], d["mask"].shape[-1]
    rows, cols = range(max(0, gh - max_side), gh), range(max(0, gw - max_side), gw)
    fig = Figure(figsize=(3.3 * len(cols) + 1.6, 3.3 * len(rows) + 1.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), len(cols), squeeze=False))
    cmap = ListedColormap(["#f7f4ea", "#34495e", "#d9534f"])
    for (r, c), ax in zip([(r, c) for r in rows for c in cols], axes.flat):
        k = r * gw + c
        m = d["mask"][k].numpy()
        cat = np.where(np.isinf(m), 2, np.where(m < 0, 1, 0))
        im = ax.imshow(cat, cmap=cmap, vmin=-0.5, vmax=2.5, extent=(0, N, N, 0), interpolation="nearest")
        reg = d["regions"][k].numpy()
        strip = np.where(reg < 0, len(REGION_COLORS), reg)  # padding: the black after the region colours
        ax.imshow(_tokens_rgba(strip[None], 1, STRIP_COLORS), extent=(0, N, -0.5, -N * 0.06 - 0.5))
        ax.imshow(_tokens_rgba(strip[:, None], 1, STRIP_COLORS), extent=(-N * 0.06 - 0.5, -0.5, N, 0))
        ax.set_xlim(-N * 0.06 - 0.5, N)
        ax.set_ylim(N, -N * 0.06 - 0.5)
        ax.set_title(f"window {k} (row {r}, col {c}): regions {sorted(set(reg[reg >= 0].tolist()))}", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("key slot in window")
    for ax in axes[:, 0]:
        ax.set_ylabel("query slot in window")
    cb = fig.colorbar(im, ax=axes, ticks=[0, 1, 2], shrink=0.6)
    cb.ax.set_yticklabels(["0: attend", "-100: other\nregion", "-inf: padded\nkey"])
    used = sorted(set(d["regions"].flatten().tolist()))
    fig.legend(handles=[Patch(color=STRIP_COLORS[i], label=f"region {i}" if i >= 0 else "padding") for i in used],
               loc="outside lower center", ncol=len(used), fontsize=8, title_fontsize=8,
               title="strips above / left of each panel: label of each slot (window_labels)")
    shown = "" if (len(rows), len(cols)) == (gh, gw) else f" (last {len(rows)}x{len(cols)} of {gh}x{gw} windows)"
    (H, W), (h, w), s = d["size"], d["feat"], d["shift"]
    fig.suptitle(f"Attention masks of block {stage}.{d['block'][1]}{shown}, {label or model.cfg.name}: {H}x{W} "
                 f"input -> {h}x{w} tokens, window {d['window'][0]}x{d['window'][1]}, shift {s}", fontsize=11)
    return fig, d


# ----------------------------------------------------------------------------------------------------------
# video: 3-D windows and the 3-D shift mask, frame by frame


def video_windows_data(model: VideoSwinTransformer, size: Pair, stage: int = 0) -> dict:
    """3-D partition of stage `stage` for a (T, H, W) clip: the window index of every token of the padded
    (Tp, Hp, Wp) map for the regular and the shifted block (the blocks' own gather), the shift regions and
    padding."""
    feat = stage_sizes(model, size)[stage]
    blocks = window_mixers(model, stage)
    win, _ = blocks[0].window_and_shift(*feat)
    shifted = next((b for b in blocks if b.shift), None)
    shift = shifted.window_and_shift(*feat)[1] if shifted else (0,) * 3
    padded = padded_size(feat, win)
    regular, moved = window_map(window_slots(feat, win, (0,) * 3), padded), window_map(window_slots(feat, win, shift),
                                                                                      padded)
    pad = torch.ones(padded, dtype=torch.bool)
    pad[:feat[0], :feat[1], :feat[2]] = False
    return dict(size=tuple(size), stage=stage, feat=feat, window=win, shift=shift, padded=padded,
                n_windows=int(regular.max()) + 1, regular=regular, shifted=moved, pad=pad,
                regions=shift_regions(feat, win, shift, CPU).clone(), has_shifted_block=shifted is not None)


def video_windows(model: VideoSwinTransformer, size: Pair, stage: int = 0, label: str | None = None):
    """Two rows of one panel per token frame of the padded map: (a) the regular 3-D windows, (b) the shifted
    ones in clip layout (same number = one window, which spans several frames). Returns (Figure, data)."""
    d = video_windows_data(model, size, stage)
    (Tp, Hp, Wp), win, s = d["padded"], d["window"], d["shift"]
    fig = Figure(figsize=(2.2 * Tp + 1, 2.2 * 2 * Hp / Wp + 1.6), layout="constrained")
    axes = fig.subplots(2, Tp, squeeze=False)
    colors = colormaps["tab20"].colors
    for row, key in enumerate(("regular", "shifted")):
        ids = d[key].numpy()
        for t in range(Tp):
            ax = axes[row, t]
            ax.imshow(_tokens_rgba(ids[t] % len(colors), 1, colors, 0.6), extent=(0, Wp, Hp, 0),
                      interpolation="nearest")
            ax.imshow(_hatch(d["pad"][t].numpy(), 8), extent=(0, Wp, Hp, 0))
            _edges(ax, ids[t], 1, colors="black", linewidths=1.5)
            for i, y0, y1, x0, x1 in pieces(ids[t]):
                ax.text((x0 + x1) / 2, (y0 + y1) / 2, str(i), ha="center", va="center", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"token frame {t}" + (" (padding)" if t >= d["feat"][0] else ""), fontsize=8)
        what = "W-MSA, regular windows" if key == "regular" else (
            f"SW-MSA, shifted by {s}" if d["has_shifted_block"] else "no shifted block in this stage")
        axes[row, 0].set_ylabel(f"({'ab'[row]}) {what}", fontsize=9)
    (T, H, W), (t, h, w) = d["size"], d["feat"]
    fig.suptitle(f"Video Swin windows, stage {stage} of {label or model.cfg.name}: {T}x{H}x{W} clip -> {t}x{h}x{w} "
                 f"tokens, window {'x'.join(map(str, win))}, {d['n_windows']} windows (padding hatched)", fontsize=11)
    return fig, d


def video_mask_data(model: VideoSwinTransformer, size: Pair, stage: int = 0) -> dict:
    """The (nW, N, N) mask of stage `stage`'s shifted block on a (T, H, W) clip (the block's own cached
    `attention_mask`), its slot labels (`window_labels`), and the window with the most regions."""
    feat = stage_sizes(model, size)[stage]
    blocks = window_mixers(model, stage)
    j = next((i for i, b in enumerate(blocks) if b.shift), 0)
    mask = blocks[j].attention_mask(*feat, CPU)
    if mask is None:
        raise ValueError(f"stage {stage}, block {j} uses no mask for a {'x'.join(map(str, size))} clip: its "
                         f"{'x'.join(map(str, feat))} token map needs neither a shift nor padding; use a larger --size")
    win, shift = blocks[j].window_and_shift(*feat)
    labels = window_labels(feat, win, shift, CPU, blocks[j].mask_padding)  # (nW, N)
    k = int(torch.tensor([len(r.unique()) for r in labels]).argmax())
    return dict(size=tuple(size), stage=stage, block=(stage, j), feat=feat, window=win, shift=shift,
                mask=mask, labels=labels, window_index=k)


def video_mask(model: VideoSwinTransformer, size: Pair, stage: int = 0, label: str | None = None):
    """The N x N mask of the window with the most regions (N = t*h*w slots, frame by frame; 0 attend, -100 other
    region, -inf padded key) beside the region label of each of its slots, one small grid per frame."""
    d = video_mask_data(model, size, stage)
    k, (wt, wh, ww) = d["window_index"], d["window"]
    m, lab = d["mask"][k].numpy(), d["labels"][k].view(wt, wh, ww).numpy()
    N = m.shape[0]
    fig = Figure(figsize=(6 + 1.6 * wt, 5.4), layout="constrained")
    grid = fig.add_gridspec(2, wt + 1, width_ratios=[4] + [1] * wt, height_ratios=[1, 1])
    ax = fig.add_subplot(grid[:, 0])
    cat = np.where(np.isinf(m), 2, np.where(m < 0, 1, 0))
    im = ax.imshow(cat, cmap=ListedColormap(["#f7f4ea", "#34495e", "#d9534f"]), vmin=-0.5, vmax=2.5,
                   extent=(0, N, N, 0), interpolation="nearest")
    for t in range(1, wt):  # frame boundaries inside the window
        ax.axhline(t * wh * ww, color="0.5", lw=0.6)
        ax.axvline(t * wh * ww, color="0.5", lw=0.6)
    ax.set_xlabel("key slot (frame-major: t, then h, w)")
    ax.set_ylabel("query slot")
    ax.set_title(f"window {k}: {N} x {N} mask", fontsize=10)
    cb = fig.colorbar(im, ax=ax, ticks=[0, 1, 2], shrink=0.6)
    cb.ax.set_yticklabels(["0: attend", "-100: other\nregion", "-inf: padded\nkey"])
    for t in range(wt):
        sub = fig.add_subplot(grid[0, t + 1])
        sub.imshow(_tokens_rgba(np.where(lab[t] < 0, len(colormaps["tab20"].colors), lab[t] % 20), 1,
                                colormaps["tab20"].colors + ((0, 0, 0),)), interpolation="nearest")
        for (y, x), v in np.ndenumerate(lab[t]):
            sub.text(x, y, "pad" if v < 0 else str(v), ha="center", va="center", fontsize=6)
        sub.set_xticks([])
        sub.set_yticks([])
        sub.set_title(f"slot frame {t}", fontsize=8)
    fig.text(0.75, 0.25, "region label of each slot (window_labels):\nmixed radix 3, one digit per axis (t, h, w)",
             ha="center", fontsize=9)
    (T, H, W) = d["size"]
    fig.suptitle(f"3-D shift mask of block {stage}.{d['block'][1]}, {label or model.cfg.name}: {T}x{H}x{W} clip, "
                 f"window {wt}x{wh}x{ww}, shift {d['shift']}", fontsize=11)
    return fig, d


# ----------------------------------------------------------------------------------------------------------
# position bias: V1 tables, V2 continuous bias and its extrapolation


def offset_table(attn, win: Pair) -> torch.Tensor:
    """(heads, 2wh-1, 2ww-1) bias of `attn.position_bias(win)` indexed by offset (query - key) + (win - 1)."""
    bias = attn.position_bias(win).detach().float().cpu()  # (heads, N, N)
    index = relative_position_index(win, win, CPU)  # (N, N)
    table = torch.zeros(bias.shape[0], (2 * win[0] - 1) * (2 * win[1] - 1))
    table[:, index.flatten()] = bias.flatten(1)
    return table.view(-1, 2 * win[0] - 1, 2 * win[1] - 1)


def bias_data(model: SwinTransformer, block: str | tuple[int, int] = (0, 0), extrapolate: int | None = None) -> dict:
    """Position bias of a block by offset. V2 also: the bias at a larger window (default twice the window)
    with offsets normalised as at training - how the continuous bias extrapolates."""
    s, j = parse_block(model, block)
    attn = model.layers[s].blocks[j].attn
    if not attn.use_rel_pos:
        raise ValueError(f"this model has no relative position bias (pos_embed={model.cfg.pos_embed!r})")
    d = dict(block=(s, j), version=model.cfg.version, window=attn.window, heads=attn.num_heads)
    with torch.no_grad():
        d["table"] = offset_table(attn, attn.window)
        if model.cfg.version == 2:
            twin = copy.copy(attn)  # same parameters; offsets normalised as this window normalises them
            twin.pretrained_window = tuple(p or w for p, w in zip(attn.pretrained_window, attn.window))
            big = (extrapolate,) * 2 if extrapolate else tuple(2 * w for w in attn.window)
            d.update(big_window=big, big_table=offset_table(twin, big), normalizer=twin.pretrained_window)
    return d


def bias(model: SwinTransformer, block: str | tuple[int, int] = (0, 0), extrapolate: int | None = None,
         label: str | None = None):
    """V1: one (2M-1)x(2M-1) heatmap per head. V2: heatmaps at the larger window (dashed square = offsets
    seen in training) and a cut along dy = 0. Axes are the key's offset from the query. Returns (Fig, data)."""
    d = bias_data(model, block, extrapolate)
    tables = d["big_table"] if d["version"] == 2 else d["table"]
    heads, cols = d["heads"], min(d["heads"], 6)
    rows = math.ceil(heads / cols)
    extra = 1 if d["version"] == 2 else 0
    fig = Figure(figsize=(2.8 * cols + 1.4, 2.7 * rows + 3.2 * extra + 1.0), layout="constrained")
    grid = fig.add_gridspec(rows + extra, cols)
    vmin, vmax = tables.min().item(), tables.max().item()
    axes = []
    for k in range(heads):
        ax = fig.add_subplot(grid[k // cols, k % cols])
        im = _offset_heatmap(ax, tables[k], vmin, vmax, d["window"] if d["version"] == 2 else None)
        ax.set_title(f"head {k}", fontsize=9)
        axes.append(ax)
    fig.colorbar(im, ax=axes, shrink=0.8, label="bias added to the attention logit")
    s, j = d["block"]
    M = d["window"]
    if d["version"] == 2:
        _bias_cut(fig.add_subplot(grid[rows, :]), d)
        big = d["big_window"]
        what = (f"V2 continuous position bias 16*sigmoid(MLP(log-spaced offset)) of block {s}.{j}: window "
                f"{M[0]}x{M[1]} (offsets normalised by {d['normalizer'][0]}), evaluated at {big[0]}x{big[1]}")
    else:
        what = f"V1 relative position bias tables of block {s}.{j}, window {M[0]}x{M[1]}"
    fig.suptitle(f"{what}\n{label or model.cfg.name}", fontsize=11)
    return fig, d


def _offset_heatmap(ax, table: torch.Tensor, vmin: float, vmax: float, trained: Pair | None):
    """Heatmap of one head's (2wh-1, 2ww-1) table, flipped so the axes read key - query."""
    rh, rw = (table.shape[0] - 1) // 2, (table.shape[1] - 1) // 2
    im = ax.imshow(table.flip(0, 1).numpy(), cmap="viridis", vmin=vmin, vmax=vmax,
                   extent=(-rw - 0.5, rw + 0.5, rh + 0.5, -rh - 0.5), interpolation="nearest")
    if trained is not None:
        ax.add_patch(Rectangle((-trained[1] + 0.5, -trained[0] + 0.5), 2 * trained[1] - 1, 2 * trained[0] - 1,
                               fill=False, ec="white", ls="--", lw=1.2))
    ax.set_xlabel("dx (key - query)", fontsize=8)
    ax.set_ylabel("dy", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return im


def _bias_cut(ax, d: dict) -> None:
    """Bias against dx at dy = 0 per head, at the larger window; the trained offsets shaded."""
    table = d["big_table"]
    r = (table.shape[2] - 1) // 2
    dx = np.arange(-r, r + 1)
    for k in range(d["heads"]):
        ax.plot(dx, table[k, (table.shape[1] - 1) // 2].flip(0).numpy(), lw=1.2, label=f"head {k}")
    m = d["window"][1] - 1
    ax.axvspan(-m, m, color="0.9", zorder=0, label=f"offsets seen at window {d['window'][1]}")
    ax.set_xlabel("dx (key - query), dy = 0")
    ax.set_ylabel("bias")
    ax.set_title("extrapolation: outside the shaded band the MLP sees offsets it was never trained on", fontsize=9)
    ax.legend(fontsize=7, ncol=min(d["heads"] + 1, 7), loc="best")


# ----------------------------------------------------------------------------------------------------------
# attention of one query in a block and in the next (shifted) block


def attention_data(model: SwinTransformer, image: torch.Tensor, block: str | tuple[int, int] | None = None,
                   query: Pair | None = None) -> dict:
    """Attention probabilities of the token under pixel `query` (y, x; default the image centre) in `block`
    (default: block 0 of the deepest stage with several windows) and the next block of its stage, from a
    real forward with `keep_attn`. Per block: `attn` (heads, h, w) over the token map (zero outside the
    query's window), `in_window` (h, w), `reached` (regular windows the query attends into)."""
    s, j = parse_block(model, block if block is not None else _windowed_stage(model, tuple(image.shape[1:])))
    blocks = list(model.layers[s].blocks)[j:j + 2]
    H, W = image.shape[1:]
    qy, qx = query if query is not None else (H // 2, W // 2)
    if not (0 <= qy < H and 0 <= qx < W):
        raise ValueError(f"query ({qy}, {qx}) is outside the {H}x{W} image; give --query Y X in pixels")
    feats = []
    hook = blocks[0].register_forward_pre_hook(lambda m, a: feats.append(tuple(a[0].shape[1:3])))
    for b in blocks:
        b.attn.keep_attn = True
    try:
        with torch.no_grad():
            model.forward_pyramid(normalize(image).to(_device(model)), out_indices=(s,))
        feat, t = feats[0], token_px(model, s)
        out = [_query_attention(b, feat, (qy // t, qx // t)) for b in blocks]
    finally:
        hook.remove()
        for b in blocks:
            b.attn.keep_attn, b.attn.last_attn = False, None
    return dict(block=(s, j), feat=feat, token_px=t, query_px=(qy, qx), query=(qy // t, qx // t), blocks=out,
                regular=_regular_map(feat, out[0]["window"]))


def _windowed_stage(model: SwinTransformer, size: Pair) -> tuple[int, int]:
    """(stage, 0) of the deepest stage whose token map at `size` holds more than one window."""
    sizes = stage_sizes(model, size)
    several = [i for i, f in enumerate(sizes) if any(n > w for n, w in zip(f, model.cfg.window_size[i]))]
    return (max(several, default=0), 0)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _query_attention(blk, feat: Pair, q: Pair) -> dict:
    """The row of blk.attn.last_attn for token q (y, x), scattered back onto the (h, w) map."""
    win, shift = window_and_shift(feat, blk.attn.window, blk.attn.shift)
    Hp, Wp = padded_size(feat, win)
    slots = window_slots(feat, win, shift)  # (nW, N)
    w, n = (slots == q[0] * Wp + q[1]).nonzero()[0].tolist()
    probs = blk.attn.last_attn.float().cpu()
    probs = probs.reshape(-1, *probs.shape[-3:])  # (B*nW, heads, N, N), B = 1
    if probs.shape[0] != slots.shape[0]:
        raise ValueError(f"the block ran its {slots.shape[0]} windows in chunks, so only the last chunk's "
                         "attention was kept; raise the model's chunk_mb or use a smaller --size")
    probs = probs[w, :, n]  # (heads, N)
    amap = torch.zeros(probs.shape[0], Hp * Wp)
    amap[:, slots[w]] = probs
    in_window = torch.zeros(Hp * Wp, dtype=torch.bool)
    in_window[slots[w]] = True
    regular = _regular_map(feat, win)
    attended = amap.sum(0).view(Hp, Wp)[:feat[0], :feat[1]] > 1e-6  # -100-masked keys get ~1e-44
    return dict(shift=shift, window=win, attn=amap.view(-1, Hp, Wp)[:, :feat[0], :feat[1]],
                in_window=in_window.view(Hp, Wp)[:feat[0], :feat[1]], reached=len(regular[attended].unique()))


def _regular_map(feat: Pair, win: Pair) -> torch.Tensor:
    """(h, w) regular (unshifted) window index of every real token."""
    return window_map(window_slots(feat, win, (0, 0)), padded_size(feat, win))[:feat[0], :feat[1]]


def attention(model: SwinTransformer, image: torch.Tensor, block: str | tuple[int, int] | None = None,
              query: Pair | None = None, label: str | None = None):
    """The query's attention (mean over heads) overlaid on the image, for `block` and the next block of its
    stage; the query's window outlined. Returns (Figure, data)."""
    d = attention_data(model, image, block, query)
    s, j = d["block"]
    t, (h, w) = d["token_px"], d["feat"]
    fig = Figure(figsize=(6.2 * len(d["blocks"]) + 0.6, 6.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(d["blocks"])))
    img = image.permute(1, 2, 0).numpy()
    for k, (ax, b) in enumerate(zip(axes, d["blocks"])):
        ax.imshow(img, extent=(0, img.shape[1], img.shape[0], 0))
        a = b["attn"].mean(0).numpy()
        im = ax.imshow(np.ma.masked_where(~b["in_window"].numpy(), a), cmap="inferno", alpha=0.7, vmin=0,
                       extent=(0, w * t, h * t, 0), interpolation="nearest")
        _edges(ax, d["regular"].numpy(), t, border=False, colors="white", linewidths=0.8, linestyles="--")
        _edges(ax, b["in_window"].numpy().astype(int), t, border=False, colors="cyan", linewidths=2.5)
        ax.plot(d["query_px"][1], d["query_px"][0], marker="*", ms=16, mec="black", mfc="cyan")
        kind = "SW-MSA (shifted)" if any(b["shift"]) else "W-MSA"
        ax.set_title(f"block {s}.{j + k}, {kind}: window {b['window'][0]}x{b['window'][1]} tokens of {t} px,\n"
                     f"query attends into {b['reached']} of the regular windows", fontsize=10)
        ax.set_xlim(0, img.shape[1])
        ax.set_ylim(img.shape[0], 0)
        ax.set_xlabel("x (px)")
        ax.set_ylabel("y (px)")
        fig.colorbar(im, ax=ax, shrink=0.8, label="attention weight (mean over heads)")
    fig.suptitle(f"Attention of the query token (star) at pixel {d['query_px']} = token {d['query']} of the "
                 f"{h}x{w} map; cyan: its window, dashed: the regular windows\n{label or model.cfg.name}",
                 fontsize=11)
    return fig, d


# ----------------------------------------------------------------------------------------------------------
# receptive field: gradient of a centre token w.r.t. the input, after every block


def receptive_field_data(model: SwinTransformer, image: torch.Tensor, rel: float = 1e-20,
                         mass: float = 0.95) -> dict:
    """|d token / d input| (H, W) of the centre token of the patch embedding and of every block's output.

    Per map: `support` - side in px of the bounding box where the gradient exceeds `rel` times its maximum,
    i.e. the theoretical receptive field (pixels with no path give exact zeros, and paths through -100-masked
    keys are scaled by e^-100, which float32 flushes to zero; long random-init paths can be ~1e-7 of the
    maximum, hence the tiny threshold) - and `effective`: side of the centred square holding `mass` of it."""
    outs, names = [], ["embed"]
    hooks = [model.patch_embed.register_forward_hook(lambda m, a, o: outs.append(o))]
    for s, layer in enumerate(model.layers):
        for j, blk in enumerate(layer.blocks):
            hooks.append(blk.register_forward_hook(lambda m, a, o: outs.append(o)))
            names.append(f"{s}.{j}")
    x = normalize(image).to(_device(model)).requires_grad_()
    try:
        with torch.enable_grad():
            model.forward_features(x)
    finally:
        for hk in hooks:
            hk.remove()
    stages = [-1] + [s for s, layer in enumerate(model.layers) for _ in layer.blocks]
    maps = []
    for k, o in enumerate(outs):
        h, w = o.shape[1:3]
        # a fixed random direction of the token, not the sum of its channels: after a fresh LayerNorm (weight 1,
        # bias 0) that sum is 0 whatever the input, and its gradient only float rounding
        u = torch.randn(o.shape[-1], generator=torch.Generator().manual_seed(k)).to(o)
        g, = torch.autograd.grad(o[0, h // 2, w // 2] @ u, x, retain_graph=k < len(outs) - 1)
        t = token_px(model, max(stages[k], 0))
        maps.append(_rf_stats(g[0].abs().sum(0).cpu(), ((h // 2 + 0.5) * t, (w // 2 + 0.5) * t), rel, mass))
    return dict(names=names, stages=stages, size=tuple(image.shape[1:]), maps=maps,
                support=[m["support"] for m in maps], effective=[m["effective"] for m in maps])


def _rf_stats(g: torch.Tensor, centre: tuple[float, float], rel: float, mass: float) -> dict:
    """Support box and effective (mass-holding centred square) size of a (H, W) gradient map."""
    ys, xs = (g > g.max() * rel).nonzero(as_tuple=True)
    box = (ys.min().item(), ys.max().item() + 1, xs.min().item(), xs.max().item() + 1)
    yy, xx = torch.meshgrid(torch.arange(g.shape[0]) + 0.5, torch.arange(g.shape[1]) + 0.5, indexing="ij")
    dist = torch.maximum((yy - centre[0]).abs(), (xx - centre[1]).abs()).flatten()  # Chebyshev from the token
    order = dist.argsort()
    cum = g.flatten()[order].cumsum(0) / g.sum()
    radius = dist[order][int((cum < mass).sum().clamp(max=len(cum) - 1))].item()
    return dict(grad=g, box=box, support=max(box[1] - box[0], box[3] - box[2]), effective=2 * radius)


def receptive_field(model: SwinTransformer, image: torch.Tensor, label: str | None = None):
    """A map per block of log |gradient| of the centre token, and the extent against depth with the patch
    merging steps marked. Returns (Figure, data)."""
    d = receptive_field_data(model, image)
    n = len(d["maps"])
    cols = min(n, 7)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(2.3 * cols + 1.2, 2.4 * rows + 3.6), layout="constrained")
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[1] * rows + [1.5])
    axes = []
    for k, m in enumerate(d["maps"]):
        ax = fig.add_subplot(grid[k // cols, k % cols])
        g = (m["grad"] / m["grad"].max()).clamp(min=1e-9).numpy()
        im = ax.imshow(g, cmap="magma", norm=LogNorm(1e-9, 1), interpolation="nearest")
        y0, y1, x0, x1 = m["box"]
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="cyan", lw=1))
        ax.set_title(f"{_rf_name(d, k)}: {m['support']} px", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        axes.append(ax)
    fig.colorbar(im, ax=axes, shrink=0.8, label="|d token / d pixel| / max")
    _rf_curve(fig.add_subplot(grid[rows, :]), d)
    H, W = d["size"]
    fig.suptitle(f"Receptive field of the centre token after each block ({H}x{W} input; cyan box: support)\n"
                 f"{label or model.cfg.name}", fontsize=11)
    return fig, d


def _rf_name(d: dict, k: int) -> str:
    if k == 0:
        return "patch embed"
    s, j = d["names"][k].split(".")
    return f"block {s}.{j} {'SW' if int(j) % 2 else 'W'}"


def _rf_curve(ax, d: dict) -> None:
    x = np.arange(len(d["names"]))
    ax.plot(x, d["support"], "o-", label="support (any influence)")
    ax.plot(x, d["effective"], "s--", label="effective (centred square holding 95% of |grad|)")
    for k in range(2, len(x)):
        if d["stages"][k] != d["stages"][k - 1]:
            ax.axvline(k - 0.5, color="0.5", ls=":")
            ax.text(k - 0.5, max(d["size"]) * 1.02, "patch merging", ha="center", va="bottom", fontsize=8)
    ax.axhline(max(d["size"]), color="0.7", lw=0.8)
    ax.set_xticks(x, ["embed"] + d["names"][1:], fontsize=8)
    ax.set_ylim(0, max(d["size"]) * 1.12)
    ax.set_xlabel("after block (stage.block)")
    ax.set_ylabel("extent (px)")
    ax.legend(fontsize=8, loc="lower right")


# ----------------------------------------------------------------------------------------------------------
# complexity: FLOPs and time against resolution, Swin vs a global-attention ViT


def vit_macs(vit: dict, size: int, patch: int = 16) -> int:
    """Multiply-accumulates of torchvision's VisionTransformer built (on the meta device) for size x size."""
    from torchvision.models import VisionTransformer

    with torch.device("meta"):
        model = VisionTransformer(size, patch, **vit).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size, device="meta"))
    return counter.get_total_flops() // 2


def closest_vit(cfg: SwinConfig) -> str:
    """The patch-16 ViT of VITS closest in parameter count to the Swin model of `cfg`."""
    from torchvision.models import VisionTransformer

    with torch.device("meta"):
        swin = count_params(SwinTransformer(cfg))
        sizes = {name: count_params(VisionTransformer(224, 16, **v)) for name, v in VITS.items()}
    return min(sizes, key=lambda n: abs(math.log(sizes[n] / swin)))


def fit_exponent(pixels, cost) -> float:
    """Slope of log(cost) against log(pixels) - the exponent in the number of tokens."""
    return float(np.polyfit(np.log(pixels), np.log(cost), 1)[0])


def complexity_data(cfg: SwinConfig, sizes=(224, 448, 896, 1792, 3584, 7168), time_sizes=(224, 448, 672),
                    vit: str | dict | None = None, fit_points: int = 3, repeats: int = 3) -> dict:
    """MACs of Swin (`cfg`) and a global-attention ViT at each square size, exponents fitted on the
    `fit_points` largest sizes (and the smallest, to show the ViT's approach to 2), and, unless
    `time_sizes` is empty, measured forward time in ms."""
    vit_name = vit if isinstance(vit, str) else ("custom ViT" if vit else closest_vit(cfg))
    vit_kw = VITS[vit_name] if isinstance(vit, str) or vit is None else vit
    with torch.device("meta"):
        swin = SwinTransformer(cfg).eval()
    d = dict(sizes=list(sizes), swin=cfg.name, vit=vit_name, vit_config=vit_kw,
             swin_macs=[count_macs(swin, (s, s)) for s in sizes], vit_macs=[vit_macs(vit_kw, s) for s in sizes])
    px = [s * s for s in sizes]
    for key in ("swin", "vit"):
        d[f"{key}_exponent"] = fit_exponent(px[-fit_points:], d[f"{key}_macs"][-fit_points:])
        d[f"{key}_exponent_low"] = fit_exponent(px[:fit_points], d[f"{key}_macs"][:fit_points])
    d.update(time_sizes=list(time_sizes), swin_ms=[], vit_ms=[], device=None, repeats=repeats)
    if time_sizes:
        d.update(_timings(cfg, vit_kw, time_sizes, repeats))
    return d


def _timings(cfg: SwinConfig, vit_kw: dict, sizes, repeats: int) -> dict:
    """Best-of-`repeats` forward time (ms, batch 1, inference mode) of both models at each size."""
    from torchvision.models import VisionTransformer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    swin = SwinTransformer(cfg).to(device).eval()
    swin_ms, vit_ms = [], []
    for s in sizes:
        vit = VisionTransformer(s, 16, **vit_kw).to(device).eval()
        x = torch.randn(1, 3, s, s, device=device)
        swin_ms.append(_time_ms(swin, x, repeats))
        vit_ms.append(_time_ms(vit, x, repeats))
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return dict(swin_ms=swin_ms, vit_ms=vit_ms, device=name)


def _time_ms(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    best = math.inf
    with torch.inference_mode():
        for k in range(repeats + 1):  # the first run warms up
            if x.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start) if k else best
    return best * 1e3


def complexity(cfg: SwinConfig, sizes=(224, 448, 896, 1792, 3584, 7168), time_sizes=(224, 448, 672),
               vit: str | dict | None = None, repeats: int = 3):
    """Log-log MACs (and time) against input pixels, with fitted exponents and N, N^2 references.
    Returns (Figure, data)."""
    d = complexity_data(cfg, sizes, time_sizes, vit, repeats=repeats)
    timed = bool(d["swin_ms"])
    fig = Figure(figsize=(13 if timed else 7, 5.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, 2 if timed else 1))
    _cost_axes(axes[0], d["sizes"], d["swin_macs"], d["vit_macs"], d, "multiply-accumulates (GMACs)", 1e-9)
    ratio = d["vit_macs"][-1] / d["swin_macs"][-1]
    axes[0].set_title(f"FLOPs counted from the models (FlopCounterMode), batch 1;\n"
                      f"at {d['sizes'][-1]}x{d['sizes'][-1]} the ViT costs {ratio:.0f}x Swin", fontsize=10)
    if timed:
        _cost_axes(axes[1], d["time_sizes"], d["swin_ms"], d["vit_ms"], None, "forward time (ms)", 1.0)
        axes[1].set_title(f"measured forward time, batch 1, best of {d['repeats']}\n({d['device']})", fontsize=10)
    fig.suptitle(f"Cost against resolution: {d['swin']} (shifted windows) vs {d['vit']} (global attention)",
                 fontsize=12)
    return fig, d


def _cost_axes(ax, sizes, swin, vit, fits: dict | None, ylabel: str, scale: float) -> None:
    px = np.array(sizes, dtype=float) ** 2
    e = {k: fits[f"{k}_exponent"] if fits else fit_exponent(px[-3:], c[-3:])
         for k, c in (("swin", swin), ("vit", vit))}
    fitted = f"fit on {sizes[-min(3, len(sizes))]}²..{sizes[-1]}²"
    ax.loglog(px, np.array(swin) * scale, "o-", label=f"Swin ~ N^{e['swin']:.2f} ({fitted})")
    ax.loglog(px, np.array(vit) * scale, "s-", label=f"ViT ~ N^{e['vit']:.2f} ({fitted})")
    base = vit[0] * scale
    ax.loglog(px, base * px / px[0], ":", color="0.5", label="linear reference ~ N")
    ax.loglog(px, base * (px / px[0]) ** 2, "--", color="0.5", label="quadratic reference ~ N^2")
    ax.set_xticks(px, [f"{s}²" for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("input pixels H x W (N tokens is proportional)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")


# ----------------------------------------------------------------------------------------------------------
# command line


def image_format(path: str | Path) -> str:
    """The matplotlib format named by the suffix of `path`, or a ValueError listing the known ones."""
    fmt, known = Path(path).suffix.lstrip(".").lower(), Figure().canvas.get_supported_filetypes()
    if fmt not in known:
        raise ValueError(f"--out {path}: unknown image format {fmt!r}; use one of {sorted(known)}, e.g. figure.png")
    return fmt


def save(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write `fig` atomically; the format follows the suffix (png, pdf, svg, ...)."""
    path, fmt = Path(path), image_format(path)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight"))


def load_for_viz(checkpoint: str | None, name: str, **overrides) -> tuple[SwinTransformer, str]:
    """(model in eval mode, title label): the checkpoint when given, else a seeded random `name`."""
    if checkpoint:
        try:
            from ..io.load import load_model
        except ImportError as e:
            raise ValueError(f"--checkpoint needs swinkit.io.load, which is not available ({e}); leave "
                             "--checkpoint out to draw a randomly initialised --model") from e
        model = load_model(checkpoint)
        return model.eval(), f"{model.cfg.name} from {Path(checkpoint).name}"
    torch.manual_seed(0)
    return create_model(name, **overrides).eval(), f"{name}, random init (no --checkpoint)"


def _geometry_model(args) -> tuple[SwinTransformer, str]:
    """windows / mask need only the configuration: build on the meta device (a video model for a video name)."""
    overrides = {"window_size": args.window} if args.window else {}
    with torch.device("meta"):
        if args.model in VIDEO_VARIANTS:
            model = VideoSwinTransformer(VideoSwinConfig.from_name(args.model, **overrides))
        else:
            model = create_model(args.model, **overrides)
    return model, args.model + (f", window {args.window}" if args.window else "")


def _size(args, model: SwinTransformer) -> Pair:
    if args.size and len(args.size) != model.cfg.ndim:
        want = "T H W (a video model)" if model.cfg.ndim == 3 else "H W"
        raise ValueError(f"--size takes {want}, got {len(args.size)} numbers {args.size}")
    return tuple(args.size) if args.size else model.cfg.img_size


def _run_windows(args):
    if args.model in VIDEO_VARIANTS:
        model, label = _geometry_model(args)
        fig, d = video_windows(model, _size(args, model), args.stage, label)
        return fig, [f"token map {d['feat']}, window {d['window']}, shift {d['shift']}, padded {d['padded']}: "
                     f"{d['n_windows']} 3-D windows"]
    image = load_image(args.image)
    model, label = _geometry_model(args)
    fig, d = windows(model, resize(image, _size(args, model)), args.stage, label)
    return fig, [f"token map {d['feat']}, window {d['window']}, shift {d['shift']}, padded {d['padded']}: "
                 f"{d['n_windows']} windows, {d['n_pieces']} shifted pieces, "
                 f"{int(d['regions_per_window'].sum())} masked sub-windows"]


def _run_mask(args):
    model, label = _geometry_model(args)
    if model.cfg.ndim == 3:
        win, t = model.cfg.window_size[args.stage], token_px(model, args.stage)
        size = _size(args, model) if args.size else (2 * win[0] * model.cfg.patch[0], 2 * win[1] * t, 2 * win[2] * t)
        fig, d = video_mask(model, size, args.stage, label)
        m = d["mask"]
        return fig, [f"mask {tuple(m.shape)} for a {size} clip (token map {d['feat']}): "
                     f"{int((m == -100).sum())} entries -100, {int(m.isinf().sum())} entries -inf"]
    M, t = model.cfg.window_size[args.stage][0], token_px(model, args.stage)
    size = tuple(args.size) if args.size else (3 * M * t, 3 * M * t)  # 3x3 windows: every kind of region
    fig, d = mask(model, size, args.stage, label)
    m = d["mask"]
    return fig, [f"mask {tuple(m.shape)} for a {size} input (token map {d['feat']}): "
                 f"{int((m == -100).sum())} entries -100, {int(m.isinf().sum())} entries -inf"]


def _run_bias(args):
    model, label = load_for_viz(args.checkpoint, args.model)
    fig, d = bias(model, args.block, args.extrapolate, label)
    t = d["table"]
    return fig, [f"block {d['block']}: {d['heads']} heads, table {tuple(t.shape)}, "
                 f"range [{t.min():.4f}, {t.max():.4f}]"]


def _run_attention(args):
    image = load_image(args.image)  # fails fast on a bad file, before the model is built
    model, label = load_for_viz(args.checkpoint, args.model)
    fig, d = attention(model, resize(image, _size(args, model)), args.block, args.query, label)
    return fig, [f"block {d['block'][0]}.{d['block'][1] + k}: query token {d['query']} attends into "
                 f"{b['reached']} regular window(s)" for k, b in enumerate(d["blocks"])]


def _run_receptive_field(args):
    image = load_image(args.image)
    model, label = load_for_viz(args.checkpoint, args.model)
    fig, d = receptive_field(model, resize(image, _size(args, model)), label)
    return fig, ["support (px):   " + " ".join(f"{n}={v}" for n, v in zip(d["names"], d["support"])),
                 "effective (px): " + " ".join(f"{n}={v:.0f}" for n, v in zip(d["names"], d["effective"]))]


def _run_simmim(args):
    """Images through a SimMIM checkpoint: input, masked input, reconstruction, prediction."""
    from ..inference.load import load_trained
    from ..tasks.pretrain import simmim_plot

    loaded = load_trained(args.checkpoint)
    if loaded.task.name != "pretrain":
        raise ValueError(f"{args.checkpoint} is a {loaded.task.name} checkpoint: viz simmim draws a "
                         "`swinkit train --task pretrain` run")
    model, s = loaded.model, loaded.meta["simmim"]
    size = model.cfg.img_size
    x = torch.cat([normalize(load_image(p, size)) for p in args.images])  # (N, 3, H, W)
    fig = simmim_plot(model, x, mask_patch_size=s["mask_patch_size"], ratio=s["mask_ratio"], seed=args.seed)
    return fig, [f"{len(x)} image(s) at {size[0]}x{size[1]}, {s['mask_ratio']:.0%} of "
                 f"{s['mask_patch_size']}-pixel blocks masked (seed {args.seed})"]


def _run_complexity(args):
    fig, d = complexity(SwinConfig.from_name(args.model), args.sizes, [] if args.no_time else args.time_sizes,
                        None if args.vit == "auto" else args.vit, args.repeats)
    lines = [f"{'size':>6} {d['swin'] + ' GMACs':>30} {d['vit'] + ' GMACs':>16}"]
    lines += [f"{s:>6} {a / 1e9:>30.2f} {b / 1e9:>16.2f}"
              for s, a, b in zip(d["sizes"], d["swin_macs"], d["vit_macs"])]
    lines.append(f"exponent in tokens, largest sizes: Swin {d['swin_exponent']:.3f}, ViT {d['vit_exponent']:.3f} "
                 f"(smallest sizes: Swin {d['swin_exponent_low']:.3f}, ViT {d['vit_exponent_low']:.3f})")
    lines += [f"{s:>6} px: Swin {a:8.1f} ms, ViT {b:8.1f} ms ({d['device']})"
              for s, a, b in zip(d["time_sizes"], d["swin_ms"], d["vit_ms"])]
    return fig, lines


RUNNERS = {"windows": _run_windows, "mask": _run_mask, "bias": _run_bias, "attention": _run_attention,
           "receptive-field": _run_receptive_field, "complexity": _run_complexity, "simmim": _run_simmim}
HELP = {
    "windows": "regular and shifted windows over an image, and the cyclic-shift view (papers' figures 2 and 4)",
    "mask": "the attention masks a shifted block uses, one panel per window, regions labelled",
    "bias": "V1 relative position bias tables per head; V2 continuous bias and its extrapolation",
    "attention": "attention of one query over its window in a block and the next (shifted) block",
    "receptive-field": "gradient of the centre token w.r.t. the input after every block",
    "complexity": "FLOPs and time against resolution: Swin vs a global-attention ViT",
    "simmim": "SimMIM: input, mask and reconstruction of images by a `swinkit train --task pretrain` run",
}


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    sub = parser.add_subparsers(dest="figure", required=True, metavar="FIGURE")
    for name in FIGURES:
        p = sub.add_parser(name, help=HELP[name], description=HELP[name])
        p.add_argument("--out", default=f"{name}.png", help="output image; the suffix picks the format "
                                                             "(default: %(default)s)")
        p.add_argument("--model", default="swin_t", help="variant (swinkit models; windows and mask also take the "
                                                         "video ones), used when no --checkpoint is given (default: "
                                                         "%(default)s)")
        if name in ("bias", "attention", "receptive-field"):
            p.add_argument("--checkpoint", help="trained weights (swinkit.load_model); without it a "
                                                "randomly initialised --model is drawn and the title says so")
        if name in ("windows", "attention", "receptive-field"):
            p.add_argument("--image", help="image file (default: scikit-image's astronaut photograph)")
        if name in ("windows", "mask", "attention", "receptive-field"):
            p.add_argument("--size", type=int, nargs="+", metavar="N",
                           help="input size in pixels, H W (T H W for a video model) (default: the model's "
                                "img_size; mask: 3x3 windows, 2x2x2 for video)")
        if name in ("windows", "mask"):
            p.add_argument("--window", type=int, help="window size M (default: the model's)")
            p.add_argument("--stage", type=int, default=0, help="stage whose token map is drawn (default: 0)")
        if name == "bias":
            p.add_argument("--block", default="0.0", help="STAGE.BLOCK, e.g. 2.0 (default: %(default)s)")
        if name == "attention":
            p.add_argument("--block", help="STAGE.BLOCK, e.g. 2.0, drawn with the block after it (default: "
                                           "block 0 of the deepest stage with several windows)")
        _figure_arguments(p, name)


def _figure_arguments(p: argparse.ArgumentParser, name: str) -> None:
    if name == "bias":
        p.add_argument("--extrapolate", type=int, help="V2: larger window to evaluate the bias at (default: 2M)")
    if name == "attention":
        p.add_argument("--query", type=int, nargs=2, metavar=("Y", "X"),
                       help="query pixel in the (resized) image (default: the centre)")
    if name == "simmim":
        p.add_argument("--checkpoint", required=True, help="a `swinkit train --task pretrain` run or its best.pt")
        p.add_argument("--images", nargs="+", default=[None], metavar="IMAGE",
                       help="image files (default: scikit-image's astronaut photograph)")
        p.add_argument("--seed", type=int, default=0, help="seed of the random mask (default: 0)")
    if name == "complexity":
        p.add_argument("--vit", default="auto", choices=["auto", *VITS],
                       help="global-attention model to compare (default: the closest in parameters)")
        p.add_argument("--sizes", type=int, nargs="+", default=[224, 448, 896, 1792, 3584, 7168],
                       help="square sizes for the FLOP count (meta device: no memory, no compute)")
        p.add_argument("--time-sizes", type=int, nargs="+", default=[224, 448, 672],
                       help="square sizes to time (real forward passes on cuda if available, else CPU)")
        p.add_argument("--repeats", type=int, default=3, help="timed runs per size, the best is kept (default: 3)")
        p.add_argument("--no-time", action="store_true", help="count FLOPs only, skip the timing")


def run(args: argparse.Namespace) -> int:
    try:
        image_format(args.out)  # before minutes of work
        if hasattr(args, "stage"):
            _check_stage(args)
        fig, lines = RUNNERS[args.figure](args)
        path = save(fig, args.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"swinkit viz {args.figure}: error: {e}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    print(f"wrote {path}")
    return 0


def _check_stage(args) -> None:
    cfg = VideoSwinConfig.from_name(args.model) if args.model in VIDEO_VARIANTS else SwinConfig.from_name(args.model)
    n = len(cfg.depths)
    if not 0 <= args.stage < n:
        raise ValueError(f"--stage {args.stage}: {args.model} has stages 0..{n - 1}")
