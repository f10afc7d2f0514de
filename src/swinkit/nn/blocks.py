"""Swin building blocks: DropPath, MLP, the (S)W-MSA block, patch embedding, merging and expanding."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..config import SwinConfig
from .attention import BIAS_CACHE_MAX_MB, WindowAttention, tracing
from .windows import (Pair, attention_mask, mask_from_labels, needs_mask, pad, pad_to, padded_size,
                      window_and_shift, window_groups, window_labels, window_order)

# CPU inference runs a whole block on this many tokens at a time (rounded down to windows): every intermediate
# stays small enough to sit in cache and to be reused by the allocator instead of freshly page-faulted memory.
# Other devices have neither reason and keep only the chunk_mb budget (thousands of small launches would cost more).
INFER_CHUNK_TOKENS = 2048
# inference_path="auto" runs the windows path on CPU for block inputs of at least this many elements (B*H*W*C),
# where its cache-resident chunks beat one pass over the map; below it the plain path's fewer, larger calls win.
# Under bfloat16 (autocast or a bfloat16 model) the matmuls are faster and the crossover comes later.
# Measured per block on Swin-T (benchmarks/block_paths.py).
WINDOWS_MIN_ELEMENTS = {"float32": 2**20, "low precision": 2**22}


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
        tokens = max(1, int(self.chunk_mb * 2**20 // (2 * self.fc1.out_features * x.element_size())))  # hidden + GELU
        if x.numel() // x.shape[-1] <= tokens:
            return self._mlp(x)
        flat = x.reshape(-1, x.shape[-1])
        out = flat.new_empty(flat.shape)
        for i in range(0, flat.shape[0], tokens):
            out[i:i + tokens] = self._mlp(flat[i:i + tokens])
        return out.view(x.shape)


class SwinBlock(nn.Module):
    """(S)W-MSA + MLP. V1 pre-norm: x + f(norm(x)); V2 res-post-norm: x + norm(f(x)).

    Two forward paths give the same numbers: "plain" (pad, shift and partition the whole map, attend, reverse;
    training, autograd, compile and export) and "windows" (eval without grad: the whole block on a chunk of
    windows at a time, so every intermediate stays small); `inference_path` picks between them, see
    `inference_path_for`."""

    def __init__(self, dim: int, num_heads: int, window: Pair, shift: bool, drop_path: float,
                 cfg: SwinConfig, pretrained_window: Pair):
        super().__init__()
        self.window, self.shift, self.v2 = tuple(window), shift, cfg.version == 2
        self.window_mode, self.inference_path = cfg.window_mode, cfg.inference_path
        self._mask_padding = cfg.mask_padding
        self.chunk_mb = cfg.chunk_mb
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window, cfg, pretrained_window)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), cfg.drop_rate, cfg.chunk_mb)

    def extra_repr(self) -> str:
        return (f"window={self.window}, shift={self.shift}, window_mode={self.window_mode!r}, "
                f"inference_path={self.inference_path!r}")

    @property
    def mask_padding(self) -> bool:
        """clamp masks padded keys out (unless cfg.mask_padding is False, as the official Video Swin); pad attends
        them as zeros, as the official dense-prediction code."""
        return self.window_mode == "clamp" and self._mask_padding

    def window_and_shift(self, *feat: int) -> tuple[Pair, Pair]:
        """The window and shift on a map of size `feat` ((H, W) or (T, H, W))."""
        return window_and_shift(feat, self.window, self.shift, self.window_mode)

    def attention_mask(self, *feat_and_device) -> torch.Tensor | None:
        """attention_mask(H, W, device) or (T, H, W, device): the (nW, N, N) additive mask this block uses on
        that map (from the shared cache)."""
        *feat, device = feat_and_device
        win, shift = self.window_and_shift(*feat)
        return attention_mask(tuple(feat), win, shift, device, self.mask_padding)

    def inference_path_for(self, x: torch.Tensor) -> str:
        """The path forward takes for x: "plain" in training, with autograd, for `viz attention`, under
        torch.compile, tracing or export; otherwise `inference_path`, where "auto" means "windows" for a CPU
        tensor of at least WINDOWS_MIN_ELEMENTS and "plain" below that or on other devices (where the per-chunk
        launches cost more than they save)."""
        if self.training or torch.is_grad_enabled() or self.attn.keep_attn or tracing():
            return "plain"
        if self.inference_path != "auto":
            return self.inference_path
        if x.device.type != "cpu":
            return "plain"
        low = x.dtype != torch.float32 or torch.is_autocast_enabled("cpu")
        return "windows" if x.numel() >= WINDOWS_MIN_ELEMENTS["low precision" if low else "float32"] else "plain"

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *S, C) -> (B, *S, C), S = (H, W) or (T, H, W): pad to a window multiple, cyclic shift, partition,
        attend, and back. Padding comes before the shift so regions and padding mask match the official layout;
        shift and partition (and their reverse) are one precomputed gather each."""
        B, *S, C = x.shape
        feat = tuple(S)
        win, shift = self.window_and_shift(*feat)
        to_windows, from_windows = window_order(feat, win, shift, x.device)
        x = pad_to(x, padded_size(feat, win)).reshape(B, -1, C)  # (B, L padded, C)
        windows = x.index_select(1, to_windows).view(B, -1, math.prod(win), C)  # (B, nW, N, C)
        out = self._window_attention(windows, feat, win, shift)
        return out.view(B, -1, C).index_select(1, from_windows).view(B, *S, C)

    def _window_attention(self, windows: torch.Tensor, feat: Pair, win: Pair, shift: Pair) -> torch.Tensor:
        """(B, nW, N, C) -> (B, nW, N, C). Windows go through attention in chunks whose attention matrices
        and bias fit in cfg.chunk_mb (the V2 paper's sequential self-attention for huge inputs)."""
        B, nW, N, C = windows.shape
        per_window = windows.element_size() * self.attn.num_heads * N * N * 2 * B  # logits + bias
        chunk = max(1, int(self.chunk_mb * 2**20 // per_window))
        if chunk >= nW:
            return self.attn(windows, win, attention_mask(feat, win, shift, windows.device, self.mask_padding))
        labels = window_labels(feat, win, shift, windows.device, self.mask_padding) \
            if needs_mask(feat, win, shift, self.mask_padding) else None
        out = windows.new_empty(windows.shape)
        for i in range(0, nW, chunk):
            mask = None if labels is None else mask_from_labels(labels[i:i + chunk])
            out[:, i:i + chunk] = self.attn(windows[:, i:i + chunk], win, mask, cache=False)
        return out

    def _forward_windows(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: (B, *S, C) -> (B, *S, C), the whole block (attention and MLP, both residuals) one chunk
        of windows at a time, each chunk gathered from and written back to its tokens' places. Chunks follow
        window_groups, so a chunk's bias is one (1, h, N, N) slice that broadcasts over its windows. The output is
        the only full-size tensor; padded tokens are computed (as keys they are masked, or in "pad" mode zeros
        after norm1 as in the plain path) and cropped at the end."""
        B, *S, C = x.shape
        feat = tuple(S)
        win, shift = self.window_and_shift(*feat)
        padded = padded_size(feat, win)
        N, L = math.prod(win), math.prod(padded)
        to_windows, _ = window_order(feat, win, shift, x.device)
        order, masks, counts, padding = window_groups(feat, win, shift, x.device, self.mask_padding)
        # every group's bias + mask cached as one (P, h, N, N) tensor when small (2-D windows); else (3-D windows) only
        # the (1, h, N, N) position bias is cached and each group adds its mask
        whole = masks is None or masks.numel() * self.attn.num_heads * x.element_size() <= BIAS_CACHE_MAX_MB * 2**20
        bias = self.attn.cached_attention_bias(win, masks if whole else None, x.dtype)  # (P | 1, h, N, N) or None
        flat = pad_to(x, padded).reshape(B * L, C)
        windows = to_windows.view(-1, N)[order]  # (nW, N) padded-map positions, group after group
        per_window = x.element_size() * self.attn.num_heads * N * N * 2  # attention logits + bias
        c = int(self.chunk_mb * 2**20 // per_window)  # windows per chunk
        c = max(1, min(c, INFER_CHUNK_TOKENS // N) if x.device.type == "cpu" else c)
        image_start = torch.arange(B, device=x.device)[:, None, None] * L
        out, start = torch.empty_like(flat), 0
        for g, count in enumerate(counts):
            index = (image_start + windows[start:start + count]).flatten()  # (B*count*N,) this group's tokens
            start += count
            b = bias if masks is None else bias[g:g + 1] if whole else self.attn.add_mask(bias, masks[g:g + 1], x.dtype)
            # V1 "pad": the plain path pads after norm1, so padded tokens enter attention as zeros
            keep = (~padding[g])[:, None].to(x.dtype) if not (self.v2 or self.mask_padding) and padding[g].any() \
                else None  # (N, 1)
            for i in range(0, B * count * N, c * N):
                idx = index[i:i + c * N]
                xw = flat.index_select(0, idx).view(-1, N, C)  # (n, N, C)
                if self.v2:
                    xw = xw + self.norm1(self.attn.attend(xw, b))
                    xw = xw + self.norm2(self.mlp(xw))
                else:
                    h = self.norm1(xw)
                    xw = xw + self.attn.attend(h if keep is None else h * keep, b)
                    xw = xw + self.mlp(self.norm2(xw))
                out.index_copy_(0, idx, xw.view(-1, C))
        out = out.view(B, *padded, C)
        return out if padded == feat else out[(slice(None), *(slice(0, f) for f in feat))].contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C), or (B, T, H, W, C) for a 3-D window."""
        if self.inference_path_for(x) == "windows":
            return self._forward_windows(x)
        if self.v2:
            x = self.drop_path(x, self.norm1(self._attention(x)))
            return self.drop_path(x, self.norm2(self.mlp(x)))
        x = self.drop_path(x, self._attention(self.norm1(x)))
        return self.drop_path(x, self.mlp(self.norm2(x)))


# ----------------------------------------------------------------------------------------------------------
# patch embedding and merging


class PatchEmbed(nn.Module):
    """Non-overlapping patches (p x p, or t x p x p for video) -> linear embedding (a strided conv) -> LayerNorm.
    Pads sizes that are not patch multiples at the end of each axis."""

    def __init__(self, cfg: SwinConfig):
        super().__init__()
        self.patch_size, self.in_chans = cfg.patch_size, cfg.in_chans
        conv = nn.Conv3d if cfg.ndim == 3 else nn.Conv2d
        self.proj = conv(cfg.in_chans, cfg.embed_dim, cfg.patch, cfg.patch)
        self.norm = nn.LayerNorm(cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) -> (B, *ceil(S/p), D), S = (H, W) or (T, H, W)."""
        amounts = ()
        for s, p in zip(reversed(x.shape[2:]), reversed(self.proj.kernel_size)):
            amounts += (0, -s % p)
        return self.norm(self.proj(pad(x, amounts)).movedim(1, -1))


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated (x0, x1, x2, x3 order of the official code) -> 4C -> 2C.
    V1: LayerNorm(4C) then Linear; V2: Linear then LayerNorm(2C)."""

    def __init__(self, dim: int, v2: bool):
        super().__init__()
        self.v2 = v2
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim if v2 else 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C); (B, T, H, W, C) merges each frame alone (Video Swin)."""
        *lead, H, W, C = x.shape
        x = pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = x.reshape(-1, (H + 1) // 2, 2, (W + 1) // 2, 2, C)  # (B*T, H/2, dy, W/2, dx, C)
        x = x.permute(0, 1, 3, 4, 2, 5).reshape(*lead, (H + 1) // 2, (W + 1) // 2, 4 * C)  # order (dx, dy)
        return self.norm(self.reduction(x)) if self.v2 else self.reduction(self.norm(x))


class PatchExpand(nn.Module):
    """Patch expanding (Swin-UNet's inverse of merging): Linear C -> s*s*C_out (no bias), each token's channels
    spread over an s x s patch in (row, column, channel) order, then LayerNorm(C_out). s=2, C_out=C/2: a decoder's
    2x up-sampling; s=patch_size, C_out=C: the final expansion back to pixels."""

    def __init__(self, dim: int, out_dim: int, scale: int):
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, scale * scale * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, H, W, C) -> (B, sH, sW, C_out), cropped at the bottom / right to `size` when given."""
        B, H, W, _ = x.shape
        s = self.scale
        x = self.expand(x).view(B, H, W, s, s, -1)  # (B, H, W, s_row, s_col, C_out)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, H * s, W * s, -1)  # (B, sH, sW, C_out)
        if size is not None:
            x = x[:, :size[0], :size[1]]  # the rows / columns grown from the encoder's merging padding
        return self.norm(x)


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, grad_checkpointing: bool = False) -> torch.Tensor:
    """x through each block in turn, recomputing activations in backward when grad_checkpointing."""
    for blk in blocks:
        x = checkpoint(blk, x, use_reentrant=False) if grad_checkpointing and torch.is_grad_enabled() else blk(x)
    return x
