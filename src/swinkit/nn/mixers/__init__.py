"""Token mixers: the part of a block that moves information between tokens (SwinBlock(mixer=...)).

The contract. A mixer is a `TokenMixer` (an nn.Module) built from a `MixerSpec` by a factory registered under a name
with `register_mixer`:
- `forward(x)` takes channel-last tokens (B, *S, C), S the map size ((H, W); (T, H, W) for video), and returns the
  same shape. Any S works: a mixer that partitions the map pads it (`nn.windows.pad_to`, `padded_size`) and masks the
  padded keys, and crops its output back to S.
- It may use the N-D window core in `swinkit.nn.windows` (window_and_shift, window_order gathers, attention_mask) and
  `swinkit.nn.attention.WindowAttention.attend` for attention inside groups of tokens with an additive bias.
- It may take over the whole block in eval without grad by overriding `forward_block(block, x)` (the window mixer's
  CPU fast path); returning None, the default, leaves the block to run its norms, mixer and MLP as usual.
- Its parameters sit under the block's `attn.` (the name Swin checkpoints give the token mixer).

A new mixer is one file in this folder that calls `register_mixer`; `MIXERS` lists the names.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

Pair = tuple[int, ...]


@dataclass(frozen=True)
class MixerSpec:
    """What a mixer factory is given for one block."""
    dim: int  # channels C
    num_heads: int
    window: Pair  # the stage's window size (also the neighbourhood / cluster-group size)
    shift: bool  # whether this block's windows shift (odd blocks of a shifted-window stage)
    pretrained_window: Pair  # V2: the window of the pre-training run (0s: the window itself)
    stage: int  # stage index and count: a mixer may differ in the last stage (CSWin)
    num_stages: int
    grid: Pair  # the stage's map size at the config's img_size (V2 log-CPB normalisation of global attention)
    cfg: Any  # the model config (version, qkv_bias, drop rates, split_size, pool_size, ...)


class TokenMixer(nn.Module):
    """Base of every mixer: (B, *S, C) -> (B, *S, C). See the module docstring for the contract."""

    def forward_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """The whole block's output for x, or None to let the block run as usual (the default)."""
        return None


MIXERS: dict[str, Callable[[MixerSpec], TokenMixer]] = {}


def register_mixer(name: str):
    """Decorator: register a factory (a TokenMixer class or a function of a MixerSpec) under `name`."""
    def add(factory):
        if name in MIXERS:
            raise ValueError(f"mixer {name!r} is already registered")
        MIXERS[name] = factory
        return factory
    return add


def create_mixer(name: str, spec: MixerSpec) -> TokenMixer:
    """The mixer `name` for one block."""
    _load_builtin()
    if name not in MIXERS:
        raise ValueError(f"unknown mixer {name!r}; choose one of {mixer_names()}")
    return MIXERS[name](spec)


def mixer_names() -> list[str]:
    _load_builtin()
    return list(MIXERS)


def _load_builtin() -> None:
    from . import window  # noqa: F401  (registers shifted_window, window, global)
    from . import axial, cluster, conv, cswin, hub, neighborhood  # noqa: F401
