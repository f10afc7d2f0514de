"""Swin building blocks: DropPath, MLP, the block around a token mixer, patch embedding, merging and expanding; the
narrowing of a block's heads and MLP units (a pruned model's sizes, swinkit prune)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..config import SwinConfig
from .attention import WindowAttention
from .mixers import MixerSpec, create_mixer
from .windows import Pair, pad, symbolic

class DropPath(nn.Module):
    """Stochastic depth on a residual: shortcut + branch, the branch of each sample dropped with probability p
    (kept ones scaled by 1 / (1 - p)) in one fused multiply-add."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, shortcut: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return shortcut + branch
        keep = branch.new_empty((branch.shape[0],) + (1,) * (branch.ndim - 1)).bernoulli_(1 - self.p)
        return torch.addcmul(shortcut, branch, keep.div_(1 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Linear -> GELU -> Linear. Tokens go through in chunks whose hidden activations fit in `chunk_mb`, so
    a huge map never holds its full 4x-wide hidden layer at once (same result either way)."""

    def __init__(self, dim: int, hidden: int, drop: float, chunk_mb: float):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)
        self.chunk_mb = chunk_mb

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., C)."""
        tokens = max(1, int(self.chunk_mb * 2**20 // (2 * self.fc1.out_features * x.element_size())))  # hidden + GELU
        if symbolic(*x.shape) or x.numel() // x.shape[-1] <= tokens:  # symbolic: export, where nothing is chunked
            return self._mlp(x)
        flat = x.reshape(-1, x.shape[-1])
        out = flat.new_empty(flat.shape)
        for i in range(0, flat.shape[0], tokens):
            out[i:i + tokens] = self._mlp(flat[i:i + tokens])
        return out.view(x.shape)


def sliced_linear(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
                  ) -> nn.Linear:
    """A Linear holding the output rows `rows` (with their biases) and input columns `cols` of `linear`."""
    w = linear.weight if rows is None else linear.weight[rows]  # (out', in)
    w = w if cols is None else w[:, cols]  # (out', in')
    out = nn.Linear(w.shape[1], w.shape[0], linear.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w)
        if linear.bias is not None:
            out.bias.copy_(linear.bias if rows is None else linear.bias[rows])
    return out


def select_hidden(mlp: Mlp, keep: Sequence[int]) -> None:
    """Keep the hidden units `keep` of an MLP, in their order (in place): fc1 rows and biases, fc2 columns."""
    keep = torch.as_tensor(sorted(keep), device=mlp.fc1.weight.device)
    mlp.fc1, mlp.fc2 = sliced_linear(mlp.fc1, rows=keep), sliced_linear(mlp.fc2, cols=keep)


def head_channels(attn: WindowAttention, heads: Sequence[int]) -> torch.Tensor:
    """The inner channels of the heads `heads` of a window attention: the proj columns (and q_bias, v_bias entries)
    that belong to them, head_dim each; their q, k and v rows of qkv are these plus 0, inner and 2 * inner."""
    d = attn.qkv.out_features // (3 * attn.num_heads)  # head_dim
    heads = torch.as_tensor(list(heads), device=attn.qkv.weight.device)
    return (heads[:, None] * d + torch.arange(d, device=heads.device)).flatten()  # (len(heads) * d,)


def select_heads(attn: WindowAttention, keep: Sequence[int]) -> None:
    """Keep the heads `keep` of a window attention, in their order (in place), each as wide as before: their q, k, v
    rows of qkv (and biases), proj columns, V1 bias table columns, V2 logit scales, CPB MLP output rows, q and v
    biases."""
    keep = sorted(keep)
    ch = head_channels(attn, keep)
    inner = attn.qkv.out_features // 3
    attn.qkv = sliced_linear(attn.qkv, rows=torch.cat((ch, ch + inner, ch + 2 * inner)))  # q, k, v rows
    attn.proj = sliced_linear(attn.proj, cols=ch)
    idx = torch.as_tensor(keep, device=ch.device)
    if attn.v2:
        attn.logit_scale = nn.Parameter(attn.logit_scale.detach()[idx].clone())  # (h, 1, 1)
        attn.cpb_mlp[2] = sliced_linear(attn.cpb_mlp[2], rows=idx)
        if attn.q_bias is not None:
            attn.q_bias = nn.Parameter(attn.q_bias.detach()[ch].clone())
            attn.v_bias = nn.Parameter(attn.v_bias.detach()[ch].clone())
    elif getattr(attn, "relative_position_bias_table", None) is not None:
        table = attn.relative_position_bias_table.detach()  # (positions, heads)
        attn.relative_position_bias_table = nn.Parameter(table[:, idx].clone())
    attn.num_heads = len(keep)


class MapGroupNorm(nn.GroupNorm):
    """GroupNorm with one group on channel-last maps (B, *S, C): statistics over the whole map and all channels of
    each sample, a scale and shift per channel (PoolFormer's norm)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__(1, dim, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(-1, 1)).movedim(1, -1)


def make_norm(kind: str, dim: int) -> nn.Module:
    """cfg.norm: "layernorm" (per token) or "groupnorm" (one group over the whole map)."""
    return MapGroupNorm(dim) if kind == "groupnorm" else nn.LayerNorm(dim)


class SwinBlock(nn.Module):
    """Token mixer + MLP, each a residual. Pre-norm (V1): x + f(norm(x)); res-post-norm (V2, `post_norm`):
    x + norm(f(x)); with `layer_scale`, each branch is scaled per channel (initialised to that value) before the
    residual sum. The mixer (swinkit.nn.mixers) sits at `attn`, where Swin checkpoints keep it; it may run the whole
    block itself in inference (`forward_block`: the window mixer's CPU fast path). `mlp_hidden` (a pruned block's)
    replaces the MLP's int(dim * mlp_ratio) hidden units."""

    def __init__(self, dim: int, mixer: nn.Module, drop_path: float = 0.0, mlp_ratio: float = 4.0, drop: float = 0.0,
                 post_norm: bool = False, norm: str = "layernorm", layer_scale: float | None = None,
                 chunk_mb: float = 256, mlp_hidden: int | None = None):
        super().__init__()
        self.post_norm = post_norm
        self.norm1 = make_norm(norm, dim)
        self.attn = mixer
        self.drop_path = DropPath(drop_path)
        self.norm2 = make_norm(norm, dim)
        self.mlp = Mlp(dim, mlp_hidden or int(dim * mlp_ratio), drop, chunk_mb)
        if layer_scale is None:
            self.layer_scale1 = self.layer_scale2 = None
        else:
            self.layer_scale1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.layer_scale2 = nn.Parameter(torch.full((dim,), float(layer_scale)))

    @property
    def tokenwise(self) -> bool:
        """Whether everything but the mixer acts on each token alone (per-token norms, no layer scales), so that a
        mixer may run the block on a subset of tokens at a time."""
        return self.layer_scale1 is None and not isinstance(self.norm1, MapGroupNorm)

    def _residual(self, x: torch.Tensor, branch: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        return self.drop_path(x, branch if scale is None else branch * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C), or (B, T, H, W, C) for video."""
        out = self.attn.forward_block(self, x)
        if out is not None:
            return out
        if self.post_norm:
            x = self._residual(x, self.norm1(self.attn(x)), self.layer_scale1)
            return self._residual(x, self.norm2(self.mlp(x)), self.layer_scale2)
        x = self._residual(x, self.attn(self.norm1(x)), self.layer_scale1)
        return self._residual(x, self.mlp(self.norm2(x)), self.layer_scale2)


def swin_block(cfg: SwinConfig, dim: int, num_heads: int, window: Pair, shift: bool, drop_path: float,
               pretrained_window: Pair, mixer: str = "shifted_window", stage: int = 0, num_stages: int = 1,
               grid: Pair = (0, 0), heads: int | None = None, mlp_hidden: int | None = None) -> SwinBlock:
    """A block whose options come from `cfg` (version, MLP ratio, dropout, norm, layer scale) with the mixer `mixer`
    built from the rest (see MixerSpec). A pruned block (cfg.block_size) keeps the first `heads` of the stage's
    `num_heads` heads, each dim // num_heads wide, and has `mlp_hidden` MLP units."""
    spec = MixerSpec(dim, num_heads, tuple(window), shift, tuple(pretrained_window), stage, num_stages, tuple(grid),
                     cfg)
    attn = create_mixer(mixer, spec)
    if heads is not None and heads != num_heads:
        if not isinstance(attn, WindowAttention):
            raise ValueError(f"the mixer {mixer!r} has no window attention heads to narrow to {heads}; only "
                             "window attention mixers take per-block heads")
        select_heads(attn, range(heads))
    return SwinBlock(dim, attn, drop_path, cfg.mlp_ratio, cfg.drop_rate, post_norm=cfg.version == 2, norm=cfg.norm,
                     layer_scale=cfg.layer_scale, chunk_mb=cfg.chunk_mb, mlp_hidden=mlp_hidden)


# ----------------------------------------------------------------------------------------------------------
# patch embedding and merging


class PatchEmbed(nn.Module):
    """The stem: patches -> linear embedding (a conv) -> LayerNorm (unless cfg.patch_norm is False).
    stem="patch": non-overlapping p x p patches (t x p x p for video), sizes that are not patch multiples padded at
    the end of each axis. stem="overlap": a (2p-1) x (2p-1) conv with stride p and padding p // 2 (CSWin's and
    PoolFormer's 7x7 stride-4 stem), any size >= p - 1."""

    def __init__(self, cfg: SwinConfig):
        super().__init__()
        self.patch_size, self.in_chans = cfg.patch_size, cfg.in_chans
        self.overlap = cfg.stem == "overlap"
        conv = nn.Conv3d if cfg.ndim == 3 else nn.Conv2d
        dim = cfg.stage_dims[0]
        if self.overlap:
            self.proj = conv(cfg.in_chans, dim, [2 * p - 1 for p in cfg.patch], cfg.patch, [p // 2 for p in cfg.patch])
        else:
            self.proj = conv(cfg.in_chans, dim, cfg.patch, cfg.patch)
        self.norm = nn.LayerNorm(dim) if cfg.patch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) -> (B, *ceil(S/p), D), S = (H, W) or (T, H, W) (overlap: floor((S - 1) / p) + 1 per axis)."""
        if not self.overlap:
            amounts = ()
            for s, p in zip(reversed(x.shape[2:]), reversed(self.proj.kernel_size)):
                amounts += (0, -s % p)
            x = pad(x, amounts)
        return self.norm(self.proj(x).movedim(1, -1))


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated (x0, x1, x2, x3 order of the official code) -> 4C -> out_dim (default 2C).
    V1: LayerNorm(4C) then Linear; V2: Linear then LayerNorm(out_dim)."""

    def __init__(self, dim: int, v2: bool, out_dim: int | None = None):
        super().__init__()
        self.v2 = v2
        out_dim = out_dim or 2 * dim
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim if v2 else 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C); (B, T, H, W, C) merges each frame alone (Video Swin)."""
        *lead, H, W, C = x.shape
        x = pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = x.reshape(-1, (H + 1) // 2, 2, (W + 1) // 2, 2, C)  # (B*T, H/2, dy, W/2, dx, C)
        x = x.permute(0, 1, 3, 4, 2, 5).reshape(*lead, (H + 1) // 2, (W + 1) // 2, 4 * C)  # order (dx, dy)
        return self.norm(self.reduction(x)) if self.v2 else self.reduction(self.norm(x))


class ConvMerging(nn.Module):
    """Down-sampling by a 3x3 stride-2 conv (padding 1), then LayerNorm when `norm` (CSWin; PoolFormer has none):
    (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), out_dim)."""

    def __init__(self, dim: int, out_dim: int, norm: bool):
        super().__init__()
        self.proj = nn.Conv2d(dim, out_dim, 3, 2, 1)
        self.norm = nn.LayerNorm(out_dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x.movedim(-1, 1)).movedim(1, -1))


class PatchExpand(nn.Module):
    """Patch expanding (Swin-UNet's inverse of merging): Linear C -> s*s*C_out (no bias), each token's channels
    spread over an s x s patch in (row, column, channel) order, then LayerNorm(C_out). s=2, C_out=C/2: a decoder's
    2x up-sampling; s=patch_size, C_out=C: the final expansion back to pixels."""

    def __init__(self, dim: int, out_dim: int, scale: int):
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, scale * scale * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, H, W, C) -> (B, sH, sW, C_out), cropped at the bottom / right to `size` when given."""
        B, H, W, _ = x.shape
        s = self.scale
        x = self.expand(x).view(B, H, W, s, s, -1)  # (B, H, W, s_row, s_col, C_out)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, H * s, W * s, -1)  # (B, sH, sW, C_out)
        if size is not None:
            x = x[:, :size[0], :size[1]]  # the rows / columns grown from the encoder's merging padding
        return self.norm(x)


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, grad_checkpointing: bool = False) -> torch.Tensor:
    """x through each block in turn, recomputing activations in backward when grad_checkpointing."""
    for blk in blocks:
        x = checkpoint(blk, x, use_reentrant=False) if grad_checkpointing and torch.is_grad_enabled() else blk(x)
    return x
