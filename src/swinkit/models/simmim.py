"""SimMIM masked image modelling (Xie et al., CVPR 2022) on a Swin encoder.

Random 32x32-pixel blocks of the input are masked (ratio 0.6); after the patch embedding a learned mask token
replaces the embeddings of the masked tokens (before the position embedding and the blocks); a one-layer decoder,
a 1x1 conv to stride^2 * 3 channels and a PixelShuffle by the encoder stride, predicts raw pixels, and the loss is
the L1 distance on the masked pixels only. The encoder is a SwinTransformer without a head: its weights
(`encoder.*` of the state dict, see `simmim_encoder_state_dict`) fine-tune as any Swin classifier.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import SwinConfig
from .swin import SwinTransformer

MASK_PATCH_SIZE = 32  # pixels per side of a masked block (the paper's choice for Swin)
MASK_RATIO = 0.6


# ----------------------------------------------------------------------------------------------------------
# masks


def _check_mask_geometry(size: tuple[int, int], mask_patch_size: int, patch_size: int) -> tuple[int, int]:
    """Blocks per side (gh, gw) of an input of `size`; raises unless blocks tile the input and cover whole
    patches."""
    if mask_patch_size % patch_size:
        raise ValueError(f"mask_patch_size must be a multiple of the model's patch_size {patch_size}, got "
                         f"{mask_patch_size}")
    h, w = size
    if h % mask_patch_size or w % mask_patch_size or h < mask_patch_size or w < mask_patch_size:
        raise ValueError(f"expected an input whose height and width are multiples of mask_patch_size "
                         f"{mask_patch_size}, got {h}x{w}; resize or crop to e.g. "
                         f"{-(-h // mask_patch_size) * mask_patch_size}x{-(-w // mask_patch_size) * mask_patch_size}")
    return h // mask_patch_size, w // mask_patch_size


def random_mask(size: tuple[int, int], mask_patch_size: int = MASK_PATCH_SIZE, patch_size: int = 4,
                ratio: float = MASK_RATIO, generator: torch.Generator | None = None) -> torch.Tensor:
    """A SimMIM mask for one image of `size` (H, W) pixels -> (H/p, W/p) bool tokens, True = masked: exactly
    round(ratio * blocks) of the (H/m) x (W/m) blocks of m = mask_patch_size pixels, drawn without replacement
    from `generator` (torch's default generator when None), each block covering (m/p)^2 patch tokens."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    gh, gw = _check_mask_geometry(size, mask_patch_size, patch_size)
    n = gh * gw
    blocks = torch.zeros(n, dtype=torch.bool)
    blocks[torch.randperm(n, generator=generator)[:round(ratio * n)]] = True
    s = mask_patch_size // patch_size
    return blocks.view(gh, gw).repeat_interleave(s, 0).repeat_interleave(s, 1)  # (H/p, W/p)


def random_masks(batch: int, size: tuple[int, int], mask_patch_size: int = MASK_PATCH_SIZE, patch_size: int = 4,
                 ratio: float = MASK_RATIO, generator: torch.Generator | None = None) -> torch.Tensor:
    """`batch` independent masks -> (B, H/p, W/p) bool."""
    return torch.stack([random_mask(size, mask_patch_size, patch_size, ratio, generator) for _ in range(batch)])


def pixel_mask(mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, H/p, W/p) token mask -> (B, 1, H, W) pixel mask."""
    return mask.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2).unsqueeze(1)


def masked_l1(x: torch.Tensor, reconstruction: torch.Tensor, mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Mean L1 over the masked pixels and channels: sum |x - rec| * mask / (masked pixels + 1e-5) / C, as the
    official code and transformers compute it. x, reconstruction (B, C, H, W); mask (B, H/p, W/p) tokens."""
    m = pixel_mask(mask, patch_size).to(x.dtype)  # (B, 1, H, W)
    err = F.l1_loss(reconstruction, x, reduction="none")  # (B, C, H, W)
    return (err * m).sum() / (m.sum() + 1e-5) / x.shape[1]


# ----------------------------------------------------------------------------------------------------------
# the model


class SimMIM(nn.Module):
    """Swin encoder + mask token + linear pixel decoder. forward(x, mask) -> (loss, reconstruction)."""

    def __init__(self, cfg: SwinConfig):
        super().__init__()
        cfg = dataclasses.replace(cfg, num_classes=0)
        self.encoder = SwinTransformer(cfg)
        self.cfg = self.encoder.cfg
        self.mask_token = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, 1, 1, cfg.embed_dim), std=0.02))
        self.encoder_stride = cfg.patch_size * 2 ** (len(cfg.depths) - 1)  # pixels per last-stage token
        self.decoder = nn.Sequential(
            nn.Conv2d(cfg.num_features, self.encoder_stride**2 * cfg.in_chans, kernel_size=1),
            nn.PixelShuffle(self.encoder_stride))

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}  # the encoder's own list is collected by the loop under "encoder."

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    def _check_mask(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        s = self.cfg.patch_size
        if x.shape[-2] % self.encoder_stride or x.shape[-1] % self.encoder_stride:
            raise ValueError(f"expected H and W that are multiples of the encoder stride {self.encoder_stride} "
                             f"(patch_size x 2^(stages-1)), got shape {tuple(x.shape)}")
        want = (x.shape[0], x.shape[-2] // s, x.shape[-1] // s)
        if mask.dtype != torch.bool or tuple(mask.shape) != want:
            raise ValueError(f"expected a bool mask of shape {want} (B, H/patch, W/patch), got {mask.dtype} "
                             f"{tuple(mask.shape)}; make one with random_masks")

    def embed(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W), (B, H/p, W/p) -> (B, H/p, W/p, D): patch embedding, mask token where masked, then the
        encoder's absolute position embedding (if any): SwinTransformer.embed with the mask in between."""
        enc = self.encoder
        enc._check_input(x)
        self._check_mask(x, mask)
        t = enc.patch_embed(x)  # (B, H/p, W/p, D)
        w = mask.unsqueeze(-1).to(t.dtype)  # (B, H/p, W/p, 1)
        return enc.add_position(t * (1 - w) + self.mask_token.to(t.dtype) * w)

    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised image, (B, H/p, W/p) bool mask -> (B, C, H, W) predicted pixels."""
        t = self.embed(x, mask)
        for layer in self.encoder.layers:
            t = layer(t)
        t = self.encoder.norm(t)  # (B, H/32, W/32, 8D)
        return self.decoder(t.permute(0, 3, 1, 2))  # (B, C, H, W)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (masked L1 loss, reconstruction (B, C, H, W))."""
        rec = self.reconstruct(x, mask)
        return masked_l1(x, rec.float(), mask, self.cfg.patch_size), rec


# ----------------------------------------------------------------------------------------------------------
# the encoder's weights for fine-tuning


def is_simmim_state_dict(sd: dict) -> bool:
    """A SimMIM state dict: `encoder.*`, `decoder.*` and `mask_token`."""
    return "mask_token" in sd and any(k.startswith("encoder.") for k in sd) and any(k.startswith("decoder.")
                                                                                     for k in sd)


def simmim_encoder_state_dict(sd: dict) -> dict:
    """A SimMIM state dict -> its encoder's, a SwinTransformer state dict without head (mask token and decoder
    dropped); any other state dict is returned as it is."""
    if not is_simmim_state_dict(sd):
        return sd
    return {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}

