"""Mask2Former checkpoints (panoptic / universal segmentation, models/panoptic.py): transformers' model directory
(config.json of model_type "mask2former" with a Swin or Swinv2 backbone_config, as facebook/mask2former-swin-*) and
swinkit's own file (.safetensors with its PanopticConfig, or a `swinkit train` checkpoint). Both hold transformers'
keys; only the backbone's differ, converted by swinkit.io.formats.hfbackbone. transformers is imported only where a
model is built."""
from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from ...config import MASK2FORMER_FIELDS, PANOPTIC_VARIANTS, PanopticConfig, SwinConfig
from ..files import CheckpointError, save_state_dict, side_configs, write_converted
from ..keymap import listing
from ..raw import RawCheckpoint
from .hfbackbone import BACKBONE_PREFIX, export_hf_model, import_hf_model
from .segmentation import split_overrides
from .swin import STRUCTURE, Checkpoint, fit_weights, target_config, with_class_names

FORMATS = ("swinkit", "hf")
PREFIX = BACKBONE_PREFIX["mask2former"]  # transformers' backbone wrapper
SWIN = PREFIX + "swin."  # swinkit's SwinBackbone inside it
DERIVED = ("criterion.empty_weight",)  # the loss's class weights: rebuilt from num_classes and no_object_weight


def is_mask2former_state_dict(sd: dict) -> bool:
    """Whether a state dict is a transformers Mask2Former's (swinkit's backbone or transformers' own)."""
    return any(k.startswith("model.pixel_level_module.") for k in sd)


@dataclass
class PanopticCheckpoint:
    """A Mask2Former checkpoint in swinkit's layout: PanopticModel's keys."""
    path: Path
    format: str  # "hf" | "swinkit"
    state_dict: dict
    config: PanopticConfig
    class_names: list[str] | None
    guessed: list[str]  # backbone fields the file does not record

    def describe(self) -> str:
        return f"{self.path} ({self.format} Mask2Former on Swin V{self.config.backbone.version})"


def _side_info(raw: RawCheckpoint) -> tuple[str, dict, list | None]:
    """("swinkit", PanopticConfig dict, class names) from a training checkpoint, the safetensors metadata or the JSON
    beside the weights; ("hf", config.json, None) for a transformers directory."""
    obj, meta = raw.obj, raw.meta
    if isinstance(obj, dict) and PanopticConfig.is_panoptic_dict(obj.get("config")):
        return "swinkit", obj["config"], obj.get("class_names")
    if "swinkit_config" in meta and PanopticConfig.is_panoptic_dict(c := json.loads(meta["swinkit_config"])):
        return "swinkit", c, json.loads(meta.get("class_names", "null"))
    for c in side_configs(raw.weights):
        if PanopticConfig.is_panoptic_dict(c):
            return "swinkit", c, c.get("class_names")
        if isinstance(c, dict) and "model_type" in c:
            return "hf", c, None
    raise CheckpointError(f"{raw.path}: Mask2Former weights (model.pixel_level_module.*) without their config: "
                          "expected a transformers directory (config.json beside the weights) or swinkit's file (its "
                          "config in the .safetensors metadata or the .json beside it)")


def _class_names(c: dict) -> list[str] | None:
    """id2label as a list, or None when it holds transformers' defaults (LABEL_0, LABEL_1, ...)."""
    labels = c.get("id2label") or {}
    names = [labels[k] for k in sorted(labels, key=int)]
    return None if not names or all(n == f"LABEL_{i}" for i, n in enumerate(names)) else names


def _config_from_hf(c: dict, num_classes: int, backbone: SwinConfig, out_indices: list[int], out_norms: bool,
                    where: str) -> PanopticConfig:
    """The PanopticConfig of transformers' Mask2FormerConfig dict `c` (read with its backbone)."""
    n = len(backbone.depths)
    if list(out_indices) != list(range(1, n + 1)):
        raise CheckpointError(f"{where}: its backbone outputs stages {out_indices}; Mask2Former on swinkit takes "
                              f"every stage (1-{n})")
    strides = [backbone.patch_size * 2**i for i in range(n)]
    if list(c.get("feature_strides") or strides) != strides:
        raise CheckpointError(f"{where}: feature_strides {c['feature_strides']} are not the backbone's strides "
                              f"{strides}")
    known = {f: c[f] for f in MASK2FORMER_FIELDS if c.get(f) is not None}
    try:
        return PanopticConfig(backbone=backbone, num_classes=num_classes, out_norms=out_norms, **known)
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None


def _match_variant(cfg: PanopticConfig) -> str | None:
    """The named variant of this backbone structure, windows and decoder, or None."""
    for name in PANOPTIC_VARIANTS:
        v = PanopticConfig.from_name(name)
        if all(getattr(v.backbone, k) == getattr(cfg.backbone, k) for k in STRUCTURE + ("window_size",)) and \
                all(getattr(v, k) == getattr(cfg, k) for k in ("num_queries", "hidden_dim", "decoder_layers")):
            return name
    return None


def read_panoptic_checkpoint(raw: RawCheckpoint, strict: bool = True) -> PanopticCheckpoint:
    """A Mask2Former checkpoint (transformers directory or swinkit file) in swinkit's layout, with its config."""
    fmt, c, class_names = _side_info(raw)
    if fmt == "swinkit":
        cfg = PanopticConfig.from_dict(c)
        return PanopticCheckpoint(raw.path, fmt, dict(raw.state_dict), cfg, class_names, [])
    if c.get("model_type") != "mask2former":
        raise CheckpointError(f"{raw.path}: a transformers {c.get('model_type')!r} model (config.json); swinkit reads "
                              "Mask2Former (model_type 'mask2former') models with a Swin backbone")
    try:
        _, sd, bb = import_hf_model(raw.state_dict, c, str(raw.path), strict)
    except CheckpointError:
        raise
    except ValueError as e:  # keys of the backbone that no rule explains
        raise CheckpointError(f"{raw.path}: {e}") from None
    labels, predictor = c.get("id2label"), sd.get("class_predictor.weight")
    if not labels and predictor is None:
        raise CheckpointError(f"{raw.path}: neither config.json's id2label nor the weights (class_predictor.weight) "
                              "tell the number of classes")
    num_classes = len(labels) if labels else predictor.shape[0] - 1  # the last row: "no object"
    cfg = _config_from_hf(c, num_classes, bb.config, bb.out_indices, bb.out_norms, str(raw.path))
    cfg = dataclasses.replace(cfg, name=_match_variant(cfg) or "custom")
    return PanopticCheckpoint(raw.path, "hf", sd, cfg, _class_names(c), bb.guessed)


def build_panoptic_model(ckpt: PanopticCheckpoint, strict: bool = True, **overrides):
    """A PanopticModel holding the checkpoint's weights, in eval mode. Overrides are PanopticConfig fields
    (num_classes: a fresh class predictor; thing_classes, loss weights, ...) or backbone SwinConfig fields
    (window_size: bias tables resized, drop_path_rate, ...)."""
    from ...models.panoptic import PanopticModel  # transformers: the hf extra

    fields, swin = split_overrides(overrides, PanopticConfig)
    cfg, sd, skip = ckpt.config, dict(ckpt.state_dict), set(DERIVED)
    if swin:  # the backbone's weights transferred to its new windows / resolution
        backbone = target_config(cfg.backbone, {**swin, "num_classes": 0})
        inner = Checkpoint(ckpt.path, ckpt.format, {k[len(SWIN):]: v for k, v in sd.items() if k.startswith(SWIN)},
                           cfg.backbone, ckpt.guessed, None, [], [])
        fitted, _ = fit_weights(inner, backbone, None)
        sd = {**{k: v for k, v in sd.items() if not k.startswith(SWIN)}, **{SWIN + k: v for k, v in fitted.items()}}
        cfg = dataclasses.replace(cfg, backbone=backbone)
    if fields.get("num_classes", cfg.num_classes) != cfg.num_classes:
        skip |= {"class_predictor.weight", "class_predictor.bias"}
        warnings.warn(f"{ckpt.describe()} has {cfg.num_classes} classes, the model {fields['num_classes']}: the class "
                      "predictor is freshly initialised (train it before use)", stacklevel=3)
        fields.setdefault("thing_classes", None)  # the checkpoint's are for its classes
    try:
        cfg = dataclasses.replace(cfg, **fields)
    except ValueError as e:
        raise CheckpointError(f"{ckpt.describe()}: {e}") from None
    model = PanopticModel(cfg)
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if k not in skip}
    check_fit(own, sd, ckpt.describe(), strict, skip)
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items() if k in own}, strict=False)
    return with_class_names(model, ckpt.class_names)


def check_fit(own: dict, sd: dict, where: str, strict: bool, skip: set) -> None:
    """Tensors `sd` for a model whose state dict is `own`: misshapen ones are an error naming them; so are missing
    (except `skip`, which the model initialises) and unexpected ones, or with strict=False a warning."""
    bad = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})" for k, v in sd.items()
           if k in own and own[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{where}: tensors do not fit the model its config describes: {listing(bad)}")
    missing = [k for k in own if k not in sd and k not in skip]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        msg = f"{where}: missing keys {listing(missing) or 'none'}; unexpected keys {listing(unexpected) or 'none'}"
        if strict:
            raise CheckpointError(msg + " (load with strict=False to accept this)")
        warnings.warn(msg, stacklevel=4)


def write_panoptic_checkpoint(sd: dict, cfg: PanopticConfig, path, fmt: str = "swinkit", class_names=None,
                              meta: dict | None = None) -> Path:
    """Write a PanopticModel state dict as `fmt`: swinkit (.safetensors + config JSON) or hf (a directory that
    transformers' Mask2FormerForUniversalSegmentation.from_pretrained reads without swinkit: the backbone as its
    SwinBackbone / Swinv2Backbone)."""
    path = Path(path)
    if fmt == "swinkit":
        save_state_dict(sd, cfg, path, class_names, meta)
        return path
    if fmt != "hf":
        raise CheckpointError(f"--to {fmt}: Mask2Former models are written as {', '.join(FORMATS)}")
    config, out = export_hf_model(sd, cfg.hf_config(class_names))
    return write_converted(out, path, config, None)


# ----------------------------------------------------------------------------------------------------------
# the family's callables (swinkit.families.PANOPTIC)


def load(raw: RawCheckpoint, strict: bool = True, use_ema: bool = False, class_map=None, **overrides):
    """load_model of a Mask2Former file (overrides: see build_panoptic_model); the EMA choice is made by read_raw."""
    if class_map is not None:
        raise CheckpointError(f"{raw.path} is a Mask2Former checkpoint: class_map selects classifier rows of "
                              "classification checkpoints only")
    return build_panoptic_model(read_panoptic_checkpoint(raw, strict), strict, **overrides)


def inspect(raw: RawCheckpoint) -> str:
    """The `swinkit inspect` text of a Mask2Former file."""
    ckpt = read_panoptic_checkpoint(raw, strict=False)
    cfg, bb = ckpt.config, ckpt.config.backbone
    names = ckpt.class_names or []
    lines = [f"file:     {ckpt.path}", f"format:   {ckpt.format} (Mask2Former panoptic, Swin V{bb.version})",
             f"params:   {sum(v.numel() for k, v in ckpt.state_dict.items() if k not in DERIVED):,}", "config:"]
    lines += [f"  {k}: {getattr(cfg, k)}" for k in ("name", "num_classes", "num_queries", "hidden_dim", "feature_size",
                                                     "encoder_layers", "decoder_layers", "out_norms")]
    lines += [f"  backbone.{k}: {getattr(bb, k)}" for k in ("version", "patch_size", "embed_dim", "depths",
                                                             "num_heads", "window_size", "window_mode")]
    lines.append(f"classes:  {len(names)}: {', '.join(map(str, names[:8]))}{' ...' if len(names) > 8 else ''}"
                 if names else "classes:  not recorded")
    lines.append(f"things:   {'not recorded' if cfg.thing_classes is None else len(cfg.thing_classes)}")
    if ckpt.guessed:
        lines.append(f"guessed:  {', '.join(ckpt.guessed)} (not recorded in the checkpoint)")
    return "\n".join(lines)


def convert(raw: RawCheckpoint, dst, fmt: str, meta: dict | None = None, hints: dict | None = None) -> str:
    """`swinkit convert` of a Mask2Former checkpoint to swinkit's file or a transformers directory."""
    if fmt not in FORMATS:
        raise CheckpointError(f"--to {fmt}: {raw.path} holds a Mask2Former model; choose one of {', '.join(FORMATS)}")
    ckpt = read_panoptic_checkpoint(raw)
    if fmt == "hf" and ckpt.config.thing_classes is not None:
        print("note: transformers' Mask2FormerConfig has no place for thing_classes; give its post-processing the "
              "stuff classes as label_ids_to_fuse (--to swinkit keeps them)", file=sys.stderr)
    write_panoptic_checkpoint(ckpt.state_dict, ckpt.config, dst, fmt, ckpt.class_names, meta)
    return f"{fmt}, Mask2Former on Swin V{ckpt.config.backbone.version}, {ckpt.config.name}"
