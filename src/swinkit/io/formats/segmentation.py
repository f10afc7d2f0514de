"""Dense-prediction models (UPerNet / semantic FPN heads on a Swin backbone): the key maps of swinkit, the official
Swin-Transformer-Semantic-Segmentation code, mmsegmentation and transformers' UperNet, the config the weights
imply, and reading / writing their checkpoints; and the backbone of any checkpoint for detection and segmentation.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ...config import SEG_VARIANTS, SegmentationConfig, SwinConfig
from ...models.backbone import SwinBackbone
from ...models.segmentation import SegmentationModel
from ..files import CheckpointError, save_state_dict, side_configs, write_converted
from ..keymap import Format, Layout, apply_key_map, expand_rules, listing, report_unknown
from ..raw import RawCheckpoint, read_raw
from .swin import (HF, MMDET, STRUCTURE, SWINKIT, TEMPLATES, Checkpoint, Imported, check_shapes, consistent,
                   fit_weights, from_swinkit, hf_backbone_config, import_state_dict, infer_config, known_from_hf,
                   read_checkpoint, target_config, uniform)


# ==========================================================================================================
# segmentation models (UPerNet / semantic FPN on a Swin backbone): backbone.*, decode_head.*, auxiliary_head.*
# and, for mmseg's semantic FPN, neck.*. The backbone goes through a backbone table of SEG_BACKBONES with its
# "backbone." prefix taken off; the heads through one table of SEG_HEADS per format.

BACKBONE_TEMPLATES = {v: [t for t in ts if t not in ("norm.{p}", "head.fc.{p}")] + ["norm{i}.{p}"]
                      for v, ts in TEMPLATES.items()}  # a SwinBackbone: no classifier, a norm per output stage


def _conv_bn(prefix: str) -> list[str]:
    """The tensors of a ConvBNReLU unit under `prefix`."""
    return [prefix + "conv.weight", prefix + "bn.{p}", prefix + "bn.running_mean", prefix + "bn.running_var",
            prefix + "bn.num_batches_tracked"]


_D, _A = "decode_head.", "auxiliary_head."


HEAD_TEMPLATES = [  # UPerNet; semantic FPN (neck convs without norm, scale heads); the auxiliary FCN head
    *_conv_bn(_D + "ppm.convs.{k}."), *_conv_bn(_D + "ppm_bottleneck."), *_conv_bn(_D + "lateral_convs.{i}."),
    *_conv_bn(_D + "fpn_convs.{i}."), *_conv_bn(_D + "fpn_bottleneck."),
    _D + "lateral_convs.{i}.{p}", _D + "fpn_convs.{i}.{p}", *_conv_bn(_D + "scale_heads.{i}.{k}."),
    _D + "classifier.{p}", *_conv_bn(_A + "convs.{k}."), _A + "classifier.{p}"]


_FPN = (_D + "lateral_convs.{i}.{p}", _D + "fpn_convs.{i}.{p}", _D + "scale_heads.{i}.{k}.")


_HF_NORMS = {"norm{i}.": "hidden_states_norms.stage{i+1}."}


SEG_BACKBONES = {
    "swinkit": SWINKIT,
    # microsoft/Swin-Transformer-Semantic-Segmentation: the official layout (patch merging at the end of a
    # stage), the absolute position embedding as a (1, C, h, w) grid, the bias-table index buffers kept
    "official": Format((Layout((1,), {"layers.{i}.downsample.": "layers.{i-1}.downsample."}),),
                       buffers=("relative_position_index",)),
    "mmseg": Format(MMDET.layouts, buffers=MMDET.buffers),  # mmseg's own Swin: the mmdet table (nn.Unfold order)
    # transformers' SwinBackbone in UperNetForSemanticSegmentation: v5 under "swin.", v4 at the top level.
    # SwinModel's final norm is in its state dict but unused by the backbone. Swinv2Backbone: no output norms.
    "hf": Format((Layout((1,), {**HF.layouts[0].keys, **_HF_NORMS}), Layout((2,), HF.layouts[1].keys),
                  Layout((1,), {**HF.layouts[2].keys, **_HF_NORMS}, export=False)),
                 prefixes={1: "swin.", 2: ""}, ignored=r"^swin\.layernorm\."),
}


def _hf_conv_bn(table: dict) -> dict:
    """ConvBNReLU prefixes -> transformers' UperNetConvModule prefixes, whose BatchNorm is `batch_norm`."""
    return {k: v for ours, theirs in table.items()
            for k, v in ((ours + "conv.", theirs + "conv."), (ours + "bn.", theirs + "batch_norm."))}


_MMSEG_HEADS = {
    _D + "ppm.convs.{k}.": _D + "psp_modules.{k}.1.",  # each branch: Sequential(AdaptiveAvgPool2d, ConvModule)
    _D + "ppm_bottleneck.": _D + "bottleneck.",
    _D + "classifier.": _D + "conv_seg.",
    _D + "lateral_convs.{i}.{p}": "neck.lateral_convs.{i}.conv.{p}",  # semantic FPN: mmdet's FPN neck
    _D + "fpn_convs.{i}.{p}": "neck.fpn_convs.{i}.conv.{p}",
    _D + "scale_heads.{i}.{k}.": _D + "scale_heads.{i}.{2k}.",  # an Upsample after every ConvModule
    _A + "classifier.": _A + "conv_seg.",
}


SEG_HEADS = {
    "swinkit": {},
    "official": _MMSEG_HEADS,
    "mmseg": _MMSEG_HEADS,
    "hf": {**_hf_conv_bn({_D + "ppm.convs.{k}.": _D + "psp_modules.{k}.1.",
                          _D + "ppm_bottleneck.": _D + "bottleneck.",
                          **{p: p for p in (_D + "lateral_convs.{i}.", _D + "fpn_convs.{i}.", _D + "fpn_bottleneck.",
                                            _A + "convs.{k}.")}}),
           **dict.fromkeys(_FPN)},  # transformers has no semantic FPN
}


SEG_DETECT_ORDER = ("swinkit", "official", "mmseg", "hf")


@dataclass
class SegImported:
    """A segmentation state dict read through one format's key maps."""
    format: str
    backbone: Imported  # swinkit backbone names, without "backbone."
    heads: dict  # decode_head.* / auxiliary_head.* under swinkit names
    unknown: list[str]
    ignored: list[str]

    @property
    def state_dict(self) -> dict:
        return {**{"backbone." + k: v for k, v in self.backbone.state_dict.items()}, **self.heads}


def is_segmentation_state_dict(sd: dict) -> bool:
    """Whether a state dict holds a decode head (a segmentation model rather than a classifier or backbone)."""
    return any(k.startswith(("decode_head.", "auxiliary_head.")) for k in sd)


def _split_backbone(sd: dict) -> tuple[dict, dict]:
    """(tensors under "backbone." with the prefix removed, the rest)."""
    inner = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    return inner, {k: v for k, v in sd.items() if not k.startswith("backbone.")}


def import_segmentation(sd: dict, fmt: str) -> SegImported:
    """Read a segmentation state dict through format `fmt`'s key maps. Raises only for a Swin version the format
    lacks."""
    inner, rest = _split_backbone(sd)
    bb = import_state_dict(inner, fmt, SEG_BACKBONES, BACKBONE_TEMPLATES)
    ctx = {"P": ("",)}
    heads, left = apply_key_map(rest, expand_rules(Layout((1,), SEG_HEADS[fmt]), HEAD_TEMPLATES), "theirs", ctx, ctx)
    return SegImported(fmt, bb, heads, ["backbone." + k for k in bb.unknown] + sorted(left),
                       ["backbone." + k for k in bb.ignored])


def detect_segmentation_format(sd: dict) -> str:
    """The format whose key maps explain every key of a segmentation state dict with a consistent backbone."""
    scored = []
    for fmt in SEG_DETECT_ORDER:
        try:
            imp = import_segmentation(sd, fmt)
        except ValueError:  # no layout for this Swin version
            continue
        scored.append((len(imp.unknown) + (0 if consistent(imp.backbone.state_dict) else len(sd) + 1), fmt))
    bad, fmt = min(scored, key=lambda s: s[0])
    if bad > len(sd):
        raise ValueError(f"not a Swin segmentation state dict of a known format ({', '.join(SEG_DETECT_ORDER)}); "
                         f"its first keys are: {', '.join(list(sd)[:5])}")
    return fmt


def segmentation_to_swinkit(sd: dict, src: str | None = None, strict: bool = True) -> SegImported:
    """Import a segmentation state dict (format detected when `src` is None). Keys no map explains are an error
    listing them, or with strict=False a warning."""
    imp = import_segmentation(sd, src or detect_segmentation_format(sd))
    report_unknown(imp.unknown, f"{imp.format} segmentation",
                   "Is it a UPerNet / semantic FPN Swin checkpoint of that format? ", strict)
    return imp


def segmentation_from_swinkit(sd: dict, dst: str, cfg: SegmentationConfig) -> dict:
    """Export a swinkit segmentation state dict (model config `cfg`) to format `dst`: official, mmseg or hf."""
    if dst not in SEG_BACKBONES:
        raise ValueError(f"segmentation models convert to {', '.join(SEG_BACKBONES)}; got {dst!r}")
    if dst == "hf" and (cfg.head != "upernet" or (cfg.aux_head and (cfg.aux_in_index, cfg.aux_num_convs) != (2, 1))):
        raise ValueError("transformers' UperNetForSemanticSegmentation has a UPerNet head and an auxiliary head of "
                         f"one conv on stage 2 only; this model has head={cfg.head!r}, aux_in_index="
                         f"{cfg.aux_in_index}, aux_num_convs={cfg.aux_num_convs}. Convert it to swinkit or mmseg.")
    if dst == "hf" and cfg.out_norms != (cfg.backbone.version == 1):
        raise ValueError(f"transformers' Swin{'v2' if cfg.backbone.version == 2 else ''}Backbone has "
                         f"{'no' if cfg.backbone.version == 2 else 'a'} LayerNorm per output; this model has "
                         f"out_norms={cfg.out_norms}. Convert it to swinkit.")
    inner, rest = _split_backbone(sd)
    out = {"backbone." + k: v for k, v in
           from_swinkit(inner, dst, cfg.backbone, SEG_BACKBONES, BACKBONE_TEMPLATES).items()}
    ctx = {"P": ("",)}
    heads, left = apply_key_map(rest, expand_rules(Layout((1,), SEG_HEADS[dst]), HEAD_TEMPLATES), "ours", ctx, ctx)
    if left:
        raise ValueError(f"{len(left)} swinkit tensors have no equivalent in the {dst} format: "
                         f"{listing(sorted(left))}")
    out.update(heads)
    if dst == "hf" and cfg.backbone.version == 1:  # SwinModel's final norm: unused by SwinBackbone, but stored
        c = cfg.backbone.num_features
        out.update({"backbone.swin.layernorm.weight": torch.ones(c), "backbone.swin.layernorm.bias": torch.zeros(c)})
    return out


def convert_segmentation_state_dict(sd: dict, src: str | None = None, dst: str = "swinkit",
                                    cfg: SegmentationConfig | None = None) -> dict:
    """Convert a segmentation state dict between swinkit, official (Swin-Transformer-Semantic-Segmentation),
    mmseg and hf (transformers' UperNetForSemanticSegmentation). `cfg` is inferred from the weights when None."""
    imp = segmentation_to_swinkit(sd, src)
    if dst == "swinkit":
        return imp.state_dict
    if cfg is None:
        cfg, _ = infer_segmentation_config(imp)
    return segmentation_from_swinkit(imp.state_dict, dst, cfg)


def _count(heads: dict, template: str) -> int:
    """How many modules a ModuleList holds: the first k for which `template` (with "{k}") is not a key."""
    return next(k for k in itertools.count() if template.format(k=k) not in heads)


def infer_segmentation_config(imp: SegImported, known: dict | None = None) -> tuple[SegmentationConfig, list[str]]:
    """The config of an imported segmentation state dict: the heads' shapes, the backbone's config as
    infer_config finds it (window_mode "pad" unless `known` says otherwise), then `known` fields (a config file
    beside the weights) for what the weights cannot tell. Returns the config and the fields that were guessed."""
    known = dict(known or {})
    bb_known = known.pop("backbone", None) or {}
    if isinstance(bb_known, str):
        bb_known = SwinConfig.from_name(bb_known, window_mode="pad").to_dict()
    backbone, guessed = infer_config(imp.backbone.state_dict, imp.backbone.buffers,
                                     {"window_mode": "pad", **bb_known, "num_classes": 0})
    h = imp.heads
    if _D + "classifier.weight" not in h:
        raise ValueError("no decode head classifier (decode_head.classifier.weight in swinkit's names) in the weights")
    d = dict(head="upernet" if _D + "ppm_bottleneck.conv.weight" in h else "fpn",
             out_norms=any(re.match(r"norm\d+\.", k) for k in imp.backbone.state_dict))
    d["num_classes"], d["channels"] = h[_D + "classifier.weight"].shape[:2]
    if d["head"] == "upernet":
        n = _count(h, _D + "ppm.convs.{k}.conv.weight")
        if "pool_scales" not in known:
            d["pool_scales"] = (1, 2, 3, 6) if n == 4 else tuple(range(1, n + 1))
            guessed += [] if n == 4 else ["pool_scales"]
    else:
        d["fpn_channels"] = h[_D + "lateral_convs.0.weight"].shape[0]
    d["aux_head"] = _A + "classifier.weight" in h
    if d["aux_head"]:
        d["aux_channels"] = h[_A + "classifier.weight"].shape[1]
        d["aux_num_convs"] = _count(h, _A + "convs.{k}.conv.weight")
        dims = [backbone.embed_dim * 2**i for i in range(len(backbone.depths))]
        d["aux_in_index"] = dims.index(h[_A + "convs.0.conv.weight"].shape[1])
    cfg = SegmentationConfig.from_dict({**known, **d, "backbone": backbone})
    return dataclasses.replace(cfg, name=known.get("name") or _match_segmentation_variant(cfg) or "custom"), guessed


def _match_segmentation_variant(cfg: SegmentationConfig) -> str | None:
    """The first named segmentation variant with this head and backbone structure."""
    for name in SEG_VARIANTS:
        v = SegmentationConfig.from_name(name)
        same = [getattr(v.backbone, k) == getattr(cfg.backbone, k) for k in STRUCTURE + ("window_size",)]
        if all(same) and (v.head, v.channels) == (cfg.head, cfg.channels):
            return name
    return None


# ==========================================================================================================
# segmentation checkpoints (UPerNet / semantic FPN on a Swin backbone), and backbones from any checkpoint


@dataclass
class SegmentationCheckpoint:
    path: Path
    format: str
    state_dict: dict  # swinkit layout: backbone.*, decode_head.*, auxiliary_head.*
    config: SegmentationConfig  # inferred
    guessed: list[str]
    class_names: list[str] | None
    unknown: list[str]
    ignored: list[str]

    def describe(self) -> str:
        return f"{self.path} ({self.format}, {self.config.head} on Swin V{self.config.backbone.version})"


def _known_from_upernet(c: dict) -> dict:
    """SegmentationConfig fields from transformers' UperNetConfig (its config.json)."""
    known = dict(pool_scales=c.get("pool_scales"), channels=c.get("hidden_size"),
                 aux_channels=c.get("auxiliary_channels"), aux_loss_weight=c.get("auxiliary_loss_weight"))
    backbone = c.get("backbone_config") or {}
    if backbone.get("model_type") in ("swin", "swinv2"):
        known["backbone"] = {k: uniform(v) for k, v in known_from_hf(backbone)[0].items() if v is not None}
    return {k: v for k, v in known.items() if v is not None}


def _segmentation_side_info(raw: RawCheckpoint) -> tuple[dict, list | None, bool]:
    """(known SegmentationConfig fields, class names, written by swinkit) from a training checkpoint's config,
    the safetensors metadata, a swinkit JSON or transformers' config.json beside the weights."""
    obj, meta = raw.obj, raw.meta
    if isinstance(obj, dict) and SegmentationConfig.is_segmentation_dict(obj.get("config")):
        return obj["config"], obj.get("class_names"), True
    if "swinkit_config" in meta and SegmentationConfig.is_segmentation_dict(c := json.loads(meta["swinkit_config"])):
        return c, json.loads(meta.get("class_names", "null")), True
    for c in side_configs(raw.weights):
        if SegmentationConfig.is_segmentation_dict(c):
            return c, c.get("class_names"), True
        if isinstance(c, dict) and c.get("model_type") == "upernet":
            labels = c.get("id2label") or {}
            names = [labels[k] for k in sorted(labels, key=int)]
            default = all(n == f"LABEL_{i}" for i, n in enumerate(names))
            return _known_from_upernet(c), None if default or not names else names, False
    info = obj.get("meta") if isinstance(obj, dict) else None  # mmseg: meta.CLASSES (0.x), meta.dataset_meta (1.x)
    names = isinstance(info, dict) and (info.get("CLASSES") or (info.get("dataset_meta") or {}).get("classes"))
    return {}, list(names) if isinstance(names, (list, tuple)) else None, False


def read_segmentation_checkpoint(path, use_ema: bool = False, strict: bool = True,
                                 raw: RawCheckpoint | None = None) -> SegmentationCheckpoint:
    """Read a segmentation checkpoint of any supported format into swinkit's layout and infer its config."""
    raw = raw or read_raw(path, use_ema)
    known, class_names, ours = _segmentation_side_info(raw)
    try:
        imp = segmentation_to_swinkit(raw.state_dict, strict=strict)
        cfg, guessed = infer_segmentation_config(imp, known)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{raw.path}: {e}") from None
    return SegmentationCheckpoint(raw.path, "swinkit" if ours else imp.format, imp.state_dict, cfg, guessed,
                                  class_names, imp.unknown, imp.ignored)


def split_overrides(overrides: dict, cls: type = SegmentationConfig) -> tuple[dict, dict]:
    """Keyword overrides -> (fields of `cls`, a dense config, backbone SwinConfig fields); unknown names are an
    error."""
    own = {f.name for f in dataclasses.fields(cls)}
    swin = {f.name for f in dataclasses.fields(SwinConfig)} - own
    unknown = set(overrides) - own - swin
    if unknown:
        raise TypeError(f"unknown config fields {sorted(unknown)}; valid: {cls.__name__} fields {sorted(own)} "
                        f"or backbone (SwinConfig) fields {sorted(swin)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    return {k: v for k, v in given.items() if k in own}, {k: v for k, v in given.items() if k in swin}


def _backbone_checkpoint(ckpt: SegmentationCheckpoint) -> Checkpoint:
    """The backbone part of a segmentation checkpoint, as a (headless) Swin checkpoint."""
    sd = {k[len("backbone."):]: v for k, v in ckpt.state_dict.items() if k.startswith("backbone.")}
    return Checkpoint(ckpt.path, ckpt.format, sd, ckpt.config.backbone, ckpt.guessed, None, [], [])


def build_segmentation_model(ckpt: SegmentationCheckpoint, strict: bool = True, **overrides) -> SegmentationModel:
    """A SegmentationModel holding the checkpoint's weights, in eval mode. Overrides are SegmentationConfig fields
    (num_classes: new classifiers, aux_head=False: drop the auxiliary head) or backbone SwinConfig fields
    (window_size: bias tables resized, window_mode, drop_path_rate, ...)."""
    seg_over, bb_over = split_overrides(overrides)
    bb_ckpt = _backbone_checkpoint(ckpt)
    backbone = target_config(bb_ckpt.config, {**bb_over, "num_classes": 0})
    cfg = dataclasses.replace(ckpt.config, **seg_over, backbone=backbone)
    bb_sd, _ = fit_weights(bb_ckpt, backbone, None)
    sd = {**{"backbone." + k: v for k, v in bb_sd.items()},
          **{k: v for k, v in ckpt.state_dict.items() if not k.startswith("backbone.")}}
    fresh = []  # prefixes of parts the model initialises
    if cfg.num_classes != ckpt.config.num_classes:
        fresh += ["decode_head.classifier.", "auxiliary_head.classifier."]
        warnings.warn(f"{ckpt.describe()} has {ckpt.config.num_classes} classes, the model {cfg.num_classes}: the "
                      "classifiers are freshly initialised (train them before use)", stacklevel=3)
    if not cfg.aux_head:
        sd = {k: v for k, v in sd.items() if not k.startswith("auxiliary_head.")}
    elif not ckpt.config.aux_head:
        fresh.append("auxiliary_head.")
    sd = {k: v for k, v in sd.items() if not k.startswith(tuple(fresh))}
    model = SegmentationModel(cfg)
    own = model.state_dict()
    check_shapes(ckpt, sd, own)
    missing = [k for k in own if k not in sd and not k.startswith(tuple(fresh))]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        msg = f"{ckpt.describe()}: missing keys {missing[:12]}, unexpected keys {unexpected[:12]}"
        if strict:
            raise CheckpointError(msg + " (load with strict=False to accept this)")
        warnings.warn(msg, stacklevel=3)
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items() if k in own}, strict=False)
    if ckpt.class_names and len(ckpt.class_names) == cfg.num_classes:
        model.class_names = list(ckpt.class_names)
    return model.eval()


def load_segmentation_model(path, strict: bool = True, *, use_ema: bool = False, **overrides) -> SegmentationModel:
    """Load a segmentation checkpoint (swinkit, official Swin-Transformer-Semantic-Segmentation, mmseg, a
    transformers UperNet directory) with its format detected and config inferred. Returns the model in eval
    mode; overrides as for build_segmentation_model."""
    raw = read_raw(path, use_ema)
    if not is_segmentation_state_dict(raw.state_dict):
        raise CheckpointError(f"{path} holds no decode head (no decode_head.* keys): not a segmentation checkpoint. "
                              "Load it with swinkit.load_model, or use it as a backbone with create_backbone / "
                              "create_segmentation_model(..., backbone_checkpoint=PATH).")
    return build_segmentation_model(read_segmentation_checkpoint(path, strict=strict, raw=raw), strict, **overrides)


def read_backbone(path, base: SwinConfig | None = None, *, use_ema: bool = False, strict: bool = True,
                  **overrides) -> tuple[SwinConfig, dict]:
    """(backbone config, backbone state dict under SwinBackbone's names) from any checkpoint load_model reads: a
    classifier (its head and final norm dropped: a backbone's per-stage norms then start fresh), a backbone or a
    segmentation model (its backbone, norms included). `base`: the backbone to build (a variant's config), which
    must have the checkpoint's architecture; otherwise the checkpoint's own config. Weights are transferred to
    the target's windows, resolution and input channels; overrides are SwinConfig fields."""
    raw = read_raw(path, use_ema)
    if is_segmentation_state_dict(raw.state_dict):
        ckpt = _backbone_checkpoint(read_segmentation_checkpoint(path, strict=strict, raw=raw))
    else:
        hints = {k: uniform(base.to_dict()[k]) for k in ("window_size", "img_size")} if base else {}
        ckpt = read_checkpoint(path, strict=strict, known=hints, raw=raw)
    if base is not None:
        overrides = {"in_chans": base.in_chans, **overrides}
    cfg = target_config(ckpt.config, {**overrides, "num_classes": 0}, base)
    sd, _ = fit_weights(ckpt, cfg, None)
    return cfg, {k: v for k, v in sd.items() if not k.startswith(("norm.", "head."))}


def load_backbone_weights(backbone: SwinBackbone, sd: dict, source: str) -> None:
    """Load read_backbone's state dict into `backbone`; only its output norms may be missing (they start from
    their initialisation, as in the official segmentation code)."""
    own = backbone.state_dict()
    norm = re.compile(r"norm\d+\.(weight|bias)")
    sd = {k: v for k, v in sd.items() if k in own or not norm.fullmatch(k)}  # norms of stages it does not output
    missing = [k for k in own if k not in sd and not norm.fullmatch(k)]
    unexpected = [k for k in sd if k not in own]
    bad = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})" for k, v in sd.items()
           if k in own and own[k].shape != v.shape]
    if missing or unexpected or bad:
        raise CheckpointError(f"{source}: does not fit the backbone: missing keys {missing[:12]}, unexpected keys "
                              f"{unexpected[:12]}, wrong shapes {bad[:8]}")
    backbone.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=False)


def _hf_upernet_config(cfg: SegmentationConfig, class_names: list[str] | None) -> dict:
    """config.json for transformers' UperNetForSemanticSegmentation with a SwinBackbone."""
    backbone = hf_backbone_config(cfg.backbone, [f"stage{i + 1}" for i in range(len(cfg.backbone.depths))])
    names = class_names or [f"LABEL_{i}" for i in range(cfg.num_classes)]
    return dict(model_type="upernet", architectures=["UperNetForSemanticSegmentation"], backbone_config=backbone,
                hidden_size=cfg.channels, pool_scales=list(cfg.pool_scales), use_auxiliary_head=cfg.aux_head,
                auxiliary_loss_weight=cfg.aux_loss_weight, auxiliary_channels=cfg.aux_channels,
                auxiliary_in_channels=cfg.backbone.embed_dim * 2**cfg.aux_in_index, auxiliary_num_convs=1,
                auxiliary_concat_input=False, id2label={str(i): n for i, n in enumerate(names)},
                label2id={n: i for i, n in enumerate(names)})


def write_segmentation_checkpoint(sd: dict, cfg: SegmentationConfig, path, fmt: str = "swinkit",
                                  class_names=None, meta: dict | None = None) -> Path:
    """Write a swinkit segmentation state dict as `fmt`: swinkit (.safetensors + config JSON), hf (a directory:
    config.json + model.safetensors, for UperNetForSemanticSegmentation.from_pretrained), official / mmseg
    (.pth/.pt: {"state_dict": ..., "meta": {"CLASSES": ...}} as mmseg saves; other suffixes: safetensors)."""
    path = Path(path)
    if fmt == "swinkit":
        save_state_dict(sd, cfg, path, class_names, meta)
        return path
    out = segmentation_from_swinkit(sd, fmt, cfg)
    hf = _hf_upernet_config(cfg, class_names) if fmt == "hf" else None
    meta = {"meta": {"CLASSES": list(class_names)}} if class_names else {}
    return write_converted(out, path, hf, lambda sd: {"state_dict": sd, **meta})


def inspect_segmentation(ckpt: SegmentationCheckpoint) -> str:
    cfg = ckpt.config
    params = sum(v.numel() for k, v in ckpt.state_dict.items() if not k.endswith(("running_mean", "running_var",
                                                                                  "num_batches_tracked")))
    bb = cfg.backbone
    lines = [f"file:     {ckpt.path}", f"format:   {ckpt.format} ({cfg.head} segmentation, Swin V{bb.version})",
             f"params:   {params:,}", "config:"]
    lines += [f"  {k}: {getattr(cfg, k)}" for k in ("name", "head", "num_classes", "channels", "pool_scales",
                                                     "aux_head", "aux_channels", "aux_in_index")]
    lines += [f"  backbone.{k}: {getattr(bb, k)}" for k in ("version", "patch_size", "embed_dim", "depths",
                                                             "num_heads", "window_size", "window_mode")]
    if ckpt.guessed:
        lines.append(f"guessed:  {', '.join(ckpt.guessed)} (not recorded in the checkpoint)")
    lines.append(f"ignored:  {', '.join(ckpt.ignored) if ckpt.ignored else 'none'}")
    lines.append(f"unknown:  {', '.join(ckpt.unknown) if ckpt.unknown else 'none'}")
    return "\n".join(lines)
