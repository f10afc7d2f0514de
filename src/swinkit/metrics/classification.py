"""Classification metrics over a loader (top-1 / top-5 accuracy, cross-entropy, confusion matrix), reduced over ranks,
and the confusion-matrix figure: the image classifier's and the video classifier's."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..io.files import atomic_write


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp_dtype: torch.dtype | None = None,
             num_classes: int | None = None, log_probs=None, count: str = "num_images") -> dict:
    """Cross-entropy loss, top-1 and top-5 (%) over `loader`, summed across ranks when distributed. Top-5 is
    top-min(5, classes). With `num_classes`, also the (C, C) confusion matrix (rows: true class). `log_probs(model,
    x)` -> (B, classes) log-probabilities replaces log_softmax(model(x)) (the video task's multi-view average);
    `count` names the sample count."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1 hits, top-5 hits, samples
    confusion = torch.zeros(num_classes or 1, num_classes or 1, dtype=torch.long, device=device)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            log_p = model(x).float().log_softmax(-1) if log_probs is None else log_probs(model, x)  # (B, C)
        top = log_p.topk(min(5, log_p.shape[1]), dim=1).indices  # (B, k)
        hits = top == y[:, None]
        sums += torch.stack([F.nll_loss(log_p, y, reduction="sum"), hits[:, 0].sum(), hits.any(1).sum(),
                             torch.tensor(len(y), device=device)]).double()
        if num_classes:
            confusion += torch.bincount(y * num_classes + top[:, 0], minlength=num_classes**2).view_as(confusion)
    if dist.is_initialized():
        dist.all_reduce(sums)
        dist.all_reduce(confusion)
    loss, c1, c5, n = sums.tolist()
    out = {"loss": loss / max(n, 1), "top1": 100 * c1 / max(n, 1), "top5": 100 * c5 / max(n, 1), count: int(n)}
    if num_classes:
        out["confusion"] = confusion.cpu()
    return out


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
