"""`create_*`: a named model, optionally with weights. Lives above models/ and io/ so that model code never
imports checkpoint I/O."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch.nn as nn

from .config import (DET_VARIANTS, DETECTORS, VARIANTS, DetectionConfig, PanopticConfig, SegmentationConfig, SwinConfig,
                     SwinIRConfig, VideoSwinConfig)
from .io.formats.restoration import load_restoration_into_named
from .io.formats.segmentation import load_backbone_weights, read_backbone
from .io.formats.swin import check_overrides, load_into_named
from .io.formats.video import load_video_into_named
from .models.backbone import SwinBackbone
from .models.segmentation import SegmentationModel
from .models.swin import SwinFeatures, SwinTransformer
from .models.swinir import SwinIR
from .models.video import VideoSwinTransformer


def create(name: str, **overrides) -> nn.Module:
    """A named variant of any family (swinkit.families; `swinkit models` lists them) with random weights; overrides
    are fields of its config. create_model, create_segmentation_model, ... add each family's weights and options."""
    from .families import family_of_variant

    family = family_of_variant(name)
    if family is None:
        raise ValueError(f"unknown model {name!r}: expected a variant of a swinkit family (swinkit models lists them)")
    return family.create(name, **overrides)


def create_model(name: str, pretrained: bool | str = False, checkpoint: str | None = None,
                 features_only: bool = False, out_indices: int | Sequence[int] = (0, 1, 2, 3),
                 **overrides) -> SwinTransformer | SwinFeatures:
    """Build a named variant; keyword overrides are SwinConfig fields (num_classes=10, drop_path_rate=0.1).

    `checkpoint=PATH` or `pretrained=True` load weights (see swinkit.io.formats.swin). `features_only=True` returns,
    as timm does, a model whose forward gives the NCHW maps of the stages `out_indices` (SwinFeatures)."""
    if checkpoint is not None or pretrained:
        model = load_into_named(name, checkpoint=checkpoint, pretrained=pretrained, **overrides)
    else:
        model = SwinTransformer(SwinConfig.from_name(name, **overrides))
    return SwinFeatures(model, out_indices) if features_only else model


def create_backbone(name_or_checkpoint: str | Path, out_indices: Sequence[int] = (0, 1, 2, 3),
                    frozen_stages: int = -1, window_mode: str = "pad", **overrides) -> SwinBackbone:
    """A Swin backbone returning normalised NCHW maps of the stages in `out_indices`: a variant by name
    (swinkit.list_models()), or the weights of any checkpoint load_model reads (a classifier's per-stage norms
    start fresh; a segmentation checkpoint brings its backbone's). window_mode "pad" is the behaviour of the
    official detection/segmentation code, mmseg and transformers' backbones; "clamp" that of classification.
    Overrides are SwinConfig fields (drop_path_rate=0.3; from a checkpoint, window_size=... transfers the
    bias tables). A backbone built from a checkpoint is returned in eval mode."""
    if str(name_or_checkpoint) in VARIANTS:
        cfg = SwinConfig.from_name(str(name_or_checkpoint), window_mode=window_mode, **overrides)
        return SwinBackbone(cfg, out_indices, frozen_stages)
    if not Path(name_or_checkpoint).exists():
        raise ValueError(f"{str(name_or_checkpoint)!r} is neither a variant name nor an existing checkpoint; "
                         f"variants: {', '.join(VARIANTS)}")
    cfg, sd = read_backbone(name_or_checkpoint, window_mode=window_mode, **check_overrides(overrides))
    model = SwinBackbone(cfg, out_indices, frozen_stages)
    load_backbone_weights(model, sd, str(name_or_checkpoint))
    return model.eval()


def create_segmentation_model(name: str, num_classes: int | None = None,
                              backbone_checkpoint: str | Path | None = None, **overrides) -> SegmentationModel:
    """A named segmentation variant (swinkit.list_segmentation_models(): upernet_swin_t, fpn_swin_t, ...) with
    `num_classes` classes. Overrides are SegmentationConfig fields (aux_head=False, frozen_stages=1) or backbone
    SwinConfig fields (drop_path_rate=0.2). `backbone_checkpoint`: initialise the backbone from any checkpoint
    load_model reads (e.g. ImageNet classification weights; transferred to this model's windows); the heads
    start from their initialisation."""
    return _with_backbone(SegmentationModel, SegmentationConfig.from_name(name, num_classes=num_classes, **overrides),
                          backbone_checkpoint)


def _with_backbone(model_cls: type, cfg, backbone_checkpoint: str | Path | None):
    """model_cls(cfg), its `backbone` (a SwinBackbone) holding the Swin of `backbone_checkpoint` when one is given
    (any file load_model reads, transferred to cfg.backbone's windows; its architecture must be cfg.backbone's)."""
    if backbone_checkpoint is None:
        return model_cls(cfg)
    backbone, sd = read_backbone(backbone_checkpoint, base=cfg.backbone)
    model = model_cls(dataclasses.replace(cfg, backbone=backbone))
    load_backbone_weights(model.backbone, sd, str(backbone_checkpoint))
    return model


def create_panoptic_model(name: str = "mask2former_swin_t", num_classes: int | None = None,
                          backbone_checkpoint: str | Path | None = None, **overrides):
    """transformers' Mask2FormerForUniversalSegmentation on a Swin: a named variant (swinkit.list_panoptic_models():
    mask2former_swin_t, ...; swinkit.models.panoptic.PanopticModel) with `num_classes` classes (another number than
    the variant's 133 drops its COCO thing classes unless thing_classes=... is given). Overrides are PanopticConfig
    fields (num_queries=50, thing_classes=(0, 1), train_num_points=...) or backbone SwinConfig fields
    (drop_path_rate=0.2). `backbone_checkpoint`: initialise the backbone from any checkpoint load_model reads (e.g.
    ImageNet weights; transferred to this model's windows); the rest starts from transformers' initialisation."""
    from .models.panoptic import PanopticModel  # transformers: the hf extra

    return _with_backbone(PanopticModel, PanopticConfig.from_name(name, num_classes=num_classes, **overrides),
                          backbone_checkpoint)


def create_detector(detector: str, backbone: str | Path | None = None, num_classes: int | None = None,
                    **overrides):
    """torchvision's own MaskRCNN / FasterRCNN / RetinaNet / FCOS on a Swin backbone with torchvision's FPN.

    `detector`: a kind ("maskrcnn", "fasterrcnn", "retinanet", "fcos") or a named variant
    (swinkit.list_detection_models(): maskrcnn_swin_t, ...). `backbone`: a Swin variant name (default: the
    variant's, swin_t for a kind) or any checkpoint load_model reads, whose weights initialise the backbone (a
    classifier's per-stage norms start fresh). `num_classes`: object classes, without the background.
    Overrides are DetectionConfig fields (min_size=512, frozen_stages=1, frozen_norms=True) or backbone SwinConfig
    fields (drop_path_rate=0.1, window_size=12)."""
    from .models.detection import build_detector  # torchvision: the train extra

    if detector not in DET_VARIANTS and detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; expected a kind {DETECTORS} or a variant "
                         f"{list(DET_VARIANTS)}")
    name = detector if detector in DET_VARIANTS else f"{detector}_swin_t"
    if backbone is None or str(backbone) in VARIANTS:
        cfg = DetectionConfig.from_name(name, num_classes=num_classes, backbone=backbone, **overrides)
        if backbone is not None and backbone != DET_VARIANTS[name]["config"]["backbone"]:
            cfg.name = "custom"
        return build_detector(cfg)
    if not Path(backbone).exists():
        raise ValueError(f"backbone {str(backbone)!r} is neither a Swin variant name nor an existing checkpoint; "
                         f"variants: {', '.join(VARIANTS)}")
    own = {f.name for f in dataclasses.fields(DetectionConfig)}
    drop_path = DET_VARIANTS[name]["config"]["backbone_overrides"]["drop_path_rate"]
    swin = {"drop_path_rate": drop_path, **{k: v for k, v in overrides.items() if k not in own}}
    bb_cfg, sd = read_backbone(backbone, window_mode="pad", **check_overrides(swin))
    cfg = DetectionConfig.from_name(name, num_classes=num_classes, backbone=bb_cfg,
                                    **{k: v for k, v in overrides.items() if k in own})
    cfg.name = "custom"
    body = SwinBackbone(cfg.backbone, cfg.out_indices, cfg.frozen_stages)
    load_backbone_weights(body, sd, str(backbone))
    return build_detector(cfg, body)


def create_video_model(name: str, pretrained: bool | str = False, checkpoint: str | Path | None = None,
                       inflate: str = "average", num_classes: int | None = None, **overrides) -> VideoSwinTransformer:
    """A named Video Swin variant (swinkit.list_video_models(): video_swin_t, ...); keyword overrides are
    VideoSwinConfig fields (drop_path_rate=0.2, window_size=(16, 7, 7)).

    `checkpoint=PATH`: a video checkpoint (official / mmaction2, torchvision, swinkit; its head is kept unless
    `num_classes` differs, then it is freshly initialised with a warning), or any 2-D Swin V1 checkpoint
    load_model reads, inflated as the official Video Swin does (`inflate`: "average" repeats the patch filters
    over time divided by its length, "center" puts them in the centre frame; a warning lists the new tensors).
    `pretrained=True`: torchvision's Kinetics-400 weights of video_swin_t / s / b (or a URL). A model with weights
    is returned in eval mode."""
    if checkpoint is not None or pretrained:
        return load_video_into_named(name, checkpoint=checkpoint, pretrained=pretrained, inflate=inflate,
                                     num_classes=num_classes, **overrides)
    return VideoSwinTransformer(VideoSwinConfig.from_name(name, num_classes=num_classes, **overrides))


def create_restoration_model(name: str, pretrained: bool | str = False, checkpoint: str | Path | None = None,
                             **overrides) -> SwinIR:
    """A named SwinIR / Swin2SR variant (swinkit.list_restoration_models(): swinir_classical_x4, swinir_color_dn_25,
    swin2sr_classical_x2, ...); keyword overrides are SwinIRConfig fields (drop_path_rate=0.0, chunk_mb=512).

    `checkpoint=PATH`: an official SwinIR file, a transformers Swin2SR directory or a swinkit file of this
    architecture. `pretrained=True`: the official SwinIR release file of the variant (or a URL), downloaded once into
    the torch.hub cache. A model with weights is returned in eval mode."""
    if checkpoint is not None or pretrained:
        return load_restoration_into_named(name, checkpoint=checkpoint, pretrained=pretrained, **overrides)
    return SwinIR(SwinIRConfig.from_name(name, **overrides))
