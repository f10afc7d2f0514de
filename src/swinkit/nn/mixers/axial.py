"""Axial attention ("axial"): row attention, then column attention."""
from __future__ import annotations

import torch

from . import MixerSpec, TokenMixer, register_mixer
from .core import GroupAttention


@register_mixer("axial")
class AxialMixer(TokenMixer):
    """Row attention, then column attention (Ho et al. 2019, "Axial Attention in Multidimensional Transformers"):
    every token first attends to the W tokens of its row; the result is then attended along columns (each token to
    the H tokens of its column). Together one call reaches the whole map at O(HW(H + W)) cost. Each step has its
    own qkv and proj (`row`, `col`: GroupAttention). No position bias: a row has any length at run time, so
    position comes from the model's absolute position embedding (pos_embed="absolute"). 2-D maps only."""

    def __init__(self, spec: MixerSpec):
        super().__init__()
        self.row = GroupAttention(spec.dim, spec.num_heads, spec.cfg)
        self.col = GroupAttention(spec.dim, spec.num_heads, spec.cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = self.row(x.reshape(B * H, W, C)).view(B, H, W, C)  # each row a group
        x = self.col(x.transpose(1, 2).reshape(B * W, H, C))  # (B*W, H, C): each column a group
        return x.view(B, W, H, C).transpose(1, 2).contiguous()
