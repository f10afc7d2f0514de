"""Decode heads for dense prediction on a list of NCHW stage maps (finest first): UPerNet, semantic FPN and the
auxiliary FCN head. Built as mmseg builds them (conv-BN-ReLU units, bilinear resizing with align_corners=False),
so that mmseg and transformers checkpoints map onto them key for key."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.windows import symbolic


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) to `size` (align_corners=False, as mmseg and transformers); x when equal (with
    symbolic sizes it always resizes: at the same size that is exactly x)."""
    if not symbolic(tuple(size)) and tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ConvBNReLU(nn.Module):
    """k x k conv (no bias: BN follows) -> BatchNorm -> ReLU, 'same' padding. mmseg's ConvModule. In eval the
    BatchNorm is an affine map folded into the conv: one full-size tensor per unit instead of two."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the conv with the eval-mode BatchNorm folded in."""
        bn = self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)  # (C_out,)
        return self.conv.weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return F.relu(self.bn(self.conv(x)), inplace=True)
        return F.relu(F.conv2d(x, *self.folded(), padding=self.conv.padding), inplace=True)


class DecodeHead(nn.Module):
    """What every head ends with: Dropout2d, then a 1x1 conv to class logits."""

    def __init__(self, channels: int, num_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module: the map average-pooled to s x s for each scale s, a 1x1 conv-BN-ReLU,
    upsampled back to the map's size. (In training, BatchNorm on the 1x1 pool needs a batch of 2 or more.)"""

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int]):
        super().__init__()
        self.pool_scales = tuple(pool_scales)
        self.convs = nn.ModuleList(ConvBNReLU(in_channels, channels, 1) for _ in self.pool_scales)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, h, w) -> one (B, channels, h, w) map per scale."""
        size = x.shape[-2:]
        return [resize(conv(adaptive_avg_pool(x, s)), size) for s, conv in zip(self.pool_scales, self.convs)]


def adaptive_avg_pool(x: torch.Tensor, s: int) -> torch.Tensor:
    """F.adaptive_avg_pool2d(x, s) of (B, C, h, w); with symbolic sizes (export) two averaging matmuls built from
    aranges, since ONNX's pooling takes a fixed kernel and torch's bins overlap when s does not divide the size."""
    if not symbolic(*x.shape[-2:]):
        return F.adaptive_avg_pool2d(x, s)

    def averaging(n) -> torch.Tensor:  # (s, n): row i averages torch's bin [floor(i n / s), ceil((i + 1) n / s))
        i, j = torch.arange(s, device=x.device)[:, None], torch.arange(n, device=x.device)
        n = torch.scalar_tensor(n, dtype=torch.long, device=x.device)
        start, end = i * n // s, ((i + 1) * n + s - 1) // s
        return ((j >= start) & (j < end)).to(x.dtype) / (end - start).to(x.dtype)
    return averaging(x.shape[-2]) @ x @ averaging(x.shape[-1]).T  # (s, h) @ (B, C, h, w) @ (w, s)


class UPerHead(DecodeHead):
    """UPerNet (Xiao et al. 2018) as mmseg builds it: pyramid pooling on the coarsest map, an FPN top-down path
    over all levels, every level brought to the finest resolution, concatenated and fused by a 3x3 conv."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1):
        super().__init__(channels, num_classes, dropout)
        top = in_channels[-1]
        self.ppm = PyramidPooling(top, channels, pool_scales)
        self.ppm_bottleneck = ConvBNReLU(top + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """[(B, C_i, h_i, w_i)] finest first -> (B, num_classes, h_0, w_0) logits."""
        top = feats[-1]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        laterals.append(self.ppm_bottleneck(torch.cat([top, *self.ppm(top)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: each level adds the (already summed) coarser one
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)] + laterals[-1:]
        del laterals
        return self.classifier(self.dropout(self._fuse(outs)))

    def _fuse(self, outs: list[torch.Tensor]) -> torch.Tensor:
        """fpn_bottleneck(cat(every level resized to the finest)), with its 3x3 conv split into one conv per level
        and summed: the same result without the full-resolution concatenation of all levels (the largest
        tensor of the head). Consumes `outs`."""
        unit, size, acc = self.fpn_bottleneck, outs[0].shape[-2:], None
        weight, bias = (unit.conv.weight, None) if unit.training else unit.folded()
        for w in weight.split(outs[0].shape[1], dim=1):  # (C, C, 3, 3) per level
            y = F.conv2d(resize(outs.pop(0), size), w, padding=1)
            acc = y if acc is None else acc.add_(y)
        acc = unit.bn(acc) if unit.training else acc.add_(bias[:, None, None])
        return F.relu(acc, inplace=True)


class SemanticFPNHead(DecodeHead):
    """Semantic FPN (Kirillov et al. 2019, Panoptic FPN's semantic branch), light: an FPN neck (1x1 laterals,
    nearest-neighbour top-down sums, 3x3 outputs, no norm; mmdet's FPN) and per level as many 3x3 conv-BN-ReLU +
    2x bilinear upsamplings as it takes to reach the finest stride, summed and classified."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 128, fpn_channels: int = 256,
                 dropout: float = 0.1):
        super().__init__(channels, num_classes, dropout)
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, fpn_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(nn.Conv2d(fpn_channels, fpn_channels, 3, padding=1) for _ in in_channels)
        self.scale_heads = nn.ModuleList(
            nn.ModuleList(ConvBNReLU(fpn_channels if k == 0 else channels, channels, 3) for k in range(max(1, i)))
            for i in range(len(in_channels)))  # level i (stride 2^i times the finest): max(1, i) units

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """[(B, C_i, h_i, w_i)] finest first, strides doubling -> (B, num_classes, h_0, w_0) logits."""
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        out = None
        for i, (conv, lateral, units) in enumerate(zip(self.fpn_convs, laterals, self.scale_heads)):
            x = conv(lateral)
            for unit in units:
                x = unit(x)
                if i > 0:
                    x = resize(x, (2 * x.shape[-2], 2 * x.shape[-1]))
            out = x if out is None else out + resize(x, out.shape[-2:])
        return self.classifier(self.dropout(out))


class FCNHead(DecodeHead):
    """The auxiliary head: conv-BN-ReLU units on one stage map, then the classifier (mmseg's FCNHead without
    concat_input)."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, num_convs: int = 1,
                 in_index: int = 2, dropout: float = 0.1):
        super().__init__(channels, num_classes, dropout)
        self.in_index = in_index
        self.convs = nn.Sequential(*(ConvBNReLU(in_channels if k == 0 else channels, channels, 3)
                                     for k in range(num_convs)))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """[(B, C_i, h_i, w_i)] -> (B, num_classes, h, w) logits at stage in_index's resolution."""
        return self.classifier(self.dropout(self.convs(feats[self.in_index])))
