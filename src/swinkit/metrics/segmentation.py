"""Semantic segmentation metrics from a pixel confusion matrix: mIoU, pixel and mean accuracy, per class."""
from __future__ import annotations

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """(C, C) int64 pixel counts, rows: true class, columns: predicted; pixels whose target is `ignore_index`
    are left out. `pred` holds class indices of `target`'s shape. Counts add (and all-reduce) across batches.

    One bincount, as torchmetrics' confusion matrix computes it; torchmetrics itself would switch to a
    (pixels x C^2) comparison under torch.use_deterministic_algorithms, too large for segmentation (integer
    counts are exact in any order, so bincount is deterministic in effect)."""
    valid = target != ignore_index
    codes = target[valid] * num_classes + pred[valid]  # (pixels,) in [0, C^2)
    return torch.bincount(codes, minlength=num_classes**2).view(num_classes, num_classes)


def segmentation_metrics(confusion: torch.Tensor, names: list[str] | None = None) -> dict:
    """mIoU, pixel accuracy, mean (per-class) accuracy and per-class IoU / accuracy, as fractions, from a (C, C)
    confusion matrix. A class absent from both targets and predictions has no IoU (None) and is left out of the
    means, as in mmseg; a class absent from the targets has no accuracy."""
    c = confusion.double()
    tp, gt, pr = c.diag(), c.sum(1), c.sum(0)
    iou = tp / (gt + pr - tp)  # NaN where the class is nowhere
    acc = tp / gt
    names = names or [str(i) for i in range(len(c))]

    def listed(t: torch.Tensor) -> dict:
        return {n: (None if v != v else v) for n, v in zip(names, t.tolist())}

    return {"miou": iou.nanmean().item(), "pixel_acc": (tp.sum() / c.sum().clamp(min=1)).item(),
            "mean_acc": acc.nanmean().item(), "per_class_iou": listed(iou), "per_class_acc": listed(acc),
            "num_pixels": int(confusion.sum())}
