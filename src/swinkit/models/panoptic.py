"""Panoptic / universal segmentation: transformers' own Mask2FormerForUniversalSegmentation (pixel decoder,
masked-attention decoder, Hungarian-matched loss) on a swinkit Swin (swinkit.interop.hf's SwinkitBackbone). Its state
dict is transformers' except the backbone, `model.pixel_level_module.encoder.swin.*` under SwinBackbone's names.
Needs the `hf` extra (transformers, and scipy for the loss's Hungarian matcher)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

from ..config import PanopticConfig
from ..interop import hf  # noqa: F401  registers the "swinkit" backbone with AutoConfig / AutoBackbone
from ..utils.logs import quiet_logger
from .backbone import SwinBackbone


def mask2former_config(cfg: PanopticConfig) -> Mask2FormerConfig:
    """transformers' Mask2FormerConfig of `cfg`, with swinkit's backbone."""
    # Mask2FormerConfig warns that any backbone but transformers' Swin "is not a supported model": swinkit's is
    with quiet_logger("transformers.models.mask2former.configuration_mask2former"):
        return Mask2FormerConfig.from_dict(cfg.hf_config())


class PanopticModel(Mask2FormerForUniversalSegmentation):
    """transformers' Mask2Former built from a PanopticConfig (kept as `cfg`; transformers' own is `config`).

    forward(pixel_values (B, 3, H, W) of any H, W, mask_labels=[(n_i, H, W) binary masks], class_labels=[(n_i,)
    class indices]) -> transformers' Mask2FormerForUniversalSegmentationOutput: class_queries_logits (B, Q,
    num_classes + 1; the last is "no object"), masks_queries_logits (B, Q, H/4, W/4) and, given labels, the loss.
    predict_panoptic turns an image batch into panoptic maps."""

    def __init__(self, cfg: PanopticConfig):
        super().__init__(mask2former_config(cfg))
        self.cfg = cfg
        self.class_names: list[str] | None = None

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    @property
    def backbone(self) -> SwinBackbone:
        """The Swin (swinkit's SwinBackbone) inside transformers' backbone wrapper."""
        return self.model.pixel_level_module.encoder.swin

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    @torch.no_grad()
    def predict_panoptic(self, pixel_values: torch.Tensor, image_sizes: list[tuple[int, int]] | None = None,
                         target_sizes: list[tuple[int, int]] | None = None, threshold: float = 0.8,
                         mask_threshold: float = 0.5, overlap: float = 0.8) -> list[dict]:
        """A normalised batch (B, 3, H, W) -> one panoptic result per image (see post_process_panoptic); the stuff
        classes (cfg.stuff_classes) fuse into one segment each. Runs in the model's current mode: call eval()."""
        out = self(pixel_values=pixel_values)
        return post_process_panoptic(out, tuple(pixel_values.shape[-2:]), image_sizes, target_sizes, threshold,
                                     mask_threshold, overlap, self.cfg.stuff_classes)


def post_process_panoptic(outputs, input_size: tuple[int, int], image_sizes: list[tuple[int, int]] | None = None,
                          target_sizes: list[tuple[int, int]] | None = None, threshold: float = 0.8,
                          mask_threshold: float = 0.5, overlap: float = 0.8,
                          label_ids_to_fuse: set[int] | None = None) -> list[dict]:
    """The official Mask2Former's panoptic inference, image by image. (transformers' post_process_panoptic_segmentation
    differs: it weighs the masks by their scores before measuring them and gives every pixel to some segment.)

    `outputs`: the model's output on a batch of size `input_size` (H, W); `image_sizes`: each image's (h, w) at the
    top left of that batch (default: all of it); `target_sizes`: the (h, w) to return each map at (default: its image
    size). A query is kept when its best class, not "no object", has a probability above `threshold` (0.8, the
    official setting); each pixel goes to the kept query of highest score x mask probability, and stays void unless
    that mask's probability is >= mask_threshold; a segment owning less than `overlap` of its mask (probability >=
    mask_threshold) is dropped; the classes in `label_ids_to_fuse` (stuff) make one segment each. Returns per image
    {"segmentation": (h, w) int32 segment ids, 0 void; "segments_info": [{"id", "label_id", "was_fused", "score"}]}."""
    masks, classes = outputs.masks_queries_logits, outputs.class_queries_logits  # (B, Q, H/4, W/4), (B, Q, C + 1)
    batch, (mh, mw) = masks.shape[0], masks.shape[-2:]
    image_sizes = list(image_sizes or [tuple(input_size)] * batch)
    target_sizes = list(target_sizes or image_sizes)
    if not len(image_sizes) == len(target_sizes) == batch:
        raise ValueError(f"{len(image_sizes)} image sizes and {len(target_sizes)} target sizes for a batch of {batch}")
    fuse, results = set(label_ids_to_fuse or ()), []
    for i, ((h, w), target) in enumerate(zip(image_sizes, target_sizes)):
        scores, labels = classes[i].softmax(-1).max(-1)  # (Q,), (Q,)
        keep = (labels != classes.shape[-1] - 1) & (scores > threshold)
        rows, cols = math.ceil(h * mh / input_size[0]), math.ceil(w * mw / input_size[1])  # the image's mask cells
        kept = masks[i, keep, :rows, :cols]  # (K, rows, cols)
        if len(kept) == 0:  # no query kept: all void
            results.append({"segmentation": torch.zeros(tuple(target), dtype=torch.int32, device=masks.device),
                            "segments_info": []})
            continue
        probs = F.interpolate(kept[None], size=tuple(target), mode="bilinear", align_corners=False)[0].sigmoid()
        results.append(_segments(scores[keep], labels[keep], probs, mask_threshold, overlap, fuse))
    return results


def _segments(scores: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor, mask_threshold: float,
              overlap: float, fuse: set[int]) -> dict:
    """One image's panoptic map from its kept queries' scores (K,), classes (K,) and mask probabilities (K, h, w)."""
    seg = torch.zeros(probs.shape[-2:], dtype=torch.int32, device=probs.device)
    info, stuff = [], {}  # stuff: class -> its one segment id
    owner = (scores[:, None, None] * probs).argmax(0)  # (h, w): the query each pixel goes to
    for k, (score, label) in enumerate(zip(scores.tolist(), labels.tolist())):
        mine, sure = owner == k, probs[k] >= mask_threshold
        area, full, pixels = int(mine.sum()), int(sure.sum()), mine & sure
        if area == 0 or full == 0 or not pixels.any() or area / full < overlap:
            continue
        if label in stuff:
            seg[pixels] = stuff[label]
            continue
        seg[pixels] = len(info) + 1
        if label in fuse:
            stuff[label] = len(info) + 1
        info.append({"id": len(info) + 1, "label_id": label, "was_fused": label in fuse, "score": round(score, 6)})
    return {"segmentation": seg, "segments_info": info}
