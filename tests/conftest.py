from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = SHARED / "fixtures" / "official"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomize_(model: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    """Give every parameter random values, so that zero-initialised paths (V2 post-norms, biases) count."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model


def tiny_config(**overrides):
    """A small 3-stage model for fast tests."""
    from swinkit import SwinConfig

    kw = dict(embed_dim=16, depths=(2, 2, 2), num_heads=(2, 4, 8), window_size=4, num_classes=5,
              img_size=64, drop_path_rate=0.0)
    kw.update(overrides)
    return SwinConfig(**kw)
