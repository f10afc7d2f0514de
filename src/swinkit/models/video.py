"""Video Swin Transformer (Liu et al., CVPR 2022): the image model's blocks on (T, H, W) token maps with 3-D
windows, cyclic shift and mask, a 3-D relative position bias, and patch merging in space only. Any clip size runs:
per axis the window is clamped and the shift dropped as the official code does, and padding to a window multiple
is masked as keys (mask_padding=False attends it as zeros, as the official code and torchvision's swin3d)."""
from __future__ import annotations

import torch

from ..config import VideoSwinConfig
from .swin import SwinTransformer


class VideoSwinTransformer(SwinTransformer):
    """Video Swin classifier and backbone. Input (B, in_chans, T, H, W) of any T, H, W >= 1 (each axis is
    padded to a patch multiple, as the official patch embedding does: a one-frame clip runs).

    forward_features and forward_pyramid (stage outputs at spatial strides 4, 8, 16, 32, temporal stride 2) return
    NCTHW maps, as the official backbone and the dense video heads take them; forward returns (B, num_classes)
    logits (global average pool over T, H, W, dropout, linear)."""

    def __init__(self, cfg: VideoSwinConfig):
        super().__init__(cfg)
        self.head.drop.p = cfg.head_drop_rate

    def _check_input(self, x: torch.Tensor) -> None:
        c = self.cfg.in_chans
        expected = f"a (B, {c}, T, H, W) float video tensor"
        if not isinstance(x, torch.Tensor) or x.ndim != 5:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            hint = " (add a batch dimension with x[None])" if isinstance(x, torch.Tensor) and x.ndim == 4 else ""
            raise ValueError(f"expected {expected}, got shape {shape}{hint}")
        if x.shape[1] != c:
            hint = " (frames first? use x.transpose(1, 2))" if x.shape[2] == c else ""
            raise ValueError(f"expected {expected}, got {x.shape[1]} channels in shape {tuple(x.shape)}{hint}")
        if x.numel() == 0:
            raise ValueError(f"expected {expected}, got an empty tensor of shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"expected {expected}, got dtype {x.dtype} (convert with x.float())")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, T/pt, H/p, W/p, D): checked input, patch embedding."""
        self._check_input(x)
        return self.pos_drop(self.patch_embed(x))

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)  # (B, T', H', W', C)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, 8D, T/2, H/32, W/32) normalised last-stage map (sizes rounded up)."""
        return self._features(x).movedim(-1, 1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, T, H, W) features -> (B, num_classes) logits, or (B, C) with pre_logits."""
        return self.head(x.movedim(1, -1), pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, num_classes) logits."""
        return self.head(self._features(x))
