"""The window layout computed in the graph (nn.windows.graph_windows, WindowMixer.forward_in_graph: what an export with
dynamic sizes runs) equals the cached eager path at every size: maps smaller than, equal to and larger than the window,
non-multiples, 2-D and 3-D windows, clamp and pad modes, V1 and V2, the prefix bias of Video Swin and masked or
attended padding. Float64, so the bound is float64 rounding (the two paths differ only in summation order and in
masked keys that add exact zeros)."""
import itertools

import pytest
import torch

from swinkit import SwinConfig, VideoSwinConfig
from swinkit.nn.mixers import MixerSpec, create_mixer
from swinkit.nn.windows import graph_windows, window_labels, window_order

from conftest import randomize_

TOL = 1e-12  # relative to max(1, max |out|): float64 over a few hundred terms


def mixer(name: str, window: tuple, shift: bool, version: int = 1, pretrained=None, grid=None, **cfg):
    config = (VideoSwinConfig if len(window) == 3 else SwinConfig)(
        embed_dim=8, depths=(2,), num_heads=(2,), version=version, drop_path_rate=0.0, **cfg)
    spec = MixerSpec(dim=8, num_heads=2, window=window, shift=shift, pretrained_window=pretrained or (0,) * len(window),
                     stage=0, num_stages=1, grid=grid or window, cfg=config)
    return randomize_(create_mixer(name, spec)).double().eval()


def in_graph_diff(m, size: tuple, batch: int = 2) -> float:
    x = torch.randn(batch, *size, 8, dtype=torch.float64)
    with torch.no_grad():
        ref, got = m(x), m.forward_in_graph(x)
    assert got.shape == ref.shape
    return float((got - ref).abs().max() / max(1.0, float(ref.abs().max())))


SIZES_2D = [(1, 1), (3, 2), (4, 4), (5, 4), (7, 9), (8, 8), (11, 4), (13, 13)]


@pytest.mark.parametrize("version, mode, shift", list(itertools.product((1, 2), ("clamp", "pad"), (False, True))))
def test_2d_in_graph_equals_eager_at_every_size(version, mode, shift):
    m = mixer("shifted_window", (4, 4), shift, version, window_mode=mode)
    assert max(in_graph_diff(m, s) for s in SIZES_2D) <= TOL


def test_v2_pretrained_window_and_unequal_window_axes():
    m = mixer("shifted_window", (3, 5), True, 2, pretrained=(6, 4))
    assert max(in_graph_diff(m, s) for s in [(2, 7), (3, 5), (4, 4), (7, 11), (9, 3)]) <= TOL


@pytest.mark.parametrize("clamped_bias, mask_padding", [("prefix", False), ("prefix", True), ("offsets", True)])
def test_3d_in_graph_equals_eager(clamped_bias, mask_padding):
    m = mixer("shifted_window", (2, 3, 3), True, clamped_bias=clamped_bias, mask_padding=mask_padding)
    sizes = [(1, 2, 2), (2, 3, 3), (3, 4, 5), (4, 7, 3), (1, 6, 6)]
    assert max(in_graph_diff(m, s) for s in sizes) <= TOL


def test_global_mixer_v2_in_graph_at_other_sizes():
    m = mixer("global", (4, 4), False, 2, grid=(4, 4))
    assert max(in_graph_diff(m, s) for s in [(4, 4), (3, 6), (7, 5)]) <= TOL


def test_a_wrong_shift_or_mask_is_caught():
    """The bound is tight: the same mixer with its shift (hence regions and gathers) dropped in the graph differs."""
    m = mixer("shifted_window", (4, 4), True)
    unshifted = mixer("shifted_window", (4, 4), False)
    unshifted.load_state_dict(m.state_dict())
    x = torch.randn(2, 9, 10, 8, dtype=torch.float64)
    with torch.no_grad():
        assert (m(x) - unshifted.forward_in_graph(x)).abs().max() > 1e3 * TOL * max(1.0, float(m(x).abs().max()))


@pytest.mark.parametrize("feat", [(8, 8), (9, 12), (5, 13)])
def test_layout_equals_the_cached_one_where_windows_agree(feat):
    """On maps larger than the window (where clamp takes the full window), the gathers and labels are the cached
    ones exactly, index for index."""
    win, shift, cpu = (4, 4), (2, 2), torch.device("cpu")
    g = graph_windows(feat, win, True, True, True, cpu)
    to_windows, from_windows = window_order(feat, win, shift, cpu)
    assert torch.equal(g.to_windows, to_windows) and torch.equal(g.from_windows, from_windows)
    assert torch.equal(g.labels, window_labels(feat, win, shift, cpu, True))
