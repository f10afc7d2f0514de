"""Detection and instance segmentation: torchvision's own MaskRCNN / FasterRCNN / RetinaNet / FCOS on a Swin
backbone with torchvision's FeaturePyramidNetwork (torchvision ships no Swin detector: pytorch/vision#6931).

SwinFPN plays torchvision's BackboneWithFPN (same `body.` / `fpn.` names, an OrderedDict of 256-channel maps and
`out_channels`), so every torchvision default applies: the anchor sizes, RoI pooling and level mapping of 4 + 1
levels for the two-stage detectors, P3-P7 for RetinaNet and FCOS. The backbone pads inside its blocks
(window_mode "pad"), so GeneralizedRCNNTransform's stride-32 batch padding fits any image size.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from ..config import DetectionConfig
from .backbone import SwinBackbone


class SwinFPN(nn.Module):
    """(B, 3, H, W) -> OrderedDict of (B, out_channels, H / s, W / s) maps: "0".."3" = P2-P5 and "pool" = P6
    (max-pooled P5) for all 4 stages; "0".."2" = P3-P5, "p6", "p7" (from the last stage's output, as mmdet's
    add_extra_convs="on_input") for stages 1-3."""

    def __init__(self, body: SwinBackbone, out_channels: int = 256):
        super().__init__()
        self.body, self.out_channels = body, out_channels
        if body.out_indices[0] == 0:
            extra = LastLevelMaxPool()
        else:
            extra = LastLevelP6P7(body.out_channels[-1], out_channels)
            extra.use_P5 = False  # torchvision takes P5 when the widths happen to be equal; always the last stage
        self.fpn = FeaturePyramidNetwork(body.out_channels, out_channels, extra_blocks=extra)

    def forward(self, x: torch.Tensor) -> OrderedDict:
        feats = self.body(x)  # [(B, C_i, H_i, W_i)]
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


class SwinDetector:
    """What swinkit adds to a torchvision detector: its config (`cfg`, `num_classes`) and gradient checkpointing.
    Frozen stages stay frozen through the backbone (SwinBackbone.train)."""

    cfg: DetectionConfig

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.body.set_grad_checkpointing(enable)

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes


class SwinMaskRCNN(SwinDetector, MaskRCNN):
    pass


class SwinFasterRCNN(SwinDetector, FasterRCNN):
    pass


class NoBackgroundSlot:
    """RetinaNet and FCOS score each class with its own sigmoid, so they need no background column: num_classes
    outputs (as mmdetection's heads) for labels 1..num_classes, shifted down for the loss and back up in the
    detections. (torchvision's COCO models keep an unused column 0 instead, which an untrained model can predict.)"""

    def compute_loss(self, targets, *args):
        return super().compute_loss([{**t, "labels": t["labels"] - 1} for t in targets], *args)

    def postprocess_detections(self, *args):
        return [{**d, "labels": d["labels"] + 1} for d in super().postprocess_detections(*args)]


class SwinRetinaNet(SwinDetector, NoBackgroundSlot, RetinaNet):
    pass


class SwinFCOS(SwinDetector, NoBackgroundSlot, FCOS):
    pass


CLASSES = {"maskrcnn": SwinMaskRCNN, "fasterrcnn": SwinFasterRCNN, "retinanet": SwinRetinaNet, "fcos": SwinFCOS}


def build_detector(cfg: DetectionConfig, body: SwinBackbone | None = None) -> SwinDetector:
    """The torchvision detector of `cfg` (a subclass of MaskRCNN / FasterRCNN / RetinaNet / FCOS) for labels
    1..num_classes: the R-CNNs' softmax has num_classes + 1 outputs (label 0 is the background), the sigmoid heads
    of RetinaNet / FCOS num_classes. `body`: a backbone to use (e.g. with weights), which
    must match cfg.backbone and cfg.out_indices."""
    if body is None:
        body = SwinBackbone(cfg.backbone, cfg.out_indices, cfg.frozen_stages)
    if body.out_indices != cfg.out_indices:
        raise ValueError(f"a {cfg.detector} backbone returns stages {cfg.out_indices}, got {body.out_indices}")
    if cfg.frozen_norms:
        for m in body.modules():
            if isinstance(m, nn.LayerNorm):
                m.requires_grad_(False)
    kw = dict(min_size=cfg.min_size, max_size=cfg.max_size, image_mean=list(cfg.image_mean),
              image_std=list(cfg.image_std))
    two_stage = cfg.detector in ("maskrcnn", "fasterrcnn")
    if two_stage:
        kw.update(box_score_thresh=cfg.score_thresh, box_detections_per_img=cfg.detections_per_img,
                  rpn_post_nms_top_n_train=cfg.rpn_proposals[0], rpn_post_nms_top_n_test=cfg.rpn_proposals[1],
                  box_batch_size_per_image=cfg.roi_batch)
    else:
        kw.update(score_thresh=cfg.score_thresh, detections_per_img=cfg.detections_per_img)
    model = CLASSES[cfg.detector](SwinFPN(body, cfg.fpn_channels), num_classes=cfg.num_classes + two_stage, **kw)
    model.cfg = cfg
    return model
