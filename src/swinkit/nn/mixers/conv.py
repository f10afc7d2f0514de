"""Mixers without attention: "pool" (PoolFormer), "dwconv" (ConvNeXt) and "identity" (the MLP alone; an ablation)."""
from __future__ import annotations

import torch
import torch.nn as nn

from . import MixerSpec, TokenMixer, register_mixer


def _odd(what: str, k: int) -> int:
    if k < 1 or k % 2 == 0:
        raise ValueError(f"{what} must be odd and positive so that the output keeps the input's size (padding "
                         f"{what} // 2 on each side), got {k}")
    return k


@register_mixer("pool")
class PoolMixer(TokenMixer):
    """PoolFormer's token mixer (Yu et al. 2022, sail-sg/poolformer `Pooling`): AvgPool2d(pool_size, stride 1,
    padding pool_size // 2, count_include_pad=False)(x) - x; subtracting x because the block adds it back as its
    residual. At the borders the average is over the window's positions inside the map. No parameters."""

    def __init__(self, spec: MixerSpec):
        super().__init__()
        k = _odd("pool_size", spec.cfg.pool_size)
        self.pool = nn.AvgPool2d(k, stride=1, padding=k // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)  # (B, C, H, W) view
        return (self.pool(x) - x).permute(0, 2, 3, 1)


@register_mixer("dwconv")
class DWConvMixer(TokenMixer):
    """ConvNeXt's token mixer (Liu et al. 2022): a conv_kernel x conv_kernel depthwise convolution with bias, zero
    padding conv_kernel // 2 (`dwconv`)."""

    def __init__(self, spec: MixerSpec):
        super().__init__()
        k = _odd("conv_kernel", spec.cfg.conv_kernel)
        self.dwconv = nn.Conv2d(spec.dim, spec.dim, k, padding=k // 2, groups=spec.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


@register_mixer("identity")
class IdentityMixer(TokenMixer):
    """No mixing between tokens: returns its input (the block is then an MLP per token). No parameters."""

    def __init__(self, spec: MixerSpec | None = None):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
