"""Swin V1/V2 as a dense-prediction backbone: the Swin trunk (stem and stages, no classifier) read through its
forward_intermediates, each chosen stage through its own LayerNorm (norm0..norm3, as the official detection and
segmentation code and mmseg do). The window behaviour comes from cfg.window_mode; create_backbone picks "pad",
the dense codebases' behaviour."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn as nn

from ..config import SwinConfig
from .swin import SwinTrunk


def _check_out_indices(out_indices: Sequence[int], n: int) -> tuple[int, ...]:
    """Stage indices (negative ones counted from the end) -> non-negative, in the order given."""
    idx = tuple(out_indices)
    if not idx or any(not isinstance(i, int) or not -n <= i < n for i in idx) or len({i % n for i in idx}) < len(idx):
        raise ValueError(f"out_indices must be distinct stage indices in [0, {n}) (or negative from the end), "
                         f"got {idx}")
    return tuple(i % n for i in idx)


class SwinBackbone(SwinTrunk):
    """Input (B, in_chans, H, W) of any H, W >= patch_size -> a list of (B, out_channels[k], H_i, W_i) maps, one per
    entry of out_indices, at strides patch_size * 2**i (sizes rounded up), each through its own LayerNorm unless
    out_norms=False (transformers' Swinv2Backbone has none).

    frozen_stages follows mmseg: -1 freezes nothing, 0 the patch embedding (and absolute position embedding),
    k > 0 also stages 0..k-1 with their output norms and the patch merging that ends stage k-1 (mmseg keeps
    merging at the end of a stage; here it opens the next one). Frozen parts take no gradient and stay in eval
    mode when the model trains."""

    def __init__(self, cfg: SwinConfig, out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 out_norms: bool = True):
        n = len(cfg.depths)
        out_indices = _check_out_indices(out_indices, n)
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= n:
            raise ValueError(f"frozen_stages must be an int in [-1, {n}] (-1: nothing frozen, 0: the patch "
                             f"embedding, k: also stages 0..k-1), got {frozen_stages!r}")
        super().__init__(dataclasses.replace(cfg, num_classes=0))
        self._init_trunk()
        self.out_indices, self.frozen_stages = out_indices, frozen_stages
        self.out_channels = [cfg.embed_dim * 2**i for i in out_indices]
        for i, c in zip(out_indices, self.out_channels):
            self.add_module(f"norm{i}", nn.LayerNorm(c) if out_norms else nn.Identity())
        for p in self._frozen_parameters():
            p.requires_grad_(False)
        self.train(self.training)

    def _frozen_modules(self) -> list[nn.Module]:
        k, n = self.frozen_stages, len(self.layers)
        if k < 0:
            return []
        mods = [self.patch_embed, self.pos_drop] + list(self.layers[:k])
        mods += [getattr(self, f"norm{i}") for i in self.out_indices if i < k]
        if 0 < k < n:
            mods.append(self.layers[k].downsample)
        return mods

    def _frozen_parameters(self) -> list[nn.Parameter]:
        params = [p for m in self._frozen_modules() for p in m.parameters()]
        if self.frozen_stages >= 0 and self.absolute_pos_embed is not None:
            params.append(self.absolute_pos_embed)
        return params

    def train(self, mode: bool = True) -> "SwinBackbone":
        super().train(mode)
        for m in self._frozen_modules():
            m.eval()
        return self

    def forward_features(self, x: torch.Tensor):
        """A classifier's method that timm users may reach for: say what to call instead."""
        raise TypeError("SwinBackbone has no classifier: call it for its feature maps (or forward_intermediates), "
                        "or build a classifier with swinkit.create_model")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> [(B, out_channels[k], H_i, W_i) normalised map of stage out_indices[k]]."""
        taken = sorted(self.out_indices)
        maps = self.forward_intermediates(x, taken, stop_early=True, output_fmt="NHWC", intermediates_only=True)
        outs = {i: getattr(self, f"norm{i}")(m).permute(0, 3, 1, 2).contiguous()  # (B, C_i, H_i, W_i)
                for i, m in zip(taken, maps)}
        return [outs[i] for i in self.out_indices]
