"""Swin Transformer V1 and V2 image models: stages of blocks from swinkit.nn, a classifier head, the timm-style
interface. Any input size works: windows are clamped, shifts disabled and padding added per axis from the feature
map seen at run time, and padded tokens are masked out as attention keys."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import INFERENCE_PATHS, SwinConfig
from ..nn.blocks import PatchEmbed, PatchMerging, SwinBlock, run_blocks

class SwinStage(nn.Module):
    """Optional patch merging (every stage but the first) followed by `depth` blocks alternating W-MSA and
    SW-MSA."""

    def __init__(self, cfg: SwinConfig, i: int, drop_path: list[float]):
        super().__init__()
        dim = cfg.embed_dim * 2**i
        self.downsample = PatchMerging(dim // 2, cfg.version == 2) if i > 0 else nn.Identity()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, cfg.num_heads[i], cfg.window_size[i], cfg.shift and j % 2 == 1, drop_path[j], cfg,
                      cfg.pretrained_window_sizes[i])
            for j in range(cfg.depths[i]))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_blocks(self.blocks, self.downsample(x), self.grad_checkpointing)


class ClassifierHead(nn.Module):
    def __init__(self, dim: int, num_classes: int, drop: float):
        super().__init__()
        self.drop = nn.Dropout(drop)
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, H, W, C) or (B, T, H, W, C) -> global average pool -> (B, num_classes), or (B, C) with pre_logits."""
        x = self.drop(x.flatten(1, -2).mean(1))
        return x if pre_logits else self.fc(x)


class SwinLayers:
    """What every model whose `layers` are stages of Swin blocks shares (SwinTransformer, SwinIR): the official
    initialisation and the timm-style switches over all its blocks."""

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def blocks(self) -> list[SwinBlock]:
        return [blk for layer in self.layers for blk in layer.blocks]

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay: position tables and embeddings, V2 logit scale and CPB
        MLP, norms and biases."""
        keys = ("absolute_pos_embed", "relative_position_bias_table", "logit_scale", "cpb_mlp")
        return {n for n, p in self.named_parameters() if p.ndim <= 1 or any(k in n for k in keys)}

    def set_inference_path(self, path: str) -> None:
        """"auto" | "windows" | "plain": which forward path eval without grad takes (see SwinBlock)."""
        if path not in INFERENCE_PATHS:
            raise ValueError(f"inference_path must be one of {INFERENCE_PATHS}, got {path!r}")
        self.cfg.inference_path = path
        for blk in self.blocks():
            blk.inference_path = path

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for layer in self.layers:
            layer.grad_checkpointing = enable


class SwinTransformer(SwinLayers, nn.Module):
    """Swin Transformer V1/V2 classifier and backbone. Input (B, in_chans, H, W) of any H, W >= patch_size."""

    def __init__(self, cfg: SwinConfig):
        super().__init__()
        self.cfg = cfg
        self.num_classes, self.num_features = cfg.num_classes, cfg.num_features
        self.patch_embed = PatchEmbed(cfg)
        if cfg.pos_embed in ("absolute", "absolute+relative"):
            grid = [math.ceil(s / cfg.patch_size) for s in cfg.img_size]
            self.absolute_pos_embed = nn.Parameter(
                nn.init.trunc_normal_(torch.zeros(1, cfg.embed_dim, *grid), std=0.02))
        else:
            self.absolute_pos_embed = None
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        n = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # linear stochastic depth
        starts = [sum(cfg.depths[:i]) for i in range(len(cfg.depths))]
        self.layers = nn.ModuleList(
            SwinStage(cfg, i, rates[s:s + d]) for i, (s, d) in enumerate(zip(starts, cfg.depths)))
        self.norm = nn.LayerNorm(self.num_features)
        self.head = ClassifierHead(self.num_features, cfg.num_classes, cfg.drop_rate)
        self.apply(self._init_weights)
        if cfg.version == 2:  # res-post-norm starts as identity residuals
            for blk in self.blocks():
                for norm in (blk.norm1, blk.norm2):
                    nn.init.zeros_(norm.weight)
                    nn.init.zeros_(norm.bias)

    def extra_repr(self) -> str:
        return f"window_mode={self.cfg.window_mode!r}, inference_path={self.cfg.inference_path!r}"

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = self.cfg.num_classes = num_classes
        device = self.norm.weight.device
        self.head.fc = nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()
        self.head.fc.apply(self._init_weights)

    def _check_input(self, x: torch.Tensor) -> None:
        c, p = self.cfg.in_chans, self.cfg.patch_size
        expected = f"a (B, {c}, H, W) float tensor with H, W >= {p} (patch_size)"
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            hint = " (add a batch dimension with x[None])" if isinstance(x, torch.Tensor) and x.ndim == 3 else ""
            raise ValueError(f"expected {expected}, got shape {shape}{hint}")
        if x.shape[1] != c:
            raise ValueError(f"expected {expected}, got {x.shape[1]} channels in shape {tuple(x.shape)}"
                             f"{' (channels-last? use x.permute(0, 3, 1, 2))' if x.shape[-1] == c else ''}")
        if x.shape[2] < p or x.shape[3] < p:
            raise ValueError(f"expected {expected}, got shape {tuple(x.shape)}: smaller than one patch")
        if not x.is_floating_point():
            raise ValueError(f"expected {expected}, got dtype {x.dtype} (convert with x.float())")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H/p, W/p, D): checked input, patch embedding (+ absolute position embedding)."""
        self._check_input(x)
        return self.add_position(self.patch_embed(x))  # (B, H/p, W/p, C)

    def add_position(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H/p, W/p, D) patch embeddings -> + the absolute position embedding (resized to the map), dropout."""
        if self.absolute_pos_embed is not None:
            pos = self.absolute_pos_embed
            if pos.shape[-2:] != x.shape[1:3]:
                pos = F.interpolate(pos, size=x.shape[1:3], mode="bicubic", align_corners=False)
            x = x + pos.permute(0, 2, 3, 1)
        return self.pos_drop(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H/32, W/32, 8C) normalised last-stage map (sizes rounded up)."""
        x = self.embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward_pyramid(self, x: torch.Tensor, out_indices=(0, 1, 2, 3)) -> list[torch.Tensor]:
        """Stage outputs as NCHW maps at strides 4, 8, 16, 32 (for the default patch size)."""
        n = len(self.layers)
        if any(not -n <= i < n for i in out_indices):
            raise ValueError(f"out_indices must be stage indices in [0, {n}), got {tuple(out_indices)}")
        wanted = {i % n for i in out_indices}
        x, outs = self.embed(x), {}
        for i, layer in enumerate(self.layers[:max(wanted) + 1]):
            x = layer(x)
            if i in wanted:
                outs[i] = x.movedim(-1, 1).contiguous()  # NCHW (NCTHW for video)
        return [outs[i % n] for i in out_indices]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_classes) logits."""
        return self.forward_head(self.forward_features(x))
