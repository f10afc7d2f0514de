"""Parameter and multiply-accumulate counts measured from the models themselves, built on the meta device (no
memory, no initialisation), next to the figures their papers publish: each model family's counter
(swinkit.families lists them; `swinkit models` prints them)."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .config import (CSWIN_VARIANTS, DET_VARIANTS, POOLFORMER_VARIANTS, SEG_VARIANTS, SWINIR_VARIANTS, UNET_VARIANTS,
                     VARIANTS, VIDEO_VARIANTS, CSWinConfig, DetectionConfig, PoolFormerConfig, SegmentationConfig,
                     SwinConfig, SwinIRConfig, SwinUNetConfig, VideoSwinConfig)
from .models.cswin import CSWinTransformer
from .models.poolformer import PoolFormer
from .models.segmentation import SegmentationModel
from .models.swin import SwinTransformer
from .models.swinir import SwinIR
from .models.unet import SwinUNet
from .models.video import VideoSwinTransformer


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's counter has no formula for the fused CPU attention kernel; it counts the same as the other SDPAs
_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops}


def count_macs(model: torch.nn.Module, img_size: tuple[int, ...], batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass (the papers' "FLOPs"): matmuls, convolutions, attention."""
    param = next(model.parameters())
    x = torch.zeros(batch, model.cfg.in_chans, *img_size, device=param.device, dtype=param.dtype)
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
        model(x)
    return counter.get_total_flops() // 2


def measure_variant(name: str, **overrides) -> dict:
    """Build `name` on the meta device (no memory, no init cost) and count its parameters and MACs at its
    default resolution, next to the figures its paper / model hub publishes."""
    cfg = SwinConfig.from_name(name, **overrides)
    with torch.device("meta"):
        model = SwinTransformer(cfg)
    return dict(name=name, version=cfg.version, img_size=cfg.img_size[0], window=cfg.window_size[0][0],
                embed_dim=cfg.embed_dim, depths=list(cfg.depths),
                params_m=count_params(model) / 1e6, gmacs=count_macs(model.eval(), cfg.img_size) / 1e9,
                paper_params_m=VARIANTS[name]["paper_params_m"], paper_gmacs=VARIANTS[name]["paper_gmacs"])


def measure_segmentation_variant(name: str, size: tuple[int, int] | None = None, **overrides) -> dict:
    """Build segmentation variant `name` on the meta device and count its parameters (auxiliary head included,
    as the papers do) and the MACs of one inference pass (decode head only) at `size` (default: the size its
    published FLOPs are for, 512 x 2048 for ADE20K), next to the published figures."""
    cfg = SegmentationConfig.from_name(name, **overrides)
    size = tuple(size or SEG_VARIANTS[name]["flops_size"])
    with torch.device("meta"):
        model = SegmentationModel(cfg)
    bb = cfg.backbone
    return dict(name=name, task="segmentation", head=cfg.head, backbone=bb.name, version=bb.version,
                size=list(size), window=bb.window_size[0][0], params_m=count_params(model) / 1e6,
                gmacs=count_macs(model.eval(), size) / 1e9, paper_params_m=SEG_VARIANTS[name]["paper_params_m"],
                paper_gmacs=SEG_VARIANTS[name]["paper_gmacs"])


def measure_unet_variant(name: str, **overrides) -> dict:
    """Swin-UNet variant `name` built on the meta device: parameters and the MACs of one image at its size."""
    cfg = SwinUNetConfig.from_name(name, **overrides)
    with torch.device("meta"):
        model = SwinUNet(cfg)
    return dict(name=name, task="segmentation", head="swin-unet", version=cfg.version, size=list(cfg.img_size),
                window=cfg.window_size[0][0], params_m=count_params(model) / 1e6,
                gmacs=count_macs(model.eval(), cfg.img_size) / 1e9,
                paper_params_m=UNET_VARIANTS[name]["paper_params_m"], paper_gmacs=UNET_VARIANTS[name]["paper_gmacs"])


def measure_video_variant(name: str, **overrides) -> dict:
    """Video variant `name` built on the meta device: parameters and the MACs of one view at its img_size
    (T, H, W; 32x224x224 as the published figures)."""
    cfg = VideoSwinConfig.from_name(name, **overrides)
    with torch.device("meta"):
        model = VideoSwinTransformer(cfg)
    return dict(name=name, task="video", version=cfg.version, size=list(cfg.img_size),
                window="x".join(map(str, cfg.window_size[0])), params_m=count_params(model) / 1e6,
                gmacs=count_macs(model.eval(), cfg.img_size) / 1e9,
                paper_params_m=VIDEO_VARIANTS[name]["paper_params_m"], paper_gmacs=VIDEO_VARIANTS[name]["paper_gmacs"])


def measure_restoration_variant(name: str, size: tuple[int, int] = (64, 64), **overrides) -> dict:
    """Restoration variant `name` built on the meta device: parameters and the MACs of one low-quality input of
    `size` (64 x 64 by default; the output is upscale times larger)."""
    cfg = SwinIRConfig.from_name(name, **overrides)
    with torch.device("meta"):
        model = SwinIR(cfg)
    return dict(name=name, task="restoration", version=cfg.version, size=list(size), window=cfg.window_size,
                upscale=cfg.upscale, params_m=count_params(model) / 1e6, gmacs=count_macs(model.eval(), size) / 1e9,
                paper_params_m=SWINIR_VARIANTS[name]["paper_params_m"], paper_gmacs=None)


def measure_detection_variant(name: str, size: tuple[int, int] | None = None, proposals: int = 1000,
                              detections: int = 100, **overrides) -> dict:
    """Detector variant `name` (80 classes) built on the meta device: parameters and the MACs of one image of `size`
    (default 800 x 1333, padded to a multiple of 32 as GeneralizedRCNNTransform batches it): backbone, FPN and dense
    heads on the padded map; for the two-stage detectors the box head on `proposals` RoIs and the mask head on
    `detections`, as mmdetection's FLOP count (its dummy forward) does. RoIAlign and NMS are not MACs."""
    from .models.detection import build_detector  # torchvision: the train extra

    cfg = DetectionConfig.from_name(name, **overrides)
    size = tuple(size or DET_VARIANTS[name]["flops_size"])
    padded = tuple(-(-s // 32) * 32 for s in size)
    with torch.device("meta"):
        model = build_detector(cfg).eval()
        x = torch.zeros(1, 3, *padded)
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
            feats = list(model.backbone(x).values())
            if cfg.detector in ("maskrcnn", "fasterrcnn"):
                model.rpn.head(feats)
                model.roi_heads.box_predictor(model.roi_heads.box_head(torch.zeros(proposals, cfg.fpn_channels, 7, 7)))
                if cfg.detector == "maskrcnn":
                    model.roi_heads.mask_predictor(model.roi_heads.mask_head(
                        torch.zeros(detections, cfg.fpn_channels, 14, 14)))
            else:
                model.head(feats)
    bb = cfg.backbone
    return dict(name=name, task="detection", detector=cfg.detector, backbone=bb.name, version=bb.version,
                size=list(size), window=bb.window_size[0][0], params_m=count_params(model) / 1e6,
                gmacs=counter.get_total_flops() / 2e9, paper_params_m=DET_VARIANTS[name]["paper_params_m"],
                paper_gmacs=DET_VARIANTS[name]["paper_gmacs"])


def measure_panoptic_variant(name: str, size: tuple[int, int] | None = None, **overrides) -> dict:
    """Mask2Former variant `name` (transformers' model on swinkit's Swin; transformers: the hf extra) built on the
    meta device: parameters and the MACs of one image of `size` (default 800 x 1200, a COCO image at the test size),
    padded to a multiple of 32 as Mask2Former batches it. The deformable attention's sampling (grid_sample) counts
    none, as fvcore, which the paper used."""
    from .config import PANOPTIC_VARIANTS, PanopticConfig
    from .models.panoptic import PanopticModel

    cfg = PanopticConfig.from_name(name, **overrides)
    size = tuple(size or PANOPTIC_VARIANTS[name]["flops_size"])
    padded = tuple(-(-s // 32) * 32 for s in size)
    with torch.device("meta"):
        model = PanopticModel(cfg).eval().to("meta")  # transformers makes one parameter with torch.Tensor(): on the CPU
        x = torch.zeros(1, cfg.in_chans, *padded)
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
            model(pixel_values=x)
    entry, bb = PANOPTIC_VARIANTS[name], cfg.backbone
    return dict(name=name, task="panoptic", backbone=bb.name, version=bb.version, size=list(size),
                window=bb.window_size[0][0], params_m=count_params(model) / 1e6, gmacs=counter.get_total_flops() / 2e9,
                paper_params_m=entry["paper_params_m"], paper_gmacs=entry["paper_gmacs"])


def _measure_classifier(name: str, cfg: SwinConfig, model_cls: type, entry: dict, window: str) -> dict:
    """A classifier of another family on Swin's skeleton, built on the meta device: parameters and the MACs of one
    image at its img_size, next to the published figures (top-1 included)."""
    with torch.device("meta"):
        model = model_cls(cfg)
    return dict(name=name, task="classify", version=cfg.version, size=list(cfg.img_size), window=window,
                params_m=count_params(model) / 1e6, gmacs=count_macs(model.eval(), cfg.img_size) / 1e9,
                paper_params_m=entry["paper_params_m"], paper_gmacs=entry["paper_gmacs"],
                paper_top1=entry["paper_top1"])


def measure_cswin_variant(name: str, **overrides) -> dict:
    """CSWin variant `name`; its "window" is the stripe width of the first three stages (the last attends globally)."""
    cfg = CSWinConfig.from_name(name, **overrides)
    return _measure_classifier(name, cfg, CSWinTransformer, CSWIN_VARIANTS[name],
                               "-".join(map(str, cfg.split_size[:-1])))


def measure_poolformer_variant(name: str, **overrides) -> dict:
    """PoolFormer variant `name` (the average pooling, like fvcore, counts no MACs); its "window" is the pool size."""
    cfg = PoolFormerConfig.from_name(name, **overrides)
    return _measure_classifier(name, cfg, PoolFormer, POOLFORMER_VARIANTS[name], f"pool{cfg.pool_size}")


def measure_grounding_variant(name: str, **overrides) -> dict:
    """GroundingDINO variant `name` (transformers' model on swinkit's Swin; transformers: the hf extra) built on the
    meta device: its parameters only. No MACs: transformers' GroundingDINO cannot run on the meta device (its
    deformable attention checks the feature maps' sizes by reading a tensor's value), and one CPU pass at 800 x 1333
    under torch's counter takes half a minute (403 GMACs for Swin-T measured so, with a 4-token prompt; the text
    backbone's share grows with the prompt)."""
    from .config import GROUNDING_VARIANTS, GroundingConfig
    from .models.grounding import build_grounding_dino

    cfg = GroundingConfig.from_name(name, **overrides)
    with torch.device("meta"):
        model = build_grounding_dino(cfg)
    entry, bb = GROUNDING_VARIANTS[name], cfg.backbone
    return dict(name=name, task="ground", backbone=bb.name, version=bb.version, size=[800, 1333],  # the processor's
                window=bb.window_size[0][0], params_m=count_params(model) / 1e6, gmacs=None,
                paper_params_m=entry["paper_params_m"], paper_gmacs=entry["paper_gmacs"])
