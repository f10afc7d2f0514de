"""Swin Transformer V1 and V2 image models: stages of blocks from swinkit.nn, a classifier head, the timm-style
interface. Any input size works: windows are clamped, shifts disabled and padding added per axis from the feature
map seen at run time, and padded tokens are masked out as attention keys."""
from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import INFERENCE_PATHS, SwinConfig
from ..nn.blocks import ConvMerging, PatchEmbed, PatchMerging, SwinBlock, make_norm, run_blocks, swin_block
from ..nn.windows import symbolic

# Layer ids of a Swin's parameters for layer-wise lr decay (timm's group_matcher order): 0 for the patch embedding,
# 1 + block index for blocks, patch merging with the block before it; everything else (final norm, per-stage output
# norms) is the top layer, sum(depths) + 1.
SWIN_LAYERS = [
    (re.compile(r"^(patch_embed|absolute_pos_embed)\b"), lambda m, starts: 0),
    (re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\."), lambda m, starts: starts[int(m[1])] + int(m[2]) + 1),
    (re.compile(r"^layers\.(\d+)\.downsample\."), lambda m, starts: starts[int(m[1])]),
]


def layer_id(name: str, depths: tuple[int, ...]) -> int:
    """Depth of the parameter `name` (relative to its Swin) for layer-wise lr decay; see SWIN_LAYERS."""
    starts = [sum(depths[:i]) for i in range(len(depths))]
    for pattern, layer in SWIN_LAYERS:
        m = pattern.match(name)
        if m:
            return layer(m, starts)
    return sum(depths) + 1


def feature_take_indices(n: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """timm's rule for which of `n` stages to take: None all, an int the last that many, a sequence those indices
    (negative ones from the end); returns (absolute indices, the largest). ValueError names a bad index."""
    if indices is None:
        indices = n
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise ValueError(f"take the last 1 to {n} stages, got indices={indices}")
        take = list(range(n - indices, n))
    else:
        take = [i + n if i < 0 else i for i in indices]
        if not take or any(not 0 <= i < n for i in take):
            raise ValueError(f"stage indices must be in [0, {n}) (or negative from the end), got {list(indices)}")
    return take, max(take)


class FeatureInfo(list):
    """timm's feature_info: one dict per stage (num_chs, reduction, module), with its accessors."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]

    def module_name(self) -> list[str]:
        return [f["module"] for f in self]

class SwinStage(nn.Module):
    """Down-sampling (every stage but the first: patch merging, or a strided conv with cfg.merge="conv") followed
    by `depth` blocks with the stage's token mixer (cfg.mixer[i]; shifted windows shift in every other block), each
    with its heads and MLP width (cfg.block_size: a pruned model's differ per block)."""

    def __init__(self, cfg: SwinConfig, i: int, drop_path: list[float]):
        super().__init__()
        dims = cfg.stage_dims
        dim = dims[i]
        if i == 0:
            self.downsample = nn.Identity()
        elif cfg.merge == "conv":
            self.downsample = ConvMerging(dims[i - 1], dim, cfg.patch_norm)
        else:
            self.downsample = PatchMerging(dims[i - 1], cfg.version == 2, dim)
        n = len(cfg.depths)
        spatial = len(cfg.img_size) - 2  # merging halves H and W only (video keeps T)
        grid = tuple(math.ceil(s / p / (2**i if a >= spatial else 1))
                     for a, (s, p) in enumerate(zip(cfg.img_size, cfg.patch)))
        self.blocks = nn.ModuleList(
            swin_block(cfg, dim, cfg.num_heads[i], cfg.window_size[i], cfg.shift and j % 2 == 1, drop_path[j],
                       cfg.pretrained_window_sizes[i], cfg.mixer[i], i, n, grid, *cfg.block_size(i, j))
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

    block_types = (SwinBlock,)  # the model's blocks: the units FSDP shards one by one (the loop asks, see train.py)

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
            if hasattr(blk.attn, "inference_path"):
                blk.attn.inference_path = path

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth rising linearly from 0 to `rate` over the blocks (for a model loaded from a checkpoint)."""
        blocks = self.blocks()
        for blk, p in zip(blocks, torch.linspace(0, rate, len(blocks)).tolist()):
            blk.drop_path.p = p
        self.cfg.drop_path_rate = rate

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for layer in self.layers:
            layer.grad_checkpointing = enable


class SwinTrunk(SwinLayers, nn.Module):
    """The Swin V1/V2 stem and stages, with timm's feature interface: what a classifier (SwinTransformer) and a
    dense-prediction backbone (SwinBackbone) share. Input (B, in_chans, H, W) of any H, W >= patch_size."""

    def __init__(self, cfg: SwinConfig):
        super().__init__()
        self.cfg = cfg
        self.num_features = cfg.num_features
        self.patch_embed = PatchEmbed(cfg)
        if cfg.pos_embed in ("absolute", "absolute+relative"):
            grid = [math.ceil(s / cfg.patch_size) for s in cfg.img_size]
            self.absolute_pos_embed = nn.Parameter(
                nn.init.trunc_normal_(torch.zeros(1, cfg.stage_dims[0], *grid), std=0.02))
        else:
            self.absolute_pos_embed = None
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        n = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # linear stochastic depth
        starts = [sum(cfg.depths[:i]) for i in range(len(cfg.depths))]
        self.layers = nn.ModuleList(
            SwinStage(cfg, i, rates[s:s + d]) for i, (s, d) in enumerate(zip(starts, cfg.depths)))

    def _init_trunk(self) -> None:
        """The official initialisation of everything built so far; V2's res-post-norms start as identity
        residuals."""
        self.apply(self._init_weights)
        if self.cfg.version == 2:
            for blk in self.blocks():
                for norm in (blk.norm1, blk.norm2):
                    nn.init.zeros_(norm.weight)
                    nn.init.zeros_(norm.bias)

    def extra_repr(self) -> str:
        return f"window_mode={self.cfg.window_mode!r}, inference_path={self.cfg.inference_path!r}"

    @property
    def feature_info(self) -> FeatureInfo:
        """timm's feature_info of the stages: channels, reduction (stride in pixels) and module name."""
        return FeatureInfo(dict(num_chs=self.cfg.stage_dims[i], reduction=self.cfg.patch_size * 2**i,
                                module=f"layers.{i}") for i in range(len(self.layers)))

    def layer_ids(self) -> tuple[dict[str, int], int]:
        """({parameter name: layer id} of the backbone's parameters (the classifier head is not the backbone's),
        the top id) for layer-wise lr decay; see SWIN_LAYERS. The training loop finds this on any submodule."""
        depths = tuple(self.cfg.depths)
        return ({n: layer_id(n, depths) for n, _ in self.named_parameters() if not n.startswith("head.")},
                sum(depths) + 1)

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
            if symbolic(tuple(x.shape[1:3])) or pos.shape[-2:] != x.shape[1:3]:  # symbolic: bicubic at scale 1 is exact
                pos = F.interpolate(pos, size=x.shape[1:3], mode="bicubic", align_corners=False)
            x = x + pos.permute(0, 2, 3, 1)
        return self.pos_drop(x)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The norm after the last stage (a classifier's; a trunk has none)."""
        return x

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's feature interface. Stage outputs `indices` (None: all; an int: the last n; a sequence: those,
        negative from the end), in stage order, as NCHW (NCTHW for video) or NHWC maps; `norm` passes the last
        stage's through the final norm; `stop_early` runs no stage after the last one taken. Returns the list with
        `intermediates_only`, else (final features: normalised last stage, NHWC; the list)."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.layers), indices)
        x, out = self.embed(x), []
        n = len(self.layers)
        for i, stage in enumerate(self.layers[:last + 1] if stop_early else self.layers):
            x = stage(x)  # (B, H_i, W_i, C_i), (B, T_i, H_i, W_i, C_i) for video
            if i in take:
                y = self.final_norm(x) if norm and i == n - 1 else x
                out.append(y.movedim(-1, 1).contiguous() if output_fmt == "NCHW" else y)
        if intermediates_only:
            return out
        return (self.final_norm(x) if i == n - 1 else x), out

    def forward_pyramid(self, x: torch.Tensor, out_indices=(0, 1, 2, 3)) -> list[torch.Tensor]:
        """Stage outputs as NCHW maps at strides 4, 8, 16, 32 (for the default patch size), in the order asked."""
        n = len(self.layers)
        if any(not -n <= i < n for i in out_indices):
            raise ValueError(f"out_indices must be stage indices in [0, {n}), got {tuple(out_indices)}")
        take, _ = feature_take_indices(n, list(out_indices))
        maps = dict(zip(sorted(set(take)), self.forward_intermediates(x, sorted(set(take)), stop_early=True,
                                                                      intermediates_only=True)))
        return [maps[i] for i in take]


class SwinTransformer(SwinTrunk):
    """Swin Transformer V1/V2 classifier. Input (B, in_chans, H, W) of any H, W >= patch_size."""

    def __init__(self, cfg: SwinConfig):
        super().__init__(cfg)
        self.num_classes = cfg.num_classes
        self.norm = make_norm(cfg.norm, self.num_features)
        self.head = ClassifierHead(self.num_features, cfg.num_classes, cfg.drop_rate)
        self._init_trunk()

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = self.cfg.num_classes = num_classes
        device = self.patch_embed.proj.weight.device
        self.head.fc = nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()
        self.head.fc.apply(self._init_weights)

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """timm's: drop the stages after the last of `indices` (the final norm and the head go with them), the
        final norm with `prune_norm`, the head with `prune_head`; returns the absolute indices to take."""
        take, last = feature_take_indices(len(self.layers), indices)
        prune_end = last < len(self.layers) - 1
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        self.layers = self.layers[:last + 1]
        if prune_end:
            self.num_features = self.feature_info[last]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0)
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H/32, W/32, 8C) normalised last-stage map (sizes rounded up)."""
        x = self.embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_classes) logits."""
        return self.forward_head(self.forward_features(x))


class SwinFeatures(nn.Module):
    """timm's `features_only` model: the stage maps `out_indices` of a Swin as a list of NCHW tensors (stages after
    the last one, the final norm and the head pruned). `feature_info` describes them."""

    def __init__(self, model: SwinTransformer, out_indices: int | Sequence[int] = (0, 1, 2, 3), norm: bool = False):
        super().__init__()
        self.out_indices = model.prune_intermediate_layers(out_indices, prune_norm=not norm, prune_head=True)
        self.model, self.norm = model, norm
        self.feature_info = FeatureInfo(model.feature_info[i] for i in self.out_indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, self.out_indices, norm=self.norm, stop_early=True,
                                                intermediates_only=True)
