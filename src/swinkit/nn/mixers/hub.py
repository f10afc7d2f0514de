"""Window attention with hub tokens ("hub"): a few learned global tokens that every window writes to and reads from,
so that one call carries information across the whole map at the cost of window attention."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..windows import pad_to, padded_size, window_and_shift, window_order, window_padding
from . import MixerSpec, TokenMixer, register_mixer
from .core import GroupAttention


@register_mixer("hub")
class HubMixer(TokenMixer):
    """Windows plus cfg.hub_tokens global hub tokens, (B, H, W, C) -> (B, H, W, C). In this order:

    1. write: the hubs start from the learned `hubs` (M, C) at every call (no state is carried between calls)
       and each hub attends to all M hubs and all H*W map tokens (`write`, GroupAttention); the hubs become
       hubs + that output (a residual, so the learned values persist);
    2. read: the map is split into non-shifted windows (the stage's window, clamped to the map as the window
       mixer does; a map that windows do not divide is padded at its end and the padded keys masked out, -inf),
       and every token attends to the tokens of its window followed by the M written hubs (`read`).

    Only the map tokens are returned. Attention is V1 scaled dot product or V2 cosine with a learned logit scale
    (GroupAttention); there is no position bias (position comes from the model's absolute position embedding).
    With hub_tokens = 0 this is plain window attention without a bias (and there is no `write`)."""

    def __init__(self, spec: MixerSpec):
        super().__init__()
        cfg = spec.cfg
        if len(spec.window) != 2 or cfg.hub_tokens < 0:
            raise ValueError(f"hub: needs a 2-D window and hub_tokens >= 0, got window {spec.window} and "
                             f"hub_tokens {cfg.hub_tokens}")
        self.window = tuple(spec.window)
        self.hubs = nn.Parameter(nn.init.trunc_normal_(torch.zeros(cfg.hub_tokens, spec.dim), std=0.02))
        self.write = GroupAttention(spec.dim, spec.num_heads, cfg) if cfg.hub_tokens else None
        self.read = GroupAttention(spec.dim, spec.num_heads, cfg)

    def extra_repr(self) -> str:
        return f"window={self.window}, hub_tokens={self.hubs.shape[0]}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        feat, M = (H, W), self.hubs.shape[0]
        hubs = self.hubs.to(x.dtype).repeat(B, 1, 1)  # (B, M, C); a copy: an expanded view of a parameter made under
        # no_grad would still claim requires_grad without a grad_fn, which module hooks (FLOP counting) reject
        if M:
            hubs = hubs + self.write(hubs, context=x.reshape(B, H * W, C))  # (B, M, C): hubs read every token
        win, _ = window_and_shift(feat, self.window, False)
        N, padded = math.prod(win), padded_size(feat, win)
        to_windows, from_windows = window_order(feat, win, (0, 0), x.device)
        windows = pad_to(x, padded).reshape(B, -1, C).index_select(1, to_windows).view(-1, N, C)  # (B*nW, N, C)
        nW = windows.shape[0] // B
        bias = None
        if padded != feat:  # padded keys get no weight; hub keys are never masked
            padding = window_padding(feat, win, (0, 0), x.device)  # (nW, N)
            bias = torch.zeros(nW, N + M, dtype=x.dtype, device=x.device)
            bias[:, :N].masked_fill_(padding, float("-inf"))
            bias = bias.expand(B, -1, -1).reshape(B * nW, 1, 1, N + M)
        context = hubs[:, None].expand(B, nW, M, C).reshape(B * nW, M, C) if M else None
        out = self.read(windows, context=context, bias=bias)  # (B*nW, N, C)
        return out.view(B, -1, C).index_select(1, from_windows).view(B, H, W, C)
