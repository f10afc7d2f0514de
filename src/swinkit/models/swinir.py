"""SwinIR (Liang et al. 2021) and Swin2SR (Conde et al. 2022): image restoration from swinkit's Swin blocks.

shallow 3x3 conv -> residual Swin transformer blocks (RSTB: Swin blocks at patch size 1, a residual conv, the RSTB's
skip) -> LayerNorm -> conv + long skip -> reconstruction head (pixelshuffle, pixelshuffledirect, nearest+conv, or
none: a residual added to the input). Version 1 is SwinIR (Swin V1 blocks); version 2 is Swin2SR as transformers'
Swin2SRForImageSuperResolution builds it (Swin V2 blocks, a 1x1 conv after the shallow conv and after each RSTB's
conv, and one 3x3 conv after the body even with 3conv RSTBs).

Any input size runs: like the official forward, the input is padded by reflection to a window multiple and the
output cropped, so every block sees a window multiple and uses the full window and shift (window_mode="pad").
In inference, attention and MLP run in chunks (the blocks' chunk_mb, windows path) and the full-resolution
convolutions in row strips with a halo (exact: each strip sees every row its outputs depend on), so that a large
image runs whole within memory.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import SwinIRConfig
from ..nn.attention import tracing
from ..nn.blocks import run_blocks, swin_block
from .swin import SwinLayers


def strip_rows(x: torch.Tensor, per_pixel: int, budget_mb: float) -> int | None:
    """Input rows per strip for an op holding `per_pixel` values per input pixel of x (B, C, H, W), or None when
    the whole map fits in `budget_mb` or autograd / tracing needs one pass."""
    if torch.is_grad_enabled() or tracing():
        return None
    row = x.shape[0] * x.shape[-1] * per_pixel * x.element_size()
    rows = max(1, int(budget_mb * 2**20 // row))
    return rows if rows < x.shape[2] else None


def in_strips(fn, x: torch.Tensor, halo: int, scale: int, rows: int | None) -> torch.Tensor:
    """fn(x) for a local op `fn` (convs, pointwise activations, pixel shuffle, nearest upsampling) whose outputs
    depend on at most `halo` input rows either side and that scales the map by `scale`: computed `rows` input rows
    at a time (each strip with its halo, its outputs cropped to the strip), or whole when rows is None. The strips
    write one channels-last (B, C, sH, sW) tensor; image borders see the same zero padding as the whole map."""
    if rows is None:
        return fn(x)
    B, _, H, W = x.shape
    out = None
    for a in range(0, H, rows):
        b = min(H, a + rows)
        lo, hi = max(0, a - halo), min(H, b + halo)
        y = fn(x[:, :, lo:hi])[:, :, (a - lo) * scale:(b - lo) * scale]
        if out is None:
            out = y.new_empty(B, H * scale, W * scale, y.shape[1]).permute(0, 3, 1, 2)  # (B, C, sH, sW) NHWC memory
        out[:, :, a * scale:b * scale] = y
    return out


def residual_conv(dim: int, kind: str) -> nn.Module:
    """1conv: 3x3 conv; 3conv: 3x3 to dim/4, 1x1, 3x3 back, LeakyReLU(0.2) between (fewer parameters, SwinIR-L)."""
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    q = dim // 4
    return nn.Sequential(nn.Conv2d(dim, q, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(q, q, 1),
                         nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(q, dim, 3, 1, 1))


def _halo(kind: str) -> int:
    return 1 if kind == "1conv" else 2


class TokenEmbed(nn.Module):
    """NCHW feature map -> (B, H, W, C) tokens: Swin2SR's 1x1 conv (version 2 only), then LayerNorm."""

    def __init__(self, dim: int, v2: bool):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 1) if v2 else None
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, budget_mb: float) -> torch.Tensor:
        if self.proj is not None:
            x = in_strips(self.proj, x, 0, 1, strip_rows(x, x.shape[1], budget_mb))
        return self.norm(x.permute(0, 2, 3, 1))  # (B, H, W, C)


class RSTB(nn.Module):
    """Residual Swin transformer block: Swin blocks (W-MSA and SW-MSA alternating), a residual conv (and Swin2SR's
    1x1 conv), plus the input."""

    def __init__(self, cfg: SwinIRConfig, i: int, drop_path: list[float]):
        super().__init__()
        dim, win, block_cfg = cfg.embed_dim, (cfg.window_size,) * 2, cfg.block_config()
        self.blocks = nn.ModuleList(swin_block(block_cfg, dim, cfg.num_heads[i], win, j % 2 == 1, drop_path[j], (0, 0))
                                    for j in range(cfg.depths[i]))
        self.conv = residual_conv(dim, cfg.resi_connection)
        self.proj = nn.Conv2d(dim, dim, 1) if cfg.version == 2 else None
        self.halo, self.chunk_mb, self.grad_checkpointing = _halo(cfg.resi_connection), cfg.chunk_mb, False

    def _convs(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x if self.proj is None else self.proj(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        y = run_blocks(self.blocks, x, self.grad_checkpointing).permute(0, 3, 1, 2)  # (B, C, H, W) view
        y = in_strips(self._convs, y, self.halo, 1, strip_rows(y, 2 * y.shape[1], self.chunk_mb))
        return x + y.permute(0, 2, 3, 1)


class SwinIR(SwinLayers, nn.Module):
    """SwinIR / Swin2SR. Input (B, in_chans, H, W) in [0, 1] (any H, W the reflection padding allows); output
    (B, in_chans, upscale*H, upscale*W)."""

    def __init__(self, cfg: SwinIRConfig):
        super().__init__()
        self.cfg = cfg
        C, nf, out = cfg.embed_dim, cfg.num_feat, cfg.in_chans
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, -1, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(cfg.in_chans, C, 3, 1, 1)
        self.patch_embed = TokenEmbed(C, cfg.version == 2)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        n = sum(cfg.depths)
        rates = [cfg.drop_path_rate * k / max(n - 1, 1) for k in range(n)]  # linear stochastic depth
        starts = [sum(cfg.depths[:i]) for i in range(len(cfg.depths))]
        self.layers = nn.ModuleList(RSTB(cfg, i, rates[s:s + d]) for i, (s, d) in enumerate(zip(starts, cfg.depths)))
        self.norm = nn.LayerNorm(C)
        # transformers' Swin2SR closes the body with one 3x3 conv whatever resi_connection; the official SwinIR with
        # the RSTBs' kind
        self.body_conv = cfg.resi_connection if cfg.version == 1 else "1conv"
        self.conv_after_body = residual_conv(C, self.body_conv)
        s = cfg.upscale
        if cfg.upsampler in ("pixelshuffle", "nearest+conv"):
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(C, nf, 3, 1, 1), nn.LeakyReLU(inplace=True))
        if cfg.upsampler == "pixelshuffle":  # a conv + x2 shuffle per factor 2, or one conv + x3 shuffle
            steps = [3] if s == 3 else [2] * int(math.log2(s))
            self.upsample = nn.Sequential(*(m for f in steps for m in (nn.Conv2d(nf, f * f * nf, 3, 1, 1),
                                                                       nn.PixelShuffle(f))))
        elif cfg.upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(nn.Conv2d(C, s * s * out, 3, 1, 1), nn.PixelShuffle(s))
        elif cfg.upsampler == "nearest+conv":
            self.conv_up1, self.conv_up2, self.conv_hr = (nn.Conv2d(nf, nf, 3, 1, 1) for _ in range(3))
            self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        if cfg.upsampler != "pixelshuffledirect":
            self.conv_last = nn.Conv2d(C if cfg.upsampler == "none" else nf, out, 3, 1, 1)
        self.apply(self._init_weights)

    def set_chunk_mb(self, mb: float) -> None:
        """The memory budget of attention / MLP chunks and conv strips (cfg.chunk_mb), on every module."""
        self.cfg.chunk_mb = mb
        for layer in self.layers:
            layer.chunk_mb = mb
            for blk in layer.blocks:
                blk.attn.chunk_mb = blk.mlp.chunk_mb = mb

    # ---- forward

    def _check_input(self, x: torch.Tensor) -> None:
        c, w = self.cfg.in_chans, self.cfg.window_size
        expected = f"a (B, {c}, H, W) float image tensor"
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            hint = " (add a batch dimension with x[None])" if isinstance(x, torch.Tensor) and x.ndim == 3 else ""
            raise ValueError(f"expected {expected}, got shape {shape}{hint}")
        if x.shape[1] != c:
            hint = " (channels-last? use x.permute(0, 3, 1, 2))" if x.shape[-1] == c else ""
            raise ValueError(f"expected {expected}, got {x.shape[1]} channels in shape {tuple(x.shape)}{hint}")
        if not x.is_floating_point():
            raise ValueError(f"expected {expected} in [0, 1], got dtype {x.dtype} (convert with x.float() / 255)")
        small = [s for s in x.shape[2:] if -s % w >= s]
        if small:
            raise ValueError(f"expected {expected} whose sides can be reflection-padded to a multiple of the window "
                             f"({w}): a side of n pixels needs (-n) % {w} < n, got shape {tuple(x.shape)}. Pad or "
                             "resize the image first.")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised, padded image (B, in_chans, H, W) -> (B, C, H, W) deep features plus the shallow ones (the
        long skip): what the reconstruction head takes."""
        budget = self.cfg.chunk_mb
        shallow = in_strips(self.conv_first, x, 1, 1, strip_rows(x, 2 * self.cfg.embed_dim, budget))
        t = self.pos_drop(self.patch_embed(shallow, budget))  # (B, H, W, C)
        for layer in self.layers:
            t = layer(t)
        t = self.norm(t).permute(0, 3, 1, 2)  # (B, C, H, W) view of NHWC memory
        deep = in_strips(self.conv_after_body, t, _halo(self.body_conv), 1, strip_rows(t, 2 * t.shape[1], budget))
        return deep + shallow

    def _pixelshuffle(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_last(self.upsample(self.conv_before_upsample(x)))

    def _nearest_conv(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_before_upsample(x)
        x = self.lrelu(self.conv_up1(F.interpolate(x, scale_factor=2, mode="nearest")))
        x = self.lrelu(self.conv_up2(F.interpolate(x, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(x)))

    def reconstruct(self, feat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) features (and the normalised input x, for the residual of upsampler "none") -> the
        normalised output (B, in_chans, sH, sW), in row strips when large."""
        up, s, nf = self.cfg.upsampler, self.cfg.upscale, self.cfg.num_feat
        if up == "none":
            return x + in_strips(self.conv_last, feat, 1, 1, strip_rows(feat, x.shape[1], self.cfg.chunk_mb))
        # halo: one input row per 3x3 conv (an upper bound at any scale); per_pixel: the widest intermediates
        if up == "pixelshuffle":
            fn, halo, per_pixel = self._pixelshuffle, 2 + len(self.upsample) // 2, 2 * nf * s * s
        elif up == "pixelshuffledirect":
            fn, halo, per_pixel = self.upsample, 1, 2 * x.shape[1] * s * s
        else:
            fn, halo, per_pixel = self._nearest_conv, 5, 3 * nf * s * s
        return in_strips(fn, feat, halo, s, strip_rows(feat, per_pixel, self.cfg.chunk_mb))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) in [0, 1] -> (B, in_chans, upscale*H, upscale*W)."""
        self._check_input(x)
        H, W = x.shape[2:]
        w = self.cfg.window_size
        x = F.pad(x, (0, -W % w, 0, -H % w), mode="reflect")  # as the official check_image_size
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.cfg.img_range
        out = self.reconstruct(self.forward_features(x), x)
        s = self.cfg.upscale
        return (out / self.cfg.img_range + mean)[:, :, :H * s, :W * s]
