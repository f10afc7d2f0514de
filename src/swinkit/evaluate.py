"""`swinkit eval`: top-1, top-5 and loss of a checkpoint on an image folder, plus a confusion-matrix PNG.

Also the evaluation loop used after every training epoch, and the loader of a checkpoint for inference that
`swinkit predict` shares.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .config import SwinConfig
from .io.checkpoint import atomic_write
from .data import IMAGENET_MEAN, IMAGENET_STD, ImageFolderDataset, eval_transform
from .models.swin import SwinTransformer

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16/fp16 autocast on `device`, or a no-op when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, amp_dtype: torch.dtype | None = None,
             num_classes: int | None = None) -> dict:
    """Cross-entropy loss, top-1 and top-5 (%) over `loader`, summed across ranks when distributed. Top-5 is
    top-min(5, classes). With `num_classes`, also the (C, C) confusion matrix (rows: true class)."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1 hits, top-5 hits, images
    confusion = torch.zeros(num_classes or 1, num_classes or 1, dtype=torch.long, device=device)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(x).float()  # (B, C)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (B, k)
        hits = top == y[:, None]
        sums += torch.stack([F.cross_entropy(logits, y, reduction="sum"), hits[:, 0].sum(), hits.any(1).sum(),
                             torch.tensor(len(y), device=device)]).double()
        if num_classes:
            confusion += torch.bincount(y * num_classes + top[:, 0], minlength=num_classes**2).view_as(confusion)
    if dist.is_initialized():
        dist.all_reduce(sums)
        dist.all_reduce(confusion)
    loss, c1, c5, n = sums.tolist()
    out = {"loss": loss / max(n, 1), "top1": 100 * c1 / max(n, 1), "top5": 100 * c5 / max(n, 1),
           "num_images": int(n)}
    if num_classes:
        out["confusion"] = confusion.cpu()
    return out


def load_for_inference(path: str | Path) -> tuple[SwinTransformer, list[str], dict]:
    """(model in eval mode, class names, eval data config) from a run directory (its best.pt), a swinkit
    training checkpoint, or any file `swinkit.io.checkpoint.load_model` reads (class names then come from the
    checkpoint when it has them, else "0".."C-1")."""
    path = Path(path)
    if path.is_dir():
        if not (path / "best.pt").is_file():
            raise FileNotFoundError(f"{path} is a folder without best.pt: expected a run directory written by "
                                    "`swinkit train` (or pass the checkpoint file itself)")
        path = path / "best.pt"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: pass a run directory or a checkpoint file")
    ck = torch.load(path, map_location="cpu", weights_only=True) if path.suffix in (".pt", ".pth") else None
    if isinstance(ck, dict) and "model" in ck and "config" in ck:
        model = SwinTransformer(SwinConfig.from_dict(ck["config"]))
        model.load_state_dict(ck["model"])
        names, data_cfg = ck.get("class_names"), ck.get("data", {})
    else:
        from .io.checkpoint import load_model  # other formats: the checkpoint module's job

        model = load_model(path)
        names, data_cfg = getattr(model, "class_names", None), {}
    size = model.cfg.img_size
    data_cfg = {"img_size": size[0] if size[0] == size[1] else list(size), "crop_pct": 0.875,
                "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), **data_cfg}
    return model.eval(), list(names or [str(i) for i in range(model.num_classes)]), data_cfg


def save_confusion_png(confusion: torch.Tensor, class_names: list[str], path: Path) -> None:
    """Draw the (C, C) count matrix (rows: true, columns: predicted) with scikit-learn's display; values and
    labels are left out when there are too many classes to read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    C = len(class_names)
    fig, ax = plt.subplots(figsize=(min(4 + 0.45 * C, 30), min(3.5 + 0.45 * C, 30)))
    ConfusionMatrixDisplay(confusion.numpy(), display_labels=class_names if C <= 50 else None).plot(
        ax=ax, include_values=C <= 20, xticks_rotation="vertical", colorbar=True, cmap="Blues")
    ax.set_title("confusion matrix (rows: true class)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def eval_folder(data: Path) -> Path:
    """`data/val` when it exists (a training tree), else `data` itself."""
    return data / "val" if (data / "val").is_dir() else data


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--checkpoint", required=True, help="run directory (uses its best.pt) or checkpoint file")
    parser.add_argument("--data", required=True, type=Path,
                        help="image folder (one sub-folder per class); a training tree's val/ is used when present")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes")
    parser.add_argument("--img-size", type=int, help="evaluation size (default: the checkpoint's)")
    parser.add_argument("--crop-pct", type=float, help="resize to img_size / crop_pct, then centre crop")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=list(AMP_DTYPES), default="none", help="autocast dtype")
    parser.add_argument("--confusion", type=Path,
                        help="confusion-matrix PNG (default: confusion_matrix.png beside the checkpoint)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of text")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    model, names, data_cfg = load_for_inference(args.checkpoint)
    device = torch.device(args.device)
    tf = eval_transform(args.img_size or data_cfg["img_size"], args.crop_pct or data_cfg["crop_pct"],
                        data_cfg["mean"], data_cfg["std"])
    folder = eval_folder(args.data)
    ds = ImageFolderDataset(folder, tf, classes=names, classes_from=f"checkpoint {args.checkpoint}")
    loader = DataLoader(ds, args.batch_size, num_workers=args.workers)
    m = evaluate(model.to(device), loader, device, AMP_DTYPES[args.amp], num_classes=len(names))
    ck = Path(args.checkpoint)
    png = args.confusion or (ck if ck.is_dir() else ck.parent) / "confusion_matrix.png"
    save_confusion_png(m["confusion"], names, png)
    result = {"top1": m["top1"], "top5": m["top5"], "loss": m["loss"], "num_images": m["num_images"],
              "num_classes": len(names), "skipped_files": len(ds.skipped), "checkpoint": str(ck),
              "data": str(folder), "confusion_png": str(png)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{ck} on {folder} ({m['num_images']} images, {len(names)} classes)\n"
              f"top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  loss {m['loss']:.4f}\nconfusion matrix: {png}")
    return 0
