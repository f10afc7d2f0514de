import math

import pytest
import torch
import torch.nn.functional as F

import swinkit
from swinkit.nn import windows as M
from swinkit.nn.blocks import SwinBlock
from swinkit.config import ALIASES, VARIANTS, SwinConfig
from swinkit import SwinTransformer

from conftest import FIXTURES, randomize_, tiny_config


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


# ------------------------------------------------------------------------------------------------ peers

@pytest.mark.parametrize("name, sizes", [
    ("swin_tiny_patch4_window7_224", [(224, 224), (224, 448)]),
    ("swinv2_tiny_window8_256", [(256, 256), (256, 512)]),
    ("swinv2_base_window12to16_192to256", [(256, 256)]),
])
def test_parity_with_timm(name, sizes):
    timm = pytest.importorskip("timm")
    from swinkit.io.formats.swin import convert_state_dict

    for size in sizes:
        peer = randomize_(timm.create_model(name, img_size=size))
        ours = swinkit.create_model(name)
        ours.load_state_dict(convert_state_dict(peer.state_dict(), src="timm"), strict=True)
        x = torch.randn(2, 3, *size)
        ref = _logits(peer, x)
        assert ref.std() > 0.1  # not a degenerate comparison
        assert (_logits(ours, x) - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("factory, name, sizes", [
    ("swin_t", "swin_tiny_patch4_window7_224", [(224, 224), (224, 448)]),
    ("swin_v2_t", "swinv2_tiny_window8_256", [(256, 256), (256, 512)]),
])
def test_parity_with_torchvision(factory, name, sizes):
    tvm = pytest.importorskip("torchvision.models")
    from swinkit.io.formats.swin import convert_state_dict

    peer = randomize_(getattr(tvm, factory)())
    ours = swinkit.create_model(name)
    ours.load_state_dict(convert_state_dict(peer.state_dict(), src="torchvision"), strict=True)
    for size in sizes:
        x = torch.randn(2, 3, *size)
        ref = _logits(peer, x)
        assert ref.std() > 0.1
        assert (_logits(ours, x) - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("version", [1, 2])
def test_parity_with_official_fixture(version):
    path = FIXTURES / f"official_v{version}_tiny.pth"
    if not path.exists():
        pytest.skip("../shared/fixtures/official is absent")
    from swinkit.io.formats.swin import convert_state_dict

    sd = torch.load(path, map_location="cpu", weights_only=True)["model"]
    io = torch.load(FIXTURES / f"official_v{version}_tiny.io.pt", map_location="cpu", weights_only=True)
    cfg = SwinConfig(version=version, img_size=64, patch_size=4, embed_dim=32, depths=(2, 2, 2),
                     num_heads=(2, 4, 8), window_size=4, num_classes=10,
                     pretrained_window_sizes=2 if version == 2 else 0)
    ours = SwinTransformer(cfg)
    ours.load_state_dict(convert_state_dict(sd, src="official"), strict=True)
    assert (_logits(ours, io["input"]) - io["logits"]).abs().max() <= 1e-5


# ------------------------------------------------------------------------------------- padding reference

def _region_labels(size: int, win: int, shift: int) -> torch.Tensor:
    lab = torch.zeros(size, dtype=torch.long)
    if shift:
        lab[size - win: size - shift] = 1
        lab[size - shift:] = 2
    return lab


def reference_window_attention(block: SwinBlock, x: torch.Tensor) -> torch.Tensor:
    """Slow reference of a block's (S)W-MSA on (B, H, W, C): loop over windows of the padded, rolled map; every
    real query attends only to real keys of its own shift region (padding never attended)."""
    B, H, W, C = x.shape
    win, shift = M.window_and_shift((H, W), block.attn.window, block.attn.shift)
    Hp, Wp = math.ceil(H / win[0]) * win[0], math.ceil(W / win[1]) * win[1]
    xp = torch.zeros(B, Hp, Wp, C)
    xp[:, :H, :W] = x
    real = torch.zeros(Hp, Wp, dtype=torch.bool)
    real[:H, :W] = True
    xp, real = torch.roll(xp, (-shift[0], -shift[1]), (1, 2)), torch.roll(real, (-shift[0], -shift[1]), (0, 1))
    region = _region_labels(Hp, win[0], shift[0])[:, None] * 3 + _region_labels(Wp, win[1], shift[1])[None]
    attn, h = block.attn, block.attn.num_heads
    bias = attn.position_bias(win)  # (h, N, N)
    qkv_bias = torch.cat((attn.q_bias, torch.zeros_like(attn.v_bias), attn.v_bias)) if attn.v2 else attn.qkv.bias
    out = torch.zeros_like(xp)
    for i in range(0, Hp, win[0]):
        for j in range(0, Wp, win[1]):
            tok = xp[:, i:i + win[0], j:j + win[1]].reshape(B, -1, C)
            ok = real[i:i + win[0], j:j + win[1]].reshape(-1)
            reg = region[i:i + win[0], j:j + win[1]].reshape(-1)
            allowed = ok[None, :] & (reg[None, :] == reg[:, None])  # (N, N) query x key
            q, k, v = F.linear(tok, attn.qkv.weight, qkv_bias).view(B, -1, 3, h, C // h).unbind(2)
            if attn.v2:
                scale = attn.logit_scale.clamp(max=math.log(100)).exp().view(1, h, 1, 1)
                logits = torch.einsum("bnhd,bmhd->bhnm", F.normalize(q, dim=-1), F.normalize(k, dim=-1)) * scale
            else:
                logits = torch.einsum("bnhd,bmhd->bhnm", q, k) * (C // h) ** -0.5
            logits = (logits + bias).masked_fill(~allowed, float("-inf"))
            probs = logits.softmax(-1).nan_to_num(0.0)  # padded queries have no allowed key: output unused
            o = torch.einsum("bhnm,bmhd->bnhd", probs, v).reshape(B, -1, C)
            out[:, i:i + win[0], j:j + win[1]] = attn.proj(o).view(B, *win, C)
    return torch.roll(out, shift, (1, 2))[:, :H, :W]


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("size", [(8, 8), (5, 7), (9, 13), (4, 11), (3, 3), (1, 6)])
@pytest.mark.parametrize("shifted", [False, True])
def test_padded_windows_match_slow_reference(version, size, shifted):
    model = randomize_(SwinTransformer(tiny_config(version=version, pretrained_window_sizes=0)))
    block = model.layers[0].blocks[1 if shifted else 0]
    x = torch.randn(2, *size, 16)
    with torch.no_grad():
        assert (block.attn(x) - reference_window_attention(block, x)).abs().max() <= 1e-5


def test_padding_never_reaches_real_tokens():
    """Garbage in the padded area cannot change real tokens: the mask removes padded keys entirely."""
    block = randomize_(SwinTransformer(tiny_config())).layers[0].blocks[1]
    x = torch.randn(1, 5, 7, 16)
    win, shift = M.window_and_shift((5, 7), block.attn.window, block.attn.shift)
    mask = M.attention_mask((5, 7), win, shift, x.device)
    assert mask is not None and torch.isinf(mask).any() and (mask == M.REGION_MASK).any()
    # a 5x7 map padded to 8x8: exactly 64 - 35 padded key columns are -inf in every query row they touch
    n_pad_keys = torch.isinf(mask).any(dim=1).sum().item()
    assert n_pad_keys == 64 - 35


# ----------------------------------------------------------------------------------------- any input size

@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("size", [(4, 4), (32, 32), (97, 131), (20, 300), (513, 257)])
def test_any_input_size(version, size):
    model = SwinTransformer(tiny_config(version=version)).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        y, f = model(x), model.forward_features(x)
    expected = [math.ceil(s / 4) for s in size]
    for _ in range(2):
        expected = [math.ceil(s / 2) for s in expected]
    assert y.shape == (1, 5) and torch.isfinite(y).all()
    assert f.shape == (1, *expected, 64)


def test_no_state_written_during_forward():
    cfg = SwinConfig.from_name("swin_tiny_patch4_window7_224", depths=(2, 2, 2, 2), embed_dim=32,
                               num_heads=(1, 2, 4, 8))
    a = randomize_(SwinTransformer(cfg)).eval()
    b = SwinTransformer(cfg).eval()
    b.load_state_dict(a.state_dict())
    x224, x448 = torch.randn(1, 3, 224, 224), torch.randn(1, 3, 448, 448)
    _logits(a, x224)
    M.clear_caches()
    assert torch.equal(_logits(a, x448), _logits(b, x448))
    assert torch.equal(_logits(a, x224), _logits(b, x224))


def test_window_clamped_per_axis_and_shift_disabled():
    assert M.window_and_shift((5, 20), (7, 7), True) == ((5, 7), (0, 3))
    assert M.window_and_shift((7, 7), (7, 7), True) == ((7, 7), (0, 0))
    assert M.window_and_shift((20, 20), (7, 7), False) == ((7, 7), (0, 0))


@pytest.mark.parametrize("version", [1, 2])
def test_clamped_window_uses_learned_bias_of_same_offsets(version):
    attn = randomize_(SwinTransformer(tiny_config(version=version))).layers[0].blocks[0].attn  # window 4
    full, small = attn.position_bias((4, 4)), attn.position_bias((3, 2))  # (h, 16, 16), (h, 6, 6)
    sub = torch.tensor([r * 4 + c for r in range(3) for c in range(2)])
    if version == 1:  # same offsets -> same learned table entries
        assert torch.equal(small, full[:, sub][:, :, sub])
    else:  # V2 regenerates the bias from the CPB MLP for the new window (normalised by the new window)
        assert small.shape == (2, 6, 6) and not torch.allclose(small, full[:, sub][:, :, sub])


def test_v2_pretrained_window_sizes_set_the_coordinate_normalisation():
    coords = M.log_spaced_coords((4, 4), (8, 8), torch.device("cpu"))  # offsets up to 3 of a 4-window
    expected = torch.sign(torch.tensor(3.0)) * torch.log2(torch.tensor(3.0 / 7 * 8 + 1)) / 3
    assert torch.isclose(coords.max(), expected)
    own = M.log_spaced_coords((4, 4), (0, 0), torch.device("cpu")).max()  # own window: edge offset -> 8
    assert torch.isclose(own, torch.log2(torch.tensor(9.0)) / 3)


def test_masks_are_cached_and_bounded():
    M.clear_caches()
    a = M.attention_mask((9, 9), (4, 4), (2, 2), torch.device("cpu"))
    assert M.attention_mask((9, 9), (4, 4), (2, 2), torch.device("cpu")) is a
    for s in range(5, 5 + M.CACHE_SIZE + 20):
        M.attention_mask((s, s), (4, 4), (2, 2), torch.device("cpu"))
    assert M.attention_mask.cache_info().currsize <= M.CACHE_SIZE


# --------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("x, message", [
    (torch.randn(3, 64, 64), "expected a (B, 3, H, W) float tensor with H, W >= 4 (patch_size), got shape (3, 64, 64)"
                             " (add a batch dimension with x[None])"),
    (torch.randn(1, 1, 64, 64), "got 1 channels in shape (1, 1, 64, 64)"),
    (torch.randn(1, 64, 64, 3), "(channels-last? use x.permute(0, 3, 1, 2))"),
    (torch.randn(1, 3, 3, 64), "got shape (1, 3, 3, 64): smaller than one patch"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "got dtype torch.uint8 (convert with x.float())"),
])
def test_bad_input_errors(x, message):
    model = SwinTransformer(tiny_config())
    with pytest.raises(ValueError) as e:
        model(x)
    assert message in str(e.value)


# ----------------------------------------------------------------------------------- training behaviour

BUILDABLE = [n for n in VARIANTS if n not in ALIASES and "huge" not in n and "giant" not in n]


@pytest.mark.parametrize("name", BUILDABLE + ["swinv2_huge_window12_192", "swinv2_giant_window12_192"])
def test_every_variant_builds_and_trains(name):
    # huge/giant are too large for a CPU test at full depth: one block per stage keeps every layer type
    overrides = dict(depths=(1, 1, 1, 1)) if name not in BUILDABLE else {}
    model = randomize_(swinkit.create_model(name, num_classes=3, drop_path_rate=0.0, **overrides), std=0.02)
    model(torch.randn(1, 3, 64, 48)).logsumexp(-1).sum().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, f"{n} receives no gradient"


def test_fused_and_explicit_attention_agree():
    a = randomize_(SwinTransformer(tiny_config(version=2)))
    b = SwinTransformer(tiny_config(version=2, fused_attn=False))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 45, 70)
    assert (_logits(a, x) - _logits(b, x)).abs().max() <= 1e-5


def test_grad_checkpointing_gives_same_gradients():
    a = randomize_(SwinTransformer(tiny_config()))
    b = SwinTransformer(tiny_config())
    b.load_state_dict(a.state_dict())
    b.set_grad_checkpointing()
    x = torch.randn(2, 3, 40, 40)
    for m in (a, b):
        m(x).square().sum().backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), n


def test_stochastic_depth_is_linear_and_only_in_training():
    model = SwinTransformer(tiny_config(drop_path_rate=0.3))
    rates = [blk.drop_path.p for blk in model.blocks()]
    assert rates == pytest.approx([0.3 * i / 5 for i in range(6)])
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_logits(model, x), _logits(model, x))


def test_drop_path_keeps_or_drops_whole_samples_and_rescales_the_kept():
    from swinkit.nn.blocks import DropPath

    dp, shortcut = DropPath(0.25).train(), torch.randn(400, 3, 5)
    branch = torch.randn(400, 3, 5, requires_grad=True)
    out = dp(shortcut, branch)
    kept = (out - shortcut).flatten(1).abs().sum(1) > 0  # per sample: the whole branch or nothing
    assert torch.allclose(out[kept], shortcut[kept] + branch[kept] / 0.75, atol=1e-6)
    assert torch.equal(out[~kept], shortcut[~kept]) and 0.6 < kept.float().mean() < 0.9
    out.sum().backward()
    assert torch.allclose(branch.grad[kept], torch.full_like(branch[kept], 1 / 0.75))
    assert torch.equal(branch.grad[~kept], torch.zeros_like(branch[~kept]))
    assert torch.equal(dp.eval()(shortcut, branch), shortcut + branch)


def test_no_weight_decay_and_reset_classifier():
    model = SwinTransformer(tiny_config(version=2))
    nwd = model.no_weight_decay()
    assert "layers.0.blocks.0.attn.logit_scale" in nwd and "layers.0.blocks.0.attn.cpb_mlp.0.weight" in nwd
    assert "layers.0.blocks.0.norm1.weight" in nwd and "layers.0.blocks.0.mlp.fc1.bias" in nwd
    assert "layers.0.blocks.0.attn.qkv.weight" not in nwd and "head.fc.weight" not in nwd
    v1 = SwinTransformer(tiny_config(pos_embed="absolute+relative")).no_weight_decay()
    assert {"absolute_pos_embed", "layers.1.blocks.0.attn.relative_position_bias_table"} <= v1
    model.reset_classifier(7)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 64)


# ------------------------------------------------------------------------------------ interface, ablations

def test_forward_features_and_pyramid():
    model = SwinTransformer(SwinConfig(embed_dim=16, num_heads=(1, 2, 4, 8), depths=(1, 1, 1, 1))).eval()
    x = torch.randn(2, 3, 96, 64)
    maps = model.forward_pyramid(x)
    assert [tuple(m.shape) for m in maps] == [(2, 16, 24, 16), (2, 32, 12, 8), (2, 64, 6, 4), (2, 128, 3, 2)]
    with torch.no_grad():
        feats = model.forward_features(x)
        # the autograd path (maps) and the inference path (feats) round differently: sums of up to n = 512 terms
        # (the last MLP), about sqrt(n) u = 1.4e-6 of their scale each (u = 2^-24), ~5e-6 over the 4 blocks' 8
        # sublayers and 3 mergings in quadrature, per path: 1e-5 of the features' scale (3.6; measured 3e-7 of
        # it). An elementwise allclose(atol=1e-6) left 2x to spare where |feature| is small.
        assert (model.norm(maps[3].permute(0, 2, 3, 1)) - feats).abs().max() <= 1e-5 * feats.abs().max()
        assert torch.allclose(model.forward_head(feats), model(x), atol=1e-6)
    assert [m.shape[1] for m in model.forward_pyramid(x, out_indices=(1, -1))] == [32, 128]
    with pytest.raises(ValueError, match="out_indices must be stage indices in \\[0, 4\\)"):
        model.forward_pyramid(x, out_indices=(4,))


def test_ablation_switches():
    no_shift = SwinTransformer(tiny_config(shift=False))
    assert not any(blk.attn.shift for blk in no_shift.blocks())
    assert no_shift.blocks()[1].attn.attention_mask(8, 8, torch.device("cpu")) is None
    assert SwinTransformer(tiny_config()).blocks()[1].attn.attention_mask(8, 8, torch.device("cpu")) is not None
    none = SwinTransformer(tiny_config(pos_embed="none"))
    assert not any("relative_position" in n or "pos_embed" in n for n, _ in none.named_parameters())
    absolute = SwinTransformer(tiny_config(pos_embed="absolute"))
    assert absolute.absolute_pos_embed.shape == (1, 16, 16, 16)
    assert not any("relative_position" in n for n, _ in absolute.named_parameters())
    assert absolute(torch.randn(1, 3, 50, 90)).shape == (1, 5)  # embedding interpolated to the new grid


def test_non_square_and_per_stage_windows():
    model = SwinTransformer(tiny_config(window_size=[(2, 4), 4, (3, 5)])).eval()
    assert model.layers[0].blocks[0].attn.relative_position_bias_table.shape == (3 * 7, 2)
    assert model.blocks()[1].attn.attention_mask(16, 16, torch.device("cpu")).shape == (32, 8, 8)
    assert torch.isfinite(model(torch.randn(1, 3, 64, 52))).all()


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("version", [1, 2])
def test_bfloat16_autocast_and_cast_model_stay_close_to_float32(version, fused):
    model = randomize_(SwinTransformer(tiny_config(version=version, fused_attn=fused)))
    x = torch.randn(2, 3, 45, 70)
    ref = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(x)
    mixed.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        cast = model.to(torch.bfloat16)(x.bfloat16())
    assert mixed.dtype == cast.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits: each op's output (and, cast, each weight) is rounded by up to u = 2^-9 of its
    # scale. This model's 6 blocks (~10 rounded ops each), embedding, merging and head make ~70 roundings, whose
    # errors of either sign add to about sqrt(70) u = 1.6% of the logits' scale; 5% allows 3x that on any CPU
    # (native or emulated bf16, fused attention or not; measured <= 0.64% on an AMD EPYC, emulated, vectorised
    # kernels or not). No absolute slack: the logits' scale is only ~0.05-0.15 with these weights.
    for y in (mixed, cast):
        assert (y.float() - ref).abs().max() <= 0.05 * ref.abs().max()
