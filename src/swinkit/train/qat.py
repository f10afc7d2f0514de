"""Quantization-aware training (`swinkit train --qat --pretrained RUN/best.pt`): int8 fake quantization of a Swin
classifier's Linear layers with torchao, so that fine-tuning learns weights that keep their accuracy through
`swinkit quantize` (onnxruntime static INT8, swinkit/tools/quantize.py).

Fake-quantized (torchao's `FakeQuantizedLinear`, swapped in by `quantize_` with a `QATConfig`): the nn.Linear layers
of attention (qkv, proj), the MLP (fc1, fc2), patch merging (reduction) and the classifier head (head.fc, and a
distillation head's head.dist). Left float: the Swin V2 continuous position-bias MLP (cpb_mlp, which maps a constant
coordinate table to the bias table; the position bias stays float in deployment), the norms, and the patch-embedding
Conv2d (torchao's QAT swaps Linear and Embedding layers only; onnxruntime does quantize that one Conv).

The scheme, as close to `swinkit quantize` as torchao's `IntxFakeQuantizeConfig` goes:
    weights      7-bit symmetric per output channel, the range `swinkit quantize` writes by default (its
                 `reduce_range`, which no x86 CPU's int8 kernels saturate): s = max|w_row| / 63.5,
                 q = clamp(round(w / s), -64, 63) (onnxruntime: s = max|w_row| / 64, q in [-64, 64]); 8-bit
                 (s = max|w_row| / 127.5, q in [-128, 127]) where quantize's REDUCE_RANGE is off
    activations  uint8 asymmetric per token, dynamic: each token's [min(x, 0), max(x, 0)] mapped onto 0..255
                 (onnxruntime: uint8 asymmetric per tensor, static, from MinMax calibration; torchao's integer
                 fake quantizer has no per-tensor granularity, so QAT sees a little less activation rounding)
Rounding passes gradients straight through (torchao's straight-through estimator).

A `FakeQuantizedLinear` is an nn.Linear with the same parameters, and its quantizers add no state-dict entries: a QAT
model's state dict has the float model's keys, so the checkpoints of a QAT run are ordinary float checkpoints that
`load_model`, `swinkit eval`, `export` and `quantize` read as they are.
"""
from __future__ import annotations


import torch
import torch.nn as nn

from ..tools.quantize import REDUCE_RANGE
from ..utils.logs import quiet_logger

# the last name part of the Linear layers fake-quantized inside a Swin, besides everything under `head`
QAT_LAYERS = ("qkv", "proj", "fc1", "fc2", "reduction")


def is_qat_layer(module: nn.Module, name: str) -> bool:
    """Whether the module called `name` (as in named_modules) gets fake quantization: a plain nn.Linear of
    attention, the MLP, patch merging or the head, never inside cpb_mlp."""
    parts = name.split(".")
    return (type(module) is nn.Linear and "cpb_mlp" not in parts
            and (parts[-1] in QAT_LAYERS or parts[0] == "head"))


def qat_config():
    """torchao's QATConfig of the scheme above (prepare step)."""
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

    weights = torch.int7 if REDUCE_RANGE else torch.int8
    return QATConfig(activation_config=IntxFakeQuantizeConfig(torch.uint8, "per_token", is_symmetric=False),
                     weight_config=IntxFakeQuantizeConfig(weights, "per_channel", is_symmetric=True),
                     step="prepare")


def prepare_qat(model: nn.Module) -> int:
    """Swap the layers `is_qat_layer` selects for torchao's FakeQuantizedLinear, in place (keeping the same parameter
    tensors); returns the number of fake-quantized layers the model then has."""
    with quiet_logger("torch.utils._pytree"):
        try:
            from torchao.quantization import quantize_
        except ImportError as e:
            raise ImportError(f"quantization-aware training needs torchao ({e}): pip install torchao") from e
        quantize_(model, qat_config(), filter_fn=is_qat_layer)
    return count_fake_quantized(model)


def strip_qat(model: nn.Module) -> int:
    """Swap every FakeQuantizedLinear back to nn.Linear with its trained parameters, in place (the float model, e.g.
    to export after QAT in Python); returns how many were swapped."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import FakeQuantizedLinear, QATConfig

    n = count_fake_quantized(model)
    quantize_(model, QATConfig(step="convert"), filter_fn=lambda m, name: isinstance(m, FakeQuantizedLinear))
    return n


def count_fake_quantized(model: nn.Module) -> int:
    """The number of fake-quantized Linear layers in `model`."""
    from torchao.quantization.qat import FakeQuantizedLinear

    return sum(isinstance(m, FakeQuantizedLinear) for m in model.modules())
