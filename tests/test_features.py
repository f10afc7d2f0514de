"""timm's feature interface on swinkit's Swins: forward_intermediates, feature_info, prune_intermediate_layers and
create_model(features_only=True), equal to timm 1.0's on the same weights (random, no downloads), at timm's size
and at sizes that pad; and the dense backbone as a reader of it."""
import pytest
import torch

import swinkit
from swinkit import SwinBackbone, SwinTransformer
from swinkit.io.formats.swin import convert_state_dict
from swinkit.models.swin import SwinTrunk

from conftest import randomize_, tiny_config
from test_convert import PARITY, TINY, parity_error

timm = pytest.importorskip("timm")


def pair(version: int, size: tuple[int, int]) -> tuple[torch.nn.Module, SwinTransformer]:
    """timm's tiny Swin at `size` with random weights, and swinkit's with the same weights. timm clamps each stage's
    window to its map when it builds the model (its bias tables have that size) and attends a map's padding to a
    window multiple as zeros: the same windows and mask_padding=False are that behaviour."""
    name = "swin_tiny_patch4_window7_224" if version == 1 else "swinv2_tiny_window8_256"
    peer = randomize_(timm.create_model(name, img_size=size, window_size=4, num_classes=10, **TINY), std=0.2).eval()
    windows = [tuple(stage.blocks[0].window_size) for stage in peer.layers]
    ours = SwinTransformer(tiny_config(version=version, num_classes=10, img_size=size, window_size=windows,
                                       mask_padding=False)).eval()
    ours.load_state_dict(convert_state_dict(peer.state_dict(), src="timm"))
    return peer, ours


def same(a, b) -> None:
    """Equal results of forward_intermediates: a list of maps, or (final features, list)."""
    if isinstance(a, tuple):
        assert a[0].shape == b[0].shape and parity_error(b[0], a[0]) <= PARITY
        a, b = a[1], b[1]
    assert [m.shape for m in a] == [m.shape for m in b]
    assert all(parity_error(y, x) <= PARITY for x, y in zip(a, b))  # PARITY: see test_convert


@pytest.mark.parametrize("version", [1, 2])
# 64 x 96: stage maps 16x24, 8x12, 4x6 (padded to 4x8 in W); 32 x 48: 8x12, 4x6, 2x3 (windows clamped to 2x3 and
# shifts per axis). Where a map is larger than the window and no multiple of it, the three peers part: the official
# code pads, then shifts; timm shifts, then pads; swinkit masks the padding (tested against a window-by-window
# reference in test_swin).
@pytest.mark.parametrize("size", [(64, 64), (64, 96), (32, 48)])
def test_forward_intermediates_equals_timm(version, size):
    peer, ours = pair(version, size)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        for kw in (dict(), dict(indices=2), dict(indices=[0, -1], norm=True), dict(indices=[1], stop_early=True),
                   dict(indices=[0, 2], intermediates_only=True), dict(norm=True, intermediates_only=True)):
            same(peer.forward_intermediates(x, **kw), ours.forward_intermediates(x, **kw))
        # the final features are forward_features' (timm: NHWC, normalised)
        assert parity_error(ours.forward_intermediates(x)[0], peer.forward_features(x)) <= PARITY
    assert list(ours.feature_info) == list(peer.feature_info)
    assert ours.feature_info.channels() == [16, 32, 64] and ours.feature_info.reduction() == [4, 8, 16]


@pytest.mark.parametrize("version", [1, 2])
def test_prune_intermediate_layers_and_features_only_equal_timm(version):
    peer, ours = pair(version, (64, 64))
    x = torch.randn(2, 3, 64, 64)
    assert ours.prune_intermediate_layers([0, 1], prune_norm=True) == peer.prune_intermediate_layers(
        [0, 1], prune_norm=True) == [0, 1]
    assert len(ours.layers) == 2 and ours.num_features == peer.num_features == 32 and ours.num_classes == 0
    with torch.no_grad():
        same(peer.forward_intermediates(x), ours.forward_intermediates(x))
    # features_only: timm's FeatureGetterNet gives the same maps and channels as create_model(features_only=True)
    feats = swinkit.create_model("swin_tiny_patch4_window7_224", features_only=True, out_indices=(1, 3))
    ref = timm.create_model("swin_tiny_patch4_window7_224", features_only=True, out_indices=(1, 3))
    assert feats.feature_info.channels() == ref.feature_info.channels() == [192, 768]
    assert feats.feature_info.reduction() == ref.feature_info.reduction() == [8, 32]
    full = randomize_(timm.create_model("swin_tiny_patch4_window7_224")).eval()
    feats.model.load_state_dict(convert_state_dict(full.state_dict(), src="timm"), strict=False)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        got, want = feats.eval()(x), full.forward_intermediates(x, indices=(1, 3), intermediates_only=True)
    assert [m.shape for m in got] == [(1, 192, 28, 28), (1, 768, 7, 7)]
    assert all(parity_error(g, w) <= PARITY for g, w in zip(got, want))


def test_the_backbone_reads_the_trunk_through_forward_intermediates():
    cfg = tiny_config(version=1)
    backbone = randomize_(SwinBackbone(cfg, out_indices=(2, 0)), std=0.2).eval()
    assert isinstance(backbone, SwinTrunk) and not isinstance(backbone, SwinTransformer)
    assert not hasattr(backbone, "head") and not hasattr(backbone, "norm")  # built without them, nothing deleted
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        maps = backbone.forward_intermediates(x, [0, 2], intermediates_only=True, output_fmt="NHWC")
        want = [backbone.norm2(maps[1]).permute(0, 3, 1, 2), backbone.norm0(maps[0]).permute(0, 3, 1, 2)]
        got = backbone(x)
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_bad_indices_say_what_is_allowed():
    model = SwinTransformer(tiny_config(version=1))
    with pytest.raises(ValueError, match=r"stage indices must be in \[0, 3\) \(or negative from the end\), got \[3\]"):
        model.forward_intermediates(torch.zeros(1, 3, 64, 64), [3])
    with pytest.raises(ValueError, match=r"take the last 1 to 3 stages, got indices=4"):
        model.prune_intermediate_layers(4)
    with pytest.raises(ValueError, match="output_fmt must be 'NCHW' or 'NHWC', got 'NLC'"):
        model.forward_intermediates(torch.zeros(1, 3, 64, 64), output_fmt="NLC")
