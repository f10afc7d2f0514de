"""The block's mixer seam (issue 26, part 1): a mixer per stage from the config, the parts CSWin and PoolFormer need
(overlapping stem, conv merging, GroupNorm, layer scale), a new mixer by registration alone, and swinkit's own
checkpoints of such models."""
import pytest
import torch
import torch.nn as nn

import swinkit
from swinkit.config import SwinConfig
from swinkit.io.files import CheckpointError
from swinkit.models.swin import SwinTransformer
from swinkit.nn import mixers
from swinkit.nn.blocks import ConvMerging, MapGroupNorm, PatchEmbed, SwinBlock
from swinkit.nn.mixers.window import GlobalMixer, WindowMixer

from conftest import tiny_config


def test_mixer_per_stage_and_shift_rule():
    model = SwinTransformer(tiny_config(mixer=["shifted_window", "window", "window"]))
    s0, s1, _ = (list(layer.blocks) for layer in model.layers)
    assert [b.attn.shift for b in s0] == [False, True]  # shifted windows: every other block
    assert [b.attn.shift for b in s1] == [False, False]  # "window": never
    assert all(type(b.attn) is WindowMixer for b in s0 + s1)
    assert model.cfg.mixer == ("shifted_window", "window", "window")
    with pytest.raises(ValueError, match=r"mixer: expected one name or one per stage \(3\), got 2"):
        tiny_config(mixer=["pool", "window"])
    with pytest.raises(ValueError, match=r"unknown mixer 'windows'; choose one of \["):
        SwinTransformer(tiny_config(mixer="windows"))


def test_a_new_mixer_is_one_registration(monkeypatch):
    monkeypatch.setattr(mixers, "MIXERS", dict(mixers.MIXERS))

    @mixers.register_mixer("negate")
    class Negate(mixers.TokenMixer):
        def __init__(self, spec):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(spec.dim))

        def forward(self, x):
            return -x * self.gain

    model = SwinTransformer(tiny_config(mixer="negate")).eval()
    blk = model.layers[0].blocks[0]
    assert isinstance(blk.attn, Negate) and "layers.0.blocks.0.attn.gain" in model.state_dict()
    x = torch.randn(2, 5, 7, blk.norm1.normalized_shape[0])
    h = x + -blk.norm1(x)  # V1 pre-norm residual with this mixer
    with torch.no_grad():
        assert torch.allclose(blk(x), h + blk.mlp(blk.norm2(h)), atol=0, rtol=0)
    with pytest.raises(ValueError, match="mixer 'negate' is already registered"):
        mixers.register_mixer("negate")(Negate)


def test_global_mixer_is_one_window_over_any_map():
    for version in (1, 2):
        model = SwinTransformer(tiny_config(version=version, mixer="global")).eval()
        mixer = model.layers[0].blocks[1].attn
        assert isinstance(mixer, GlobalMixer) and mixer.window_and_shift(5, 9) == ((5, 9), (0, 0))
        assert hasattr(mixer, "relative_position_bias_table") is False  # V1: no table of one size
        with torch.no_grad():
            for size in [(37, 53), (64, 64)]:
                assert model(torch.randn(1, 3, *size)).shape == (1, 5)


def test_global_attention_reaches_every_token():
    model = SwinTransformer(tiny_config(mixer="global")).eval()
    mixer = model.layers[0].blocks[0].attn
    x = torch.randn(1, 6, 9, mixer.dim, dtype=torch.float64)
    mixer.double()
    y = x.clone()
    y[0, 5, 8] += 1.0  # one far corner token changes
    with torch.no_grad():
        assert (mixer(x)[0, 0, 0] - mixer(y)[0, 0, 0]).abs().max() > 0  # ... and the opposite corner sees it
        local = SwinTransformer(tiny_config()).eval().layers[0].blocks[0].attn.double()
        assert torch.equal(local(x)[0, 0, 0], local(y)[0, 0, 0])  # a 4x4 window does not


def test_overlap_stem_conv_merging_groupnorm_layer_scale():
    cfg = tiny_config(stem="overlap", patch_norm=False, merge="conv", norm="groupnorm", layer_scale=1e-5,
                      mixer="pool", dims=(16, 40, 48), num_heads=(1, 1, 1))
    model = SwinTransformer(cfg).eval()
    stem, merge = model.patch_embed, model.layers[1].downsample
    assert isinstance(stem, PatchEmbed) and stem.proj.kernel_size == (7, 7) and stem.proj.padding == (2, 2)
    assert isinstance(stem.norm, nn.Identity) and isinstance(merge, ConvMerging)
    assert merge.proj.in_channels == 16 and merge.proj.out_channels == 40 and isinstance(merge.norm, nn.Identity)
    blk = model.layers[0].blocks[0]
    assert isinstance(blk.norm1, MapGroupNorm) and torch.equal(blk.layer_scale1, torch.full((16,), 1e-5))
    assert not blk.tokenwise and model.feature_info.channels() == [16, 40, 48] and model.num_features == 48
    x = torch.randn(2, 3, 29, 35)
    with torch.no_grad():
        assert model(x).shape == (2, 5)
        feats = model.forward_intermediates(x, intermediates_only=True)
    # floor((s - 1) / 4) + 1, then ceil(s / 2) per merge
    assert [tuple(f.shape) for f in feats] == [(2, 16, 7, 9), (2, 40, 4, 5), (2, 48, 2, 3)]
    # GroupNorm with one group: statistics over the whole map and all channels of each sample
    t = torch.randn(2, 5, 6, 16, dtype=torch.float64)
    norm = MapGroupNorm(16).double()
    ref = (t - t.mean((1, 2, 3), keepdim=True)) / (t.var((1, 2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
    assert torch.allclose(norm(t), ref, atol=1e-12)


def test_layer_scale_scales_each_branch():
    blk = SwinTransformer(tiny_config(mixer="identity", layer_scale=0.5)).eval().layers[0].blocks[0]
    x = torch.randn(1, 4, 4, blk.norm1.normalized_shape[0], dtype=torch.float64)
    blk.double()
    with torch.no_grad():
        h = x + 0.5 * blk.norm1(x)
        assert torch.allclose(blk(x), h + 0.5 * blk.mlp(blk.norm2(h)), atol=1e-12)


def test_fast_path_belongs_to_the_window_mixer():
    model = SwinTransformer(tiny_config(inference_path="windows")).eval()
    blk = model.layers[0].blocks[1]
    x = torch.randn(2, 9, 11, blk.norm1.normalized_shape[0])
    with torch.no_grad():
        fast = blk.attn.forward_block(blk, x)
        model.set_inference_path("plain")
        assert blk.attn.forward_block(blk, x) is None
        plain = blk(x)
    assert fast is not None and (fast - plain).abs().max() <= 1e-5 * max(1.0, plain.abs().max().item())
    other = SwinBlock(blk.norm1.normalized_shape[0], mixers.create_mixer("identity", None))
    assert other.attn.forward_block(other, x) is None  # the base contract: decline


def test_swinkit_checkpoint_of_other_mixers_round_trips(tmp_path, capsys):
    model = swinkit.create_model("swin_t", img_size=64, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4,
                                 num_classes=10, mixer=["cswin", "global"], split_size=[2, 4], version=2).eval()
    swinkit.save_model(model, tmp_path / "m.safetensors")
    back = swinkit.load_model(tmp_path / "m.safetensors")
    assert back.cfg.mixer == ("cswin", "global") and back.cfg.split_size == (2, 4)
    x = torch.randn(1, 3, 50, 61)
    with torch.no_grad():  # the same weights; kernels may pick other algorithms for the loaded tensors' layouts
        a, b = model(x), back(x)
    assert (a - b).abs().max() <= 1e-5 * max(1.0, a.abs().max().item())
    assert "mixer cswin-global" in back.cfg.describe()
    from swinkit.families import FAMILIES
    from swinkit.io.raw import read_raw

    swin = next(f for f in FAMILIES if f.name == "swin")
    with pytest.raises(CheckpointError, match=r"token mixers cswin-global .* only swinkit's own layout holds it, "
                                              r"not timm's"):
        swin.convert(read_raw(tmp_path / "m.safetensors"), tmp_path / "t.pth", "timm", None)
    assert not (tmp_path / "t.pth").exists()


def test_swin_skeleton_flag():
    assert SwinConfig().swin_skeleton and SwinConfig(mixer="window").swin_skeleton
    for change in (dict(mixer="pool"), dict(stem="overlap"), dict(merge="conv"), dict(norm="groupnorm"),
                   dict(layer_scale=1e-5), dict(patch_norm=False), dict(dims=(96, 192, 384, 960))):
        assert not SwinConfig(**change).swin_skeleton, change
    with pytest.raises(ValueError, match=r"stem must be one of \('patch', 'overlap'\), got 'conv'"):
        SwinConfig(stem="conv")


def test_window_figures_refuse_other_mixers():
    from swinkit.tools import viz

    model = SwinTransformer(tiny_config(mixer=["shifted_window", "pool", "pool"])).eval()
    assert viz.windows_data(model, (64, 64), stage=0)["window"] == (4, 4)
    with pytest.raises(ValueError, match=r"stage 1 of this model uses the 'pool' mixer; choose a stage with "
                                         r"shifted_window or window mixers"):
        viz.windows_data(model, (64, 64), stage=1)
