"""Detection checkpoints: mmdetection and official Swin-Transformer-Object-Detection files read into swinkit's
torchvision detectors (models/detection.py), their config inferred from the weights; swinkit's own detection files
written and read back.

What carries over from mmdet is the backbone and the FPN neck. mmdet's heads are not torchvision's (RoIAlign
alignment and level mapping, the background class last rather than first, class-specific against class-agnostic
box regression, cascade stages), so their tensors are dropped, named in one warning, and the detector's heads start
from their initialisation.

Key maps: the backbone goes through the backbone tables of convert.SEG_BACKBONES ("official": the official
layout, patch merging at the end of a stage; "mmseg": mmdet's own Swin, `stages.*`, nn.Unfold merging order) with
its "backbone." prefix moved to torchvision's "backbone.body."; the neck through NECK below.
"""
from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path

import torch

from ...config import DET_VARIANTS, DetectionConfig, SwinConfig
from ..files import CheckpointError, atomic_write, write_json, write_safetensors
from ..keymap import Layout, apply_key_map, expand_rules, listing, report_unknown
from ..raw import RawCheckpoint, read_raw
from .segmentation import BACKBONE_TEMPLATES, SEG_BACKBONES, split_overrides
from .swin import STRUCTURE, consistent, from_swinkit, import_state_dict, infer_config

BODY, FPN = "backbone.body.", "backbone.fpn."

# our formats -> the SEG_BACKBONES table of their backbone. "official": microsoft/Swin-Transformer-Object-Detection
# (mmdet 2.x with the official Swin: backbone.layers.*, attn.relative_position_index buffers, norm0..norm3);
# "mmdet": mmdetection 3.x's own Swin (backbone.stages.*, attn.w_msa.*, ffn.layers.*).
BACKBONE_TABLE = {"official": "official", "mmdet": "mmseg"}
DETECTION_FORMATS = ("swinkit", *BACKBONE_TABLE)

# torchvision FeaturePyramidNetwork -> mmdet FPN (ConvModules without norm). The extra convs of RetinaNet / FCOS
# (add_extra_convs="on_input") follow the n lateral convs as fpn_convs.{n} and fpn_convs.{n+1}; they come first so
# that fpn_convs.{i} does not take them.
NECK_TEMPLATES = [FPN + "extra_blocks.p6.{p}", FPN + "extra_blocks.p7.{p}",
                  FPN + "inner_blocks.{i}.0.{p}", FPN + "layer_blocks.{i}.0.{p}"]


def _neck(n: int) -> dict:
    """NECK for a neck of n lateral convs."""
    return {FPN + "inner_blocks.{i}.0.": "neck.lateral_convs.{i}.conv.",
            FPN + "layer_blocks.{i}.0.": "neck.fpn_convs.{i}.conv.",
            FPN + "extra_blocks.p6.": f"neck.fpn_convs.{n}.conv.",
            FPN + "extra_blocks.p7.": f"neck.fpn_convs.{n + 1}.conv."}


HEADS = re.compile(r"^(rpn_head|roi_head|bbox_head|data_preprocessor)\.")  # mmdet groups that are dropped
OUR_HEADS = ("rpn.", "roi_heads.", "head.")  # torchvision's heads


# ----------------------------------------------------------------------------------------------------------
# recognising and importing state dicts


def is_detection_state_dict(sd: dict) -> bool:
    """Whether `sd` is a detector's: mmdet's (a neck and rpn_head / roi_head / bbox_head) or torchvision's on a
    Swin backbone (backbone.body.* and backbone.fpn.*)."""
    mmdet = any(k.startswith("neck.") for k in sd) and any(k.startswith(("rpn_head.", "roi_head.", "bbox_head."))
                                                           for k in sd)
    ours = any(k.startswith(BODY) for k in sd) and any(k.startswith(FPN) for k in sd)
    return mmdet or ours


def detect_detection_format(sd: dict) -> str:
    """'swinkit' (torchvision's layout), 'official' (backbone.layers.*) or 'mmdet' (backbone.stages.*)."""
    if any(k.startswith(BODY) for k in sd):
        return "swinkit"
    if any(k.startswith("backbone.stages.") for k in sd):
        return "mmdet"
    if any(k.startswith("backbone.layers.") for k in sd):
        return "official"
    raise ValueError("not a Swin detection state dict: expected backbone.body.* (torchvision / swinkit), "
                     "backbone.layers.* (official Swin-Transformer-Object-Detection) or backbone.stages.* (mmdet "
                     f"3.x); its first keys are: {', '.join(list(sd)[:5])}")


def _count(sd: dict, template: str) -> int:
    """How many modules a ModuleList holds: the first k for which `template` (with "{k}") is not a key."""
    k = 0
    while template.format(k=k) in sd:
        k += 1
    return k


def _import(sd: dict, fmt: str):
    """(our state dict, the backbone's persisted buffers under SwinBackbone names, dropped head keys, unknown keys)
    of an official / mmdet state dict."""
    inner = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    rest = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    bb = import_state_dict(inner, BACKBONE_TABLE[fmt], SEG_BACKBONES, BACKBONE_TEMPLATES)
    ctx = {"P": ("",)}
    n = _count(rest, "neck.lateral_convs.{k}.conv.weight")
    neck, left = apply_key_map(rest, expand_rules(Layout((1,), _neck(n)), NECK_TEMPLATES), "theirs", ctx, ctx)
    dropped = sorted(k for k in left if HEADS.match(k))
    unknown = ["backbone." + k for k in bb.unknown + bb.ignored] + sorted(k for k in left if not HEADS.match(k))
    if not unknown and not consistent(bb.state_dict):
        unknown = [f"backbone.* (stages {sorted({k.split('.')[1] for k in bb.state_dict if k.startswith('layers.')})},"
                   " not a complete Swin)"]
    out = {**{BODY + k: v for k, v in bb.state_dict.items()}, **neck}
    return out, bb.buffers, dropped, unknown


def _groups(keys: list[str]) -> list[str]:
    """Head groups of dropped keys: rpn_head, roi_head.bbox_head, roi_head.mask_head.1 (a cascade stage), ..."""
    out = []
    for k in keys:
        parts = k.split(".")
        g = ".".join(parts[:2] if parts[0] == "roi_head" else parts[:1])
        if parts[0] == "roi_head" and len(parts) > 2 and parts[2].isdigit():
            g += "." + parts[2]
        out.append(g)
    return sorted(set(out))


def _warn_dropped(dropped: list[str], fmt: str, p7: bool) -> None:
    groups = _groups(dropped)
    cascade = any(re.fullmatch(r"roi_head\.bbox_head\.\d+", g) for g in groups)
    note = " (Cascade R-CNN: its cascade stages are dropped; one torchvision stage replaces them)" if cascade else ""
    # torchvision's LastLevelP6P7 computes P7 from relu(P6), as mmdet's FPN with relu_before_extra_convs=True (its
    # FCOS configs); mmdet's RetinaNet configs leave it False
    relu = (" P7 is computed from ReLU(P6), as mmdet's relu_before_extra_convs=True (its RetinaNet configs use "
            "False).") if p7 else ""
    warnings.warn(f"dropped {len(dropped)} {fmt} head tensors ({', '.join(groups)}){note}: mmdet's heads differ "
                  "from torchvision's (RoIAlign alignment, level mapping, background class last, class-specific "
                  "regression), so the detector's heads start from their initialisation; the backbone and FPN neck "
                  f"are loaded.{relu} Train the heads before use.", stacklevel=3)


def detection_to_swinkit(sd: dict, strict: bool = True) -> tuple[str, dict, list[str]]:
    """(format, state dict under torchvision's detector names, dropped keys) of a detection state dict: official /
    mmdet (heads dropped with one warning) or torchvision's own layout, which passes through. Keys no map explains
    are a ValueError listing them (strict=False: a warning, and they are skipped)."""
    fmt = detect_detection_format(sd)
    if fmt == "swinkit":
        return fmt, dict(sd), []
    out, _, dropped, unknown = _import(sd, fmt)
    report_unknown(unknown, f"{fmt} detection", "Is it a Mask / Faster / Cascade R-CNN, RetinaNet or FCOS checkpoint "
                   "with a Swin backbone and an FPN neck? ", strict, stacklevel=3)
    if dropped:
        _warn_dropped(dropped, fmt, FPN + "extra_blocks.p7.weight" in out)
    return fmt, out, dropped


# ----------------------------------------------------------------------------------------------------------
# exporting


def _backbone_config(cfg) -> SwinConfig:
    return cfg.backbone if isinstance(cfg, DetectionConfig) else cfg


def detection_from_swinkit(sd: dict, dst: str, cfg: DetectionConfig | SwinConfig) -> dict:
    """The backbone and FPN neck of a swinkit detector state dict in format `dst` (official or mmdet), buffers
    included. Our heads (torchvision's) have no mmdet equivalent and are not exported."""
    if dst not in BACKBONE_TABLE:
        raise ValueError(f"detectors convert to {', '.join(DETECTION_FORMATS)}; got {dst!r}")
    body = {k[len(BODY):]: v for k, v in sd.items() if k.startswith(BODY)}
    out = {"backbone." + k: v for k, v in
           from_swinkit(body, BACKBONE_TABLE[dst], _backbone_config(cfg), SEG_BACKBONES, BACKBONE_TEMPLATES).items()}
    neck_sd = {k: v for k, v in sd.items() if k.startswith(FPN)}
    ctx = {"P": ("",)}
    n = _count(neck_sd, FPN + "inner_blocks.{k}.0.weight")
    neck, left = apply_key_map(neck_sd, expand_rules(Layout((1,), _neck(n)), NECK_TEMPLATES), "ours", ctx, ctx)
    if left:
        raise ValueError(f"{len(left)} FPN tensors have no equivalent in mmdet's FPN: {listing(sorted(left))}")
    return {**out, **neck}


def convert_detection_state_dict(sd: dict, dst: str = "swinkit", cfg: DetectionConfig | SwinConfig | None = None
                                 ) -> dict:
    """Convert a detection state dict (any of swinkit / torchvision, official, mmdet; detected) to `dst`.
    "swinkit": torchvision's names, heads kept when the source is ours (mmdet heads are dropped with a warning).
    "official" / "mmdet": the backbone and FPN neck only; the heads are not exported (torchvision's heads have
    no mmdet equivalent). `cfg` (the detector's or its backbone's config) is inferred from the weights when
    None."""
    if dst not in DETECTION_FORMATS:
        raise ValueError(f"detectors convert to {', '.join(DETECTION_FORMATS)}; got {dst!r}")
    _, ours, _ = detection_to_swinkit(sd)
    if dst == "swinkit":
        return ours
    if cfg is None:
        body = {k[len(BODY):]: v for k, v in ours.items() if k.startswith(BODY)}
        cfg, _ = infer_config(body, {}, {"window_mode": "pad", "num_classes": 0})
    return detection_from_swinkit(ours, dst, cfg)


# ----------------------------------------------------------------------------------------------------------
# what the weights say about the detector


def _mmdet_detector(sd: dict) -> tuple[str, int | None]:
    """(detector, num_classes or None) from an mmdet checkpoint's heads. Two-stage fc_cls has num_classes + 1
    rows (background last); RetinaNet's retina_cls A * num_classes channels (A anchors: retina_reg's 4 A);
    FCOS's conv_cls num_classes."""
    fc_cls = next((sd[k] for k in ("roi_head.bbox_head.fc_cls.weight", "roi_head.bbox_head.0.fc_cls.weight")
                   if k in sd), None)
    if any(k.startswith("roi_head.mask_head.") for k in sd):
        logits = next((v for k, v in sd.items() if re.fullmatch(r"roi_head\.mask_head\.(\d+\.)?conv_logits\.weight",
                                                                   k)), None)
        n = fc_cls.shape[0] - 1 if fc_cls is not None else logits.shape[0] if logits is not None else None
        return "maskrcnn", n
    if any(k.startswith("roi_head.bbox_head.") for k in sd):
        return "fasterrcnn", fc_cls.shape[0] - 1 if fc_cls is not None else None
    if "bbox_head.conv_centerness.weight" in sd:
        return "fcos", sd["bbox_head.conv_cls.weight"].shape[0] if "bbox_head.conv_cls.weight" in sd else None
    if "bbox_head.retina_cls.weight" in sd:
        reg = sd.get("bbox_head.retina_reg.weight")
        anchors = reg.shape[0] // 4 if reg is not None else 9  # mmdet's default: 3 scales x 3 ratios
        return "retinanet", sd["bbox_head.retina_cls.weight"].shape[0] // anchors
    raise ValueError("no head of a supported detector (roi_head.mask_head: Mask R-CNN, roi_head.bbox_head: Faster / "
                     "Cascade R-CNN, bbox_head.retina_cls: RetinaNet, bbox_head.conv_centerness: FCOS)")


def _torchvision_detector(sd: dict) -> tuple[str, int | None]:
    """(detector, num_classes) from the heads of a swinkit detector: the R-CNNs' softmax has num_classes + 1 rows
    (label 0 the background), RetinaNet's A * num_classes, FCOS's num_classes."""
    def rows(k):
        return sd[k].shape[0] if k in sd else None
    if any(k.startswith("roi_heads.mask_predictor.") for k in sd):
        n = rows("roi_heads.box_predictor.cls_score.weight") or rows("roi_heads.mask_predictor.mask_fcn_logits.weight")
        return "maskrcnn", n and n - 1
    if any(k.startswith("roi_heads.") for k in sd):
        n = rows("roi_heads.box_predictor.cls_score.weight")
        return "fasterrcnn", n and n - 1
    # the sigmoid heads of swinkit's RetinaNet / FCOS have no background column (models.detection.NoBackgroundSlot)
    if "head.regression_head.bbox_ctrness.weight" in sd:
        return "fcos", rows("head.classification_head.cls_logits.weight")
    if "head.classification_head.cls_logits.weight" in sd:
        anchors = rows("head.regression_head.bbox_reg.weight") // 4
        return "retinanet", rows("head.classification_head.cls_logits.weight") // anchors
    raise ValueError("no head of a torchvision detector (roi_heads.*: Mask / Faster R-CNN, head.*: RetinaNet / FCOS)")


def _match_detection_variant(cfg: DetectionConfig) -> str | None:
    for name in DET_VARIANTS:
        v = DetectionConfig.from_name(name)
        same = all(getattr(v.backbone, k) == getattr(cfg.backbone, k) for k in STRUCTURE + ("window_size",))
        if same and v.detector == cfg.detector:
            return name
    return None


def infer_detection_config(sd: dict, known: dict | None = None, class_names: list | None = None
                           ) -> tuple[DetectionConfig, list[str]]:
    """The DetectionConfig of a detection state dict of any format: the backbone from its weights (convert.
    infer_config; window_mode "pad"), the detector and num_classes from the heads (else from `class_names`), the
    FPN width from the neck; then `known` fields. Returns the config and the backbone fields that were guessed."""
    fmt = detect_detection_format(sd)
    if fmt == "swinkit":
        ours, buffers = sd, {}
        detector, n = _torchvision_detector(sd)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours, buffers, _, _ = _import(sd, fmt)
        detector, n = _mmdet_detector(sd)
    n = n or (len(class_names) if class_names else None)
    if n is None:
        raise ValueError(f"the {detector} heads do not tell the number of classes, and no class names were given")
    body = {k[len(BODY):]: v for k, v in ours.items() if k.startswith(BODY)}
    backbone, guessed = infer_config(body, buffers, {"window_mode": "pad", "num_classes": 0})
    n_lat = _count(ours, FPN + "inner_blocks.{k}.0.weight")
    if n_lat == 0:
        raise ValueError("no FPN neck (neck.lateral_convs.* / backbone.fpn.inner_blocks.*) in the weights")
    d = dict(known or {})
    d.update(detector=detector, num_classes=n, fpn_channels=ours[FPN + "inner_blocks.0.0.weight"].shape[0])
    cfg = DetectionConfig.from_dict({**d, "backbone": backbone})
    want = len(cfg.out_indices)
    if n_lat != want:
        raise ValueError(f"a {detector} takes {want} backbone stages {cfg.out_indices} (mmdet's Swin "
                         f"{'Mask / Faster R-CNN' if want == 4 else 'RetinaNet / FCOS'} layout); this neck has {n_lat} "
                         "lateral convs")
    p6 = ours.get(FPN + "extra_blocks.p6.weight")
    last = backbone.embed_dim * 2 ** (len(backbone.depths) - 1)
    if want == 3 and (p6 is None or p6.shape[1] != last):
        found = "no extra convs" if p6 is None else f"an extra conv on {p6.shape[1]} channels"
        raise ValueError(f"a {detector} takes P6 / P7 from the last backbone stage ({last} channels, mmdet's "
                         f"add_extra_convs='on_input'); this neck has {found}")
    return dataclasses.replace(cfg, name=d.get("name") or _match_detection_variant(cfg) or "custom"), guessed


# ----------------------------------------------------------------------------------------------------------
# files


def _side_info(raw: RawCheckpoint) -> tuple[dict | None, list | None]:
    """(swinkit's DetectionConfig dict or None, class names) from a .pt's "config", the safetensors metadata,
    or mmdet's meta (CLASSES in 2.x, dataset_meta.classes in 3.x)."""
    obj, meta = raw.obj, raw.meta
    if isinstance(obj, dict) and DetectionConfig.is_detection_dict(obj.get("config")):
        return obj["config"], obj.get("class_names")
    if "swinkit_config" in meta and DetectionConfig.is_detection_dict(c := json.loads(meta["swinkit_config"])):
        return c, json.loads(meta.get("class_names", "null"))
    info = obj.get("meta") if isinstance(obj, dict) else None
    info = info if isinstance(info, dict) else {}
    top = obj.get("dataset_meta") if isinstance(obj, dict) else None
    names = (info.get("CLASSES") or (info.get("dataset_meta") or {}).get("classes")
             or (top if isinstance(top, dict) else {}).get("classes"))
    return None, list(names) if isinstance(names, (list, tuple)) else None


def read_detection_checkpoint(path, strict: bool = True) -> tuple[DetectionConfig, dict, list | None, str]:
    """(config, state dict under torchvision's names, class names, format) of a detection checkpoint: swinkit's
    (.safetensors / .pt, config recorded), a torchvision detector on our backbone, or an mmdet / official
    Swin-Transformer-Object-Detection file (heads dropped with one warning, config inferred)."""
    raw = read_raw(path)
    if not is_detection_state_dict(raw.state_dict):
        raise CheckpointError(f"{raw.path} is not a detection checkpoint: expected mmdet's neck.* with rpn_head.* / "
                              "roi_head.* / bbox_head.*, or torchvision's backbone.body.* with backbone.fpn.*; its "
                              f"first keys are {', '.join(list(raw.state_dict)[:5])}. A classifier or backbone "
                              "loads with swinkit.load_model.")
    known, names = _side_info(raw)
    try:
        fmt, sd, _ = detection_to_swinkit(raw.state_dict, strict)
        if known is not None:
            cfg = DetectionConfig.from_dict(known)
        else:
            cfg, _ = infer_detection_config(raw.state_dict, class_names=names)
    except (KeyError, ValueError, TypeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{raw.path}: {e}") from None
    if names is not None and len(names) != cfg.num_classes:
        warnings.warn(f"{raw.path} names {len(names)} classes, its heads have {cfg.num_classes}: class names "
                      "ignored", stacklevel=2)
        names = None
    return cfg, sd, names, "swinkit" if known is not None else fmt


def save_detector(model, path, class_names: list[str] | None = None) -> Path:
    """Write a swinkit detector (build_detector's) atomically: .safetensors (config JSON and class names in the
    metadata, and `<stem>.json` beside it, as swinkit's other files) or .pt / .pth ({"config", "model",
    "class_names"}). load_detector reads both back exactly."""
    path, cfg = Path(path), model.cfg
    names = list(class_names or getattr(model, "class_names", None) or []) or None
    sd = model.state_dict()
    if path.suffix == ".safetensors":
        write_safetensors(sd, path, {"swinkit_config": cfg.to_json(), "class_names": json.dumps(names)})
        write_json(path.with_suffix(".json"), {**cfg.to_dict(), **({"class_names": names} if names else {})})
    elif path.suffix in (".pt", ".pth"):
        obj = {"config": cfg.to_dict(), "model": {k: v.detach().cpu().clone() for k, v in sd.items()},
               "class_names": names}
        atomic_write(path, lambda tmp: torch.save(obj, tmp))
    else:
        raise ValueError(f"detectors are saved as .safetensors or .pt / .pth; got {path.name!r}")
    return path


def _apply_overrides(cfg: DetectionConfig, overrides: dict) -> DetectionConfig:
    """DetectionConfig fields, or for the rest SwinConfig fields of the backbone; unknown names are an error."""
    own, swin = split_overrides(overrides, DetectionConfig)
    return dataclasses.replace(cfg, **own, backbone=dataclasses.replace(cfg.backbone, **swin))


def load_detector(path, strict: bool = True, **overrides):
    """A swinkit detector (torchvision's MaskRCNN / FasterRCNN / RetinaNet / FCOS on a Swin FPN) holding a detection
    checkpoint's weights, in eval mode. swinkit and torchvision-layout files load every tensor (strict=False: missing
    and unexpected keys are a warning); mmdet / official files load the backbone and neck exactly, the heads start
    from their initialisation. Overrides: DetectionConfig fields (num_classes: class-dependent head tensors start
    fresh; score_thresh, min_size, frozen_stages, ...) or backbone SwinConfig fields (drop_path_rate, ...)."""
    from ...models.detection import build_detector  # torchvision: the train extra

    src, sd, names, fmt = read_detection_checkpoint(path, strict)
    cfg = _apply_overrides(src, overrides)
    model = build_detector(cfg)
    own = model.state_dict()
    fresh = [k for k, v in sd.items() if k in own and k.startswith(OUR_HEADS) and own[k].shape != v.shape
             and cfg.num_classes != src.num_classes]
    if fresh:
        warnings.warn(f"{path} has {src.num_classes} classes, the model {cfg.num_classes}: {len(fresh)} class-"
                      "dependent head tensors start from their initialisation (train them before use)", stacklevel=2)
    sd = {k: v for k, v in sd.items() if k not in fresh}
    bad = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})" for k, v in sd.items()
           if k in own and own[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{path}: tensors do not fit the {cfg.detector} model: {', '.join(bad[:8])}")
    by_design = OUR_HEADS if fmt in BACKBONE_TABLE else ()  # mmdet heads were dropped
    missing = [k for k in own if k not in sd and not k.startswith(by_design) and k not in fresh]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        msg = f"{path} ({fmt}): missing keys {listing(missing)}; unexpected keys {listing(unexpected)}"
        if strict or fmt in BACKBONE_TABLE:
            raise CheckpointError(msg + ("" if fmt in BACKBONE_TABLE else " (load with strict=False to accept this)"))
        warnings.warn(msg, stacklevel=2)
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items() if k in own}, strict=False)
    if names and len(names) == cfg.num_classes:
        model.class_names = list(names)
    return model.eval()


def inspect_detection(raw: RawCheckpoint) -> str:
    """`swinkit inspect` of a detection file."""
    cfg, sd, names, fmt = read_detection_checkpoint(raw.path)
    bb = cfg.backbone
    return "\n".join([f"file:     {raw.path}", f"format:   {fmt} ({cfg.detector} detector)",
                      f"params:   {sum(v.numel() for v in sd.values()):,}",
                      f"config:   {cfg.name}: {cfg.detector}, {cfg.num_classes} classes, FPN {cfg.fpn_channels} on "
                      f"{bb.describe(with_size=False)}",
                      f"classes:  {', '.join(map(str, (names or [])[:8])) or 'not recorded'}"])


def convert_detection_file(raw: RawCheckpoint, dst, fmt: str, meta: dict | None = None, hints=None) -> str:
    """`swinkit convert` of a detection file: --to swinkit writes the whole detector; official / mmdet its backbone
    and FPN neck as {"state_dict", "meta": {"CLASSES"}} (heads are not converted)."""
    from ...models.detection import build_detector

    cfg, sd, names, _ = read_detection_checkpoint(raw.path)
    if fmt not in DETECTION_FORMATS:
        raise CheckpointError(f"--to {fmt}: {raw.path} holds a detector; choose one of {', '.join(DETECTION_FORMATS)}")
    dst = Path(dst)
    if fmt == "swinkit":
        model = build_detector(cfg)
        model.load_state_dict(sd, strict=False)
        save_detector(model, dst, names)
    else:
        out = {"state_dict": convert_detection_state_dict(sd, fmt, cfg), "meta": {"CLASSES": names}}
        atomic_write(dst, lambda p: torch.save(out, p))
    return f"{fmt}, {cfg.detector} {'backbone and neck' if fmt != 'swinkit' else 'detector'}"
