"""What the attention mixers share: `GroupAttention`, multi-head attention inside groups of tokens (rows, columns,
clusters, windows with hub tokens: axial, cluster and hub), and `attend`, the attention step itself (V1 scaled dot
product, V2 cosine with a learned logit scale), which cswin and neighborhood use with their own projections."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


LOG_MAX_LOGIT_SCALE = math.log(100.0)  # V2 clamps the learned logit scale at 100, as the Swin V2 paper


def logit_scale_param(num_heads: int) -> nn.Parameter:
    """V2's learned per-head temperature, log-parameterised and initialised to 10, as in WindowAttention."""
    return nn.Parameter(torch.log(10 * torch.ones(num_heads, 1, 1)))


def cosine_qk(q: torch.Tensor, k: torch.Tensor, scale: float, logit_scale: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The queries, keys and scale whose scaled dot product gives the attention logits. V1 (logit_scale None):
    unchanged. V2: cosine similarity times exp(logit_scale) clamped at 100, folded into unit queries. q: (..., h, Nq,
    d), k: (..., h, Nk, d), logit_scale (h, 1, 1)."""
    if logit_scale is None:
        return q, k, scale
    temperature = torch.clamp(logit_scale, max=LOG_MAX_LOGIT_SCALE).exp()  # (h, 1, 1)
    return F.normalize(q, dim=-1) * temperature, F.normalize(k, dim=-1), 1.0


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, logit_scale: torch.Tensor | None = None,
           bias: torch.Tensor | None = None, drop: float = 0.0, fused: bool = True) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v: q (n, h, Nq, d), k and v (n, h, Nk, d), bias additive and broadcastable to
    (n, h, Nq, Nk) (-inf on keys that must get no weight; every query keeps at least one key). Returns (n, h, Nq, d).
    fused: torch's scaled_dot_product_attention; else the explicit softmax (same numbers up to rounding)."""
    q, k, scale = cosine_qk(q, k, scale, logit_scale)
    if bias is not None:
        bias = bias.to(q.dtype)
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop, scale=scale)
    attn = (q * scale) @ k.transpose(-2, -1)  # (n, h, Nq, Nk)
    if bias is not None:
        attn = attn + bias
    return F.dropout(attn.softmax(-1), drop) @ v


def split_heads(x: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, ...]:
    """(n, N, 3C) qkv -> q, k, v, each (n, h, N, d): channels are (3, heads, head_dim), as every Swin qkv."""
    n, N, C3 = x.shape
    return x.view(n, N, 3, num_heads, C3 // (3 * num_heads)).permute(2, 0, 3, 1, 4).unbind(0)


class GroupAttention(nn.Module):
    """Multi-head attention inside groups of tokens: (n, N, C) -> (n, N, C), each of the n groups on its own.

    Queries come from the group's tokens; keys and values from the group's tokens followed by `context` (n, M, C)
    when given (extra tokens every query of the group also reads, e.g. hub tokens). No position bias. V1: scaled
    dot product (head_dim ** -0.5); V2: cosine attention with a learned per-head logit scale, as WindowAttention in
    V2. One qkv projection (bias cfg.qkv_bias) for tokens and context, then proj."""

    def __init__(self, dim: int, num_heads: int, cfg):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=cfg.qkv_bias)
        self.logit_scale = logit_scale_param(num_heads) if cfg.version == 2 else None
        self.attn_drop, self.fused = cfg.attn_drop_rate, cfg.fused_attn
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, bias: torch.Tensor | None = None
                ) -> torch.Tensor:
        """x (n, N, C), context (n, M, C) or None, bias additive broadcastable to (n, h, N, N + M) or None."""
        n, N, C = x.shape
        tokens = x if context is None else torch.cat((x, context), 1)  # (n, N + M, C)
        q, k, v = split_heads(self.qkv(tokens), self.num_heads)  # (n, h, N + M, d)
        out = attend(q[:, :, :N], k, v, self.scale, self.logit_scale, bias,
                     self.attn_drop if self.training else 0.0, self.fused)  # (n, h, N, d)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(n, N, C)))
