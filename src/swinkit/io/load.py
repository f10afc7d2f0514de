"""Reading any checkpoint through the family registry: load_model, save_model and write_checkpoint for every family,
and the `swinkit inspect` / `swinkit convert` commands. A file is read from disk once per command (swinkit.io.raw
keeps the last one read) and handed to the family that recognises it (swinkit.families)."""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch.nn as nn

from ..families import FAMILIES, family_of_model, family_of_state_dict
from .files import CheckpointError, NonFiniteWarning, check_outputs
from .raw import RawCheckpoint, read_raw


def read(path, use_ema: bool = False) -> tuple[RawCheckpoint, "object"]:
    """(the file read once, the family that recognises it)."""
    raw = read_raw(path, use_ema)
    return raw, family_of_state_dict(raw.state_dict)


def load_model(path, strict: bool = True, *, use_ema: bool = False, class_map=None, **overrides) -> nn.Module:
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
    raw, family = read(path, use_ema)
    return family.load(raw, strict, use_ema, class_map, **overrides)


def save_model(model: nn.Module, path, class_names: list[str] | None = None) -> Path:
    """Write `model` as swinkit's file of its family (.safetensors with its config, and `<stem>.json` beside it,
    atomically; detectors also .pt); load_model reads it back."""
    family = family_of_model(model)
    if family is None:
        raise TypeError(f"save_model takes a model of a swinkit family ({', '.join(f.name for f in FAMILIES)}), got "
                        f"{type(model).__name__}")
    return family.save(model, Path(path), class_names)


def write_checkpoint(sd: dict, cfg, path, fmt: str = "swinkit", class_names=None, meta: dict | None = None) -> Path:
    """Write a swinkit state dict of a model whose config is `cfg` as format `fmt` (the family's writer: an image
    Swin, a Video Swin or a SwinIR)."""
    from .formats import restoration, swin, video
    from ..config import SwinIRConfig, VideoSwinConfig

    if isinstance(cfg, VideoSwinConfig):
        return video.write_video_checkpoint(sd, cfg, path, fmt, class_names, meta)
    if isinstance(cfg, SwinIRConfig):
        return restoration.write_restoration_checkpoint(sd, cfg, path, fmt, class_names, meta)
    return swin.write_swin_checkpoint(sd, cfg, path, fmt, class_names, meta)


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
                            choices=list(dict.fromkeys(fmt for f in FAMILIES for fmt in f.formats)),
                            help="output format (default: swinkit); " + "; ".join(
                                f"{f.name}: {', '.join(f.formats)}" for f in FAMILIES))
        parser.add_argument("--overwrite", action="store_true", help="replace dst if it exists (never src)")
    parser.add_argument("--ema", action="store_true", help="use the EMA weights of a training checkpoint")
    parser.add_argument("--window-size", type=int, help="window size, where the checkpoint does not record it")
    parser.add_argument("--img-size", type=int, help="image size, where the checkpoint does not record it")


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
    src = args.path if args.command == "inspect" else args.src
    try:
        if args.command == "convert":
            sidecar = [Path(args.dst).with_suffix(".json")] if args.to == "swinkit" else []
            check_outputs([args.dst, *sidecar], [src], args.overwrite, flag="dst")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if args.command == "inspect" else "default")
            warnings.simplefilter("default", NonFiniteWarning)  # inspect, too, says which tensors are not finite
            raw, family = read(src, args.ema)
            if args.command == "inspect":
                print(family.inspect(raw))
                return 0
            meta = task_meta(raw.obj)
            if note := _dropped(meta, args.to):
                print(note, file=sys.stderr)
            what = family.convert(raw, Path(args.dst), args.to, meta, hints)
    except (CheckpointError, ValueError) as e:  # ValueError: also OutputError
        print(f"swinkit {args.command}: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst} ({what})")
    return 0
