"""The classification transforms (torchvision's transforms v2): the official training augmentation (random resized
crop, flip, RandAugment with magnitude noise, random erasing), the evaluation resize and centre crop, and
MixUp / CutMix."""
from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandAugmentMstd(v2.RandAugment):
    """torchvision RandAugment whose magnitude is drawn per image from N(magnitude, mstd), rounded and clipped to
    the bins, as timm's `rand-m9-mstd0.5`."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9, mstd: float = 0.5, **kwargs):
        super().__init__(num_ops=num_ops, magnitude=magnitude, **kwargs)
        self.mean_magnitude, self.mstd = magnitude, mstd

    def forward(self, *inputs):
        if self.mstd > 0:
            m = round(self.mean_magnitude + self.mstd * torch.randn(()).item())
            self.magnitude = min(max(m, 0), self.num_magnitude_bins - 1)
        return super().forward(*inputs)


def train_transform(img_size: int, scale=(0.08, 1.0), hflip: float = 0.5, randaug_n: int = 2,
                    randaug_m: int = 9, randaug_mstd: float = 0.5, reprob: float = 0.25,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """PIL image -> (3, img_size, img_size) float tensor: random resized crop, flip, RandAugment, normalise,
    random erasing (the official Swin recipe; 0 disables a step)."""
    bicubic = v2.InterpolationMode.BICUBIC
    steps = [v2.ToImage(), v2.RandomResizedCrop(img_size, scale=tuple(scale), interpolation=bicubic)]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if randaug_n > 0:
        steps.append(RandAugmentMstd(randaug_n, randaug_m, randaug_mstd, fill=[round(255 * m) for m in mean]))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if reprob > 0:
        steps.append(v2.RandomErasing(reprob, value="random"))
    return v2.Compose(steps)


def eval_transform(img_size: int, crop_pct: float = 0.875, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """PIL image -> (3, H, W): resize the short side to img_size / crop_pct (or (H, W) / crop_pct for a pair),
    centre crop to img_size."""
    resize = int(img_size / crop_pct) if isinstance(img_size, int) else [int(s / crop_pct) for s in img_size]
    return v2.Compose([
        v2.ToImage(), v2.Resize(resize, interpolation=v2.InterpolationMode.BICUBIC),
        v2.CenterCrop(img_size), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def mixup_cutmix(num_classes: int, mixup: float = 0.8, cutmix: float = 1.0, switch_prob: float = 0.5):
    """Batch transform (x, y) -> (mixed x, (B, num_classes) soft targets): MixUp or CutMix, chosen with
    `switch_prob` for CutMix when both are on. None when both alphas are 0."""
    ops = [(v2.MixUp(alpha=mixup, num_classes=num_classes), 1.0 - switch_prob)] if mixup > 0 else []
    ops += [(v2.CutMix(alpha=cutmix, num_classes=num_classes), switch_prob)] if cutmix > 0 else []
    if len(ops) < 2:
        return ops[0][0] if ops else None
    return v2.RandomChoice([t for t, _ in ops], p=[p for _, p in ops])
