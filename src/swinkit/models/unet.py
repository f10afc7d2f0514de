"""Swin-UNet (Cao et al. 2021, "Swin-Unet: Unet-like Pure Transformer for Medical Image Segmentation"), rebuilt
from swinkit's blocks: the Swin encoder, a symmetric decoder of Swin blocks that up-samples by patch expanding,
skip connections from the encoder, and a final patch_size x patch_size expansion back to pixels.

Any input size works (the official code hard-codes its resolution): the encoder pads odd maps when it merges
patches, each decoder stage crops its expanded map to the size of its skip, and the logits are cropped to the
input size."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import INFERENCE_PATHS, SwinUNetConfig
from ..nn.blocks import PatchExpand, SwinBlock, run_blocks, swin_block
from .swin import SwinTransformer

Size = tuple[int, int]


class DecoderStage(nn.Module):
    """One decoder level: 2x patch expanding of the deeper map, cropped to its skip's size, concatenated with the
    skip ([up, skip], 2C) and fused by a Linear 2C -> C, then `depth` blocks alternating W-MSA and SW-MSA.
    The official code expands at the end of a stage; here, like patch merging in the encoder, at the start."""

    def __init__(self, cfg: SwinUNetConfig, level: int, depth: int, drop_path: list[float]):
        super().__init__()
        dim = cfg.embed_dim * 2**level
        self.upsample = PatchExpand(2 * dim, dim, 2)
        self.fuse = nn.Linear(2 * dim, dim)
        self.blocks = nn.ModuleList(
            swin_block(cfg, dim, cfg.num_heads[level], cfg.window_size[level], cfg.shift and j % 2 == 1, drop_path[j],
                       cfg.pretrained_window_sizes[level])
            for j in range(depth))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """(B, h, w, 2C) deeper map, (B, H, W, C) skip with H <= 2h, W <= 2w -> (B, H, W, C)."""
        x = self.upsample(x, skip.shape[1:3])
        x = self.fuse(torch.cat([x, skip], dim=-1))
        return run_blocks(self.blocks, x, self.grad_checkpointing)


class SwinDecoder(nn.Module):
    """Decoder stages from the deepest skip up, then a LayerNorm (the official `norm_up`)."""

    def __init__(self, cfg: SwinUNetConfig):
        super().__init__()
        n = len(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(sum(cfg.depths) - 1, 1) for i in range(sum(cfg.depths))]
        layers = []
        for k, depth in enumerate(cfg.depths_decoder):
            level = n - 2 - k
            start = sum(cfg.depths[:level])
            mirror = rates[start:start + cfg.depths[level]]  # the encoder stage's rates, as the official code
            layers.append(DecoderStage(cfg, level, depth, [mirror[min(j, len(mirror) - 1)] for j in range(depth)]))
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(cfg.embed_dim)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """Bottleneck (B, h, w, 2^(n-1) C) and skips[level] (B, H_level, W_level, 2^level C), level 0..n-2
        -> (B, H_0, W_0, C)."""
        for layer, skip in zip(self.layers, reversed(skips)):
            x = layer(x, skip)
        return self.norm(x)


class ExpandHead(nn.Module):
    """patch_size x patch_size patch expanding back to pixels (the official "expand_first" 4x), then a 1x1 conv
    without bias to the class logits."""

    def __init__(self, cfg: SwinUNetConfig):
        super().__init__()
        self.up = PatchExpand(cfg.embed_dim, cfg.embed_dim, cfg.patch_size)
        self.conv = nn.Conv2d(cfg.embed_dim, cfg.num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        """(B, h, w, C) -> (B, num_classes, H, W) with (H, W) = size <= (p h, p w)."""
        return self.conv(self.up(x, size).permute(0, 3, 1, 2))


class SwinUNet(nn.Module):
    """Swin-UNet: (B, in_chans, H, W) of any H, W >= patch_size -> (B, num_classes, H, W) logits.

    The skip of level i is the encoder's map as it enters stage i (after patch embedding or merging, before the
    stage's blocks), as in the official code; the last stage's output, normalised, is the bottleneck."""

    def __init__(self, cfg: SwinUNetConfig):
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.encoder = SwinTransformer(cfg.encoder_config())
        self.decoder = SwinDecoder(cfg)
        self.head = ExpandHead(cfg)
        self.decoder.apply(SwinTransformer._init_weights)
        self.head.apply(SwinTransformer._init_weights)
        if cfg.version == 2:  # res-post-norm starts as identity residuals, as in the encoder
            for blk in self.decoder_blocks():
                for norm in (blk.norm1, blk.norm2):
                    nn.init.zeros_(norm.weight)
                    nn.init.zeros_(norm.bias)

    def decoder_blocks(self) -> list[SwinBlock]:
        return [blk for layer in self.decoder.layers for blk in layer.blocks]

    def blocks(self) -> list[SwinBlock]:
        return self.encoder.blocks() + self.decoder_blocks()

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay, by the encoder's rule: position tables, V2 logit scale and
        CPB MLP, norms and biases."""
        keys = ("absolute_pos_embed", "relative_position_bias_table", "logit_scale", "cpb_mlp")
        return {n for n, p in self.named_parameters() if p.ndim <= 1 or any(k in n for k in keys)}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)
        for layer in self.decoder.layers:
            layer.grad_checkpointing = enable

    def set_inference_path(self, path: str) -> None:
        """"auto" | "windows" | "plain": which forward path eval without grad takes (see SwinBlock)."""
        if path not in INFERENCE_PATHS:
            raise ValueError(f"inference_path must be one of {INFERENCE_PATHS}, got {path!r}")
        self.encoder.set_inference_path(path)
        self.cfg.inference_path = path
        for blk in self.decoder_blocks():
            blk.attn.inference_path = path

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, C, H, W) -> the normalised bottleneck (B, h/2^(n-1), w/2^(n-1), 2^(n-1) C) and the skips of levels
        0..n-2, (B, h/2^i, w/2^i, 2^i C) with h, w = H/p, W/p (sizes rounded up), NHWC."""
        enc = self.encoder
        x, skips = enc.embed(x), []
        for i, layer in enumerate(enc.layers):
            x = layer.downsample(x)
            if i < len(enc.layers) - 1:
                skips.append(x)
            x = run_blocks(layer.blocks, x, layer.grad_checkpointing)
        return enc.norm(x), skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_classes, H, W) logits."""
        bottleneck, skips = self.forward_features(x)
        return self.head(self.decoder(bottleneck, skips), x.shape[-2:])
