"""Window machinery shared by every Swin model, for any number of axes (2-D images (H, W), 3-D video (T, H, W)):
partition, cyclic-shift gathers, shift-region and padding masks, relative-position indices and V2's log-spaced
coordinates, each a bounded cache of sizes and device. Sizes are tuples with one entry per axis.

Under torch.export with dynamic sizes (sizes are torch.SymInt) nothing is cached: `graph_windows` computes the gather
indices and labels from the input's shape with tensor ops (comparisons of aranges, no slice assignment), so that an
exported file takes any size."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

Pair = tuple[int, ...]  # one size per axis: (h, w) or (t, h, w)
REGION_MASK = -100.0  # between tokens of different shift regions, as in the papers' code
PAD_MASK = float("-inf")  # padded keys: never attended (each window holds at least one real key)
CACHE_SIZE = 128


def symbolic(*sizes) -> bool:
    """Whether any size (an int, a SymInt, or a tuple of them) is symbolic: torch.export with dynamic shapes."""
    return any(isinstance(v, torch.SymInt) for s in sizes for v in (s if isinstance(s, tuple) else (s,)))


def cached(fn):
    """Bounded cache for pure functions of sizes and device. Results are normal tensors even when first
    asked for under torch.inference_mode, so the same cached mask also serves training. Symbolic sizes bypass the
    cache: the function is then recorded in the exported graph."""
    cache = lru_cache(maxsize=CACHE_SIZE)(torch.inference_mode(False)(fn))

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return fn(*args, **kwargs) if symbolic(*args, *kwargs.values()) else cache(*args, **kwargs)
    call.cache_clear, call.cache_info = cache.cache_clear, cache.cache_info
    return call


def window_partition(x: torch.Tensor, win: Pair) -> torch.Tensor:
    """(B, *S, C) -> (B*nW, prod(win), C); each size of S must be a multiple of its window."""
    B, *S, C = x.shape
    n = len(win)
    x = x.view(B, *(v for s, w in zip(S, win) for v in (s // w, w)), C)  # (B, n0, w0, n1, w1, ..., C)
    order = (0, *range(1, 2 * n, 2), *range(2, 2 * n + 1, 2), 2 * n + 1)  # (B, n0, n1, .., w0, w1, .., C)
    return x.permute(order).reshape(-1, math.prod(win), C)  # (B*nW, N, C)


def window_and_shift(feat: Pair, window: Pair, shift: bool, mode: str = "clamp") -> tuple[Pair, Pair]:
    """The window and shift a block uses on a `feat` map. clamp: per axis, a map no larger than the window is one
    window, unshifted; otherwise shift = window // 2 (the official Video Swin rule, per axis). pad: always the
    window and window // 2 (the map is padded)."""
    if mode == "pad":
        return tuple(window), tuple(w // 2 if shift else 0 for w in window)
    win = tuple(min(f, w) for f, w in zip(feat, window))
    sh = tuple(w // 2 if (shift and f > w) else 0 for f, w in zip(feat, window))
    return win, sh


def padded_size(feat: Pair, win: Pair) -> Pair:
    return tuple(math.ceil(f / w) * w for f, w in zip(feat, win))


def pad(x: torch.Tensor, amounts: tuple[int, ...]) -> torch.Tensor:
    """F.pad with zeros, returning x itself when every amount is 0 (F.pad would copy it); symbolic amounts always
    pad (an export then takes any size)."""
    return F.pad(x, amounts) if symbolic(amounts) or any(amounts) else x


def pad_to(x: torch.Tensor, size: Pair) -> torch.Tensor:
    """(B, *S, C) zero-padded at the end of each axis of S to `size`."""
    amounts = [0, 0]
    for s, p in zip(reversed(x.shape[1:-1]), reversed(size)):
        amounts += [0, p - s]
    return pad(x, tuple(amounts))


def _neg(shift: Pair) -> Pair:
    return tuple(-s for s in shift)


def _crop(feat: Pair) -> tuple[slice, ...]:
    return tuple(slice(0, f) for f in feat)


@cached
def window_order(feat: Pair, win: Pair, shift: Pair, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather indices that replace pad -> roll -> partition and its reverse by one copy each way.

    to_windows (nW*N,): for each token in window order, its position in the flattened padded (Hp, Wp) map
    after the cyclic shift; from_windows (prod(feat),): for each real position of the map, its window slot.
    """
    padded = padded_size(feat, win)
    axes = tuple(range(1, len(feat) + 1))
    pos = torch.roll(torch.arange(math.prod(padded), device=device).view(1, *padded, 1), _neg(shift), axes)
    to_windows = window_partition(pos, win).flatten()  # (nW*N,)
    slot = torch.empty_like(to_windows)
    slot[to_windows] = torch.arange(to_windows.numel(), device=device)
    return to_windows, slot.view(padded)[_crop(feat)].flatten()


@cached
def shift_regions(feat: Pair, win: Pair, shift: Pair, device: torch.device) -> torch.Tensor:
    """(*padded) region label of each position of the padded map, before the cyclic shift is undone.

    After rolling by -shift, the last `shift` positions of an axis hold tokens that wrapped around from its
    start; they share a window with tokens that are not their neighbours, so each window is split into up to
    3 regions per axis (3x3 in 2-D, 3x3x3 in 3-D) and attention is restricted to tokens of the same region.
    """
    labels = torch.zeros((), dtype=torch.long, device=device)
    for size, w, s in zip(padded_size(feat, win), win, shift):
        lab = torch.zeros(size, dtype=torch.long, device=device)
        if s:
            lab[size - w: size - s] = 1
            lab[size - s:] = 2
        labels = labels[..., None] * 3 + lab  # mixed radix 3, one digit per axis
    return labels


@cached
def window_padding(feat: Pair, win: Pair, shift: Pair, device: torch.device) -> torch.Tensor:
    """(nW, N) bool, True where a window slot of the shifted, padded map holds a padded token."""
    padding = torch.ones(padded_size(feat, win), dtype=torch.bool, device=device)
    padding[_crop(feat)] = False
    padding = torch.roll(padding, _neg(shift), tuple(range(len(feat))))  # padding moves with the cyclic shift
    return window_partition(padding[None, ..., None], win)[..., 0]  # (nW, N)


@cached
def window_labels(feat: Pair, win: Pair, shift: Pair, device: torch.device, mask_padding: bool = True
                  ) -> torch.Tensor:
    """(nW, N) label of every token of the shifted, padded map in window order: its shift region (0..3^n-1), or -1
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


@cached
def attention_mask(feat: Pair, win: Pair, shift: Pair, device: torch.device, mask_padding: bool = True
                   ) -> torch.Tensor | None:
    """Additive mask (nW, N, N) for the shifted, padded map: REGION_MASK across regions, PAD_MASK on padded
    keys (with mask_padding); None when neither applies."""
    if not needs_mask(feat, win, shift, mask_padding):
        return None
    return mask_from_labels(window_labels(feat, win, shift, device, mask_padding))


@cached
def window_groups(feat: Pair, win: Pair, shift: Pair, device: torch.device, mask_padding: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, ...], torch.Tensor]:
    """Windows grouped by mask and padding pattern, so that every window of a group takes one (N, N) mask.

    order (nW,): window indices, group after group; masks (P, N, N): each group's additive mask (None when the
    map needs no mask: then one group per padding pattern); counts: windows per group; padding (P, N): each
    group's padded slots. Shift or padding alone gives at most 2^n patterns (2-D: inner windows, last column,
    last row, corner); together a few more."""
    cpu = torch.device("cpu")  # on CPU: also serves meta tensors
    labels, padding = window_labels(feat, win, shift, cpu, mask_padding), window_padding(feat, win, shift, cpu)
    key = torch.stack((labels, padding.long()), -1).flatten(1)  # (nW, 2N): a group shares mask and padding
    patterns, inverse, counts = torch.unique(key, dim=0, return_inverse=True, return_counts=True)
    patterns = patterns.view(len(patterns), -1, 2)  # (P, N, 2)
    masks = mask_from_labels(patterns[..., 0]).to(device) if needs_mask(feat, win, shift, mask_padding) else None
    order = torch.sort(inverse, stable=True).indices.to(device)
    return order, masks, tuple(counts.tolist()), patterns[..., 1].bool().to(device)


@cached
def relative_position_index(win: Pair, table_win: Pair, device: torch.device) -> torch.Tensor:
    """(N, N) index into a prod(2*T-1) table (row-major over the axes) for the offsets inside a win window
    (win <= table_win per axis), so a clamped window uses the learned entries of the same offsets."""
    coords = torch.stack(torch.meshgrid(*(torch.arange(w) for w in win), indexing="ij")).flatten(1)  # (n, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (n, N, N), offsets in [-(w-1), w-1]
    index = torch.zeros_like(rel[0])
    for r, t in zip(rel, table_win):
        index = index * (2 * t - 1) + r + t - 1
    return index.to(device)


@cached
def log_spaced_coords(win: Pair, pretrained_win: Pair, device: torch.device) -> torch.Tensor:
    """V2: (prod(2w-1), n) log-spaced relative coordinates, normalised by the pre-training window
    (or this window when none is given) exactly as the official V2 code does."""
    return log_coords(win, [p if p > 0 else w for p, w in zip(pretrained_win, win)]).to(device)


def log_coords(win: Pair, norm: list) -> torch.Tensor:
    """(prod(2w-1), n) log-spaced offsets of a `win` window, axis i normalised by norm[i] (a size or a 0-d tensor)."""
    axes = [torch.arange(-(w - 1), w, dtype=torch.float32) for w in win]
    table = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (2w0-1, 2w1-1, .., n)
    norm = torch.stack([n.float() if isinstance(n, torch.Tensor) else torch.scalar_tensor(n) for n in norm])  # (n,)
    table = table / (norm - 1).clamp(min=1) * 8
    return (torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)).view(-1, len(win))


@dataclass
class GraphWindows:
    """`graph_windows`' result: what window_order, window_labels and padded_size give, as tensors of the graph."""
    padded: tuple  # the padded map's size per axis (symbolic)
    to_windows: torch.Tensor  # (nW*N,) as window_order's
    from_windows: torch.Tensor  # (prod(feat),) as window_order's
    labels: torch.Tensor  # (nW, N) as window_labels'
    real: tuple  # per axis, the window eager takes: min(size, window) in clamp mode, else the window; 0-d tensors


def graph_windows(feat: tuple, window: Pair, shift: bool, clamp: bool, mask_padding: bool, device: torch.device
                  ) -> GraphWindows:
    """The window layout of a `feat` map (symbolic sizes) computed in the graph, for export at any size.

    The window is always `window`, so every window has the same N tokens. Where clamp mode would take a smaller,
    unshifted window (an axis no longer than the window), that axis is padded to one full window and its padding
    masked: the same keys at the same relative offsets, so the same attention. clamp=False is "pad" mode (always
    the window and its shift). Padding of a longer axis is masked with `mask_padding`, as window_labels does.
    Tensors are built per axis as (windows, window) grids and combined by broadcasting, never split by a view."""
    def scalar(v):
        return torch.scalar_tensor(v, dtype=torch.long, device=device)

    k = len(feat)
    src = region = masked = win_id = slot = None
    padded, real = [], []
    for i, (f, w) in enumerate(zip(feat, window)):
        n = (f + w - 1) // w  # windows along this axis
        size, ft = scalar(n * w), scalar(f)
        small = ft <= w if clamp else torch.zeros((), dtype=torch.bool, device=device)  # clamp: 1 window, no shift
        s = (~small).long() * (w // 2) if shift else torch.zeros((), dtype=torch.long, device=device)
        p = torch.arange(n, device=device)[:, None] * w + torch.arange(w, device=device)  # (n, w) shifted positions
        origin = (p + s) % size  # where each shifted position's token comes from
        reg = ((p >= size - w) & (s > 0)).long() + (p >= size - s).long()  # 0, 1, 2: the shift's regions
        pad_here = origin >= ft
        pad_here = pad_here if mask_padding else pad_here & small
        grid = (*(n if j == i else 1 for j in range(k)), *(w if j == i else 1 for j in range(k)))
        origin, reg, pad_here = origin.view(grid), reg.view(grid), pad_here.view(grid)  # n at axis i, w at k + i
        src = origin if src is None else src * size + origin  # (n0, .., w0, ..) flat position in the padded map
        region = reg if region is None else region * 3 + reg
        masked = pad_here if masked is None else masked | pad_here
        q = (torch.arange(f, device=device) - s) % size  # each real position's shifted position
        q = q.view(*(f if j == i else 1 for j in range(k)))
        win_id = q // w if win_id is None else win_id * scalar(n) + q // w  # (f0, .., fi, 1..)
        slot = q % w if slot is None else slot * w + q % w
        padded.append(n * w)
        real.append(ft.clamp(max=w) if clamp else scalar(w))
    N = math.prod(window)
    labels = region.masked_fill(masked, -1).reshape(-1, N)  # (nW, N)
    return GraphWindows(tuple(padded), src.flatten(), (win_id * N + slot).flatten(), labels, tuple(real))


def clear_caches() -> None:
    for f in (window_order, shift_regions, window_padding, window_labels, attention_mask, window_groups,
              relative_position_index, log_spaced_coords):
        f.cache_clear()
