"""`create_*`: a named model, optionally with weights. Lives above models/ and io/ so that model code never
imports checkpoint I/O."""
from __future__ import annotations

from .config import SwinConfig
from .io.checkpoint import load_into_named
from .models.swin import SwinTransformer


def create_model(name: str, pretrained: bool | str = False, checkpoint: str | None = None,
                 **overrides) -> SwinTransformer:
    """Build a named variant; keyword overrides are SwinConfig fields (num_classes=10, drop_path_rate=0.1).

    `checkpoint=PATH` or `pretrained=True` load weights (see swinkit.io.checkpoint)."""
    if checkpoint is not None or pretrained:
        return load_into_named(name, checkpoint=checkpoint, pretrained=pretrained, **overrides)
    return SwinTransformer(SwinConfig.from_name(name, **overrides))
