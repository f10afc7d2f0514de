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


def color_folder(root, n_train: int, n_val: int):
    """3 classes (blue, green, red noisy squares) x n_train / n_val images of 16x16 in root/{train,val}/<class>."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, name in enumerate(("blue", "green", "red")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 90, (16, 16, 3), dtype=np.uint8)
                img[..., 2 - c] += 140
                Image.fromarray(img).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture
def keep_threads():
    """Restore torch's thread count after a test that trains with --threads."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
