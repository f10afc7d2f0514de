"""Panoptic quality (Kirillov et al., 2019): PQ = SQ x RQ over all classes, things and stuff. torchmetrics'
PanopticQuality matches the segments (same category, IoU > 0.5, void pixels left out of the IoU, a segment mostly on
void neither a false positive nor a false negative, as COCO's pq_compute); this module averages its per-class counts
per group.

Inputs are (H, W, 2) or (B, H, W, 2) integer maps of (category, instance) per pixel, as swinkit.data.panoptic's
`panoptic_map` makes them; category `void` (-1 by default) marks pixels without a segment, in predictions and
targets alike. As in COCO's pq_compute, an unmatched target segment is a false negative even where the prediction
left its pixels void (torchmetrics alone would ignore a target segment mostly void in the prediction, so a model
that predicts nothing would have no errors): predicted void goes to torchmetrics as a segment of an extra stuff
category, whose counts are left out. A class counts in an average when it has a true positive, false positive or false negative (COCO's
rule); a group with no such class (stuff on a things-only dataset, or nothing seen yet) is NaN, not 0, so that an
empty group never reads as a failed one (swinkit's JSON writer stores it as null).
"""
from __future__ import annotations

from collections.abc import Collection

import torch

VOID = -1


class PanopticMeter:
    """Accumulates PQ over images: update(pred, target) per image or batch, compute() -> {"pq", "sq", "rq", "pq_th",
    "sq_th", "rq_th", "pq_st", "sq_st", "rq_st"}, floats in [0, 1] (NaN for an empty group, see the module)."""

    def __init__(self, things: Collection[int], stuffs: Collection[int], void: int = VOID):
        from torchmetrics.detection import PanopticQuality

        self.things, self.stuffs, self.void = {int(c) for c in things}, {int(c) for c in stuffs}, int(void)
        if void in self.things | self.stuffs:
            raise ValueError(f"void={void} is also a thing or stuff category; choose a void id outside both")
        # predicted void -> this category: a predicted segment like any other, its own counts dropped in compute()
        self._unpredicted = max(self.things | self.stuffs) + 1
        # update() lets only known categories and void through; torchmetrics counts its void as unknown in preds
        self._metric = PanopticQuality(self.things, self.stuffs | {self._unpredicted},
                                       allow_unknown_preds_category=True)
        order = self._metric.cat_id_to_continuous_id  # category -> position in the metric's per-class counts
        self._is_thing = torch.zeros(len(order), dtype=torch.bool)
        self._is_thing[[order[c] for c in self.things]] = True
        self._counted = torch.ones(len(order), dtype=torch.bool)
        self._counted[order[self._unpredicted]] = False

    def reset(self) -> None:
        self._metric.reset()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: (H, W, 2) or (B, H, W, 2) integer (category, instance) maps of the same shape."""
        if pred.shape != target.shape or pred.shape[-1] != 2 or pred.dim() not in (3, 4):
            raise ValueError(f"expected pred and target of one shape (H, W, 2) or (B, H, W, 2), got "
                             f"{tuple(pred.shape)} and {tuple(target.shape)}")
        known = torch.tensor(sorted(self.things | self.stuffs | {self.void}), device=pred.device)
        for name, t in (("pred", pred), ("target", target)):
            cats = torch.unique(t[..., 0])
            unknown = cats[~torch.isin(cats, known)]
            if len(unknown):
                raise ValueError(f"{name} has categories {unknown.tolist()} that are neither things, stuffs nor "
                                 f"void ({self.void}); pass them in things / stuffs or map them to void")
        void = torch.tensor(self._metric.void_color, device=pred.device)  # torchmetrics' own void pair
        unpredicted = torch.tensor([self._unpredicted, 0], device=pred.device)
        batch = [torch.where((t[..., :1] == self.void), v, t.long()) for t, v in ((pred, unpredicted),
                                                                                  (target, void))]
        if pred.dim() == 3:
            batch = [t[None] for t in batch]  # (1, H, W, 2)
        self._metric.to(pred.device)
        self._metric.update(*batch)

    def compute(self) -> dict[str, float]:
        m = self._metric
        iou, tp, fp, fn = (t.double().cpu() for t in (m.iou_sum, m.true_positives, m.false_positives,
                                                       m.false_negatives))
        seen = tp + 0.5 * fp + 0.5 * fn  # (C,), the RQ denominator
        sq = torch.where(tp > 0, iou / tp, 0.0)
        rq = torch.where(seen > 0, tp / seen, 0.0)
        out = {}
        for suffix, group in (("", self._counted), ("_th", self._is_thing), ("_st", ~self._is_thing & self._counted)):
            use = group & (seen > 0)
            for key, per_class in (("pq", sq * rq), ("sq", sq), ("rq", rq)):
                out[key + suffix] = per_class[use].mean().item() if use.any() else float("nan")
        return out


def panoptic_quality(preds: torch.Tensor, targets: torch.Tensor, things: Collection[int], stuffs: Collection[int],
                     void: int = VOID) -> dict[str, float]:
    """PQ, SQ, RQ for all classes, things and stuff of (B, H, W, 2) or (H, W, 2) (category, instance) maps; see
    PanopticMeter."""
    meter = PanopticMeter(things, stuffs, void)
    meter.update(preds, targets)
    return meter.compute()
