"""Window attention as a token mixer: "shifted_window" (Swin: the block's windows shift when its spec says so),
"window" (never shifted) and "global" (one window over the whole map). The CPU inference fast path (the whole block
on chunks of windows) and the bias cache are this mixer's own methods."""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn

from ..attention import BIAS_CACHE_MAX_MB, WindowAttention, tracing
from ..windows import (Pair, attention_mask, graph_windows, mask_from_labels, needs_mask, pad_to, padded_size, symbolic,
                       window_and_shift, window_groups, window_labels, window_order)
from . import MixerSpec, TokenMixer, register_mixer

# CPU inference runs a whole block on this many tokens at a time (rounded down to windows): every intermediate
# stays small enough to sit in cache and to be reused by the allocator instead of freshly page-faulted memory.
# Other devices have neither reason and keep only the chunk_mb budget (thousands of small launches would cost more).
INFER_CHUNK_TOKENS = 2048
# inference_path="auto" runs the windows path on CPU for block inputs of at least this many elements (B*H*W*C),
# where its cache-resident chunks beat one pass over the map; below it the plain path's fewer, larger calls win.
# Under bfloat16 (autocast or a bfloat16 model) the matmuls are faster and the crossover comes later.
# Measured per block on Swin-T (benchmarks/block_paths.py).
WINDOWS_MIN_ELEMENTS = {"float32": 2**20, "low precision": 2**22}


@register_mixer("shifted_window")
class WindowMixer(WindowAttention, TokenMixer):
    """(S)W-MSA on (B, *S, C) maps, S = (H, W) or (T, H, W): pad to a window multiple, cyclic shift, partition,
    attend, and back.

    Two forward paths give the same numbers: "plain" (`forward`: the whole map at once; training, autograd, compile
    and export) and "windows" (`forward_block`: eval without grad, the whole block on a chunk of windows at a time,
    so every intermediate stays small); `inference_path` picks between them, see `inference_path_for`."""

    def __init__(self, spec: MixerSpec, shift: bool | None = None):
        cfg = spec.cfg
        super().__init__(spec.dim, spec.num_heads, spec.window, cfg, spec.pretrained_window)
        self.shift = spec.shift if shift is None else shift
        self.window_mode, self.inference_path = cfg.window_mode, cfg.inference_path
        self._mask_padding = cfg.mask_padding
        self.chunk_mb = cfg.chunk_mb

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
        """attention_mask(H, W, device) or (T, H, W, device): the (nW, N, N) additive mask this mixer uses on
        that map (from the shared cache)."""
        *feat, device = feat_and_device
        win, shift = self.window_and_shift(*feat)
        return attention_mask(tuple(feat), win, shift, device, self.mask_padding)

    def inference_path_for(self, x: torch.Tensor) -> str:
        """The path the block takes for x: "plain" in training, with autograd, for `viz attention`, under
        torch.compile, tracing or export; otherwise `inference_path`, where "auto" means "windows" for a CPU
        tensor of at least WINDOWS_MIN_ELEMENTS and "plain" below that or on other devices (where the per-chunk
        launches cost more than they save)."""
        if self.training or torch.is_grad_enabled() or self.keep_attn or tracing():
            return "plain"
        if self.inference_path != "auto":
            return self.inference_path
        if x.device.type != "cpu":
            return "plain"
        low = x.dtype != torch.float32 or torch.is_autocast_enabled("cpu")
        return "windows" if x.numel() >= WINDOWS_MIN_ELEMENTS["low precision" if low else "float32"] else "plain"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *S, C) -> (B, *S, C). Padding comes before the shift so regions and padding mask match the official
        layout; shift and partition (and their reverse) are one precomputed gather each."""
        B, *S, C = x.shape
        feat = tuple(S)
        if symbolic(feat):
            return self.forward_in_graph(x)
        win, shift = self.window_and_shift(*feat)
        to_windows, from_windows = window_order(feat, win, shift, x.device)
        x = pad_to(x, padded_size(feat, win)).reshape(B, -1, C)  # (B, L padded, C)
        windows = x.index_select(1, to_windows).view(B, -1, math.prod(win), C)  # (B, nW, N, C)
        out = self.window_attention(windows, feat, win, shift)
        return out.view(B, -1, C).index_select(1, from_windows).view(B, *S, C)

    def forward_in_graph(self, x: torch.Tensor) -> torch.Tensor:
        """forward for symbolic sizes (torch.export with dynamic shapes): the layout, mask and position bias computed
        in the graph from x's shape (nn.windows.graph_windows), so that the exported file takes any size."""
        B, *S, C = x.shape
        g = graph_windows(tuple(S), self.window, self.shift, self.window_mode == "clamp", self.mask_padding, x.device)
        N = math.prod(self.window)
        windows = pad_to(x, g.padded).reshape(B, -1, C).index_select(1, g.to_windows).view(-1, N, C)  # (B*nW, N, C)
        bias = self.padded_position_bias(g.real)
        bias = self.add_mask(None if bias is None else bias[None], mask_from_labels(g.labels), x.dtype)
        out = self.attend(windows, bias)  # window i of an image takes bias[i % nW]
        return out.view(B, -1, C).index_select(1, g.from_windows).view(B, *S, C)

    def window_attention(self, windows: torch.Tensor, feat: Pair, win: Pair, shift: Pair) -> torch.Tensor:
        """(B, nW, N, C) -> (B, nW, N, C). Windows go through attention in chunks whose attention matrices
        and bias fit in cfg.chunk_mb (the V2 paper's sequential self-attention for huge inputs)."""
        B, nW, N, C = windows.shape
        per_window = windows.element_size() * self.num_heads * N * N * 2 * B  # logits + bias
        chunk = max(1, int(self.chunk_mb * 2**20 // per_window))
        if chunk >= nW:
            return self.attend_windows(windows, win, attention_mask(feat, win, shift, windows.device,
                                                                    self.mask_padding))
        labels = window_labels(feat, win, shift, windows.device, self.mask_padding) \
            if needs_mask(feat, win, shift, self.mask_padding) else None
        out = windows.new_empty(windows.shape)
        for i in range(0, nW, chunk):
            mask = None if labels is None else mask_from_labels(labels[i:i + chunk])
            out[:, i:i + chunk] = self.attend_windows(windows[:, i:i + chunk], win, mask, cache=False)
        return out

    def forward_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """Inference: (B, *S, C) -> (B, *S, C), the whole block (attention and MLP, both residuals) one chunk
        of windows at a time, each chunk gathered from and written back to its tokens' places; None (the block runs
        as usual) on the plain path or in a block with layer scales or a whole-map norm. Chunks follow
        window_groups, so a chunk's bias is one (1, h, N, N) slice that broadcasts over its windows. The output is
        the only full-size tensor; padded tokens are computed (as keys they are masked, or in "pad" mode zeros
        after norm1 as in the plain path) and cropped at the end."""
        if self.inference_path_for(x) != "windows" or not block.tokenwise:
            return None
        B, *S, C = x.shape
        feat = tuple(S)
        win, shift = self.window_and_shift(*feat)
        padded = padded_size(feat, win)
        N, L = math.prod(win), math.prod(padded)
        to_windows, _ = window_order(feat, win, shift, x.device)
        order, masks, counts, padding = window_groups(feat, win, shift, x.device, self.mask_padding)
        # every group's bias + mask cached as one (P, h, N, N) tensor when small (2-D windows); else (3-D windows) only
        # the (1, h, N, N) position bias is cached and each group adds its mask
        whole = masks is None or masks.numel() * self.num_heads * x.element_size() <= BIAS_CACHE_MAX_MB * 2**20
        bias = self.cached_attention_bias(win, masks if whole else None, x.dtype)  # (P | 1, h, N, N) or None
        flat = pad_to(x, padded).reshape(B * L, C)
        windows = to_windows.view(-1, N)[order]  # (nW, N) padded-map positions, group after group
        per_window = x.element_size() * self.num_heads * N * N * 2  # attention logits + bias
        c = int(self.chunk_mb * 2**20 // per_window)  # windows per chunk
        c = max(1, min(c, INFER_CHUNK_TOKENS // N) if x.device.type == "cpu" else c)
        image_start = torch.arange(B, device=x.device)[:, None, None] * L
        out, start = torch.empty_like(flat), 0
        for g, count in enumerate(counts):
            index = (image_start + windows[start:start + count]).flatten()  # (B*count*N,) this group's tokens
            start += count
            b = bias if masks is None else bias[g:g + 1] if whole else self.add_mask(bias, masks[g:g + 1], x.dtype)
            # V1 "pad": the plain path pads after norm1, so padded tokens enter attention as zeros
            keep = (~padding[g])[:, None].to(x.dtype) if not (block.post_norm or self.mask_padding) \
                and padding[g].any() else None  # (N, 1)
            for i in range(0, B * count * N, c * N):
                idx = index[i:i + c * N]
                xw = flat.index_select(0, idx).view(-1, N, C)  # (n, N, C)
                if block.post_norm:
                    xw = xw + block.norm1(self.attend(xw, b))
                    xw = xw + block.norm2(block.mlp(xw))
                else:
                    h = block.norm1(xw)
                    xw = xw + self.attend(h if keep is None else h * keep, b)
                    xw = xw + block.mlp(block.norm2(xw))
                out.index_copy_(0, idx, xw.view(-1, C))
        out = out.view(B, *padded, C)
        return out if padded == feat else out[(slice(None), *(slice(0, f) for f in feat))].contiguous()


@register_mixer("window")
def _window(spec: MixerSpec) -> WindowMixer:
    """W-MSA in every block: windows never shift."""
    return WindowMixer(spec, shift=False)


@register_mixer("global")
class GlobalMixer(WindowMixer):
    """Full attention: one window over the whole map, at any size. V1: scaled dot product without a position bias
    (position comes from the model's absolute embedding, as in ViT); V2: cosine attention with the log-spaced
    continuous position bias, normalised by the stage's map at the config's img_size (`spec.grid`)."""

    def __init__(self, spec: MixerSpec):
        v1 = spec.cfg.version == 1
        super().__init__(dataclasses.replace(spec, window=tuple(spec.grid), shift=False,
                                             pretrained_window=tuple(spec.grid)))
        if v1 and self.use_rel_pos:
            del self.relative_position_bias_table
            self.use_rel_pos = False

    def window_and_shift(self, *feat: int) -> tuple[Pair, Pair]:
        return tuple(feat), (0,) * len(feat)

    def forward_in_graph(self, x: torch.Tensor) -> torch.Tensor:
        """One window of symbolic size: no layout, no mask; the V2 bias computed in the graph."""
        B, *S, C = x.shape
        bias = self.position_bias(tuple(S))  # (h, N, N) or None
        return self.attend(x.reshape(B, -1, C), None if bias is None else bias[None]).view(B, *S, C)
