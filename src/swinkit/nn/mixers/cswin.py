"""Cross-shaped window attention ("cswin", Dong et al. 2022, microsoft/CSWin-Transformer), rebuilt at any map size.

Half of the heads attend inside vertical stripes (full height, `split_size` wide), the other half inside horizontal
stripes (`split_size` high, full width); each branch adds LePE, a 3x3 depthwise convolution of its values computed
inside each stripe, to its attention output. In the last stage one branch of full attention (with LePE over the
whole map) takes every head. Parameters are the official block's, renamed: qkv, lepe.i (attns.i.get_v), proj.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..windows import Pair, pad_to, padded_size, symbolic, window_order, window_padding
from . import MixerSpec, TokenMixer, register_mixer
from .core import attend, logit_scale_param, split_heads


@register_mixer("cswin")
class CSWinMixer(TokenMixer):
    """CSWin's cross-shaped window self-attention with LePE, (B, H, W, C) -> (B, H, W, C).

    Branch 0 takes q/k/v channels [:C/2] and heads [:h/2] with stripes of (H, sw) (vertical), branch 1 channels
    [C/2:] and heads [h/2:] with stripes of (sh, W) (horizontal), sw = min(split, W), sh = min(split, H); outputs
    concatenated [branch 0, branch 1], then proj. The official CSWinBlock uses one branch over the whole map in the
    last stage and, as it does, also in a stage whose map at the config's img_size (spec.grid) equals its split.

    Any size (the official block runs only at its img_size): a map that stripes do not divide is zero-padded after
    qkv to a multiple of the stripe, the padded keys are masked out (-inf) and the output is cropped. LePE sees the
    padded values as zeros, which is exactly the official per-stripe convolution's zero border, so a real token's
    LePE is the convolution over the real part of its stripe.

    V1 is the official attention (scale head_dim ** -0.5). V2 (cfg.version == 2) is swinkit's extension: cosine
    attention with a learned per-head logit scale (`logit_scale`, clamped at 100), as WindowAttention in V2."""

    def __init__(self, spec: MixerSpec):
        super().__init__()
        cfg, C, h = spec.cfg, spec.dim, spec.num_heads
        self.split = cfg.split_size[spec.stage]
        whole = spec.stage == spec.num_stages - 1 or tuple(spec.grid) == (self.split,) * len(spec.grid)
        self.branches = 1 if whole else 2
        if C % h or h % self.branches:
            raise ValueError(f"cswin: dim {C} must be divisible by num_heads {h}, and num_heads even outside the "
                             f"last stage (two branches of num_heads / 2); got stage {spec.stage} of "
                             f"{spec.num_stages}")
        self.num_heads, self.scale = h, (C // h) ** -0.5
        c = C // self.branches
        self.qkv = nn.Linear(C, 3 * C, bias=cfg.qkv_bias)
        self.lepe = nn.ModuleList(nn.Conv2d(c, c, 3, 1, 1, groups=c) for _ in range(self.branches))
        self.logit_scale = logit_scale_param(h) if cfg.version == 2 else None
        self.attn_drop, self.fused = cfg.attn_drop_rate, cfg.fused_attn
        self.proj = nn.Linear(C, C)
        self.proj_drop = nn.Dropout(cfg.drop_rate)

    def extra_repr(self) -> str:
        return f"split={self.split}, branches={self.branches}"

    def stripes(self, H: int, W: int) -> list[Pair]:
        """Each branch's stripe (height, width) on an H x W map (split 0: half the map, rounded up)."""
        if self.branches == 1:
            return [(H, W)]
        sw, sh = self.split or -(-W // 2), self.split or -(-H // 2)
        return [(H, min(sw, W)), (min(sh, H), W)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        if symbolic(H, W):  # raised while exporting: swinkit export then fixes the size, with this reason
            raise NotImplementedError("cswin's stripes span the whole map (as many tokens as its height or width), "
                                      "which the export does not make symbolic yet")
        qkv = self.qkv(x).view(B, H, W, 3, C)
        c = C // self.branches
        out = torch.cat([self.branch(qkv[..., i * c:(i + 1) * c].reshape(B, H, W, 3 * c), i, stripe)
                         for i, stripe in enumerate(self.stripes(H, W))], -1)  # (B, H, W, C)
        return self.proj_drop(self.proj(out))

    def branch(self, qkv: torch.Tensor, i: int, stripe: Pair) -> torch.Tensor:
        """One branch: qkv (B, H, W, 3c) of its channels -> (B, H, W, c), attention + LePE inside each stripe."""
        B, H, W, C3 = qkv.shape
        c, h, N, feat = C3 // 3, self.num_heads // self.branches, math.prod(stripe), (H, W)
        to_stripes, from_stripes = window_order(feat, stripe, (0, 0), qkv.device)
        qkv = pad_to(qkv, padded_size(feat, stripe)).reshape(B, -1, C3)  # zeros after qkv, as the official border
        qkv = qkv.index_select(1, to_stripes).view(-1, N, C3)  # (n = B * stripes, N, 3c)
        q, k, v = split_heads(qkv, h)  # (n, h, N, d)
        n = q.shape[0]
        lepe = self.lepe[i](v.transpose(2, 3).reshape(n, c, *stripe))  # each stripe its own zero-bordered image
        lepe = lepe.view(n, h, c // h, N).transpose(2, 3)  # (n, h, N, d)
        bias = None
        if padded_size(feat, stripe) != feat:  # the last stripe holds padded keys: no weight on them
            padding = window_padding(feat, stripe, (0, 0), qkv.device)  # (stripes, N)
            bias = torch.zeros(padding.shape, dtype=qkv.dtype, device=qkv.device).masked_fill(padding, float("-inf"))
            bias = bias.expand(B, -1, -1).reshape(n, 1, 1, N)
        logit_scale = None if self.logit_scale is None else self.logit_scale[i * h:(i + 1) * h]
        out = attend(q, k, v, self.scale, logit_scale, bias, self.attn_drop if self.training else 0.0,
                     self.fused) + lepe  # (n, h, N, d)
        out = out.transpose(1, 2).reshape(B, -1, c)  # (B, stripes * N, c)
        return out.index_select(1, from_stripes).view(B, H, W, c)
