"""Swin Transformer V1 and V2 in one file, bottom-up: window helpers -> attention -> block -> patch merging
-> stage -> model. Any input size works: windows are clamped, shifts disabled and padding added per axis
from the feature map seen at run time, and padded tokens are masked out as attention keys."""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .config import SwinConfig

Pair = tuple[int, int]
REGION_MASK = -100.0  # between tokens of different shift regions, as in the papers' code
PAD_MASK = float("-inf")  # padded keys: never attended (each window holds at least one real key)
CACHE_SIZE = 128
# CPU inference runs a whole block on this many tokens at a time (rounded down to windows): every intermediate
# stays small enough to sit in cache and to be reused by the allocator instead of freshly page-faulted memory.
# Other devices have neither reason and keep only the chunk_mb budget (thousands of small launches would cost more).
INFER_CHUNK_TOKENS = 2048


# ----------------------------------------------------------------------------------------------------------
# window helpers


def _cached(fn):
    """Bounded cache for pure functions of sizes and device. Results are normal tensors even when first
    asked for under torch.inference_mode, so the same cached mask also serves training."""
    return lru_cache(maxsize=CACHE_SIZE)(torch.inference_mode(False)(fn))


def window_partition(x: torch.Tensor, win: Pair) -> torch.Tensor:
    """(B, H, W, C) -> (B*nW, wh*ww, C); H and W must be multiples of the window."""
    B, H, W, C = x.shape
    x = x.view(B, H // win[0], win[0], W // win[1], win[1], C)  # (B, nh, wh, nw, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, win[0] * win[1], C)  # (B*nh*nw, wh*ww, C)


def window_and_shift(feat: Pair, window: Pair, shift: bool) -> tuple[Pair, Pair]:
    """Per axis: a map no larger than the window is one window, unshifted; otherwise shift = window // 2."""
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
def window_labels(feat: Pair, win: Pair, shift: Pair, device: torch.device) -> torch.Tensor:
    """(nW, N) label of every token of the shifted, padded map in window order: its shift region (0..8),
    or -1 for padding."""
    padding = torch.ones(padded_size(feat, win), dtype=torch.bool, device=device)
    padding[:feat[0], :feat[1]] = False
    padding = torch.roll(padding, (-shift[0], -shift[1]), (0, 1))  # padding moves with the cyclic shift
    labels = shift_regions(feat, win, shift, device).masked_fill(padding, -1)  # regions live in the rolled frame
    return window_partition(labels[None, ..., None], win)[..., 0]  # (nW, N)


def mask_from_labels(labels: torch.Tensor) -> torch.Tensor:
    """(n, N) window labels -> (n, N, N) additive mask: REGION_MASK across regions, PAD_MASK on padded keys."""
    mask = torch.where(labels[:, None, :] != labels[:, :, None], REGION_MASK, 0.0)  # (n, N query, N key)
    return mask.masked_fill(labels[:, None, :] < 0, PAD_MASK)


def needs_mask(feat: Pair, win: Pair, shift: Pair) -> bool:
    """Whether attention on this map needs a mask at all: a shift or padding."""
    return any(shift) or padded_size(feat, win) != tuple(feat)


@_cached
def attention_mask(feat: Pair, win: Pair, shift: Pair, device: torch.device) -> torch.Tensor | None:
    """Additive mask (nW, N, N) for the shifted, padded map: REGION_MASK across regions, PAD_MASK on padded
    keys; None when neither applies."""
    if not needs_mask(feat, win, shift):
        return None
    return mask_from_labels(window_labels(feat, win, shift, device))


@_cached
def window_groups(feat: Pair, win: Pair, shift: Pair, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, ...]]:
    """Windows grouped by mask pattern, so that every window of a group takes one (N, N) mask.

    order (nW,): window indices, group after group; masks (P, N, N): each group's additive mask (None when the
    map needs neither shift nor padding: one group, no mask); counts: windows per group. Shift or padding alone
    gives at most 4 patterns (inner windows, last column, last row, corner); together a few more."""
    labels = window_labels(feat, win, shift, torch.device("cpu"))  # (nW, N); on CPU: also serves meta tensors
    patterns, inverse, counts = torch.unique(labels, dim=0, return_inverse=True, return_counts=True)
    masks = mask_from_labels(patterns).to(device) if needs_mask(feat, win, shift) else None  # (P, N, N)
    return torch.sort(inverse, stable=True).indices.to(device), masks, tuple(counts.tolist())


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
    for f in (window_order, shift_regions, window_labels, attention_mask, window_groups, relative_position_index,
              log_spaced_coords):
        f.cache_clear()


# ----------------------------------------------------------------------------------------------------------
# attention


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a relative position bias.

    V1: scaled dot product + learned bias table ((2M-1)^2, heads). V2: cosine similarity times a learned,
    clamped per-head scale + continuous position bias (2-layer MLP on log-spaced offsets, 16*sigmoid);
    q and v biases only.
    """

    def __init__(self, dim: int, num_heads: int, window: Pair, cfg: SwinConfig, pretrained_window: Pair):
        super().__init__()
        self.dim, self.num_heads, self.window = dim, num_heads, tuple(window)
        self.pretrained_window = tuple(pretrained_window)
        self.v2, self.fused = cfg.version == 2, cfg.fused_attn
        self.use_rel_pos = cfg.pos_embed in ("relative", "absolute+relative")
        self.scale = (dim // num_heads) ** -0.5
        if self.v2:
            self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(num_heads, 1, 1)))
            self.cpb_mlp = nn.Sequential(nn.Linear(2, 512), nn.ReLU(inplace=True),
                                         nn.Linear(512, num_heads, bias=False))
            self.qkv = nn.Linear(dim, dim * 3, bias=False)
            self.q_bias = nn.Parameter(torch.zeros(dim)) if cfg.qkv_bias else None
            self.v_bias = nn.Parameter(torch.zeros(dim)) if cfg.qkv_bias else None
        else:
            self.qkv = nn.Linear(dim, dim * 3, bias=cfg.qkv_bias)
            if self.use_rel_pos:
                table = torch.zeros((2 * window[0] - 1) * (2 * window[1] - 1), num_heads)
                self.relative_position_bias_table = nn.Parameter(nn.init.trunc_normal_(table, std=0.02))
        self.attn_drop = cfg.attn_drop_rate
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(cfg.drop_rate)
        # opt-in for `swinkit viz attention`: take the explicit path and keep the softmax probabilities
        self.keep_attn, self.last_attn = False, None  # last_attn: (B, nW, h, N, N)
        self._bias_cache: dict = {}

    def position_bias(self, win: Pair) -> torch.Tensor | None:
        """(heads, N, N) relative position bias for a (possibly clamped) window `win`."""
        if not self.use_rel_pos:
            return None
        N = win[0] * win[1]
        if self.v2:
            weight = self.cpb_mlp[0].weight
            coords = log_spaced_coords(win, self.pretrained_window, weight.device).to(weight.dtype)
            table = self.cpb_mlp(coords)  # ((2w-1)^2, heads)
            index = relative_position_index(win, win, weight.device)
            return 16 * torch.sigmoid(table[index.view(-1)].view(N, N, -1).permute(2, 0, 1))
        table = self.relative_position_bias_table
        index = relative_position_index(win, self.window, table.device)
        return table[index.view(-1)].view(N, N, -1).permute(2, 0, 1)  # (heads, N, N)

    def attention_bias(self, win: Pair, mask: torch.Tensor | None) -> torch.Tensor | None:
        """Position bias plus mask: (nW, h, N, N) with an (nW, N, N) mask, (1, h, N, N) without, or None."""
        bias = self.position_bias(win)  # (h, N, N) or None
        if mask is None:
            return None if bias is None else bias[None]
        mask = mask.to(self.qkv.weight.dtype)[:, None]  # a bfloat16 model takes a bfloat16 mask
        return mask if bias is None else bias + mask

    def _cached_attention_bias(self, win: Pair, mask: torch.Tensor | None) -> torch.Tensor | None:
        """attention_bias, computed once per (window, mask) in inference and reused while the position
        parameters are unchanged (their version counters are part of the key; parameters made under
        inference_mode have none, so they are not cached)."""
        if self.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self.attention_bias(win, mask)
        params = self._position_params()
        if any(p.is_inference() for p in params):
            return self.attention_bias(win, mask)
        key, versions = (win, id(mask)), tuple(p._version for p in params)
        hit = self._bias_cache.get(key)
        if hit is None or hit[0] is not mask or hit[1] != versions:
            if len(self._bias_cache) >= 2:
                self._bias_cache.clear()
            hit = self._bias_cache[key] = (mask, versions, self.attention_bias(win, mask))
        return hit[2]

    def _position_params(self) -> list[torch.Tensor]:
        if not self.use_rel_pos:
            return []
        return list(self.cpb_mlp.parameters()) if self.v2 else [self.relative_position_bias_table]

    def forward(self, x: torch.Tensor, win: Pair, mask: torch.Tensor | None, cache: bool = True) -> torch.Tensor:
        """x: (B, nW, N, C) windows of B images; mask: (nW, N, N) additive or None. Returns (B, nW, N, C)."""
        B, nW, N, C = x.shape
        bias = self._cached_attention_bias(win, mask) if cache else self.attention_bias(win, mask)
        out = self.attend(x.reshape(B * nW, N, C), bias)
        if self.keep_attn:
            self.last_attn = self.last_attn.view(B, nW, self.num_heads, N, N)
        return out.view(B, nW, N, C)

    def attend(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x: (n, N, C) windows; bias: (P, h, N, N) additive with window i taking bias[i % P], or None.
        Returns (n, N, C)."""
        n, N, C = x.shape
        h = self.num_heads
        qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias)) \
            if self.v2 and self.q_bias is not None else self.qkv.bias
        qkv = F.linear(x, self.qkv.weight, qkv_bias).view(n, N, 3, h, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (n, h, N, d) views
        scale = self.scale
        if self.v2:  # cosine attention; the clamped logit scale is folded into the normalised queries
            logit_scale = torch.clamp(self.logit_scale, max=math.log(100.0)).exp()  # (h, 1, 1)
            q, k, scale = F.normalize(q, dim=-1) * logit_scale, F.normalize(k, dim=-1), 1.0
        drop = self.attn_drop if self.training else 0.0
        # on CPU a bias that needs a gradient sends SDPA to its math path, slower than the explicit one
        cpu_bias_grad = x.device.type == "cpu" and bias is not None and bias.requires_grad
        if self.fused and not self.keep_attn and not cpu_bias_grad:
            if bias is not None and bias.shape[0] > 1:  # the fused kernel takes a 4-D bias: one per window
                bias = bias.expand(n // bias.shape[0], -1, h, N, N).reshape(n, h, N, N)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop, scale=scale)
        else:
            attn = (q * scale) @ k.transpose(-2, -1)  # (n, h, N, N)
            if bias is not None:  # broadcast over (n / P, P, h, N, N), no per-window copy of the bias
                attn = (attn.view(-1, bias.shape[0], h, N, N) + bias).view(n, h, N, N)
            attn = attn.softmax(-1)
            if self.keep_attn:
                self.last_attn = attn.detach()
            out = F.dropout(attn, drop) @ v
        out = out.transpose(1, 2).reshape(n, N, C)  # (n, N, h, d) is the fused kernel's memory order
        return self.proj_drop(self.proj(out))


# ----------------------------------------------------------------------------------------------------------
# block


class DropPath(nn.Module):
    """Stochastic depth on a residual: shortcut + branch, the branch of each sample dropped with probability p
    (kept ones scaled by 1 / (1 - p)) in one fused multiply-add."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, shortcut: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return shortcut + branch
        keep = branch.new_empty((branch.shape[0],) + (1,) * (branch.ndim - 1)).bernoulli_(1 - self.p)
        return torch.addcmul(shortcut, branch, keep.div_(1 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Linear -> GELU -> Linear. Tokens go through in chunks whose hidden activations fit in `chunk_mb`, so
    a huge map never holds its full 4x-wide hidden layer at once (same result either way)."""

    def __init__(self, dim: int, hidden: int, drop: float, chunk_mb: float):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)
        self.chunk_mb = chunk_mb

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., C)."""
        tokens = int(self.chunk_mb * 2**20 // (2 * self.fc1.out_features * x.element_size()))  # hidden + GELU
        if x.numel() // x.shape[-1] <= tokens:
            return self._mlp(x)
        flat = x.reshape(-1, x.shape[-1])
        out = flat.new_empty(flat.shape)
        for i in range(0, flat.shape[0], tokens):
            out[i:i + tokens] = self._mlp(flat[i:i + tokens])
        return out.view(x.shape)


class SwinBlock(nn.Module):
    """(S)W-MSA + MLP. V1 pre-norm: x + f(norm(x)); V2 res-post-norm: x + norm(f(x))."""

    def __init__(self, dim: int, num_heads: int, window: Pair, shift: bool, drop_path: float,
                 cfg: SwinConfig, pretrained_window: Pair):
        super().__init__()
        self.window, self.shift, self.v2 = tuple(window), shift, cfg.version == 2
        self.chunk_mb = cfg.chunk_mb
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window, cfg, pretrained_window)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), cfg.drop_rate, cfg.chunk_mb)

    def attention_mask(self, H: int, W: int, device: torch.device) -> torch.Tensor | None:
        """The (nW, N, N) additive mask this block uses on an (H, W) map (from the shared cache)."""
        win, shift = window_and_shift((H, W), self.window, self.shift)
        return attention_mask((H, W), win, shift, device)

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C): pad to a window multiple, cyclic shift, partition, attend, and back.
        Padding comes before the shift so regions and padding mask match the official layout; shift and
        partition (and their reverse) are one precomputed gather each."""
        B, H, W, C = x.shape
        win, shift = window_and_shift((H, W), self.window, self.shift)
        Hp, Wp = padded_size((H, W), win)
        to_windows, from_windows = window_order((H, W), win, shift, x.device)
        x = pad(x, (0, 0, 0, Wp - W, 0, Hp - H)).reshape(B, Hp * Wp, C)
        windows = x.index_select(1, to_windows).view(B, -1, win[0] * win[1], C)  # (B, nW, N, C)
        out = self._window_attention(windows, (H, W), win, shift)
        return out.view(B, -1, C).index_select(1, from_windows).view(B, H, W, C)

    def _window_attention(self, windows: torch.Tensor, feat: Pair, win: Pair, shift: Pair) -> torch.Tensor:
        """(B, nW, N, C) -> (B, nW, N, C). Windows go through attention in chunks whose attention matrices
        and bias fit in cfg.chunk_mb (the V2 paper's sequential self-attention for huge inputs)."""
        B, nW, N, C = windows.shape
        per_window = windows.element_size() * self.attn.num_heads * N * N * 2 * B  # logits + bias
        chunk = max(1, int(self.chunk_mb * 2**20 // per_window))
        if chunk >= nW:
            return self.attn(windows, win, attention_mask(feat, win, shift, windows.device))
        labels = window_labels(feat, win, shift, windows.device) if needs_mask(feat, win, shift) else None
        out = windows.new_empty(windows.shape)
        for i in range(0, nW, chunk):
            mask = None if labels is None else mask_from_labels(labels[i:i + chunk])
            out[:, i:i + chunk] = self.attn(windows[:, i:i + chunk], win, mask, cache=False)
        return out

    def _forward_windows(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: (B, H, W, C) -> (B, H, W, C), the whole block (attention and MLP, both residuals) one chunk
        of windows at a time, each chunk gathered from and written back to its tokens' places. Chunks follow
        window_groups, so a chunk's bias is one (1, h, N, N) slice that broadcasts over its windows. The output is
        the only full-size tensor; padded tokens are computed (their keys are masked) and cropped at the end."""
        B, H, W, C = x.shape
        win, shift = window_and_shift((H, W), self.window, self.shift)
        Hp, Wp = padded_size((H, W), win)
        N, L = win[0] * win[1], Hp * Wp
        to_windows, _ = window_order((H, W), win, shift, x.device)
        order, masks, counts = window_groups((H, W), win, shift, x.device)
        bias = self.attn._cached_attention_bias(win, masks)  # (P, h, N, N), (1, h, N, N) or None
        flat = pad(x, (0, 0, 0, Wp - W, 0, Hp - H)).reshape(B * L, C)
        windows = to_windows.view(-1, N)[order]  # (nW, N) padded-map positions, group after group
        per_window = x.element_size() * self.attn.num_heads * N * N * 2  # attention logits + bias
        c = int(self.chunk_mb * 2**20 // per_window)  # windows per chunk
        c = max(1, min(c, INFER_CHUNK_TOKENS // N) if x.device.type == "cpu" else c)
        image_start = torch.arange(B, device=x.device)[:, None, None] * L
        out, start = torch.empty_like(flat), 0
        for g, count in enumerate(counts):
            index = (image_start + windows[start:start + count]).flatten()  # (B*count*N,) this group's tokens
            start += count
            b = bias if masks is None else bias[g:g + 1]
            for i in range(0, B * count * N, c * N):
                idx = index[i:i + c * N]
                xw = flat.index_select(0, idx).view(-1, N, C)  # (n, N, C)
                if self.v2:
                    xw = xw + self.norm1(self.attn.attend(xw, b))
                    xw = xw + self.norm2(self.mlp(xw))
                else:
                    xw = xw + self.attn.attend(self.norm1(xw), b)
                    xw = xw + self.mlp(self.norm2(xw))
                out.index_copy_(0, idx, xw.view(-1, C))
        out = out.view(B, Hp, Wp, C)
        return out if (Hp, Wp) == (H, W) else out[:, :H, :W].contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        if not (self.training or torch.is_grad_enabled() or self.attn.keep_attn or torch.compiler.is_compiling()):
            return self._forward_windows(x)
        if self.v2:
            x = self.drop_path(x, self.norm1(self._attention(x)))
            return self.drop_path(x, self.norm2(self.mlp(x)))
        x = self.drop_path(x, self._attention(self.norm1(x)))
        return self.drop_path(x, self.mlp(self.norm2(x)))


# ----------------------------------------------------------------------------------------------------------
# patch embedding and merging


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> linear embedding (a strided conv) -> LayerNorm. Pads odd sizes."""

    def __init__(self, cfg: SwinConfig):
        super().__init__()
        self.patch_size, self.in_chans = cfg.patch_size, cfg.in_chans
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.patch_size)
        self.norm = nn.LayerNorm(cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, ceil(H/p), ceil(W/p), D)."""
        p = self.patch_size
        x = pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated (x0, x1, x2, x3 order of the official code) -> 4C -> 2C.
    V1: LayerNorm(4C) then Linear; V2: Linear then LayerNorm(2C)."""

    def __init__(self, dim: int, v2: bool):
        super().__init__()
        self.v2 = v2
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim if v2 else 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C)."""
        B, H, W, C = x.shape
        x = pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = x.view(B, (H + 1) // 2, 2, (W + 1) // 2, 2, C)  # (B, H/2, dy, W/2, dx, C)
        x = x.permute(0, 1, 3, 4, 2, 5).reshape(B, (H + 1) // 2, (W + 1) // 2, 4 * C)  # order (dx, dy)
        return self.norm(self.reduction(x)) if self.v2 else self.reduction(self.norm(x))


# ----------------------------------------------------------------------------------------------------------
# stage and model


class SwinStage(nn.Module):
    """Optional patch merging (every stage but the first) followed by `depth` blocks alternating W-MSA and
    SW-MSA."""

    def __init__(self, cfg: SwinConfig, i: int, drop_path: list[float]):
        super().__init__()
        dim = cfg.embed_dim * 2**i
        self.downsample = PatchMerging(dim // 2, cfg.version == 2) if i > 0 else nn.Identity()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, cfg.num_heads[i], cfg.window_size[i], cfg.shift and j % 2 == 1, drop_path[j], cfg,
                      cfg.pretrained_window_sizes[i])
            for j in range(cfg.depths[i]))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x


class ClassifierHead(nn.Module):
    def __init__(self, dim: int, num_classes: int, drop: float):
        super().__init__()
        self.drop = nn.Dropout(drop)
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, H, W, C) -> global average pool -> (B, num_classes), or (B, C) with pre_logits."""
        x = self.drop(x.mean(dim=(1, 2)))
        return x if pre_logits else self.fc(x)


class SwinTransformer(nn.Module):
    """Swin Transformer V1/V2 classifier and backbone. Input (B, in_chans, H, W) of any H, W >= patch_size."""

    def __init__(self, cfg: SwinConfig):
        super().__init__()
        self.cfg = cfg
        self.num_classes, self.num_features = cfg.num_classes, cfg.num_features
        self.patch_embed = PatchEmbed(cfg)
        if cfg.pos_embed in ("absolute", "absolute+relative"):
            grid = [math.ceil(s / cfg.patch_size) for s in cfg.img_size]
            self.absolute_pos_embed = nn.Parameter(
                nn.init.trunc_normal_(torch.zeros(1, cfg.embed_dim, *grid), std=0.02))
        else:
            self.absolute_pos_embed = None
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        n = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # linear stochastic depth
        starts = [sum(cfg.depths[:i]) for i in range(len(cfg.depths))]
        self.layers = nn.ModuleList(
            SwinStage(cfg, i, rates[s:s + d]) for i, (s, d) in enumerate(zip(starts, cfg.depths)))
        self.norm = nn.LayerNorm(self.num_features)
        self.head = ClassifierHead(self.num_features, cfg.num_classes, cfg.drop_rate)
        self.apply(self._init_weights)
        if cfg.version == 2:  # res-post-norm starts as identity residuals
            for blk in self.blocks():
                for norm in (blk.norm1, blk.norm2):
                    nn.init.zeros_(norm.weight)
                    nn.init.zeros_(norm.bias)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def blocks(self) -> list[SwinBlock]:
        return [blk for layer in self.layers for blk in layer.blocks]

    # ---- the timm-style interface

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay: position tables and embeddings, V2 logit scale and CPB
        MLP, norms and biases."""
        keys = ("absolute_pos_embed", "relative_position_bias_table", "logit_scale", "cpb_mlp")
        return {n for n, p in self.named_parameters() if p.ndim <= 1 or any(k in n for k in keys)}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for layer in self.layers:
            layer.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = self.cfg.num_classes = num_classes
        device = self.norm.weight.device
        self.head.fc = nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()
        self.head.fc.apply(self._init_weights)

    def _check_input(self, x: torch.Tensor) -> None:
        c, p = self.cfg.in_chans, self.cfg.patch_size
        expected = f"a (B, {c}, H, W) float tensor with H, W >= {p} (patch_size)"
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            hint = " (add a batch dimension with x[None])" if isinstance(x, torch.Tensor) and x.ndim == 3 else ""
            raise ValueError(f"expected {expected}, got shape {shape}{hint}")
        if x.shape[1] != c:
            raise ValueError(f"expected {expected}, got {x.shape[1]} channels in shape {tuple(x.shape)}"
                             f"{' (channels-last? use x.permute(0, 3, 1, 2))' if x.shape[-1] == c else ''}")
        if x.shape[2] < p or x.shape[3] < p:
            raise ValueError(f"expected {expected}, got shape {tuple(x.shape)}: smaller than one patch")
        if not x.is_floating_point():
            raise ValueError(f"expected {expected}, got dtype {x.dtype} (convert with x.float())")

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        x = self.patch_embed(x)  # (B, H/p, W/p, C)
        if self.absolute_pos_embed is not None:
            pos = self.absolute_pos_embed
            if pos.shape[-2:] != x.shape[1:3]:
                pos = F.interpolate(pos, size=x.shape[1:3], mode="bicubic", align_corners=False)
            x = x + pos.permute(0, 2, 3, 1)
        return self.pos_drop(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H/32, W/32, 8C) normalised last-stage map (sizes rounded up)."""
        x = self._embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward_pyramid(self, x: torch.Tensor, out_indices=(0, 1, 2, 3)) -> list[torch.Tensor]:
        """Stage outputs as NCHW maps at strides 4, 8, 16, 32 (for the default patch size)."""
        n = len(self.layers)
        if any(not -n <= i < n for i in out_indices):
            raise ValueError(f"out_indices must be stage indices in [0, {n}), got {tuple(out_indices)}")
        wanted = {i % n for i in out_indices}
        x, outs = self._embed(x), {}
        for i, layer in enumerate(self.layers[:max(wanted) + 1]):
            x = layer(x)
            if i in wanted:
                outs[i] = x.permute(0, 3, 1, 2).contiguous()
        return [outs[i % n] for i in out_indices]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_classes) logits."""
        return self.forward_head(self.forward_features(x))


def create_model(name: str, pretrained: bool | str = False, checkpoint: str | None = None,
                 **overrides) -> SwinTransformer:
    """Build a named variant; keyword overrides are SwinConfig fields (num_classes=10, drop_path_rate=0.1).

    `checkpoint=PATH` or `pretrained=True` load weights (see swinkit.checkpoint)."""
    if checkpoint is not None or pretrained:
        from .checkpoint import load_into_named  # model code stays importable without checkpoint I/O

        return load_into_named(name, checkpoint=checkpoint, pretrained=pretrained, **overrides)
    return SwinTransformer(SwinConfig.from_name(name, **overrides))
