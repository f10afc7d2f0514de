"""`swinkit restore`: super-resolve, denoise or remove JPEG artefacts from image files with a restoration model
(a named SwinIR / Swin2SR variant with its released weights, a checkpoint of `swinkit train --task restore`, or a
SwinIR / Swin2SR weights file), whole images or in overlapping tiles, written as PNGs."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..tasks.base import AMP_DTYPES
from ..tasks.restore import (KINDS, add_tile_arguments, check_model_fits, default_model, load_restoration_model,
                            restoration_meta, restore_files)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, or folders of them")
    parser.add_argument("--out", type=Path, required=True, help="folder for the restored PNGs (<stem>.png)")
    parser.add_argument("--model", help="a restoration variant with its released weights (downloaded once), see "
                                        "swinkit.list_restoration_models()")
    parser.add_argument("--checkpoint", help="a run directory of `swinkit train --task restore`, its best.pt, or a "
                                             "SwinIR / Swin2SR weights file")
    parser.add_argument("--task", choices=list(KINDS), help="what to restore; without --model / --checkpoint it "
                                                            "picks the variant (default sr), else it must match")
    parser.add_argument("--scale", type=int, help="sr factor (picks the variant, or must match the model's)")
    parser.add_argument("--sigma", type=float, help="denoise: the inputs' noise sigma (picks the variant)")
    parser.add_argument("--quality", type=int, help="jpeg: the inputs' JPEG quality (picks the variant)")
    add_tile_arguments(parser)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=list(AMP_DTYPES), default="none", help="autocast dtype")
    parser.add_argument("--overwrite", action="store_true", help="replace PNGs that exist in --out already")


def _model(args: argparse.Namespace) -> tuple[torch.nn.Module, dict]:
    """The model and its restoration meta, checked against --task / --scale / --sigma / --quality."""
    if args.model and args.checkpoint:
        raise ValueError("give --model NAME or --checkpoint PATH, not both")
    if args.checkpoint:
        model, meta = load_restoration_model(args.checkpoint)
    else:
        from ..factory import create_restoration_model

        from ..io.hub import RESTORATION_PRETRAINED

        kind = args.task or "sr"
        name = args.model or default_model(kind, args.scale or (2 if kind == "sr" else 1), args.sigma or 25,
                                           args.quality or 40)
        if name not in RESTORATION_PRETRAINED:
            raise ValueError(f"{name} has no released weights to download: train it (swinkit train --task restore "
                             f"--model {name} --data HR_IMAGES) and restore with --checkpoint RUN_DIR, or pick a "
                             f"--model with weights: {', '.join(RESTORATION_PRETRAINED)}")
        model = create_restoration_model(name, pretrained=True).eval()
        c = model.cfg
        meta = restoration_meta(args.task or ("sr" if c.upscale > 1 else "denoise"), c.upscale, args.sigma or 0,
                                args.quality or 40, None, c.in_chans)
    if args.scale is not None and args.scale != meta["scale"]:
        raise ValueError(f"the model restores at x{meta['scale']}, not --scale {args.scale}")
    if args.task:
        check_model_fits(model.cfg, args.task, meta["scale"])
    given = {k: getattr(args, k) for k in ("task", "sigma", "quality") if getattr(args, k) is not None}
    known = {"task": meta["task_kind"], "sigma": meta["sigma"], "quality": meta["quality"]}
    clash = {k: (v, known[k]) for k, v in given.items() if known[k] is not None and known[k] != v}
    if clash:
        raise ValueError("the model was trained for " + ", ".join(f"{k} {m}" for k, (_, m) in clash.items()) +
                         ", not " + ", ".join(f"--{k} {v}" for k, (v, _) in clash.items()))
    return model, meta


def run(args: argparse.Namespace) -> int:
    try:
        if args.tile is not None and args.tile < 1:
            raise ValueError(f"--tile must be >= 1, got {args.tile}")
        model, meta = _model(args)
        device = torch.device(args.device)
        return restore_files(model.to(device), meta, args.inputs, args.out, device, AMP_DTYPES[args.amp],
                             args.tile, args.tile_overlap, args.overwrite)
    except (FileNotFoundError, ValueError, ImportError) as e:  # ImportError: a missing optional extra; ValueError:
        print(f"error: {e}", file=sys.stderr)                # also an output that would replace a file (OutputError)
        return 1
