"""Window machinery shared by every Swin model: partition, cyclic-shift gathers, shift-region and padding
masks, relative-position indices and V2's log-spaced coordinates, each a bounded cache of sizes and device."""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

Pair = tuple[int, int]
REGION_MASK = -100.0  # between tokens of different shift regions, as in the papers' code
PAD_MASK = float("-inf")  # padded keys: never attended (each window holds at least one real key)
CACHE_SIZE = 128


def _cached(fn):
    """Bounded cache for pure functions of sizes and device. Results are normal tensors even when first
    asked for under torch.inference_mode, so the same cached mask also serves training."""
    return lru_cache(maxsize=CACHE_SIZE)(torch.inference_mode(False)(fn))


def window_partition(x: torch.Tensor, win: Pair) -> torch.Tensor:
    """(B, H, W, C) -> (B*nW, wh*ww, C); H and W must be multiples of the window."""
    B, H, W, C = x.shape
    x = x.view(B, H // win[0], win[0], W // win[1], win[1], C)  # (B, nh, wh, nw, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, win[0] * win[1], C)  # (B*nh*nw, wh*ww, C)


def window_and_shift(feat: Pair, window: Pair, shift: bool, mode: str = "clamp") -> tuple[Pair, Pair]:
    """The window and shift a block uses on a `feat` map. clamp: per axis, a map no larger than the window is one
    window, unshifted; otherwise shift = window // 2. pad: always the window and window // 2 (the map is padded)."""
    if mode == "pad":
        return tuple(window), tuple(w // 2 if shift else 0 for w in window)
    win = tuple(min(f, w) for f, w in zip(feat, window))
    sh = tuple(w // 2 if (shift and f > w) else 0 for f, w in zip(feat, window))
    return win, sh


def padded_size(feat: Pair, win: Pair) -> Pair:
    return tuple(math.ceil(f / w) * w for f, w in zip(feat, win))


def pad(x: torch.Tensor, amounts: tuple[int, ...]) -> torch.Tensor:
    """F.pad with zeros, returning x itself when every amount is 0 (F.pad would copy it)."""
    return F.pad(x, amounts) if any(amounts) else x


@_cached
def window_order(feat: Pair, win: Pair, shift: Pair, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather indices that replace pad -> roll -> partition and its reverse by one copy each way.

    to_windows (nW*N,): for each token in window order, its position in the flattened padded (Hp, Wp) map
    after the cyclic shift; from_windows (H*W,): for each real position of the (H, W) map, its window slot.
    """
    Hp, Wp = padded_size(feat, win)
    pos = torch.roll(torch.arange(Hp * Wp, device=device).view(1, Hp, Wp, 1), (-shift[0], -shift[1]), (1, 2))
    to_windows = window_partition(pos, win).flatten()  # (nW*N,)
    slot = torch.empty_like(to_windows)
    slot[to_windows] = torch.arange(to_windows.numel(), device=device)
    return to_windows, slot.view(Hp, Wp)[:feat[0], :feat[1]].flatten()


@_cached
def shift_regions(feat: Pair, win: Pair, shift: Pair, device: torch.device) -> torch.Tensor:
    """(Hp, Wp) region label of each position of the padded map, before the cyclic shift is undone.

    After rolling by -shift, the last `shift` rows/columns hold tokens that wrapped around from the
    top/left edge; they share a window with tokens that are not their neighbours, so each window is
    split into up to 3x3 regions and attention is restricted to tokens of the same region.
    """
    Hp, Wp = padded_size(feat, win)
    labels = []
    for size, w, s in ((Hp, win[0], shift[0]), (Wp, win[1], shift[1])):
        lab = torch.zeros(size, dtype=torch.long, device=device)
        if s:
            lab[size - w: size - s] = 1
            lab[size - s:] = 2
        labels.append(lab)
    return labels[0][:, None] * 3 + labels[1][None, :]


@_cached
def window_padding(feat: Pair, win: Pair, shift: Pair, device: torch.device) -> torch.Tensor:
    """(nW, N) bool, True where a window slot of the shifted, padded map holds a padded token."""
    padding = torch.ones(padded_size(feat, win), dtype=torch.bool, device=device)
    padding[:feat[0], :feat[1]] = False
    padding = torch.roll(padding, (-shift[0], -shift[1]), (0, 1))  # padding moves with the cyclic shift
    return window_partition(padding[None, ..., None], win)[..., 0]  # (nW, N)


@_cached
def window_labels(feat: Pair, win: Pair, shift: Pair, device: torch.device, mask_padding: bool = True
                  ) -> torch.Tensor:
    """(nW, N) label of every token of the shifted, padded map in window order: its shift region (0..8), or -1
    for padding when padded keys are masked (mask_padding=False: padding keeps its region, as the official
    detection and segmentation code attends to it)."""
    regions = window_partition(shift_regions(feat, win, shift, device)[None, ..., None], win)[..., 0]  # (nW, N)
    return regions.masked_fill(window_padding(feat, win, shift, device), -1) if mask_padding else regions


def mask_from_labels(labels: torch.Tensor) -> torch.Tensor:
    """(n, N) window labels -> (n, N, N) additive mask: REGION_MASK across regions, PAD_MASK on padded keys."""
    mask = torch.where(labels[:, None, :] != labels[:, :, None], REGION_MASK, 0.0)  # (n, N query, N key)
    return mask.masked_fill(labels[:, None, :] < 0, PAD_MASK)


def needs_mask(feat: Pair, win: Pair, shift: Pair, mask_padding: bool = True) -> bool:
    """Whether attention on this map needs a mask at all: a shift, or padding that is masked."""
    return any(shift) or (mask_padding and padded_size(feat, win) != tuple(feat))


@_cached
def attention_mask(feat: Pair, win: Pair, shift: Pair, device: torch.device, mask_padding: bool = True
                   ) -> torch.Tensor | None:
    """Additive mask (nW, N, N) for the shifted, padded map: REGION_MASK across regions, PAD_MASK on padded
    keys (with mask_padding); None when neither applies."""
    if not needs_mask(feat, win, shift, mask_padding):
        return None
    return mask_from_labels(window_labels(feat, win, shift, device, mask_padding))


@_cached
def window_groups(feat: Pair, win: Pair, shift: Pair, device: torch.device, mask_padding: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, ...], torch.Tensor]:
    """Windows grouped by mask and padding pattern, so that every window of a group takes one (N, N) mask.

    order (nW,): window indices, group after group; masks (P, N, N): each group's additive mask (None when the
    map needs no mask: then one group per padding pattern); counts: windows per group; padding (P, N): each
    group's padded slots. Shift or padding alone gives at most 4 patterns (inner windows, last column, last row,
    corner); together a few more."""
    cpu = torch.device("cpu")  # on CPU: also serves meta tensors
    labels, padding = window_labels(feat, win, shift, cpu, mask_padding), window_padding(feat, win, shift, cpu)
    key = torch.stack((labels, padding.long()), -1).flatten(1)  # (nW, 2N): a group shares mask and padding
    patterns, inverse, counts = torch.unique(key, dim=0, return_inverse=True, return_counts=True)
    patterns = patterns.view(len(patterns), -1, 2)  # (P, N, 2)
    masks = mask_from_labels(patterns[..., 0]).to(device) if needs_mask(feat, win, shift, mask_padding) else None
    order = torch.sort(inverse, stable=True).indices.to(device)
    return order, masks, tuple(counts.tolist()), patterns[..., 1].bool().to(device)


@_cached
def relative_position_index(win: Pair, table_win: Pair, device: torch.device) -> torch.Tensor:
    """(N, N) index into a (2*Th-1)*(2*Tw-1) table for the offsets inside a win window (win <= table_win),
    so a clamped window uses the learned entries of the same offsets."""
    coords = torch.stack(torch.meshgrid(torch.arange(win[0]), torch.arange(win[1]), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N), offsets in [-(w-1), w-1]
    return ((rel[0] + table_win[0] - 1) * (2 * table_win[1] - 1) + rel[1] + table_win[1] - 1).to(device)


@_cached
def log_spaced_coords(win: Pair, pretrained_win: Pair, device: torch.device) -> torch.Tensor:
    """V2: ((2wh-1)*(2ww-1), 2) log-spaced relative coordinates, normalised by the pre-training window
    (or this window when none is given) exactly as the official V2 code does."""
    axes = [torch.arange(-(w - 1), w, dtype=torch.float32) for w in win]
    table = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (2wh-1, 2ww-1, 2)
    norm = [p if p > 0 else w for p, w in zip(pretrained_win, win)]
    table = table / torch.tensor([max(n - 1, 1) for n in norm], dtype=torch.float32) * 8
    table = torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)
    return table.view(-1, 2).to(device)


def clear_caches() -> None:
    for f in (window_order, shift_regions, window_padding, window_labels, attention_mask, window_groups,
              relative_position_index, log_spaced_coords):
        f.cache_clear()
