"""V1/V2 window attention: one module, V2 differing in cosine attention, logit scale and continuous bias."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import SwinConfig
from .windows import Pair, log_coords, log_spaced_coords, relative_position_index, symbolic


# a bias + mask larger than this is rebuilt at each call instead of cached: 3-D windows make (nW, h, N, N) tensors of
# ~30 MB per block (N = 8*7*7) that would hold hundreds of MB across a model, while rebuilding costs one elementwise
# pass beside attention's two matmuls over the same (n, h, N, N)
BIAS_CACHE_MAX_MB = 8


def tracing() -> bool:
    """Whether forward is being compiled, exported or traced: then it runs the plain path, uncached."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a relative position bias.

    V1: scaled dot product + learned bias table (prod(2M-1) over the axes, heads). V2: cosine similarity times a
    learned, clamped per-head scale + continuous position bias (2-layer MLP on log-spaced offsets, 16*sigmoid);
    q and v biases only. Windows have 2 axes (images) or 3 (video).
    """

    def __init__(self, dim: int, num_heads: int, window: Pair, cfg: SwinConfig, pretrained_window: Pair):
        super().__init__()
        self.dim, self.num_heads, self.window = dim, num_heads, tuple(window)
        self.pretrained_window = tuple(pretrained_window)
        self.v2, self.fused = cfg.version == 2, cfg.fused_attn
        self.use_rel_pos = cfg.pos_embed in ("relative", "absolute+relative")
        self.clamped_bias = cfg.clamped_bias
        self.scale = (dim // num_heads) ** -0.5
        if self.v2:
            self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(num_heads, 1, 1)))
            self.cpb_mlp = nn.Sequential(nn.Linear(len(window), 512), nn.ReLU(inplace=True),
                                         nn.Linear(512, num_heads, bias=False))
            self.qkv = nn.Linear(dim, dim * 3, bias=False)
            self.q_bias = nn.Parameter(torch.zeros(dim)) if cfg.qkv_bias else None
            self.v_bias = nn.Parameter(torch.zeros(dim)) if cfg.qkv_bias else None
        else:
            self.qkv = nn.Linear(dim, dim * 3, bias=cfg.qkv_bias)
            if self.use_rel_pos:
                table = torch.zeros(math.prod(2 * w - 1 for w in window), num_heads)
                self.relative_position_bias_table = nn.Parameter(nn.init.trunc_normal_(table, std=0.02))
        self.attn_drop = cfg.attn_drop_rate
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(cfg.drop_rate)
        # opt-in for `swinkit viz attention`: take the explicit path and keep the softmax probabilities
        self.keep_attn, self.last_attn = False, None  # last_attn: (B, nW, h, N, N)
        self._bias_cache: dict = {}  # (win, id(mask), dtype) -> (mask, weight state, held weights, bias)

    def position_bias(self, win: Pair) -> torch.Tensor | None:
        """(heads, N, N) relative position bias for a (possibly clamped) window `win`. A clamped window takes the
        table entries of its own offsets; clamped_bias="prefix" takes the first N rows and columns of the full
        window's index instead, as the official Video Swin and torchvision's swin3d do."""
        if not self.use_rel_pos:
            return None
        if self.v2:  # device and dtype from a parameter that quantization leaves as it is
            return self._continuous_bias(win, log_spaced_coords(win, self.pretrained_window, self.logit_scale.device))
        table = self.relative_position_bias_table
        if self.clamped_bias == "prefix":
            N = math.prod(win)
            index = relative_position_index(self.window, self.window, table.device)[:N, :N]
        else:
            index = relative_position_index(win, self.window, table.device)
        return self._table_bias(index)

    def _continuous_bias(self, win: Pair, coords: torch.Tensor) -> torch.Tensor:
        """V2: (heads, N, N) from the (prod(2w-1), n) log-spaced offsets of a `win` window."""
        table = self.cpb_mlp(coords.to(self.logit_scale.dtype))  # (prod(2w-1), heads)
        return 16 * torch.sigmoid(self._table_bias(relative_position_index(win, win, table.device), table))

    def _table_bias(self, index: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """(N, N) index into a (rows, heads) table (V1's learned one by default) -> (heads, N, N)."""
        table = self.relative_position_bias_table if table is None else table
        return table[index.reshape(-1)].view(*index.shape, -1).permute(2, 0, 1)

    def padded_position_bias(self, real: tuple) -> torch.Tensor | None:
        """(heads, N, N) position bias of the full window when along axis i only the first real[i] positions (0-d
        tensors) hold the map: the window clamp mode takes, padded to the full one (export with symbolic sizes).
        Padded positions get some bias; their keys are masked."""
        if not self.use_rel_pos:
            return None
        win, device = self.window, self.logit_scale.device if self.v2 else self.relative_position_bias_table.device
        if self.v2:  # the clamped window normalises the offsets when no pre-training window is given
            norm = [p if p > 0 else r for p, r in zip(self.pretrained_window, real)]
            return self._continuous_bias(win, log_coords(win, norm).to(device))
        index = relative_position_index(win, win, device)
        if self.clamped_bias == "prefix":  # each slot's index in the clamped window, row-major over the real sizes
            flat = torch.zeros((), dtype=torch.long, device=device)
            for w, r in zip(win, real):
                flat = flat[..., None] * r + torch.arange(w, device=device)
            flat = flat.flatten().clamp(max=index.shape[0] - 1)  # (N,)
            index = index[flat][:, flat]
        return self._table_bias(index)

    def attention_bias(self, win: Pair, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        """Position bias plus mask: (nW, h, N, N) with an (nW, N, N) mask, (1, h, N, N) without, or None. The
        mask takes `dtype`, the attention's (a bfloat16 model takes a bfloat16 mask)."""
        bias = self.position_bias(win)  # (h, N, N) or None
        return self.add_mask(None if bias is None else bias[None], mask, dtype)

    @staticmethod
    def add_mask(bias: torch.Tensor | None, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        """(1, h, N, N) position bias or None, plus an (n, N, N) mask or None -> (n, h, N, N), (1, h, N, N) or None."""
        if mask is None:
            return bias
        mask = mask.to(dtype)[:, None]
        return mask if bias is None else bias + mask

    def cached_attention_bias(self, win: Pair, mask: torch.Tensor | None, dtype: torch.dtype
                              ) -> torch.Tensor | None:
        """attention_bias, computed once per (window, mask, dtype) in eager inference and reused while the
        position weights are the same tensors with the same contents: the key holds each weight's data pointer,
        device, dtype and version counter (so `.data =`, `.to()`, `load_state_dict` with or without `assign`,
        `copy_` and module replacement all recompute), and the entry holds the weights themselves, so that no
        other tensor can take their memory while it is cached. Training, autograd, compile and tracing never
        cache; nor do weights made under inference_mode, which have no version counter; nor does a bias of more than
        BIAS_CACHE_MAX_MB."""
        if self.training or torch.is_grad_enabled() or tracing():
            return self.attention_bias(win, mask, dtype)
        weights = self._position_weights()
        if any(w.is_inference() for w in weights):
            return self.attention_bias(win, mask, dtype)
        modules = tuple(self.cpb_mlp) if self.v2 and self.use_rel_pos else ()  # quantization swaps modules
        state = tuple((w.data_ptr(), w.device, w.dtype, w._version) for w in weights) + tuple(map(id, modules))
        key = (win, id(mask), dtype)
        hit = self._bias_cache.get(key)
        if hit is None or hit[0] is not mask or hit[1] != state:
            if len(self._bias_cache) >= 2:
                self._bias_cache.clear()
            bias = self.attention_bias(win, mask, dtype)
            if bias is not None and bias.numel() * bias.element_size() > BIAS_CACHE_MAX_MB * 2**20:
                return bias
            held = ([w.detach() for w in weights], modules)
            hit = self._bias_cache[key] = (mask, state, held, bias)
        return hit[3]

    def _position_weights(self) -> list[torch.Tensor]:
        if not self.use_rel_pos:
            return []
        return list(self.cpb_mlp.parameters()) if self.v2 else [self.relative_position_bias_table]

    def attend_windows(self, x: torch.Tensor, win: Pair, mask: torch.Tensor | None, cache: bool = True
                       ) -> torch.Tensor:
        """x: (B, nW, N, C) windows of B images; mask: (nW, N, N) additive or None. Returns (B, nW, N, C)."""
        B, nW, N, C = x.shape
        bias = self.cached_attention_bias(win, mask, x.dtype) if cache else self.attention_bias(win, mask, x.dtype)
        out = self.attend(x.reshape(B * nW, N, C), bias)
        if self.keep_attn:
            self.last_attn = self.last_attn.view(B, nW, self.num_heads, N, N)
        return out.view(B, nW, N, C)

    def attend(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x: (n, N, C) windows; bias: (P, h, N, N) additive with window i taking bias[i % P], or None.
        Returns (n, N, C)."""
        n, N, _ = x.shape
        h = self.num_heads
        qkv = self.qkv(x)  # the module itself, so that quantization can replace it
        if self.v2 and self.q_bias is not None:  # V2: q and v biases only
            qkv = qkv + torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = qkv.view(n, N, 3, h, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (n, h, N, d) views
        scale = self.scale
        if self.v2:  # cosine attention; the clamped logit scale is folded into the normalised queries
            logit_scale = torch.clamp(self.logit_scale, max=math.log(100.0)).exp()  # (h, 1, 1)
            q, k, scale = F.normalize(q, dim=-1) * logit_scale, F.normalize(k, dim=-1), 1.0
        drop = self.attn_drop if self.training else 0.0
        # on CPU a bias that needs a gradient sends SDPA to its math path, slower than the explicit one
        cpu_bias_grad = x.device.type == "cpu" and bias is not None and bias.requires_grad
        # an export (symbolic batch) takes the explicit path: ONNX has no fused kernel to keep, and the fused call's
        # per-window copy of the bias would be written into the graph
        if self.fused and not self.keep_attn and not cpu_bias_grad and not symbolic(n):
            if bias is not None and bias.shape[0] > 1:  # the fused kernel takes a 4-D bias: one per window
                bias = bias.expand(n // bias.shape[0], -1, h, N, N).reshape(n, h, N, N)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop, scale=scale)
        else:
            attn = (q * scale) @ k.transpose(-2, -1)  # (n, h, N, N)
            if bias is not None:  # broadcast over (n / P, P, h, N, N), no per-window copy of the bias
                attn = (attn.view(-1, bias.shape[0], h, N, N) + bias).view(n, h, N, N)
            attn = attn.softmax(-1)
            if self.keep_attn:
                self.last_attn = attn.detach()
            out = F.dropout(attn, drop) @ v
        # (n, N, h, d) is the fused kernel's memory order; h * d is C but in a pruned block (fewer heads)
        out = out.transpose(1, 2).reshape(n, N, -1)
        return self.proj_drop(self.proj(out))
