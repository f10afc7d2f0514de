"""PoolFormer (Yu et al., "MetaFormer Is Actually What You Need for Vision", CVPR 2022; sail-sg/poolformer) rebuilt from
swinkit's parts: the Swin classifier (models/swin.py) with the overlapping conv stem ("overlap": 7x7, stride 4, no
norm), strided-conv merging ("conv": 3x3, stride 2, no norm), the pooling mixer (nn/mixers/conv.py), GroupNorm over the
whole map (norm="groupnorm") and layer scales. Runs at any size, as the official model does. Its checkpoints:
swinkit.io.formats.poolformer."""
from __future__ import annotations

from ..config import PoolFormerConfig
from .swin import SwinTransformer


class PoolFormer(SwinTransformer):
    """PoolFormer classifier: (B, in_chans, H, W) of any H, W >= patch_size -> (B, num_classes), the final GroupNorm
    over the last map, then its mean. The parameters are the official model's, renamed (network.{2i}.{j} ->
    layers.{i}.blocks.{j}, network.{2i-1} -> layers.{i}.downsample; the MLP's 1x1 convolutions are linear layers,
    layer_scale_1 / _2 -> layer_scale1 / 2). The official initialisation is Swin's: truncated normal 0.02 for the MLP
    (its 1x1 convolutions there) and the head, PyTorch's defaults for the stem and merging convolutions, unit norms,
    layer scales at cfg.layer_scale."""

    def __init__(self, cfg: PoolFormerConfig):
        super().__init__(cfg)
