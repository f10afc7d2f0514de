"""Checkpoint files: load any public Swin checkpoint (format detected, config inferred), transfer it to another
window / resolution / head / input channels, save swinkit checkpoints, download the official weights, and
the `swinkit inspect` / `swinkit convert` commands.

Pickle files are read with torch.load(weights_only=True) only: a file that needs arbitrary Python objects is
refused, never executed.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F

from ..config import ALIASES, SWINIR_VARIANTS, VARIANTS, SegmentationConfig, SwinConfig, SwinIRConfig, VideoSwinConfig
from .convert import (FORMATS, SEG_BACKBONES, STRUCTURE, detect_format, effective_windows, from_swinkit,
                      infer_config, infer_segmentation_config, is_segmentation_state_dict, segmentation_from_swinkit,
                      segmentation_to_swinkit, to_swinkit)
from .convert_swinir import (hf_swin2sr_config, infer_swinir_config, is_swinir_state_dict, swinir_fields_from_hf,
                             swinir_from_swinkit, swinir_to_swinkit)
from .convert_unet import is_unet, load_unet
from .files import WEIGHT_FILES, CheckpointError, NonFiniteWarning, atomic_write, check_outputs, dumps, read_weights, write_json
from .convert_video import (VIDEO_FORMATS, infer_video_config, inflate_state_dict, is_video_state_dict,
                            video_from_swinkit, video_to_swinkit)
from ..models.backbone import SwinBackbone
from ..models.simmim import simmim_encoder_state_dict
from ..models.segmentation import SegmentationModel
from ..models.swin import SwinTransformer
from ..models.swinir import SwinIR
from ..models.video import VideoSwinTransformer


# ----------------------------------------------------------------------------------------------------------
# reading files safely


MAIN_KEYS = ("model", "state_dict", "model_state_dict", "module", "net", "params")  # params: the SwinIR zoo's
EMA_KEYS = ("model_ema", "state_dict_ema", "ema", "model_ema_state_dict", "ema_state_dict", "params_ema")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def _read_dir(path: Path) -> tuple[object, dict, Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():  # sharded Hugging Face checkpoint
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        merged = {}
        for shard in shards:
            merged.update(read_weights(path / shard)[0])
        return merged, {}, index
    file = next((path / n for n in (*WEIGHT_FILES, "best.pt") if (path / n).exists()), None)  # best.pt: a run's
    if file is None:
        raise CheckpointError(f"{path} is a directory without weights: expected one of {', '.join(WEIGHT_FILES)} "
                              "(a model directory) or best.pt (a `swinkit train` run)")
    return *read_weights(file), file


def _unwrap(obj, use_ema: bool, path: Path) -> dict:
    """The state dict inside a training checkpoint or wrapper dict, wrapper prefixes stripped."""
    keys = EMA_KEYS + MAIN_KEYS if use_ema else MAIN_KEYS + EMA_KEYS
    if use_ema and not (isinstance(obj, dict) and any(isinstance(obj.get(k), dict) for k in EMA_KEYS)):
        top = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} holds no EMA weights (looked for {', '.join(EMA_KEYS)}; found {top})")
    while isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((k for k in keys if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = obj[inner]
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not sd:
        what = f"a dict with keys {list(obj)[:10]}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise CheckpointError(f"{path} holds {what}, not a state dict: expected a dict of tensors, possibly under "
                              f"one of {', '.join(MAIN_KEYS)}")
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


# ----------------------------------------------------------------------------------------------------------
# what files beside the weights (and their names) say about the config


def _uniform(v):
    """A per-stage list of equal entries -> the entry (so it fits any number of stages)."""
    return v[0] if isinstance(v, list) and v and all(x == v[0] for x in v) else v


def _known_from_name(name: str) -> dict:
    """Config fields from a file or architecture name: a variant name, or '..._window12to16_192to256...'."""
    name = name.split(".")[0]
    if name in VARIANTS:
        return SwinConfig.from_name(name).to_dict()
    m = re.search(r"window(\d+)(?:to(\d+))?_(\d+)(?:to(\d+))?", name)
    return {"window_size": int(m[2] or m[1]), "img_size": int(m[4] or m[3])} if m else {}


def _known_from_hf(c: dict) -> tuple[dict, list | None]:
    known = dict(version=2 if c["model_type"] == "swinv2" else 1, img_size=c.get("image_size"),
                 patch_size=c.get("patch_size"), in_chans=c.get("num_channels"), embed_dim=c.get("embed_dim"),
                 depths=c.get("depths"), num_heads=c.get("num_heads"), window_size=c.get("window_size"),
                 mlp_ratio=c.get("mlp_ratio"), qkv_bias=c.get("qkv_bias"),
                 pretrained_window_sizes=c.get("pretrained_window_sizes"))
    labels = c.get("id2label") or {}
    names = [labels[k] for k in sorted(labels, key=int)]
    default = all(n == f"LABEL_{i}" for i, n in enumerate(names))
    return known, None if default or not names else names


def _known_from_timm(c: dict) -> tuple[dict, list | None]:
    known = _known_from_name(c["architecture"])
    args = c.get("model_args") or {}
    known.update({k: args[k] for k in ("embed_dim", "depths", "num_heads", "window_size", "img_size", "in_chans",
                                       "patch_size", "mlp_ratio", "qkv_bias", "pretrained_window_sizes") if k in args})
    names = c.get("label_names")
    return known, list(names) if isinstance(names, (list, tuple)) else None


def _side_info(weights: Path, obj, meta: dict) -> tuple[dict, list | None, bool]:
    """(known config fields, class names, written by swinkit) from the checkpoint's own metadata, a config
    JSON beside it, or its file name."""
    if isinstance(obj, dict) and isinstance(obj.get("config"), dict) and "embed_dim" in obj["config"]:
        return obj["config"], obj.get("class_names"), True  # swinkit training checkpoint
    if "swinkit_config" in meta:
        return json.loads(meta["swinkit_config"]), json.loads(meta.get("class_names", "null")), True
    for side in (weights.with_suffix(".json"), weights.parent / "config.json"):
        try:
            c = json.loads(side.read_text()) if side.exists() and side != weights else None
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(c, dict):
            continue
        if "embed_dim" in c and "depths" in c and "model_type" not in c:
            return c, c.get("class_names"), True  # swinkit's config beside its .safetensors
        if c.get("model_type") in ("swin", "swinv2"):
            return (*_known_from_hf(c), False)
        if "swin" in str(c.get("architecture", "")):
            return (*_known_from_timm(c), False)
    return _known_from_name(weights.name), None, False


# ----------------------------------------------------------------------------------------------------------
# a checkpoint read into swinkit's layout


@dataclass
class Checkpoint:
    path: Path
    format: str
    state_dict: dict  # swinkit layout
    config: SwinConfig  # inferred
    guessed: list[str]  # config fields the checkpoint does not record
    class_names: list[str] | None
    unknown: list[str]  # keys with no place in swinkit
    ignored: list[str]  # keys of a larger model (detector heads) that were dropped

    def describe(self) -> str:
        return f"{self.path} ({self.format}, {_kind(self.config)})"


def _kind(cfg: SwinConfig) -> str:
    if isinstance(cfg, SwinIRConfig):
        return "SwinIR" if cfg.version == 1 else "Swin2SR"
    return "Video Swin" if isinstance(cfg, VideoSwinConfig) else f"Swin V{cfg.version}"


@dataclass
class RawCheckpoint:
    """A checkpoint as read from disk: its unwrapped state dict and what sits around it."""
    path: Path
    obj: object  # what the file holds
    meta: dict  # safetensors metadata
    weights: Path  # the weights file (inside a directory: the file chosen)
    state_dict: dict  # the tensors, wrappers and wrapper prefixes removed


def read_raw(path, use_ema: bool = False) -> RawCheckpoint:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    obj, meta, weights = _read_dir(path) if path.is_dir() else (*read_weights(path), path)
    sd = simmim_encoder_state_dict(_fold_distillation_head(_unwrap(obj, use_ema, path)))  # a SimMIM run: its encoder
    return RawCheckpoint(path, obj, meta, weights, sd)


def _fold_distillation_head(sd: dict) -> dict:
    """A classifier trained with `--distill hard` (head.fc + head.dist, logits averaged at inference) as the one
    linear head it is equivalent to: the averaged weights and biases."""
    if "head.dist.weight" not in sd or "head.fc.weight" not in sd:
        return sd
    sd = dict(sd)
    for p in ("weight", "bias"):
        sd[f"head.fc.{p}"] = (sd[f"head.fc.{p}"] + sd.pop(f"head.dist.{p}")) / 2
    return sd


def read_checkpoint(path, use_ema: bool = False, strict: bool = True, known: dict | None = None,
                    raw: RawCheckpoint | None = None) -> Checkpoint:
    """Read any supported checkpoint into swinkit's layout and infer its config. `known`: config fields to
    assume where the checkpoint records nothing (e.g. the window of a bare timm V2 state dict). `raw`: the file
    already read by read_raw."""
    raw = raw or read_raw(path, use_ema)
    path, sd = raw.path, raw.state_dict
    side, class_names, ours = _side_info(raw.weights, raw.obj, raw.meta)
    try:
        fmt = detect_format(sd)
        imp = to_swinkit(sd, fmt, strict)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    side = {k: _uniform(v) for k, v in side.items()}
    try:
        cfg, guessed = infer_config(imp.state_dict, imp.buffers, {**(known or {}), **side})
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: could not infer a Swin configuration from its weights ({e})") from None
    return Checkpoint(path, "swinkit" if ours else fmt, imp.state_dict, cfg, guessed, class_names,
                      imp.unknown, imp.ignored)


# ----------------------------------------------------------------------------------------------------------
# transfer to a model of another window, resolution, head or input channels


ARCHITECTURE = STRUCTURE + ("mlp_ratio", "qkv_bias")  # what a checkpoint's tensors fix


def _target_config(src: SwinConfig, overrides: dict, base: SwinConfig | None = None) -> SwinConfig:
    """The model to build: `base` (a named variant) or the checkpoint's config, with `overrides`; windows the
    checkpoint already clamped stay as they are, and V2 remembers the windows it was pre-trained with."""
    d = (base or src).to_dict()
    if base is not None:  # the checkpoint decides the head and input channels unless asked otherwise
        d.update(num_classes=src.num_classes, in_chans=src.in_chans)
    cfg = SwinConfig.from_dict({**d, **overrides})
    wrong = [k for k in ARCHITECTURE if getattr(cfg, k) != getattr(src, k)]
    if wrong:
        diff = ", ".join(f"{k}={getattr(src, k)} (model: {getattr(cfg, k)})" for k in wrong)
        raise CheckpointError(f"the checkpoint is a different architecture: {diff}. Load it without a model name, "
                              "with swinkit.load_model(path), or pick a matching variant.")
    wins = list(cfg.window_size)
    if "window_size" not in overrides:  # a stage the checkpoint clamped that this model clamps the same way
        eff = effective_windows(cfg)
        wins = [s if e == s else w for w, e, s in zip(wins, eff, src.window_size)]
    pre = list(cfg.pretrained_window_sizes)
    if cfg.version == 2 and "pretrained_window_sizes" not in overrides:
        pre = [p if w == s or any(p) else s  # a changed window keeps the checkpoint's pre-training window
               for w, s, p in zip(wins, src.window_size, src.pretrained_window_sizes)]
    return dataclasses.replace(cfg, window_size=wins, pretrained_window_sizes=pre)


def _resize_table(table: torch.Tensor, src: tuple, dst: tuple) -> torch.Tensor:
    """V1 bias table ((2h-1)(2w-1), heads) resized bicubically to another window, as the official fine-tuning
    does."""
    heads = table.shape[1]
    grid = table.T.reshape(1, heads, 2 * src[0] - 1, 2 * src[1] - 1)
    grid = F.interpolate(grid, size=(2 * dst[0] - 1, 2 * dst[1] - 1), mode="bicubic", align_corners=False)
    return grid.reshape(heads, -1).T.contiguous()


def _adapt_in_chans(w: torch.Tensor, chans: int) -> torch.Tensor:
    """Patch-embedding filters (D, c, p, p) or (D, c, t, p, p) for another number of input channels: summed for
    one channel (a gray image then gives what its RGB copy gave), otherwise repeated cyclically and scaled by
    c/chans (timm's convention, keeping the activation scale)."""
    if chans == 1:
        return w.sum(1, keepdim=True)
    reps = (1, math.ceil(chans / w.shape[1])) + (1,) * (w.ndim - 2)
    return w.repeat(*reps)[:, :chans] * (w.shape[1] / chans)


def _class_map(class_map) -> list[int]:
    """Class indices from a file (one integer per line, e.g. the official map22kto1k.txt) or a sequence."""
    if isinstance(class_map, (str, os.PathLike)):
        text = Path(class_map).read_text()
        try:
            return [int(line) for line in text.split()]
        except ValueError:
            raise CheckpointError(f"{class_map}: expected one integer class index per line") from None
    return [int(i) for i in class_map]


def _fit(ckpt: Checkpoint, cfg: SwinConfig, class_map) -> tuple[dict, bool]:
    """The checkpoint's tensors shaped for a model of `cfg`. Returns (state dict, head left out)."""
    sd, src = dict(ckpt.state_dict), ckpt.config
    head_out = "head.fc.weight" in sd and (cfg.num_classes != src.num_classes or class_map is not None)
    if head_out and class_map is not None:
        idx = _class_map(class_map)
        if len(idx) != cfg.num_classes or max(idx) >= src.num_classes or min(idx) < 0:
            raise CheckpointError(f"class map has {len(idx)} indices in [{min(idx)}, {max(idx)}]; expected "
                                  f"{cfg.num_classes} indices below the checkpoint's {src.num_classes} classes")
        sd["head.fc.weight"], sd["head.fc.bias"] = sd["head.fc.weight"][idx], sd["head.fc.bias"][idx]
        head_out = False
    elif head_out:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
        if cfg.num_classes:
            warnings.warn(f"{ckpt.describe()} has a {src.num_classes}-class head, the model {cfg.num_classes} "
                          "classes: the head is freshly initialised (train it before use)", stacklevel=3)
    if src.in_chans != cfg.in_chans:
        sd["patch_embed.proj.weight"] = _adapt_in_chans(sd["patch_embed.proj.weight"], cfg.in_chans)
        warnings.warn(f"{ckpt.describe()} takes {src.in_chans} input channels, the model {cfg.in_chans}: the patch "
                      f"embedding filters were {'summed' if cfg.in_chans == 1 else 'repeated and rescaled'}",
                      stacklevel=3)
    for k, v in list(sd.items()):
        i = int(k.split(".")[1]) if k.startswith("layers.") else None
        if k.endswith("relative_position_bias_table") and src.window_size[i] != cfg.window_size[i]:
            sd[k] = _resize_table(v, src.window_size[i], cfg.window_size[i])
    if "absolute_pos_embed" in sd:
        grid = [math.ceil(s / cfg.patch_size) for s in cfg.img_size]
        if list(sd["absolute_pos_embed"].shape[-2:]) != grid:
            sd["absolute_pos_embed"] = F.interpolate(sd["absolute_pos_embed"], size=grid, mode="bicubic",
                                                     align_corners=False)
    return sd, head_out


def _check_shapes(ckpt, sd: dict, own: dict) -> None:
    """A CheckpointError listing the checkpoint tensors whose shape differs from the model's (`own`)."""
    bad = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})" for k, v in sd.items()
           if k in own and own[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{ckpt.describe()}: tensors do not fit the model: {', '.join(bad[:8])}")


def build_model(ckpt: Checkpoint, cfg: SwinConfig, strict: bool = True, class_map=None) -> SwinTransformer:
    """A model of `cfg` (a VideoSwinTransformer for a VideoSwinConfig) holding the checkpoint's weights
    (transferred where they differ), in eval mode."""
    sd, head_out = _fit(ckpt, cfg, class_map)
    model_cls = VideoSwinTransformer if isinstance(cfg, VideoSwinConfig) else SwinTransformer
    with torch.device("meta"):  # shapes only: initialising weights the checkpoint replaces is wasted work
        model = model_cls(cfg)
    own = model.state_dict()
    _check_shapes(ckpt, sd, own)
    missing, unexpected = [k for k in own if k not in sd], [k for k in sd if k not in own]
    reported = [k for k in missing if not (head_out and k.startswith("head."))]
    if reported or unexpected:
        msg = f"{ckpt.describe()}: missing keys {reported[:12]}, unexpected keys {unexpected[:12]}"
        if strict:
            raise CheckpointError(msg + " (load with strict=False to accept this)")
        warnings.warn(msg, stacklevel=3)
    if missing:  # some weights start from their initialisation
        model = model_cls(cfg)
        model.load_state_dict(sd, strict=False)
    else:
        model.load_state_dict({k: sd[k].to(v.dtype) for k, v in own.items()}, assign=True)
    names = ckpt.class_names
    if names and class_map is not None:
        names = [names[i] for i in _class_map(class_map)]
    if names and len(names) == cfg.num_classes:
        model.class_names = list(names)
    return model.eval()


def _check_overrides(overrides: dict, cls: type = SwinConfig) -> dict:
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"unknown config fields {sorted(unknown)}; valid: {sorted(fields)}")
    return {k: v for k, v in overrides.items() if v is not None}


def _warn_guesses(ckpt: Checkpoint, overrides: dict) -> None:
    if ckpt.config.version == 2 and "window_size" in ckpt.guessed and "window_size" not in overrides:
        w = ckpt.config.window_size[0]
        warnings.warn(f"{ckpt.describe()} does not record its window size; assuming {w} (as "
                      f"{ckpt.config.name if ckpt.config.name != 'custom' else 'the default'}). Pass window_size=... "
                      "if it was trained with another.", stacklevel=3)


def load_model(path, strict: bool = True, *, use_ema: bool = False, class_map=None,
               **overrides) -> SwinTransformer | VideoSwinTransformer | SegmentationModel:
    """Load any supported checkpoint (official, timm, torchvision, Hugging Face directory, mmdet backbone,
    swinkit) with its format detected and config inferred; keyword overrides are SwinConfig fields and
    transfer the weights (window/resolution, num_classes, in_chans). `class_map`: class indices (or a file of
    them) selecting head rows, e.g. the official map22kto1k.txt. Returns the model in eval mode.

    A SwinIR / Swin2SR checkpoint (official SwinIR `params` / `params_ema`, transformers' Swin2SR directory, swinkit)
    gives a SwinIR (overrides: SwinIRConfig fields that keep the tensors' shapes, e.g. img_range, chunk_mb).
    A segmentation checkpoint (swinkit, official Swin-Transformer-Semantic-Segmentation, mmseg, transformers'
    UperNet) gives a SegmentationModel (see load_segmentation_model for its overrides), a Swin-UNet one (official
    or swinkit) a SwinUNet (see io.convert_unet.load_unet), a Video Swin one (official / mmaction2, torchvision's
    swin3d, swinkit) a VideoSwinTransformer (overrides: VideoSwinConfig fields that keep the tensors' shapes). A
    detection checkpoint (swinkit, mmdetection, official Swin-Transformer-Object-Detection) gives torchvision's
    detector on a Swin FPN (see io.detection.load_detector)."""
    from .detection import is_detection_state_dict, load_detector  # it imports this module

    raw = read_raw(path, use_ema)
    if is_detection_state_dict(raw.state_dict):
        if class_map is not None or use_ema:
            raise CheckpointError(f"{path} is a detection checkpoint: class_map and use_ema apply to classification "
                                  "checkpoints only")
        return load_detector(path, strict, **overrides)
    if is_swinir_state_dict(raw.state_dict):
        if class_map is not None:
            raise CheckpointError(f"{path} is a SwinIR / Swin2SR restoration checkpoint: class_map selects classifier "
                                  "rows of classification checkpoints only")
        return build_restoration_model(read_restoration_checkpoint(path, strict=strict, raw=raw), strict, **overrides)
    if is_video_state_dict(raw.state_dict):
        overrides = _check_overrides(overrides, VideoSwinConfig)
        if class_map is not None:
            overrides.setdefault("num_classes", len(_class_map(class_map)))
        ckpt = read_video_checkpoint(path, strict=strict, raw=raw)
        return build_model(ckpt, _video_target_config(ckpt.config, overrides), strict, class_map)
    if is_unet(raw.state_dict):
        if class_map is not None:
            raise CheckpointError(f"{path} is a Swin-UNet checkpoint: class_map selects classifier rows of "
                                  "classification checkpoints only")
        return load_unet(raw.state_dict, strict, **overrides).eval()
    if is_segmentation_state_dict(raw.state_dict):
        if class_map is not None:
            raise CheckpointError(f"{path} is a segmentation checkpoint: class_map selects classifier rows of "
                                  "classification checkpoints only")
        return build_segmentation_model(read_segmentation_checkpoint(path, strict=strict, raw=raw), strict,
                                        **overrides)
    overrides = _check_overrides(overrides)
    if class_map is not None:
        overrides.setdefault("num_classes", len(_class_map(class_map)))
    hints = {k: overrides[k] for k in ("window_size", "img_size") if k in overrides}
    ckpt = read_checkpoint(path, use_ema=use_ema, strict=strict, known=hints, raw=raw)
    _warn_guesses(ckpt, overrides)
    return build_model(ckpt, _target_config(ckpt.config, overrides), strict, class_map)


def load_into_named(name: str, checkpoint=None, pretrained: bool | str = False, **overrides) -> SwinTransformer:
    """create_model(name, checkpoint=... | pretrained=True): the named variant with a checkpoint's weights
    (the official release weights for pretrained=True, or the URL given as pretrained='https://...')."""
    strict, use_ema, class_map = (overrides.pop(k, d) for k, d in (("strict", True), ("use_ema", False),
                                                                  ("class_map", None)))
    base = SwinConfig.from_name(name, **overrides)
    overrides = _check_overrides(overrides)
    if checkpoint is None:
        checkpoint = download_pretrained(name, pretrained if isinstance(pretrained, str) else None)
    if class_map is not None:
        overrides.setdefault("num_classes", len(_class_map(class_map)))
    hints = {k: _uniform(base.to_dict()[k]) for k in ("window_size", "img_size")}
    ckpt = read_checkpoint(checkpoint, use_ema=use_ema, strict=strict, known=hints)
    return build_model(ckpt, _target_config(ckpt.config, overrides, base), strict, class_map)


# ----------------------------------------------------------------------------------------------------------
# video checkpoints, and 2-D checkpoints inflated into video models


VIDEO_ARCHITECTURE = ("patch_size", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio", "qkv_bias",
                      "pos_embed")  # what a video checkpoint's tensors fix (its bias tables are not resized)


def _check_architecture(src, cfg, fields: tuple[str, ...], kind: str, named: bool) -> None:
    """Raise when `cfg` (the model to build) differs from `src` (the checkpoint's config) in a field that fixes
    the shapes of its tensors."""
    wrong = [k for k in fields if getattr(cfg, k) != getattr(src, k)]
    if wrong:
        diff = ", ".join(f"{k}={getattr(src, k)} (model: {getattr(cfg, k)})" for k in wrong)
        todo = ("load it without a model name, with swinkit.load_model(path), or pick a matching variant"
                if named else "these fields fix the shapes of its tensors: keep the checkpoint's")
        raise CheckpointError(f"the {kind} checkpoint is a different architecture: {diff}; {todo}")


def read_video_checkpoint(path, use_ema: bool = False, strict: bool = True,
                          raw: RawCheckpoint | None = None) -> Checkpoint:
    """Read a Video Swin checkpoint (official / mmaction2, torchvision, swinkit) into swinkit's layout, with the
    config saved beside a swinkit file or else inferred from the weights."""
    raw = raw or read_raw(path, use_ema)
    side, class_names, ours = _side_info(raw.weights, raw.obj, raw.meta)
    ours = ours and VideoSwinConfig.is_video_dict(side)
    try:
        imp = video_to_swinkit(raw.state_dict, strict=strict)
        cfg, guessed = ((VideoSwinConfig.from_dict(side), []) if ours else
                        infer_video_config(imp.state_dict, imp.buffers, imp.format))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{raw.path}: {e}") from None
    return Checkpoint(raw.path, "swinkit" if ours else imp.format, imp.state_dict, cfg, guessed,
                      class_names if ours else None, imp.unknown, [])


def _video_target_config(src: VideoSwinConfig, overrides: dict, base: VideoSwinConfig | None = None
                         ) -> VideoSwinConfig:
    """The video model to build: `base` (a named variant) or the checkpoint's config, with `overrides`. With a
    base, the checkpoint decides the head, input channels and how padding and clamped windows are handled
    (mask_padding, clamped_bias) unless asked otherwise."""
    d = (base or src).to_dict()
    if base is not None:
        d.update({k: getattr(src, k) for k in ("num_classes", "in_chans", "mask_padding", "clamped_bias")})
    cfg = VideoSwinConfig.from_dict({**d, **overrides})
    _check_architecture(src, cfg, VIDEO_ARCHITECTURE, "video", named=base is not None)
    return cfg


def inflate_checkpoint(path, cfg: VideoSwinConfig, inflate: str = "average",
                       raw: RawCheckpoint | None = None) -> VideoSwinTransformer:
    """A VideoSwinTransformer of `cfg` from any 2-D Swin V1 classifier or backbone checkpoint load_model reads,
    inflated as the official Video Swin does (see io.convert_video.inflate_state_dict; inflate="center" puts the
    2-D patch filters in the centre frame). One warning lists the tensors that start from their initialisation
    (the head). Returns the model in eval mode."""
    raw = raw or read_raw(path)
    if is_unet(raw.state_dict) or is_segmentation_state_dict(raw.state_dict):
        raise CheckpointError(f"{path} is a segmentation checkpoint: inflate a classification or backbone "
                              "checkpoint of Swin V1 into a video model")
    ckpt = read_checkpoint(path, raw=raw)
    try:
        sd, dropped = inflate_state_dict(ckpt.state_dict, ckpt.config, cfg, inflate)
    except ValueError as e:
        raise CheckpointError(f"{ckpt.describe()}: {e}") from None
    model = VideoSwinTransformer(cfg)
    own = model.state_dict()
    _check_shapes(ckpt, sd, own)
    unexpected = [k for k in sd if k not in own]
    if unexpected:
        raise CheckpointError(f"{ckpt.describe()}: tensors with no place in the video model: {unexpected[:12]}")
    model.load_state_dict(sd, strict=False)
    new = [k for k in own if k not in sd]
    if new:
        warnings.warn(f"inflated {ckpt.describe()} into {cfg.describe()} ({inflate}); new, freshly initialised "
                      f"tensors (train them before use): {', '.join(new)}"
                      + (f"; dropped from the 2-D model: {', '.join(dropped)}" if dropped else ""), stacklevel=3)
    return model.eval()


def load_video_into_named(name: str, checkpoint=None, pretrained: bool | str = False, inflate: str = "average",
                          **overrides) -> VideoSwinTransformer:
    """create_video_model(name, checkpoint=... | pretrained=True): the named video variant with the weights of a
    video checkpoint (torchvision's Kinetics-400 release for pretrained=True, or the URL given as
    pretrained='https://...'), or of a 2-D one, inflated."""
    base = VideoSwinConfig.from_name(name, **overrides)
    overrides = _check_overrides(overrides, VideoSwinConfig)
    if checkpoint is None:
        checkpoint = download_pretrained(name, pretrained if isinstance(pretrained, str) else None)
    raw = read_raw(checkpoint)
    if not is_video_state_dict(raw.state_dict):
        return inflate_checkpoint(checkpoint, base, inflate, raw)
    ckpt = read_video_checkpoint(checkpoint, raw=raw)
    return build_model(ckpt, _video_target_config(ckpt.config, overrides, base))


# ----------------------------------------------------------------------------------------------------------
# restoration checkpoints (SwinIR / Swin2SR)


# what a restoration checkpoint's tensors fix (V2 computes its position bias from the window, so the window may change)
RESTORATION_ARCHITECTURE = ("version", "upscale", "in_chans", "embed_dim", "depths", "num_heads", "mlp_ratio",
                            "qkv_bias", "upsampler", "resi_connection", "num_feat")


def _restoration_side_info(raw: RawCheckpoint) -> tuple[dict, bool]:
    """(known SwinIRConfig fields, written by swinkit) from a training checkpoint's config, the safetensors metadata,
    a swinkit JSON or transformers' config.json beside the weights."""
    obj, meta = raw.obj, raw.meta
    if isinstance(obj, dict) and SwinIRConfig.is_restoration_dict(obj.get("config")):
        return obj["config"], True
    if "swinkit_config" in meta and SwinIRConfig.is_restoration_dict(c := json.loads(meta["swinkit_config"])):
        return c, True
    for side in (raw.weights.with_suffix(".json"), raw.weights.parent / "config.json"):
        try:
            c = json.loads(side.read_text()) if side.exists() and side != raw.weights else None
        except (OSError, json.JSONDecodeError):
            continue
        if SwinIRConfig.is_restoration_dict(c):
            return c, True
        if isinstance(c, dict) and c.get("model_type") == "swin2sr":
            return swinir_fields_from_hf(c), False
    return {}, False


def read_restoration_checkpoint(path, use_ema: bool = False, strict: bool = True,
                                raw: RawCheckpoint | None = None) -> Checkpoint:
    """Read a SwinIR / Swin2SR checkpoint (official, transformers, swinkit) into swinkit's layout, with its config
    from the file's side information where there is one, else inferred from the weights."""
    raw = raw or read_raw(path, use_ema)
    try:
        known, ours = _restoration_side_info(raw)
        imp = swinir_to_swinkit(raw.state_dict, strict=strict)
        cfg, guessed = infer_swinir_config(imp.state_dict, imp.buffers, known, raw.weights.name)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{raw.path}: {e}") from None
    return Checkpoint(raw.path, "swinkit" if ours else imp.format, imp.state_dict, cfg, guessed, None,
                      imp.unknown, [])


def _restoration_target_config(src: SwinIRConfig, overrides: dict, base: SwinIRConfig | None = None) -> SwinIRConfig:
    """The restoration model to build: `base` (a named variant) or the checkpoint's config, with `overrides`; the
    fields the tensors fix must stay the checkpoint's."""
    overrides = _check_overrides(overrides, SwinIRConfig)
    cfg = SwinIRConfig.from_dict({**(base or src).to_dict(), **overrides})
    fixed = RESTORATION_ARCHITECTURE + (("window_size",) if src.version == 1 else ())
    _check_architecture(src, cfg, fixed, "restoration", named=base is not None)
    return cfg


def build_restoration_model(ckpt: Checkpoint, strict: bool = True, base: SwinIRConfig | None = None,
                            **overrides) -> SwinIR:
    """A SwinIR holding the checkpoint's weights, in eval mode."""
    cfg = _restoration_target_config(ckpt.config, overrides, base)
    if "window_size" in ckpt.guessed and "window_size" not in overrides and base is None:
        warnings.warn(f"{ckpt.describe()} does not record its window size (Swin2SR stores no position table); "
                      f"assuming {cfg.window_size}. Pass window_size=... if it was trained with another.", stacklevel=3)
    with torch.device("meta"):
        model = SwinIR(cfg)
    own, sd = model.state_dict(), ckpt.state_dict
    _check_shapes(ckpt, sd, own)
    missing, unexpected = [k for k in own if k not in sd], [k for k in sd if k not in own]
    if missing or unexpected:
        msg = f"{ckpt.describe()}: missing keys {missing[:12]}, unexpected keys {unexpected[:12]}"
        if strict:
            raise CheckpointError(msg + " (load with strict=False to accept this)")
        warnings.warn(msg, stacklevel=3)
        model = SwinIR(cfg)
        model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    else:
        model.load_state_dict({k: sd[k].to(v.dtype) for k, v in own.items()}, assign=True)
        model.mean = torch.tensor(cfg.mean).view(1, -1, 1, 1)  # a buffer the state dict does not hold
    return model.eval()


def load_restoration_into_named(name: str, checkpoint=None, pretrained: bool | str = False,
                                **overrides) -> SwinIR:
    """create_restoration_model(name, checkpoint=... | pretrained=True): the named variant with a checkpoint's
    weights (the official SwinIR release file for pretrained=True, or the URL given as pretrained='https://...').
    The real-world variants take the file's EMA weights (params_ema) where it has them, as the official test does."""
    strict = overrides.pop("strict", True)
    use_ema = overrides.pop("use_ema", None)
    base = SwinIRConfig.from_name(name, **overrides)
    if checkpoint is None:
        checkpoint = download_pretrained(name, pretrained if isinstance(pretrained, str) else None)
    raw = read_raw(checkpoint)
    if use_ema is None:
        use_ema = name.startswith("swinir_real") and isinstance(raw.obj, dict) and "params_ema" in raw.obj
    if use_ema:
        raw = read_raw(checkpoint, use_ema=True)
    if not is_swinir_state_dict(raw.state_dict):
        raise CheckpointError(f"{checkpoint} is not a SwinIR / Swin2SR checkpoint (no conv_first.weight or "
                              f"swin2sr.first_convolution.weight); {name} needs one")
    ckpt = read_restoration_checkpoint(checkpoint, strict=strict, raw=raw)
    if "window_size" in ckpt.guessed:  # Swin2SR: the variant's window, not a guess
        ckpt.config = dataclasses.replace(ckpt.config, window_size=base.window_size)
    return build_restoration_model(ckpt, strict, base, **overrides)


# ----------------------------------------------------------------------------------------------------------
# saving


def _plain(sd: dict) -> dict:
    return {k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}


def _write_safetensors(sd: dict, path: Path, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file(_plain(sd), str(tmp), metadata={"format": "pt", **(metadata or {})}))


# what a training checkpoint holds besides the weights and their config that a trained model needs to be used: its
# task and that task's meta (class names, preprocessing, labels and palette, restoration or SimMIM settings). The
# rest (optimizer, EMA, RNG, history, flags) only continues training.
TRAINING_ONLY = ("model", "config", "optimizer", "ema", "rng", "args", "epoch", "history", "metrics", "sampler",
                 "scheduler", "scaler")


def task_meta(obj) -> dict | None:
    """The task meta of a swinkit training checkpoint (see TRAINING_ONLY), or None for any other object."""
    if not (isinstance(obj, dict) and "model" in obj and isinstance(obj.get("config"), dict)):
        return None
    return {k: v for k, v in obj.items() if k not in TRAINING_ONLY}


def save_state_dict(sd: dict, cfg: SwinConfig, path, class_names: list[str] | None = None,
                    meta: dict | None = None) -> None:
    """swinkit checkpoint: `path` (.safetensors, config in its metadata) and `<stem>.json` (config) beside it.
    `meta`: a training checkpoint's task meta (task_meta), kept in the metadata as "swinkit_task" so that eval and
    predict use the file as they use the run (same preprocessing, class names, task)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"swinkit checkpoints are .safetensors files; got {path.name!r} "
                         f"(use {path.with_suffix('.safetensors').name!r})")
    meta = {"swinkit_config": cfg.to_json(), "class_names": json.dumps(class_names),
            **({"swinkit_task": dumps(meta)} if meta else {})}
    _write_safetensors(sd, path, meta)
    write_json(path.with_suffix(".json"), {**cfg.to_dict(), **({"class_names": class_names} if class_names else {})})


def save_model(model: SwinTransformer, path, class_names: list[str] | None = None) -> None:
    """Write `path` (.safetensors) and its config as `<stem>.json` beside it, atomically; load_model reads
    them back."""
    save_state_dict(model.state_dict(), model.cfg, path, class_names or getattr(model, "class_names", None))


def _hf_config(cfg: SwinConfig, class_names: list[str] | None) -> dict:
    """config.json for transformers' Swin / Swinv2 (one square window, clamped per stage as transformers does)."""
    win = cfg.window_size[0]
    same = dataclasses.replace(cfg, window_size=win)
    if win[0] != win[1] or effective_windows(same) != effective_windows(cfg):
        raise ValueError(f"transformers' Swin takes one square window size; this model has {cfg.window_size}")
    v2 = cfg.version == 2
    names = class_names or [f"LABEL_{i}" for i in range(cfg.num_classes)]
    c = dict(model_type="swinv2" if v2 else "swin",
             architectures=["Swinv2ForImageClassification" if v2 else "SwinForImageClassification"],
             image_size=list(cfg.img_size), patch_size=cfg.patch_size, num_channels=cfg.in_chans,
             embed_dim=cfg.embed_dim, depths=list(cfg.depths), num_heads=list(cfg.num_heads), window_size=win[0],
             mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, hidden_act="gelu", layer_norm_eps=1e-5,
             use_absolute_embeddings="absolute" in cfg.pos_embed, drop_path_rate=0.0,
             id2label={str(i): n for i, n in enumerate(names)}, label2id={n: i for i, n in enumerate(names)})
    if v2:
        c["pretrained_window_sizes"] = [p[0] for p in cfg.pretrained_window_sizes]
    return c


def write_checkpoint(sd: dict, cfg: SwinConfig, path, fmt: str = "swinkit", class_names=None,
                     meta: dict | None = None) -> Path:
    """Write a swinkit state dict as format `fmt`: hf -> a directory (config.json + model.safetensors);
    others -> `path` as .pth/.pt/.bin (torch.save; official wrapped in {"model": ...}) or safetensors. A video
    model (VideoSwinConfig) converts to official / mmaction2 ({"state_dict": {"backbone.*", "cls_head.*"}}) or
    torchvision (swin3d's state dict); a restoration model (SwinIRConfig) to official ({"params": ...}) or hf.
    `meta`: the task meta that swinkit files keep (save_state_dict); other formats have no place for it."""
    path = Path(path)
    if fmt == "swinkit":
        save_state_dict(sd, cfg, path, class_names, meta)
        return path
    if isinstance(cfg, SwinIRConfig):  # official: {"params": ...} as the SwinIR zoo; hf: a transformers directory
        out = swinir_from_swinkit(sd, fmt, cfg)
        return _write_converted(out, path, hf_swin2sr_config(cfg) if fmt == "hf" else None,
                                lambda sd: {"params": sd})
    if isinstance(cfg, VideoSwinConfig):
        out = video_from_swinkit(sd, fmt, cfg)
        return _write_converted(out, path, None, lambda sd: sd if fmt == "torchvision" else {"state_dict": sd})
    out = from_swinkit(sd, fmt, cfg)
    hf = _hf_config(cfg, class_names) if fmt == "hf" else None
    return _write_converted(out, path, hf, lambda sd: {"model": sd} if fmt == "official" else sd)


def _write_converted(out: dict, path: Path, hf_config: dict | None, wrap) -> Path:
    """Another format's tensors to disk, atomically: with `hf_config` a directory (model.safetensors +
    config.json); else .pth/.pt/.bin (torch.save of wrap(tensors)) or safetensors."""
    if hf_config is not None:
        _write_safetensors(out, path / "model.safetensors")
        write_json(path / "config.json", hf_config)
    elif path.suffix in (".pth", ".pt", ".bin"):
        obj = wrap(_plain(out))
        atomic_write(path, lambda tmp: torch.save(obj, tmp))
    else:
        _write_safetensors(out, path)
    return path


# ----------------------------------------------------------------------------------------------------------
# official pretrained weights


_GH = "https://github.com/SwinTransformer/storage/releases/download/"
# name -> (URL, checksum). The official MODELHUB.md publishes URLs but no checksums; the one given is the
# sha384 that OpenVINO's Open Model Zoo (models/public/swin-tiny-patch4-window7-224/model.yml) records for
# the same URL. Files without one are reported with their sha256 after download.
PRETRAINED = {
    "swin_tiny_patch4_window7_224": (_GH + "v1.0.0/swin_tiny_patch4_window7_224.pth",
                                     "sha384:210021216e1f205617d885836b1ac59d725b8c41dbff8dc4c513e838911436b0b75e06"
                                     "529737e472d3167519a7c1a6ad"),
    "swin_small_patch4_window7_224": (_GH + "v1.0.0/swin_small_patch4_window7_224.pth", None),
    "swin_base_patch4_window7_224": (_GH + "v1.0.0/swin_base_patch4_window7_224.pth", None),
    "swin_large_patch4_window7_224": (_GH + "v1.0.0/swin_large_patch4_window7_224_22kto1k.pth", None),
    "swin_base_patch4_window12_384": (_GH + "v1.0.0/swin_base_patch4_window12_384.pth", None),
    "swin_large_patch4_window12_384": (_GH + "v1.0.0/swin_large_patch4_window12_384_22kto1k.pth", None),
    **{f"swinv2_{s}_window{w}_256": (_GH + f"v2.0.0/swinv2_{s}_patch4_window{w}_256.pth", None)
       for w in (8, 16) for s in ("tiny", "small", "base")},
    **{f"swinv2_{s}_window12_192": (_GH + f"v2.0.0/swinv2_{s}_patch4_window12_192_22k.pth", None)
       for s in ("base", "large")},
    **{f"swinv2_{s}_window12to{w}_192to{r}": (_GH + f"v2.0.0/swinv2_{s}_patch4_window12to{w}_192to{r}_22kto1k_ft.pth",
                                              None) for s in ("base", "large") for w, r in ((16, 256), (24, 384))},
}
_PT = "https://download.pytorch.org/models/"
# video name -> (URL, checksum): torchvision's Kinetics-400 ports of the official Video Swin weights (swin3d_t / s /
# b; B pre-trained on ImageNet-1k). torch.hub names its files after the first digits of their sha256, checked here.
VIDEO_PRETRAINED = {
    "video_swin_t": (_PT + "swin3d_t-7615ae03.pth", "sha256:7615ae03"),
    "video_swin_s": (_PT + "swin3d_s-da41c237.pth", "sha256:da41c237"),
    "video_swin_b": (_PT + "swin3d_b_1k-24f7c7c6.pth", "sha256:24f7c7c6"),
}

_SWINIR = "https://github.com/JingyunLiang/SwinIR/releases/download/v0.0/"
# restoration name -> (URL, checksum): the official SwinIR model zoo (no published checksums). The Swin2SR variants
# have no entry: their weights are transformers directories (load them with checkpoint=DIR).
RESTORATION_PRETRAINED = {n: (_SWINIR + v["file"], None) for n, v in SWINIR_VARIANTS.items()
                          if v["file"].endswith(".pth")}


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_pretrained(name: str, url: str | None = None) -> Path:
    """The official weights of variant `name` (or `url`), downloaded once through torch.hub into its cache
    (torch.hub.get_dir()/checkpoints) and checked against the known checksum."""
    name = ALIASES.get(name, name)
    releases = {**PRETRAINED, **VIDEO_PRETRAINED, **RESTORATION_PRETRAINED}
    checksum = None
    if url is None:
        if name not in releases:
            raise CheckpointError(f"no public weights for {name!r}; variants with weights: {', '.join(releases)}")
        url, checksum = releases[name]
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    maker = ("create_video_model" if name in VIDEO_PRETRAINED else
             "create_restoration_model" if name in RESTORATION_PRETRAINED else "create_model")
    try:
        torch.hub.download_url_to_file(url, str(path), progress=sys.stderr.isatty())
    except OSError as e:  # URLError, HTTPError, connection refused, no DNS
        raise CheckpointError(
            f"could not download the {name} weights from {url} ({getattr(e, 'reason', e)}). Without network "
            f"access, fetch the file elsewhere and pass it: swinkit.{maker}({name!r}, "
            f"checkpoint='path/to/{path.name}') - or copy it to {path}") from None
    _verify(path, checksum, url)
    return path


def _verify(path: Path, checksum: str | None, url: str) -> None:
    if checksum is None:
        warnings.warn(f"{url} has no published checksum; downloaded {path} has sha256 {_digest(path, 'sha256')}",
                      stacklevel=3)
        return
    algo, expected = checksum.split(":")
    got = _digest(path, algo)
    if not got.startswith(expected):  # a prefix: the first digits, as torch.hub's file names give them
        path.unlink()
        raise CheckpointError(f"checksum mismatch for {url}: expected {algo} {expected}, got {got}; the download was "
                              "deleted. Try again, or download the file yourself and pass checkpoint=PATH.")


# ----------------------------------------------------------------------------------------------------------
# `swinkit inspect` and `swinkit convert`


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    if command == "inspect":
        parser.add_argument("path", help="checkpoint file or Hugging Face / timm directory")
    else:
        parser.add_argument("src", help="checkpoint file or Hugging Face / timm directory")
        parser.add_argument("dst", help="output file (.safetensors by default; .pth/.pt/.bin for torch.save) or, "
                                        "for --to hf, a directory")
        parser.add_argument("--to", default="swinkit",
                            choices=list(dict.fromkeys([*FORMATS, *SEG_BACKBONES, *VIDEO_FORMATS])),
                            help="output format (default: swinkit); segmentation models: swinkit, official, mmseg, "
                                 "hf; video models: swinkit, official, mmaction2, torchvision")
        parser.add_argument("--overwrite", action="store_true", help="replace dst if it exists (never src)")
    parser.add_argument("--ema", action="store_true", help="use the EMA weights of a training checkpoint")
    parser.add_argument("--window-size", type=int, help="window size, where the checkpoint does not record it")
    parser.add_argument("--img-size", type=int, help="image size, where the checkpoint does not record it")


def _inspect(ckpt: Checkpoint) -> str:
    cfg = ckpt.config
    params = sum(v.numel() for v in ckpt.state_dict.values())
    lines = [f"file:     {ckpt.path}", f"format:   {ckpt.format} ({_kind(cfg)})",
             f"params:   {params:,}", "config:"]
    video = ("mask_padding", "clamped_bias") if isinstance(cfg, VideoSwinConfig) else ()
    lines += [f"  {k}: {v}" for k, v in cfg.to_dict().items() if k in ("name", "version", "img_size", "patch_size",
              "in_chans", "num_classes", "embed_dim", "depths", "num_heads", "window_size", "pretrained_window_sizes",
              "mlp_ratio", "qkv_bias", "pos_embed", *video)]
    if ckpt.guessed:
        lines.append(f"guessed:  {', '.join(ckpt.guessed)} (not recorded in the checkpoint)")
    if ckpt.class_names:
        lines.append(f"classes:  {len(ckpt.class_names)}: {', '.join(map(str, ckpt.class_names[:8]))}"
                     + (" ..." if len(ckpt.class_names) > 8 else ""))
    lines.append(f"ignored:  {', '.join(ckpt.ignored) if ckpt.ignored else 'none'}")
    lines.append(f"unknown:  {', '.join(ckpt.unknown) if ckpt.unknown else 'none'}")
    return "\n".join(lines)


def _dropped(meta: dict | None, fmt: str) -> str | None:
    """The note for a conversion to `fmt` of a training checkpoint whose task meta `fmt` cannot hold."""
    if not meta or fmt == "swinkit":
        return None
    lost = [k for k in meta if k != "task" and not (k == "class_names" and fmt == "hf")]
    if not lost:
        return None
    data = meta.get("data") or {}
    shown = ", ".join(f"{k} {data[k]}" for k in ("img_size", "crop_pct") if k in data)
    what = {"data": f"preprocessing ({shown + ', ' if shown else ''}mean, std)", "class_names": "class names"}
    return (f"note: --to {fmt} has no place for the {', '.join(what.get(k, k) for k in lost)} of this "
            f"{meta.get('task', 'classify')} run; eval and predict with the converted file use defaults (--to swinkit "
            "keeps them)")


def run(args) -> int:
    hints = {k: v for k, v in (("window_size", args.window_size), ("img_size", args.img_size)) if v}
    src, strict = (args.path, False) if args.command == "inspect" else (args.src, True)
    try:
        if args.command == "convert":
            sidecar = [Path(args.dst).with_suffix(".json")] if args.to == "swinkit" else []
            check_outputs([args.dst, *sidecar], [src], args.overwrite, flag="dst")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if args.command == "inspect" else "default")
            warnings.simplefilter("default", NonFiniteWarning)  # inspect, too, says which tensors are not finite
            raw = read_raw(src, args.ema)
            from .detection import is_detection_state_dict  # it imports this module

            meta = task_meta(raw.obj)
            if args.command == "convert" and (note := _dropped(meta, args.to)):
                print(note, file=sys.stderr)
            if is_detection_state_dict(raw.state_dict):
                return _run_detection(args, src)
            if is_segmentation_state_dict(raw.state_dict):
                return _run_segmentation(args, read_segmentation_checkpoint(src, strict=strict, raw=raw), meta)
            video = is_video_state_dict(raw.state_dict)
            ckpt = (read_video_checkpoint(src, strict=strict, raw=raw) if video else
                    read_checkpoint(src, use_ema=args.ema, strict=strict, known=hints, raw=raw))
        if args.command == "convert" and video and args.to not in VIDEO_FORMATS:
            raise CheckpointError(f"--to {args.to} has no Video Swin layout and {src} holds a Video Swin model; "
                                  f"choose one of {', '.join(VIDEO_FORMATS)}")
        if args.command == "convert" and not video and args.to not in FORMATS:
            raise CheckpointError(f"--to {args.to} is a segmentation or video format and {src} holds a Swin image "
                                  f"model; choose one of {', '.join(FORMATS)}")
        if args.command == "inspect":
            print(_inspect(ckpt))
            return 0
        guessed = [f for f in ckpt.guessed if f not in hints]
        if guessed:
            assumed = ", ".join(f"{f}={getattr(ckpt.config, f)}" for f in guessed)
            hint = "" if video else " (pass --window-size / --img-size if it differs)"
            print(f"note: {args.src} does not record {', '.join(guessed)}; assumed {assumed}{hint}", file=sys.stderr)
        out = write_checkpoint(ckpt.state_dict, ckpt.config, args.dst, args.to, ckpt.class_names, meta)
    except (CheckpointError, ValueError) as e:  # ValueError: also OutputError
        print(f"swinkit {args.command}: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({args.to}, {_kind(ckpt.config)}, {ckpt.config.name})")
    return 0


def _run_detection(args, src) -> int:
    """`swinkit inspect` / `swinkit convert` of a detection checkpoint (--to swinkit: the whole detector; official
    / mmdet: its backbone and FPN neck as {"state_dict", "meta": {"CLASSES"}})."""
    from .detection import DETECTION_FORMATS, convert_detection_state_dict, read_detection_checkpoint

    cfg, sd, names, fmt = read_detection_checkpoint(src)
    if args.command == "inspect":
        bb = cfg.backbone
        print("\n".join([f"file:     {src}", f"format:   {fmt} ({cfg.detector} detector)",
                         f"params:   {sum(v.numel() for v in sd.values()):,}",
                         f"config:   {cfg.name}: {cfg.detector}, {cfg.num_classes} classes, FPN {cfg.fpn_channels} on "
                         f"{bb.describe(with_size=False)}",
                         f"classes:  {', '.join(map(str, (names or [])[:8])) or 'not recorded'}"]))
        return 0
    if args.to not in DETECTION_FORMATS:
        raise CheckpointError(f"--to {args.to}: {src} holds a detector; choose one of {', '.join(DETECTION_FORMATS)}")
    dst = Path(args.dst)
    if args.to == "swinkit":
        from ..models.detection import build_detector
        from .detection import save_detector

        model = build_detector(cfg)
        model.load_state_dict(sd, strict=False)
        save_detector(model, dst, names)
    else:
        out = {"state_dict": convert_detection_state_dict(sd, args.to, cfg), "meta": {"CLASSES": names}}
        atomic_write(dst, lambda p: torch.save(out, p))
    print(f"wrote {dst} ({args.to}, {cfg.detector} {'backbone and neck' if args.to != 'swinkit' else 'detector'})")
    return 0


def _run_segmentation(args, ckpt: "SegmentationCheckpoint", meta: dict | None) -> int:
    """`swinkit inspect` / `swinkit convert` of a segmentation checkpoint (`meta`: a training checkpoint's task
    meta, kept by --to swinkit)."""
    if args.command == "inspect":
        print(_inspect_segmentation(ckpt))
        return 0
    out = write_segmentation_checkpoint(ckpt.state_dict, ckpt.config, args.dst, args.to, ckpt.class_names, meta)
    print(f"wrote {out} ({args.to}, {ckpt.config.head} on Swin V{ckpt.config.backbone.version}, {ckpt.config.name})")
    return 0


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
        known["backbone"] = {k: _uniform(v) for k, v in _known_from_hf(backbone)[0].items() if v is not None}
    return {k: v for k, v in known.items() if v is not None}


def _segmentation_side_info(raw: RawCheckpoint) -> tuple[dict, list | None, bool]:
    """(known SegmentationConfig fields, class names, written by swinkit) from a training checkpoint's config,
    the safetensors metadata, a swinkit JSON or transformers' config.json beside the weights."""
    obj, meta = raw.obj, raw.meta
    if isinstance(obj, dict) and SegmentationConfig.is_segmentation_dict(obj.get("config")):
        return obj["config"], obj.get("class_names"), True
    if "swinkit_config" in meta and SegmentationConfig.is_segmentation_dict(c := json.loads(meta["swinkit_config"])):
        return c, json.loads(meta.get("class_names", "null")), True
    for side in (raw.weights.with_suffix(".json"), raw.weights.parent / "config.json"):
        try:
            c = json.loads(side.read_text()) if side.exists() and side != raw.weights else None
        except (OSError, json.JSONDecodeError):
            continue
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


def _split_overrides(overrides: dict, cls: type = SegmentationConfig) -> tuple[dict, dict]:
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
    seg_over, bb_over = _split_overrides(overrides)
    bb_ckpt = _backbone_checkpoint(ckpt)
    backbone = _target_config(bb_ckpt.config, {**bb_over, "num_classes": 0})
    cfg = dataclasses.replace(ckpt.config, **seg_over, backbone=backbone)
    bb_sd, _ = _fit(bb_ckpt, backbone, None)
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
    _check_shapes(ckpt, sd, own)
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
        hints = {k: _uniform(base.to_dict()[k]) for k in ("window_size", "img_size")} if base else {}
        ckpt = read_checkpoint(path, strict=strict, known=hints, raw=raw)
    if base is not None:
        overrides = {"in_chans": base.in_chans, **overrides}
    cfg = _target_config(ckpt.config, {**overrides, "num_classes": 0}, base)
    sd, _ = _fit(ckpt, cfg, None)
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
    backbone = _hf_config(dataclasses.replace(cfg.backbone, num_classes=0), None)
    for k in ("architectures", "id2label", "label2id"):
        backbone.pop(k)
    if cfg.backbone.version == 2:  # Swinv2 clamps its windows to the stage maps of image_size: make them larger
        n, p, win = len(cfg.backbone.depths), cfg.backbone.patch_size, max(max(w) for w in cfg.backbone.window_size)
        backbone["image_size"] = [max(s, p * 2 ** (n - 1) * 2 * win) for s in cfg.backbone.img_size]
    backbone["out_features"] = [f"stage{i + 1}" for i in range(len(cfg.backbone.depths))]
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
    return _write_converted(out, path, hf, lambda sd: {"state_dict": sd, **meta})


def _inspect_segmentation(ckpt: SegmentationCheckpoint) -> str:
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
