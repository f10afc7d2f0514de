"""swinkit.viz: the data behind every figure is the model's own (windows, masks, biases, attention, gradients,
FLOP counts), checked against what forward actually does and against the geometry of the papers."""
import sys

import pytest
import torch
import torch.nn as nn

from swinkit.tools import viz
from swinkit.cli import main
from swinkit.config import SwinConfig
from swinkit import SwinTransformer
from swinkit.nn.windows import REGION_MASK, window_groups

from conftest import randomize_, tiny_config


def _tiny(**overrides) -> SwinTransformer:
    """A tiny model on the windows inference path (the auto choice takes the plain path at these sizes): the
    figures are checked against what both paths hand to attention."""
    return SwinTransformer(tiny_config(**{"inference_path": "windows", **overrides})).eval()


def _capture_attend(blk):
    """Record (windows, bias) of every attention call of blk: the inference path and the autograd path both hand
    their windows and the bias (position bias + mask) to blk.attn.attend. `del blk.attn.attend` restores it.
    See _in_window_order for the inference path's order."""
    calls, attend = [], blk.attn.attend

    def record(x, bias):
        calls.append((x.detach(), bias))
        return attend(x, bias)

    blk.attn.attend = record
    return calls


def _in_window_order(calls, feat, win, shift):
    """(windows (nW, N, C), biases (nW, h, N, N)) of one image from the inference path's calls, which come in
    mask-pattern groups (model.window_groups) with one broadcast bias per call."""
    back = window_groups(feat, win, shift, torch.device("cpu"))[0].argsort()
    windows = torch.cat([c[0] for c in calls])
    biases = torch.cat([c[1].expand(len(c[0]), -1, -1, -1) for c in calls])
    return windows[back], biases[back]


# ------------------------------------------------------------------------------------------------ windows


def test_windows_counts_without_padding():
    d = viz.windows_data(_tiny(), (64, 64), stage=0)  # 16x16 tokens, window 4, shift 2
    assert (d["feat"], d["window"], d["shift"], d["padded"]) == ((16, 16), (4, 4), (2, 2), (16, 16))
    assert d["n_windows"] == 16 and d["grid"] == (4, 4)
    assert d["n_pieces"] == 25  # the shifted partition cut naively: (4 + 1) x (4 + 1) windows
    per = d["regions_per_window"].view(4, 4)
    assert per[:3, :3].eq(1).all() and per[3, :3].eq(2).all() and per[:3, 3].eq(2).all() and per[3, 3] == 4
    assert per.sum() == d["n_pieces"] and not d["pad"].any()


def test_windows_counts_with_padding_match_forward_sizes():
    model = _tiny()
    d = viz.windows_data(model, (56, 88), stage=0)  # 14x22 tokens -> padded to 16x24
    assert (d["feat"], d["padded"], d["grid"], d["n_windows"]) == ((14, 22), (16, 24), (4, 6), 24)
    assert d["pad"].sum() == 16 * 24 - 14 * 22 and d["n_pieces"] == 5 * 7
    assert d["regions_per_window"].sum() == 35
    with torch.no_grad():
        maps = model.forward_pyramid(torch.zeros(1, 3, 56, 88), out_indices=(0, 1))
    assert [tuple(m.shape[-2:]) for m in maps] == viz.stage_sizes(model, (56, 88))[:2]
    assert viz.windows_data(model, (56, 88), stage=1)["feat"] == (7, 11)


@pytest.mark.parametrize("size", [(64, 64), (56, 88)])
def test_windows_drawn_are_the_windows_the_block_builds(size):
    """Feed token ids through the real shifted block: the windows handed to attention hold exactly the tokens
    the figure's partition puts in each slot (padding enters as zeros)."""
    model = _tiny()
    d = viz.windows_data(model, size, stage=0)
    (h, w), (_, Wp) = d["feat"], d["padded"]
    for blk, key, shift in ((model.layers[0].blocks[0], "slots_regular", (0, 0)),
                            (model.layers[0].blocks[1], "slots_shifted", d["shift"])):
        blk.norm1 = nn.Identity()  # let the ids reach attention unchanged
        ids = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, h, w, 1).expand(1, h, w, blk.attn.dim)
        calls = _capture_attend(blk)
        with torch.no_grad():
            blk(ids.contiguous())
        del blk.attn.attend
        seen = _in_window_order(calls, d["feat"], d["window"], shift)[0][..., 0]  # (nW, N)
        slots = d[key]
        y, x = slots // Wp, slots % Wp
        expected = torch.where((y < h) & (x < w), y * w + x + 1, 0).float()
        assert torch.equal(seen, expected)


def test_windows_figure_has_three_panels():
    model = _tiny()
    fig, d = viz.windows(model, viz.load_image(None, (56, 88)), stage=0, label="tiny")
    assert len(fig.axes) == 3 and "padded to 16x24" in fig._suptitle.get_text()


# ------------------------------------------------------------------------------------------------ masks


@pytest.mark.parametrize("size", [(64, 64), (56, 88)])
def test_mask_drawn_is_the_mask_used_in_forward(size):
    model = _tiny()
    d = viz.mask_data(model, size, stage=0)
    blk = model.layers[0].blocks[d["block"][1]]
    calls = _capture_attend(blk)
    with torch.no_grad():
        model(torch.randn(1, 3, *size))
    bias = _in_window_order(calls, d["feat"], d["window"], d["shift"])[1]  # (nW, h, N, N) = position bias + mask
    used = bias - blk.attn.position_bias(d["window"])
    assert torch.equal(used.isinf(), d["mask"][:, None].isinf().expand_as(used))
    assert torch.allclose(used, d["mask"][:, None].expand_as(used), atol=1e-4)
    # the labels drawn beside each panel explain every entry: -inf on padded keys (label -1), else -100
    # exactly between slots of different labels
    labels, m = d["regions"], d["mask"]
    pad_key = (labels < 0)[:, None, :].expand_as(m)
    differ = labels[:, None, :] != labels[:, :, None]
    assert torch.equal(m.isinf(), pad_key) and torch.equal(m == REGION_MASK, differ & ~pad_key)
    assert pad_key.any() == (size == (56, 88)) and labels.max() == 8


def test_mask_figure_one_panel_per_window_and_error_without_mask():
    model = _tiny()
    fig, d = viz.mask(model, (48, 48), stage=0)  # 12x12 tokens: 3x3 windows
    assert d["mask"].shape == (9, 16, 16) and len(fig.axes) == 9 + 1  # panels + colour bar
    with pytest.raises(ValueError, match=r"needs neither a shift nor padding; use a larger --size"):
        viz.mask_data(model, (16, 16), stage=0)  # 4x4 tokens: one window, no shift


# ------------------------------------------------------------------------------------------------ position bias


def test_v1_bias_drawn_is_the_learned_table():
    model = _tiny()
    d = viz.bias_data(model, "1.1")
    attn = model.layers[1].blocks[1].attn
    table = attn.relative_position_bias_table.detach().T.reshape(attn.num_heads, 7, 7)  # (heads, 2M-1, 2M-1)
    assert d["block"] == (1, 1) and torch.equal(d["table"], table)
    fig, _ = viz.bias(model, "1.1")
    assert len(fig.axes) == attn.num_heads + 1


def test_v2_bias_extrapolation_agrees_with_trained_offsets():
    model = randomize_(_tiny(version=2))
    d = viz.bias_data(model, (0, 1), extrapolate=8)
    assert d["table"].shape == (2, 7, 7) and d["big_table"].shape == (2, 15, 15)
    torch.testing.assert_close(d["big_table"][:, 4:11, 4:11], d["table"])
    assert not torch.allclose(d["big_table"][:, 0, 0], d["big_table"][:, 7, 7])


def test_block_spec_errors():
    model = _tiny()
    assert viz.parse_block(model, "3") == (1, 1) and viz.parse_block(model, "2.0") == (2, 0)
    with pytest.raises(ValueError, match=r"block '3.0' not found: the model has 3 stages with depths \(2, 2, 2\)"):
        viz.parse_block(model, "3.0")


# ------------------------------------------------------------------------------------------------ attention


def test_attention_stays_in_the_window_and_the_shifted_window_reaches_four():
    model = _tiny()
    image = viz.load_image(None, (64, 64))
    with torch.no_grad():
        before = model(viz.normalize(image))
    d = viz.attention_data(model, image, "0.0", query=(32, 32))  # token (8, 8): a corner of four windows
    regular, shifted = d["blocks"]
    for b in d["blocks"]:
        assert b["in_window"].sum() == 16
        torch.testing.assert_close(b["attn"].sum(dim=(1, 2)), torch.ones(2))
        assert b["attn"][:, ~b["in_window"]].abs().max() == 0
    assert regular["reached"] == 1 and shifted["reached"] == 4
    assert regular["in_window"][8:12, 8:12].all() and shifted["in_window"][6:10, 6:10].all()
    assert viz.attention_data(model, image)["block"] == (1, 0)  # default: 8x8 map, the last with 4 windows
    blocks = model.layers[0].blocks
    assert not any(b.attn.keep_attn or b.attn.last_attn is not None for b in blocks)
    with torch.no_grad():
        assert torch.equal(model(viz.normalize(image)), before)


def test_keep_attn_changes_no_output_and_stores_softmax():
    model = _tiny()
    x = torch.randn(2, 3, 56, 88)
    with torch.no_grad():
        fused = model(x)
        blk = model.layers[0].blocks[1]
        blk.attn.keep_attn = True
        explicit = model(x)
    torch.testing.assert_close(explicit, fused, rtol=1e-5, atol=1e-5)
    probs = blk.attn.last_attn
    assert probs.shape[-3:] == (2, 16, 16) and probs.numel() == 2 * 24 * 2 * 16 * 16
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))


# ------------------------------------------------------------------------------------------------ receptive field


def test_receptive_field_grows_by_windows_and_jumps_at_merging():
    # random norm weights too: with a fresh LayerNorm (weight 1, bias 0) a token's channels sum to 0 in exact
    # arithmetic, so the embedding's gradient is float32 noise, which oneDNN's SSE4.1 convolution gives as exact
    # zeros (no support at all) and AVX2's as 1e-7 that happens to fill the patch. std 0.2, not 0.05, so that
    # attention spreads and the effective field grows inside a stage as well.
    model = randomize_(_tiny(depths=(2, 2), num_heads=(2, 4), window_size=4), std=0.2)
    d = viz.receptive_field_data(model, viz.load_image(None, (128, 128)))
    assert d["names"] == ["embed", "0.0", "0.1", "1.0", "1.1"]
    # centre token 16 of the 32x32 map (4 px tokens, window 4, shift 2): its patch (4 px); its window [16, 20)
    # (16 px); the shifted window [14, 18) spans two windows [12, 20) (32 px); after merging, token 8 of the
    # 16x16 map (8 px tokens) sees window [8, 12) = 4 px tokens [16, 24), whose shifted windows span
    # [12, 28) (64 px); its shifted window [6, 10) = tokens [12, 20) reaches [4, 28) (96 px)
    assert d["support"] == [4, 16, 32, 64, 96]
    s = d["support"]
    assert s[3] - s[2] > s[2] - s[1]  # the jump at patch merging is larger than the step inside the stage
    assert d["effective"][-1] > d["effective"][0]


# ------------------------------------------------------------------------------------------------ complexity


def test_complexity_exponents_linear_for_swin_quadratic_for_global_attention():
    cfg = tiny_config(depths=(1, 1), num_heads=(1, 2), window_size=4)
    vit = dict(hidden_dim=32, num_layers=1, num_heads=1, mlp_dim=64)
    d = viz.complexity_data(cfg, sizes=(64, 128, 256, 512, 1024, 2048, 4096), time_sizes=(), vit=vit)
    assert abs(d["swin_exponent"] - 1) < 0.02 and abs(d["swin_exponent_low"] - 1) < 0.1
    assert 1.9 < d["vit_exponent"] <= 2.0 and d["vit_exponent_low"] < d["vit_exponent"]
    # counted on the meta device, where attention decomposes into matmuls: equal to a real model's explicit path
    explicit = SwinTransformer(tiny_config(depths=(1, 1), num_heads=(1, 2), window_size=4, fused_attn=False))
    assert d["swin_macs"][0] == viz.count_macs(explicit.eval(), (64, 64))
    assert d["swin_ms"] == [] and d["vit_ms"] == []


def test_closest_vit_to_swin_t_is_vit_s():
    assert viz.closest_vit(SwinConfig.from_name("swin_t")) == "ViT-S/16"
    assert viz.closest_vit(SwinConfig.from_name("swin_b")) == "ViT-B/16"


# ------------------------------------------------------------------------------------------------ CLI and I/O


def test_cli_writes_png_and_reports(tmp_path, capsys):
    out = tmp_path / "figs" / "mask.png"
    assert main(["viz", "mask", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mask (9, 49, 49) for a (84, 84) input (token map (21, 21))" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["mask.png"]  # no temporary file left


@pytest.mark.parametrize("argv, message", [
    (["viz", "windows", "--stage", "4"], "--stage 4: swin_t has stages 0..3"),
    (["viz", "mask", "--out", "mask.bmpx"], "unknown image format 'bmpx'"),
    (["viz", "attention", "--image", "no/such.jpg"], "image no/such.jpg not found"),
])
def test_cli_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_sample_image_is_a_photograph_in_unit_range():
    img = viz.load_image(None, (40, 60))
    assert img.shape == (3, 40, 60) and 0 <= img.min() and img.max() <= 1 and img.std() > 0.1


def test_checkpoint_weights_are_the_ones_drawn(tmp_path):
    pytest.importorskip("swinkit.io.load", reason="swinkit.io.load (load_model) not written yet")
    model = randomize_(_tiny())
    path = tmp_path / "run.pth"
    torch.save({"model": model.state_dict(), "config": model.cfg.to_dict(), "class_names": list("abcde")}, path)
    loaded, label = viz.load_for_viz(str(path), "swin_t")
    assert label == "custom from run.pth"
    assert torch.equal(viz.bias_data(loaded, "1.0")["table"], viz.bias_data(model, "1.0")["table"])


def test_checkpoint_without_the_checkpoint_module_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "swinkit.io.load", None)  # as if the module were missing
    assert main(["viz", "bias", "--checkpoint", str(tmp_path / "x.pth"), "--out", str(tmp_path / "b.png")]) == 2
    assert "--checkpoint needs swinkit.io.load" in capsys.readouterr().err
