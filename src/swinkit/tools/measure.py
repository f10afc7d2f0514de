"""Parameter and FLOP counts measured from the models themselves, and the `swinkit models` table."""
from __future__ import annotations

import argparse
import json
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..io.files import cache_dir, dumps, source_digest, write_json
from ..config import (ALIASES, DET_VARIANTS, SEG_VARIANTS, SWINIR_VARIANTS, UNET_VARIANTS, VARIANTS, VIDEO_VARIANTS,
                      DetectionConfig, SegmentationConfig, SwinConfig, SwinIRConfig, SwinUNetConfig, VideoSwinConfig)
from ..models.segmentation import SegmentationModel
from ..models.swin import SwinTransformer
from ..models.swinir import SwinIR
from ..models.unet import SwinUNet
from ..models.video import VideoSwinTransformer


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
    from ..models.detection import build_detector  # torchvision: the train extra

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


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--aliases", action="store_true", help="also list the short aliases (swin_t, ...)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")


SECTIONS = [  # (title of the table, or None for the image table; note under it)
    (None, "params with the default head; GMACs = multiply-adds of one image at the default size (measured live with "
           "torch.utils.flop_counter); paper = figure published by the Swin papers / official model hub"),
    ("segmentation model (150 classes)", "params with the auxiliary head (training only); GMACs = one inference pass "
     "at the size shown (window mode pad); paper = Swin paper, Table 3 (ADE20K UPerNet)"),
    ("Swin-UNet", "Swin-UNet (Cao et al. 2021): the official configuration, 9 classes; no published params or FLOPs"),
    ("video model", "GMACs = one T x H x W view; paper = the official Video-Swin-Transformer README (Kinetics-400 "
     "rows; SSv2: Swin-B); torchvision's swin3d_t / s / b are video_swin_t / s / b"),
    ("restoration model (SwinIR / Swin2SR)", "GMACs = one 64x64 low-quality input (the output is upscale times "
     "larger); paper = SwinIR paper, which counts no relative position bias tables (0.03-0.05M here)"),
    ("detector (80 classes)", "torchvision's detectors on Swin + FPN; GMACs = one 800x1333 image (padded to "
     "800x1344), box head on 1000 proposals and mask head on 100 detections, as mmdetection counts; paper = the "
     "official Swin-Transformer-Object-Detection README, measured by mmdetection at 1280x800 (266.6 GMACs here for "
     "Mask R-CNN Swin-T at that size). torchvision's R-CNN heads have one more class output (background first) and "
     "regress boxes for it too (+4.4K params)"),
]


def _sections(aliases: bool) -> list[tuple[list[str], object]]:
    """(variant names, measuring function) of each SECTIONS entry."""
    return [([n for n in VARIANTS if aliases or n not in ALIASES], measure_variant),
            (list(SEG_VARIANTS), measure_segmentation_variant), (list(UNET_VARIANTS), measure_unet_variant),
            (list(VIDEO_VARIANTS), measure_video_variant), (list(SWINIR_VARIANTS), measure_restoration_variant),
            (list(DET_VARIANTS), measure_detection_variant)]


def run(args: argparse.Namespace) -> int:
    """Print each row as soon as it is measured (about a minute in all on a small CPU the first time); rows come
    from the cache after that."""
    cache = cache_dir() / f"models-{source_digest(torch.__version__)}.json"  # any change measures anew
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    fresh = len(known)
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    if not args.json and not known:
        print("measuring every variant on the meta device (once; cached in "
              f"{cache.parent}) ...", file=sys.stderr, flush=True)
    for (title, note), (names, measure) in zip(SECTIONS, _sections(args.aliases)):
        if not args.json:
            print(f"{'model':36} {'V':>1} {'size':>4} {'win':>3} {'params(M)':>10} {'paper':>6} {'GMACs':>7} "
                  f"{'paper':>6}" if title is None else f"\n{title:36} {'V':>1} {'size':>11} {'win':>6} "
                  f"{'params(M)':>10} {'paper':>6} {'GMACs':>7} {'paper':>6}", flush=True)
        for name in names:
            key = f"{measure.__name__}:{name}"
            if key not in known:
                try:
                    known[key] = measure(name)
                except ImportError:  # torchvision (the train extra) for the detectors
                    break
            r = known[key]
            if args.json:
                print(dumps(r), flush=True)
            elif title is None:
                print(f"{r['name']:36} {r['version']:>1} {r['img_size']:>4} {r['window']:>3} {r['params_m']:>10.1f} "
                      f"{fmt(r['paper_params_m'], '.1f'):>6} {r['gmacs']:>7.1f} {fmt(r['paper_gmacs'], '.1f'):>6}",
                      flush=True)
            else:
                size = "x".join(map(str, r["size"]))
                print(f"{r['name']:36} {r['version']:>1} {size:>11} {r['window']:>6} {r['params_m']:>10.1f} "
                      f"{fmt(r['paper_params_m'], '.1f'):>6} {r['gmacs']:>7.1f} {fmt(r['paper_gmacs'], '.1f'):>6}",
                      flush=True)
        if not args.json:
            print(note)
    if len(known) > fresh:
        try:
            write_json(cache, known, indent=None)
        except OSError:  # a read-only home: measure again next time
            pass
    return 0
