"""Semantic segmentation: a Swin backbone, a UPerNet or semantic-FPN decode head, and an auxiliary FCN head for
training. Logits come back at the input's size."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import SegmentationConfig
from .backbone import SwinBackbone
from .heads import FCNHead, SemanticFPNHead, UPerHead, resize


class SegmentationModel(nn.Module):
    """Input (B, in_chans, H, W) of any H, W >= patch_size -> (B, num_classes, H, W) logits."""

    def __init__(self, cfg: SegmentationConfig):
        super().__init__()
        self.cfg, self.num_classes = cfg, cfg.num_classes
        n = len(cfg.backbone.depths)
        self.backbone = SwinBackbone(cfg.backbone, range(n), cfg.frozen_stages, cfg.out_norms)
        chans = self.backbone.out_channels
        if cfg.head == "upernet":
            self.decode_head = UPerHead(chans, cfg.num_classes, cfg.channels, cfg.pool_scales, cfg.dropout)
        else:
            self.decode_head = SemanticFPNHead(chans, cfg.num_classes, cfg.channels, cfg.fpn_channels, cfg.dropout)
        self.auxiliary_head = FCNHead(chans[cfg.aux_in_index], cfg.num_classes, cfg.aux_channels, cfg.aux_num_convs,
                                      cfg.aux_in_index, cfg.dropout) if cfg.aux_head else None
        for head in (self.decode_head, self.auxiliary_head):
            if head is not None:
                head.apply(self._init_head)
                nn.init.normal_(head.classifier.weight, std=0.01)

    @staticmethod
    def _init_head(m: nn.Module) -> None:
        """mmseg's initialisation: Kaiming (fan-out, ReLU) convs, zero biases, unit BatchNorm."""
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """The backbone's position tables, norms and biases, named from this model."""
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, C, H, W) -> (decode logits, auxiliary logits or None without an auxiliary head), both
        (B, num_classes, H, W). The auxiliary logits are for the training loss (weight cfg.aux_loss_weight)."""
        feats = self.backbone(x)
        size = x.shape[-2:]
        logits = resize(self.decode_head(feats), size)
        aux = None if self.auxiliary_head is None else resize(self.auxiliary_head(feats), size)
        return logits, aux

    def forward(self, x: torch.Tensor, with_aux: bool = False):
        """(B, C, H, W) -> (B, num_classes, H, W) logits (decode head only); with_aux: forward_with_aux(x), the
        way to get the auxiliary logits through a DDP / FSDP wrapper, which only hooks forward."""
        if with_aux:
            return self.forward_with_aux(x)
        return resize(self.decode_head(self.backbone(x)), x.shape[-2:])

