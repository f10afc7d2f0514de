"""CSWin Transformer (Dong et al., "CSWin Transformer: A General Vision Transformer Backbone with Cross-Shaped Windows",
CVPR 2022; microsoft/CSWin-Transformer) rebuilt from swinkit's parts: the Swin classifier (models/swin.py) with the
overlapping conv stem ("overlap": 7x7, stride 4, LayerNorm), strided-conv merging ("conv": 3x3, stride 2, LayerNorm)
and the cross-shaped window mixer with LePE (nn/mixers/cswin.py) in every block. The official model runs only at its
img_size; this one at any size. Its checkpoints: swinkit.io.formats.cswin."""
from __future__ import annotations

from ..config import CSWinConfig
from .swin import SwinTransformer


class CSWinTransformer(SwinTransformer):
    """CSWin classifier: (B, in_chans, H, W) of any H, W >= patch_size -> (B, num_classes). The parameters are the
    official model's, renamed (stage{i+1}.{j} -> layers.{i}.blocks.{j}, merge{i} -> layers.{i}.downsample; the
    block's qkv and proj and its attns.k.get_v (LePE) sit in the mixer, `attn`). The official initialisation is
    Swin's (truncated normal 0.02 for linear layers, unit LayerNorms)."""

    def __init__(self, cfg: CSWinConfig):
        super().__init__(cfg)
