"""`swinkit predict`: class names and probabilities for image files, from a run directory or checkpoint."""
from __future__ import annotations

import argparse
import json
import sys

import torch

from .data import eval_transform, load_image
from .evaluate import load_for_inference


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, class_names: list[str], topk: int = 5) -> list[list[dict]]:
    """images (B, 3, H, W) -> per image, the top-k [{"class", "index", "prob"}], most probable first."""
    probs = model(images).float().softmax(dim=-1)  # (B, C)
    p, idx = probs.topk(min(topk, probs.shape[1]), dim=-1)  # (B, k)
    return [[{"class": class_names[i], "index": i, "prob": q} for q, i in zip(pr.tolist(), ix.tolist())]
            for pr, ix in zip(p, idx)]


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--checkpoint", required=True, help="run directory (uses its best.pt) or checkpoint file")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--topk", type=int, default=5, help="classes to show per image")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="one JSON line per image")


def run(args: argparse.Namespace) -> int:
    if args.topk < 1:
        print(f"error: --topk must be >= 1, got {args.topk}", file=sys.stderr)
        return 2
    try:
        model, names, data_cfg = load_for_inference(args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    device = torch.device(args.device)
    model.to(device)
    tf = eval_transform(data_cfg["img_size"], data_cfg["crop_pct"], data_cfg["mean"], data_cfg["std"])
    failed = 0
    for start in range(0, len(args.images), args.batch_size):
        paths, batch = [], []
        for path in args.images[start:start + args.batch_size]:
            try:
                batch.append(tf(load_image(path)))
                paths.append(path)
            except (OSError, ValueError) as e:
                failed += 1
                print(f"error: cannot read {path}: {e}", file=sys.stderr)
        if not batch:
            continue
        for path, top in zip(paths, predict(model, torch.stack(batch).to(device), names, args.topk)):
            if args.json:
                print(json.dumps({"image": path, "predictions": top}))
            else:
                print(f"{path}: " + ", ".join(f"{t['class']} {100 * t['prob']:.1f}%" for t in top))
    return 1 if failed else 0
