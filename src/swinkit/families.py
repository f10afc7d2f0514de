"""The model families, in one list. Each entry says everything the rest of swinkit needs to know about a family: its
config and named variants (with their published figures), how to build one, its released weights, how to tell its
checkpoints apart and read, inspect and write them (swinkit.io.formats), the task that evaluates and predicts with it,
how it exports, and its parameter / FLOP counter. load_model, save_model, the create_* factories, `swinkit models`,
`inspect`, `convert`, `export` and eval / predict all loop over FAMILIES; adding a family is a model file, a format
file and one entry here (docs/adding-a-family.md).

Order matters: the first family whose `detect` accepts a state dict reads it (a detector holds a Swin backbone, a
segmenter a Swin, so the larger models come first; the image Swin takes whatever is left and says when it cannot).
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn

from . import counting
from .config import (CSWIN_VARIANTS, DET_VARIANTS, PANOPTIC_VARIANTS, POOLFORMER_VARIANTS, SEG_VARIANTS,
                     SWINIR_VARIANTS, UNET_VARIANTS, VARIANTS, VIDEO_VARIANTS, CSWinConfig, DetectionConfig,
                     PanopticConfig, PoolFormerConfig, SegmentationConfig, SwinConfig, SwinIRConfig, SwinUNetConfig,
                     VideoSwinConfig)
from .config import GROUNDING_VARIANTS, GroundingConfig
from .io import hub
from .io.files import CheckpointError, save_state_dict
from .io.formats import (cswin, detection, grounding, mask2former, poolformer, restoration, segmentation, swin, unet,
                         video)
from .io.raw import RawCheckpoint
from .models.cswin import CSWinTransformer
from .models.poolformer import PoolFormer
from .models.segmentation import SegmentationModel
from .models.swin import SwinTransformer
from .models.swinir import SwinIR
from .models.unet import SwinUNet
from .models.video import VideoSwinTransformer


@dataclass(frozen=True)
class Family:
    """A model family. Callables take a RawCheckpoint (the file read once, swinkit.io.raw) where they read one."""
    name: str
    title: str  # its section of `swinkit models`
    note: str  # the line under that section
    config: type  # its config dataclass (from_name, from_dict, to_dict)
    variants: dict  # name -> {"config": ..., "paper_params_m": ..., ...}
    models: Callable[[], tuple[type, ...]]  # its model classes (isinstance), imported when asked (detectors)
    task: str | None  # the task that evaluates and predicts with it
    export: tuple[str, str] | None  # (task, layout) its exports carry; None: not exported
    formats: tuple[str, ...]  # what `convert --to` writes
    detect: Callable[[dict], bool]  # does this state dict belong to the family
    load: Callable[..., nn.Module]  # (raw, strict, use_ema, class_map, **overrides) -> model in eval mode
    inspect: Callable[[RawCheckpoint], str]  # the `swinkit inspect` text
    convert: Callable[..., str]  # (raw, dst, fmt, meta, hints) writes dst as fmt (meta: a run's task meta)
    save: Callable[[nn.Module, Path, list | None], Path]  # a model as swinkit's file (load_model reads it back)
    create: Callable[..., nn.Module]  # (variant name, **overrides) -> a model with random weights
    count: Callable[[str], dict]  # measured parameters and MACs of a variant
    weights: dict = field(default_factory=dict)  # variant -> (url, checksum) of released weights


def _no_class_map(fam: str):
    def check(class_map) -> None:
        if class_map is not None:
            raise CheckpointError(f"this is a {fam} checkpoint: class_map selects classifier rows of classification "
                                  "checkpoints only")
    return check


def _save(model: nn.Module, path, class_names=None) -> Path:
    save_state_dict(model.state_dict(), model.cfg, path, class_names or getattr(model, "class_names", None))
    return Path(path)


# ---- image Swin


def _load_swin(raw, strict=True, use_ema=False, class_map=None, **overrides):
    overrides = swin.check_overrides(overrides)
    if class_map is not None:
        overrides.setdefault("num_classes", len(swin.class_rows(class_map)))
    hints = {k: overrides[k] for k in ("window_size", "img_size") if k in overrides}
    ckpt = swin.read_checkpoint(raw.path, use_ema=use_ema, strict=strict, known=hints, raw=raw)
    swin.warn_guesses(ckpt, overrides)
    return swin.build_model(ckpt, swin.target_config(ckpt.config, overrides), strict, class_map)


def _convert_swin(raw, dst, fmt, meta, hints=None) -> str:
    ckpt = swin.read_checkpoint(raw.path, known=hints, raw=raw)
    if fmt not in swin.FORMATS:
        raise CheckpointError(f"--to {fmt} is a segmentation or video format and {raw.path} holds a Swin image "
                              f"model; choose one of {', '.join(swin.FORMATS)}")
    if fmt != "swinkit" and not ckpt.config.swin_skeleton:
        raise CheckpointError(f"{raw.path} holds a model with token mixers {'-'.join(ckpt.config.mixer)} (or another "
                              f"stem, merging or norm than Swin's): only swinkit's own layout holds it, not {fmt}'s")
    swin.note_guesses(ckpt, hints)
    swin.write_swin_checkpoint(ckpt.state_dict, ckpt.config, dst, fmt, ckpt.class_names, meta)
    return f"{fmt}, {swin.kind_of(ckpt.config)}, {ckpt.config.name}"


SWIN = Family(
    "swin", "model", "params with the default head; GMACs = multiply-adds of one image at the default size (measured "
    "live with torch.utils.flop_counter); paper = figure published by the Swin papers / official model hub",
    SwinConfig, VARIANTS, lambda: (SwinTransformer,), "classify", ("classify", "NCHW"), tuple(swin.FORMATS),
    lambda sd: True, _load_swin, lambda raw: swin.inspect_text(swin.read_checkpoint(raw.path, strict=False, raw=raw)),
    _convert_swin, _save, lambda name, **kw: SwinTransformer(SwinConfig.from_name(name, **kw)),
    counting.measure_variant, hub.PRETRAINED)


# ---- dense prediction: UPerNet / semantic FPN on a Swin


def _load_segmentation(raw, strict=True, use_ema=False, class_map=None, **overrides):
    _no_class_map("segmentation")(class_map)
    return segmentation.build_segmentation_model(
        segmentation.read_segmentation_checkpoint(raw.path, strict=strict, raw=raw), strict, **overrides)


def _convert_segmentation(raw, dst, fmt, meta, hints=None) -> str:
    ckpt = segmentation.read_segmentation_checkpoint(raw.path, raw=raw)
    segmentation.write_segmentation_checkpoint(ckpt.state_dict, ckpt.config, dst, fmt, ckpt.class_names, meta)
    return f"{fmt}, {ckpt.config.head} on Swin V{ckpt.config.backbone.version}, {ckpt.config.name}"


SEGMENTATION = Family(
    "segmentation", "segmentation model (150 classes)", "params with the auxiliary head (training only); GMACs = one "
    "inference pass at the size shown (window mode pad); paper = Swin paper, Table 3 (ADE20K UPerNet)",
    SegmentationConfig, SEG_VARIANTS, lambda: (SegmentationModel,), "segment", ("segment", "NCHW"),
    tuple(segmentation.SEG_BACKBONES), segmentation.is_segmentation_state_dict, _load_segmentation,
    lambda raw: segmentation.inspect_segmentation(segmentation.read_segmentation_checkpoint(raw.path, strict=False,
                                                                                             raw=raw)),
    _convert_segmentation, _save,
    lambda name, **kw: SegmentationModel(SegmentationConfig.from_name(name, **kw)), counting.measure_segmentation_variant)


# ---- Swin-UNet


def _load_unet(raw, strict=True, use_ema=False, class_map=None, **overrides):
    _no_class_map("Swin-UNet")(class_map)
    return unet.load_unet(raw.state_dict, strict, **overrides).eval()


def _convert_unet(raw, dst, fmt, meta, hints=None) -> str:
    model = unet.load_unet(raw.state_dict)
    if fmt == "swinkit":
        save_state_dict(model.state_dict(), model.cfg, dst, None, meta)
    elif fmt == "official":
        unet.write_official(model, dst)
    else:
        raise CheckpointError(f"--to {fmt}: {raw.path} holds a Swin-UNet; choose one of swinkit, official")
    return f"{fmt}, Swin-UNet, {model.cfg.name}"


UNET = Family(
    "unet", "Swin-UNet", "Swin-UNet (Cao et al. 2021): the official configuration, 9 classes; no published params or "
    "FLOPs", SwinUNetConfig, UNET_VARIANTS, lambda: (SwinUNet,), "segment", ("segment", "NCHW"), ("swinkit", "official"),
    unet.is_unet, _load_unet, lambda raw: unet.inspect_unet(raw.path, raw.state_dict), _convert_unet, _save,
    lambda name, **kw: SwinUNet(SwinUNetConfig.from_name(name, **kw)), counting.measure_unet_variant)


# ---- detection: torchvision's detectors on a Swin FPN


def _load_detection(raw, strict=True, use_ema=False, class_map=None, **overrides):
    if class_map is not None or use_ema:
        raise CheckpointError(f"{raw.path} is a detection checkpoint: class_map and use_ema apply to classification "
                              "checkpoints only")
    return detection.load_detector(raw.path, strict, **overrides)


def _detection_models() -> tuple[type, ...]:
    from .models.detection import SwinDetector  # torchvision: the train extra

    return (SwinDetector,)


def _create_detector(name: str, **overrides):
    from .models.detection import build_detector

    return build_detector(DetectionConfig.from_name(name, **overrides))


DETECTION = Family(
    "detection", "detector (80 classes)", "torchvision's detectors on Swin + FPN; GMACs = one 800x1333 image (padded "
    "to 800x1344), box head on 1000 proposals and mask head on 100 detections, as mmdetection counts; paper = the "
    "official Swin-Transformer-Object-Detection README, measured by mmdetection at 1280x800 (266.6 GMACs here for Mask "
    "R-CNN Swin-T at that size). torchvision's R-CNN heads have one more class output (background first) and regress "
    "boxes for it too (+4.4K params)", DetectionConfig, DET_VARIANTS, _detection_models, "detect", None,
    detection.DETECTION_FORMATS, detection.is_detection_state_dict, _load_detection, detection.inspect_detection,
    detection.convert_detection_file, lambda model, path, class_names=None: detection.save_detector(model, path,
                                                                                                     class_names),
    _create_detector, counting.measure_detection_variant)


# ---- panoptic / universal segmentation: transformers' Mask2Former on a Swin


def _panoptic_models() -> tuple[type, ...]:
    # a PanopticModel exists only once its module is imported: asking never imports transformers (seconds)
    module = sys.modules.get(f"{__package__}.models.panoptic")
    return (module.PanopticModel,) if module else ()


def _create_panoptic(name: str, **overrides):
    from .models.panoptic import PanopticModel  # transformers: the hf extra

    return PanopticModel(PanopticConfig.from_name(name, **overrides))


_PQ = ", ".join(f"{name} {v['paper_pq']}" for name, v in PANOPTIC_VARIANTS.items())

PANOPTIC = Family(
    "panoptic", "panoptic model (133 classes)", "transformers' Mask2Former on a swinkit Swin; GMACs = one 800x1200 "
    "COCO image (the test size, short side 800) padded to 800x1216; deformable attention's sampling counts none, as "
    "fvcore; paper = Mask2Former paper, Table 1 (FLOPs averaged over COCO val images); COCO panoptic PQ "
    f"(facebookresearch/Mask2Former MODEL_ZOO): {_PQ} (Swin-B pre-trained on ImageNet-22K: 56.4; Swin-L: "
    "ImageNet-22K, 200 queries)", PanopticConfig,
    PANOPTIC_VARIANTS, _panoptic_models, "panoptic", None, mask2former.FORMATS, mask2former.is_mask2former_state_dict,
    mask2former.load, mask2former.inspect, mask2former.convert, _save, _create_panoptic,
    counting.measure_panoptic_variant)


# ---- restoration: SwinIR / Swin2SR


def _load_restoration(raw, strict=True, use_ema=False, class_map=None, **overrides):
    _no_class_map("SwinIR / Swin2SR restoration")(class_map)
    return restoration.build_restoration_model(
        restoration.read_restoration_checkpoint(raw.path, strict=strict, raw=raw), strict, **overrides)


def _convert_restoration(raw, dst, fmt, meta, hints=None) -> str:
    ckpt = restoration.read_restoration_checkpoint(raw.path, raw=raw)
    if fmt not in restoration.FORMATS:
        raise CheckpointError(f"--to {fmt}: {raw.path} holds a SwinIR / Swin2SR model; choose one of "
                              f"{', '.join(restoration.FORMATS)}")
    restoration.write_restoration_checkpoint(ckpt.state_dict, ckpt.config, dst, fmt, None, meta)
    return f"{fmt}, {swin.kind_of(ckpt.config)}, {ckpt.config.name}"


RESTORATION = Family(
    "restoration", "restoration model (SwinIR / Swin2SR)", "GMACs = one 64x64 low-quality input (the output is upscale "
    "times larger); paper = SwinIR paper, which counts no relative position bias tables (0.03-0.05M here)",
    SwinIRConfig, SWINIR_VARIANTS, lambda: (SwinIR,), "restore", ("restore", "NCHW"), restoration.FORMATS,
    restoration.is_swinir_state_dict, _load_restoration,
    lambda raw: swin.inspect_text(restoration.read_restoration_checkpoint(raw.path, strict=False, raw=raw)),
    _convert_restoration, _save, lambda name, **kw: SwinIR(SwinIRConfig.from_name(name, **kw)),
    counting.measure_restoration_variant, hub.RESTORATION_PRETRAINED)


# ---- video


def _load_video(raw, strict=True, use_ema=False, class_map=None, **overrides):
    overrides = swin.check_overrides(overrides, VideoSwinConfig)
    if class_map is not None:
        overrides.setdefault("num_classes", len(swin.class_rows(class_map)))
    ckpt = video.read_video_checkpoint(raw.path, strict=strict, raw=raw)
    return swin.build_model(ckpt, video.video_target_config(ckpt.config, overrides), strict, class_map)


def _convert_video(raw, dst, fmt, meta, hints=None) -> str:
    ckpt = video.read_video_checkpoint(raw.path, raw=raw)
    swin.note_guesses(ckpt)
    if fmt not in video.VIDEO_FORMATS:
        raise CheckpointError(f"--to {fmt} has no Video Swin layout and {raw.path} holds a Video Swin model; choose "
                              f"one of {', '.join(video.VIDEO_FORMATS)}")
    video.write_video_checkpoint(ckpt.state_dict, ckpt.config, dst, fmt, ckpt.class_names, meta)
    return f"{fmt}, {swin.kind_of(ckpt.config)}, {ckpt.config.name}"


VIDEO = Family(
    "video", "video model", "GMACs = one T x H x W view; paper = the official Video-Swin-Transformer README "
    "(Kinetics-400 rows; SSv2: Swin-B); torchvision's swin3d_t / s / b are video_swin_t / s / b", VideoSwinConfig,
    VIDEO_VARIANTS, lambda: (VideoSwinTransformer,), "video", ("video", "NCTHW"), tuple(video.VIDEO_FORMATS),
    video.is_video_state_dict, _load_video,
    lambda raw: swin.inspect_text(video.read_video_checkpoint(raw.path, strict=False, raw=raw)), _convert_video, _save,
    lambda name, **kw: VideoSwinTransformer(VideoSwinConfig.from_name(name, **kw)), counting.measure_video_variant,
    hub.VIDEO_PRETRAINED)



# ---- CSWin and PoolFormer: Swin's skeleton with other token mixers, stems, merging and norms; one official layout each


def _top1(variants: dict) -> str:
    return ", ".join(f"{name} {v['paper_top1']}" for name, v in variants.items())


CSWIN = Family(
    "cswin", "CSWin Transformer", "CSWin (Dong et al. 2022); win = stripe width of stages 1-3; GMACs = one image at "
    "the size shown; paper = the official CSWin-Transformer README, whose CSWin-T 23M the official code builds as "
    f"22.3M; ImageNet top-1 (paper, CSWin-L pre-trained on ImageNet-22K): {_top1(CSWIN_VARIANTS)}", CSWinConfig,
    CSWIN_VARIANTS, lambda: (CSWinTransformer,), "classify", ("classify", "NCHW"), cswin.FORMAT.formats,
    cswin.FORMAT.detect, cswin.FORMAT.load, cswin.FORMAT.inspect, cswin.FORMAT.convert, _save,
    lambda name, **kw: CSWinTransformer(CSWinConfig.from_name(name, **kw)), counting.measure_cswin_variant)

POOLFORMER = Family(
    "poolformer", "PoolFormer", "PoolFormer (Yu et al. 2022); GMACs = one image at the size shown (pooling counts "
    "none, as fvcore); paper = the official poolformer README (MACs by fvcore); ImageNet top-1 (paper): "
    f"{_top1(POOLFORMER_VARIANTS)}", PoolFormerConfig, POOLFORMER_VARIANTS, lambda: (PoolFormer,), "classify",
    ("classify", "NCHW"), poolformer.FORMAT.formats, poolformer.FORMAT.detect, poolformer.FORMAT.load,
    poolformer.FORMAT.inspect, poolformer.FORMAT.convert, _save,
    lambda name, **kw: PoolFormer(PoolFormerConfig.from_name(name, **kw)), counting.measure_poolformer_variant)


# ---- open-vocabulary detection: transformers' GroundingDINO on a swinkit Swin (transformers: the hf extra)


def _load_grounding(raw, strict=True, use_ema=False, class_map=None, **overrides):
    if class_map is not None or use_ema or overrides:
        raise CheckpointError(f"{raw.path} is a GroundingDINO: class_map, use_ema and config overrides do not apply "
                              "(its config.json records the model; its prompt names the classes)")
    return grounding.load_grounding(raw, strict)


def _grounding_models() -> tuple[type, ...]:
    # a GroundingDINO exists only once transformers' module is imported: asking never imports transformers
    module = sys.modules.get("transformers.models.grounding_dino.modeling_grounding_dino")
    return (module.GroundingDinoForObjectDetection,) if module else ()


def _create_grounding(name: str, **overrides):
    from .models.grounding import build_grounding_dino

    return build_grounding_dino(GroundingConfig.from_name(name, **overrides))


GROUNDING = Family(
    "grounding", "GroundingDINO (open vocabulary)", "transformers' GroundingDinoForObjectDetection (BERT-base "
    "text backbone, 900 queries) on swinkit's Swin; size = the processor's resize; params measured, GMACs not (one "
    "CPU pass takes half a minute; it measured 403 GMACs for Swin-T at 800x1344, 4 prompt tokens); COCO box AP "
    "(official README): grounding_dino_swin_t 48.4 zero-shot (57.2 fine-tuned), grounding_dino_swin_b 56.7 (COCO in "
    "its training data)",
    GroundingConfig, GROUNDING_VARIANTS, _grounding_models, "ground", None, grounding.GROUNDING_FORMATS,
    grounding.is_grounding_state_dict, _load_grounding, grounding.inspect_grounding, grounding.convert_grounding,
    grounding.save_grounding, _create_grounding, counting.measure_grounding_variant)

# GroundingDINO, Mask2Former and detection first (each holds a backbone), then the families whose keys are their own,
# then segmentation (a Swin and heads), then CSWin and PoolFormer (a Swin's skeleton, told apart by their mixers'
# keys), then the image Swin, which reads whatever is left
FAMILIES: list[Family] = [GROUNDING, PANOPTIC, DETECTION, RESTORATION, VIDEO, UNET, SEGMENTATION, CSWIN, POOLFORMER,
                          SWIN]
TABLE_ORDER = [SWIN, CSWIN, POOLFORMER, SEGMENTATION, UNET, VIDEO, RESTORATION, DETECTION, PANOPTIC,
               GROUNDING]  # `swinkit models`


def family_of_state_dict(sd: dict) -> Family:
    """The family a state dict belongs to (the first in FAMILIES whose detect accepts it)."""
    return next(f for f in FAMILIES if f.detect(sd))


def family_of_model(model: nn.Module) -> Family | None:
    """The family of a model instance, or None (the most specific class wins: a Video Swin is also a Swin)."""
    for f in (VIDEO, *[f for f in FAMILIES if f is not VIDEO]):
        try:
            if isinstance(model, f.models()):
                return f
        except ImportError:  # a family whose extra is not installed has no instances either
            continue
    return None


def family_of_variant(name: str) -> Family | None:
    """The family whose variant table names `name` (aliases included), or None."""
    from .config import ALIASES

    name = ALIASES.get(name, name)
    return next((f for f in TABLE_ORDER if name in f.variants), None)


def register(family: Family, before: Family | None = None) -> Family:
    """Add a family to the registry (before `before` in detection order, else just before the image Swin, which
    takes what no other family recognises). Returns it."""
    FAMILIES.insert(FAMILIES.index(before or SWIN), family)
    TABLE_ORDER.append(family)
    return family


def unregister(family: Family) -> None:
    FAMILIES.remove(family)
    TABLE_ORDER.remove(family)


