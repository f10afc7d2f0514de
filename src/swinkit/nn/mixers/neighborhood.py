"""Neighbourhood attention ("neighborhood", Hassani et al. 2023, NAT): every query attends to the k x k keys around
it. Pure torch (a gather of each query's keys), checked in the tests against a loop reference and against the NATTEN
library where it is installed. NATTEN itself is not used: its CPU path (0.21, flex attention uncompiled) scores the
whole map, has no backward, no float64, needs a power-of-two head_dim >= 8, and NATTEN >= 0.20 has no relative
position bias."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..windows import Pair, cached
from . import MixerSpec, TokenMixer, register_mixer
from .core import cosine_qk, logit_scale_param, split_heads


@cached
def neighborhood_index(feat: Pair, kernel: Pair, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """key (L, K): for each query of the (H, W) map, the flat positions of its K = kh * kw keys, row-major; bias
    (L, K): each key's entry in a (2kh-1) x (2kw-1) relative-position table (row-major), the offset key - query.

    NAT's neighbourhood: along each axis the k keys are centred on the query, shifted inward near the borders so
    that they stay inside the map (every query has k real keys); a map shorter than k along an axis is taken whole.
    The offsets stay within [-(k-1), k-1], hence the (2k-1) table of NAT."""
    keys, offsets = [], []
    for n, k in zip(feat, kernel):
        size = min(n, k)
        query = torch.arange(n)
        start = torch.clamp(query - size // 2, 0, n - size)  # (n,)
        key = start[:, None] + torch.arange(size)  # (n, size)
        keys.append(key)
        offsets.append(key - query[:, None] + k - 1)  # in [0, 2k-2]
    kw, (H, W) = kernel[1], feat
    key = keys[0][:, None, :, None] * W + keys[1][None, :, None, :]  # (H, W, sh, sw)
    bias = offsets[0][:, None, :, None] * (2 * kw - 1) + offsets[1][None, :, None, :]
    return key.reshape(H * W, -1).to(device), bias.reshape(H * W, -1).to(device)


@register_mixer("neighborhood")
class NeighborhoodMixer(TokenMixer):
    """Neighbourhood attention, (B, H, W, C) -> (B, H, W, C): the query at (i, j) attends to the kh x kw keys of
    the window around it, kh x kw = the stage's window size rounded up to odd per axis (window 4 -> 5x5). Near a
    border the neighbourhood shifts inward (no padding): every query sees exactly kh * kw real keys when H >= kh and
    W >= kw; along an axis shorter than the kernel the whole axis is taken.

    V1: scaled dot product plus NAT's learned relative position bias `rpb` (heads, 2kh-1, 2kw-1), indexed by key -
    query offset (when cfg.pos_embed is relative); V2: cosine attention with a learned per-head logit scale, plus
    the same table (swinkit's extension; NAT has no V2). The keys and values are gathered per query, K times the
    size of k and v, in query chunks that fit cfg.chunk_mb."""

    def __init__(self, spec: MixerSpec):
        super().__init__()
        cfg, C, h = spec.cfg, spec.dim, spec.num_heads
        self.kernel = tuple(w + 1 - w % 2 for w in spec.window)  # odd: each query at its neighbourhood's centre
        if len(self.kernel) != 2:
            raise ValueError(f"neighborhood attention is 2-D; got a {len(self.kernel)}-D window {self.kernel}")
        if C % h:
            raise ValueError(f"dim {C} must be divisible by num_heads {h}")
        self.num_heads, self.scale = h, (C // h) ** -0.5
        self.qkv = nn.Linear(C, 3 * C, bias=cfg.qkv_bias)
        if cfg.pos_embed in ("relative", "absolute+relative"):
            table = torch.zeros(h, 2 * self.kernel[0] - 1, 2 * self.kernel[1] - 1)
            self.rpb = nn.Parameter(nn.init.trunc_normal_(table, std=0.02))
        else:
            self.rpb = None
        self.logit_scale = logit_scale_param(h) if cfg.version == 2 else None
        self.attn_drop, self.chunk_mb = cfg.attn_drop_rate, cfg.chunk_mb
        self.proj = nn.Linear(C, C)
        self.proj_drop = nn.Dropout(cfg.drop_rate)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        L, h = H * W, self.num_heads
        q, k, v = split_heads(self.qkv(x).view(B, L, 3 * C), h)  # (B, h, L, d)
        q, k, scale = cosine_qk(q, k, self.scale, self.logit_scale)
        key, bias_index = neighborhood_index((H, W), self.kernel, x.device)  # (L, K)
        K = key.shape[1]
        rows = max(1, int(self.chunk_mb * 2**20 // (3 * B * K * C * x.element_size())))  # queries per chunk
        out = torch.cat([self.attend(q[:, :, i:i + rows], k, v, key[i:i + rows], bias_index[i:i + rows], scale)
                         for i in range(0, L, rows)], 2)  # (B, h, L, d)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, H, W, C)))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key: torch.Tensor, bias_index: torch.Tensor,
               scale: float) -> torch.Tensor:
        """q (B, h, l, d) for l queries, k and v (B, h, L, d) of the map, key and bias_index (l, K). -> (B, h, l, d)"""
        attn = torch.einsum("bhld,bhlkd->bhlk", q * scale, k[:, :, key])  # (B, h, l, K)
        if self.rpb is not None:
            attn = attn + self.rpb.flatten(1)[:, bias_index]  # (h, l, K)
        attn = nn.functional.dropout(attn.softmax(-1), self.attn_drop if self.training else 0.0)
        return torch.einsum("bhlk,bhlkd->bhld", attn, v[:, :, key])

