"""Key maps: parity with timm / torchvision / transformers models built with random weights, the official
fixtures, mmdet's unfold order, and round trips between every pair of formats."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from swinkit import SwinTransformer
from swinkit.io.formats.swin import FORMATS, convert_state_dict, detect_format, infer_config

from conftest import FIXTURES, randomize_, tiny_config

TINY = dict(embed_dim=16, depths=(2, 2, 2), num_heads=(2, 4, 8))  # stage maps 16, 8, 4 at 64 px
# Parity with another library's model holding the same weights, as a share of the logits' scale. In float64 ours and
# timm / torchvision / transformers agree to 1e-15 (the same function), so in float32 only rounding parts them. This
# model's longest sums have n = 256 terms (the last stage's MLP); float32 rounds such a sum to about sqrt(n) u =
# 16 x 6e-8 = 1e-6 of its scale (u = 2^-24, errors of either sign), about 3.5e-6 over its 12 attention and MLP
# sublayers in quadrature, 5e-6 between two models: 1e-5 holds whatever kernels a CPU picks (measured <= 2.4e-7 on an
# AMD EPYC, vectorised kernels or not). It must not grow: with these random weights attention is nearly uniform, so
# a transposed bias table in block 1 moves the logits by only 8e-5 of their scale, swapped q and k by 2e-5.
PARITY = 1e-5
# The same comparison in float64, whose u = 2^-53 is 2^29 times finer: PARITY scales to 2e-14, and 1e-12 leaves
# 50x for other kernels while staying 1e7 below those wiring errors (measured <= 5e-16).
PARITY_FLOAT64 = 1e-12


def parity_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| as a share of max |ref|."""
    return ((a - ref).abs().max() / ref.abs().max()).item()


def peer_model(lib: str, version: int, window: int = 4):
    """A tiny model of another library with every parameter random (V2 post-norms included), in eval mode."""
    if lib == "timm":
        timm = pytest.importorskip("timm")
        name = "swin_tiny_patch4_window7_224" if version == 1 else "swinv2_tiny_window8_256"
        m = timm.create_model(name, img_size=64, window_size=window, num_classes=10, **TINY)
    elif lib == "torchvision":
        from torchvision.models import swin_transformer as tv
        extra = {} if version == 1 else dict(block=tv.SwinTransformerBlockV2, downsample_layer=tv.PatchMergingV2)
        m = tv.SwinTransformer(patch_size=[4, 4], window_size=[window] * 2, num_classes=10, **extra,
                               **{k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()})
    else:
        transformers = pytest.importorskip("transformers")
        config, model = (("SwinConfig", "SwinForImageClassification") if version == 1 else
                         ("Swinv2Config", "Swinv2ForImageClassification"))
        cfg = getattr(transformers, config)(image_size=64, patch_size=4, window_size=window, num_labels=10,
                                            **{k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()})
        m = getattr(transformers, model)(cfg)
    return randomize_(m, std=0.2).eval()


def peer_logits(lib: str, model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=x).logits if lib == "hf" else model(x)


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def _tiny(version: int, **kw):
    return tiny_config(version=version, num_classes=10, **kw)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("lib", ["timm", "torchvision", "hf"])
def test_peer_parity_and_export_loads_strict(lib, version):
    peer = peer_model(lib, version)
    sd = peer.state_dict()
    assert detect_format(sd) == lib
    ours = SwinTransformer(_tiny(version))
    ours.load_state_dict(convert_state_dict(sd), strict=True)  # format detected, no hints
    x = torch.randn(2, 3, 64, 64)
    ref = peer_logits(lib, peer, x)
    assert ref.std() > 0.1
    assert parity_error(logits(ours, x), ref) <= PARITY
    exact = peer_logits(lib, copy.deepcopy(peer).double(), x.double())
    assert parity_error(logits(copy.deepcopy(ours).double(), x.double()), exact) <= PARITY_FLOAT64

    back = convert_state_dict(ours.state_dict(), src="swinkit", dst=lib, cfg=ours.cfg)
    assert set(back) == set(sd)
    for k, v in sd.items():
        if lib == "torchvision" and version == 2 and k.endswith("qkv.bias"):  # k part ignored: written as zero
            n = v.numel() // 3
            v = torch.cat([v[:n], torch.zeros(n), v[2 * n:]])
        assert torch.equal(back[k], v), k
    fresh = peer_model(lib, version)
    fresh.load_state_dict(back, strict=True)
    assert parity_error(peer_logits(lib, fresh, x), ref) <= PARITY
    if lib == "hf":  # a bare SwinModel / Swinv2Model: no "swin." prefix, no classifier
        headless = convert_state_dict(getattr(peer, "swin" if version == 1 else "swinv2").state_dict())
        assert set(headless) == {k for k in ours.state_dict() if not k.startswith("head.")}


@pytest.mark.parametrize("version", [1, 2])
def test_official_fixture_parity_and_exact_round_trip(version):
    path = FIXTURES / f"official_v{version}_tiny.pth"
    if not path.exists():
        pytest.skip("../shared/fixtures/official is absent")
    sd = torch.load(path, map_location="cpu", weights_only=True)["model"]
    io = torch.load(FIXTURES / f"official_v{version}_tiny.io.pt", map_location="cpu", weights_only=True)
    assert detect_format(sd) == "official"
    ours_sd = convert_state_dict(sd)
    cfg, guessed = infer_config(*_imported(sd))
    assert guessed == [] and cfg.img_size == (64, 64) and cfg.window_size == ((4, 4),) * 3
    assert cfg.pretrained_window_sizes == (((2, 2),) * 3 if version == 2 else ((0, 0),) * 3)
    ours = SwinTransformer(cfg)
    ours.load_state_dict(ours_sd, strict=True)
    assert (logits(ours, io["input"]) - io["logits"]).abs().max() <= 1e-5

    back = convert_state_dict(ours_sd, src="swinkit", dst="official", cfg=cfg)  # buffers recreated exactly
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in sd.items())


def _imported(sd):
    from swinkit.io.formats.swin import to_swinkit

    imp = to_swinkit(sd)
    return imp.state_dict, imp.buffers


@pytest.mark.parametrize("version", [1, 2])
def test_every_direction_round_trips(version):
    cfg = _tiny(version)
    sd0 = randomize_(SwinTransformer(cfg)).state_dict()
    formats = [f for f in FORMATS if version == 1 or f != "mmdet"]  # mmdetection has no Swin V2
    for a in formats:
        in_a = convert_state_dict(sd0, src="swinkit", dst=a, cfg=cfg)
        for b in formats:
            in_b = convert_state_dict(in_a, dst=b, cfg=cfg)  # source format detected
            back = convert_state_dict(in_b, dst="swinkit")
            assert set(back) == set(sd0), (a, b)
            assert all(torch.equal(back[k], v) for k, v in sd0.items()), (a, b)


def test_clamped_stage_windows_both_ways():
    """timm (like the official code and transformers) builds a stage's bias table for a window clamped to
    a smaller stage map: window 8 at 64 px gives stage 2 a 4x4 table."""
    peer = peer_model("timm", 1, window=8)
    sd = peer.state_dict()
    assert sd["layers.2.blocks.0.attn.relative_position_bias_table"].shape[0] == 7 * 7
    ours_sd, buffers = _imported(sd)
    cfg, _ = infer_config(ours_sd, buffers, {"img_size": 64})
    assert cfg.window_size == ((8, 8), (8, 8), (4, 4))
    x = torch.randn(2, 3, 64, 64)
    ours = SwinTransformer(cfg)
    ours.load_state_dict(ours_sd, strict=True)
    assert (logits(ours, x) - peer_logits("timm", peer, x)).abs().max() <= 1e-5

    wide = randomize_(SwinTransformer(_tiny(1, window_size=8)), std=0.2).eval()  # a full 15x15 table everywhere
    fresh = peer_model("timm", 1, window=8)
    fresh.load_state_dict(convert_state_dict(wide.state_dict(), src="swinkit", dst="timm", cfg=wide.cfg), strict=True)
    assert (peer_logits("timm", fresh, x) - logits(wide, x)).abs().max() <= 1e-5


def test_hf_transformers4_layout():
    """Checkpoints on the Hub use transformers 4 names (attention.self.query ...): rename a model's keys back
    with transformers' own v4 -> v5 renaming table and read them."""
    pytest.importorskip("transformers")
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    peer = peer_model("hf", 1)
    renames = [(r.target_patterns[0], r.source_patterns[0]) for r in get_checkpoint_conversion_mapping("swin")]
    v4 = {}
    for k, v in peer.state_dict().items():
        for new, old in renames:
            k = k.replace(new, old)
        v4[k] = v
    assert any("attention.self.query" in k for k in v4)
    assert detect_format(v4) == "hf"
    ours = SwinTransformer(_tiny(1))
    ours.load_state_dict(convert_state_dict(v4), strict=True)
    x = torch.randn(2, 3, 64, 64)
    # as every peer: transformers' float64 logits are ours to 1e-15 (in float32 here they are bit-identical), so 1e-5
    # of the scale (PARITY's derivation), not the 1e-4 this test began with, which a transposed bias table passes
    assert parity_error(logits(ours, x), peer_logits("hf", peer, x)) <= PARITY


def test_mmdet_patch_merging_follows_unfold_order():
    """mmcv's PatchMerging concatenates neighbours with nn.Unfold: channel-major (c, dy, dx)."""
    model = randomize_(SwinTransformer(_tiny(1)))
    mm = convert_state_dict(model.state_dict(), src="swinkit", dst="mmdet", cfg=model.cfg)
    C = 16
    rw, nw, nb = torch.randn(2 * C, 4 * C) * 0.1, torch.randn(4 * C), torch.randn(4 * C)
    mm.update({"backbone.stages.0.downsample.reduction.weight": rw, "backbone.stages.0.downsample.norm.weight": nw,
               "backbone.stages.0.downsample.norm.bias": nb})
    ours = SwinTransformer(model.cfg)
    ours.load_state_dict(convert_state_dict(mm), strict=True)
    x = torch.randn(2, 8, 8, C)
    cols = F.unfold(x.permute(0, 3, 1, 2), kernel_size=2, stride=2).transpose(1, 2)  # (B, 16, 4C)
    ref = F.linear(F.layer_norm(cols, (4 * C,), nw, nb), rw).view(2, 4, 4, 2 * C)
    with torch.no_grad():
        assert (ours.layers[1].downsample(x) - ref).abs().max() <= 1e-5


def test_mmdet_detector_checkpoint_keeps_the_backbone():
    model = randomize_(SwinTransformer(_tiny(1)))
    mm = convert_state_dict(model.state_dict(), src="swinkit", dst="mmdet", cfg=model.cfg)
    assert "backbone.norm2.weight" in mm and "backbone.stages.0.downsample.reduction.weight" in mm
    mm.update({"backbone.norm0.weight": torch.ones(16), "backbone.norm0.bias": torch.zeros(16),
               "neck.lateral_convs.0.conv.weight": torch.ones(1), "rpn_head.rpn_cls.weight": torch.ones(1)})
    with pytest.warns(UserWarning, match=r"dropped 4 mmdet keys"):
        back = convert_state_dict(mm)
    assert set(back) == set(model.state_dict())
    assert torch.equal(back["norm.weight"], model.state_dict()["norm.weight"])  # the last stage's norm


def test_torchvision_v2_writes_a_zero_k_bias():
    model = randomize_(SwinTransformer(_tiny(2)))
    tv = convert_state_dict(model.state_dict(), src="swinkit", dst="torchvision", cfg=model.cfg)
    q, k, v = tv["features.1.0.attn.qkv.bias"].chunk(3)
    blk = model.layers[0].blocks[0].attn
    assert torch.equal(q, blk.q_bias.data) and torch.equal(v, blk.v_bias.data) and not k.any()


def test_unknown_keys_are_an_error_that_lists_them():
    sd = peer_model("timm", 1).state_dict()
    sd["layers.0.blocks.0.attn.extra_gate"] = torch.ones(3)
    with pytest.raises(ValueError, match=r"1 keys of this timm checkpoint have no place in swinkit: "
                                         r"layers\.0\.blocks\.0\.attn\.extra_gate\. Is it a Swin checkpoint"):
        convert_state_dict(sd)


def test_bad_arguments_and_foreign_state_dicts():
    sd = peer_model("timm", 1).state_dict()
    with pytest.raises(ValueError, match=r"unknown format 'keras'; choose one of \['swinkit', 'timm'"):
        convert_state_dict(sd, dst="keras")
    with pytest.raises(ValueError, match=r"not a Swin Transformer state dict .* its first keys are: fc\.weight"):
        convert_state_dict({"fc.weight": torch.ones(2, 2)})
    with pytest.raises(ValueError, match="the mmdet format has no Swin V2"):
        v2 = SwinTransformer(_tiny(2))
        convert_state_dict(v2.state_dict(), src="swinkit", dst="mmdet", cfg=v2.cfg)


def test_convert_without_cfg_warns_what_it_assumed():
    sd = peer_model("timm", 2).state_dict()  # timm keeps no buffers: the V2 window is not in the weights
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert_state_dict(sd, dst="torchvision")
    assert any("window_size, img_size not recorded in the weights" in str(w.message) for w in caught)
