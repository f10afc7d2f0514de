"""Video Swin: the N-D window core in 3-D against direct constructions of the official definitions, the 3-D model's
invariants (a clip of one frame is the 2-D model; per-frame independence without temporal mixing; every inference
path the same; padded keys never attended), any clip size, exact input errors, and the 3-D figures."""
import itertools

import pytest
import torch

from swinkit.config import SwinConfig, VideoSwinConfig
from swinkit.models.swin import SwinTransformer
from swinkit.models.video import VideoSwinTransformer
from swinkit.nn import windows as W
from swinkit.tools import viz

CPU = torch.device("cpu")


def _tiny(**kw) -> VideoSwinTransformer:
    cfg = dict(embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=(2, 3, 3), num_classes=5,
               drop_path_rate=0.0, head_drop_rate=0.0)
    torch.manual_seed(0)
    model = VideoSwinTransformer(VideoSwinConfig(**{**cfg, **kw})).eval()
    with torch.no_grad():  # non-trivial position biases, so that a wrong index shows
        for blk in model.blocks():
            blk.attn.relative_position_bias_table.normal_(std=1.0)
    return model


def _naive_regions(padded, win, shift) -> torch.Tensor:
    """The official construction: label the slices (0, -w), (-w, -s), (-s, None) of every axis in turn."""
    img = torch.zeros(padded, dtype=torch.long)
    count = 0
    per_axis = [((0, -w), (-w, -s), (-s, None)) if s else ((0, None),) for w, s in zip(win, shift)]
    for sl in itertools.product(*per_axis):
        img[tuple(slice(a, b) for a, b in sl)] = count
        count += 1
    return img


@pytest.mark.parametrize("feat,win,shift", [((4, 6, 9), (2, 3, 3), (1, 1, 1)), ((3, 10, 11), (2, 3, 3), (1, 1, 1)),
                                            ((8, 14, 14), (8, 7, 7), (0, 3, 3)), ((5, 4, 7), (2, 4, 3), (1, 0, 1))])
def test_3d_mask_is_the_official_region_mask(feat, win, shift):
    padded = W.padded_size(feat, win)
    regions = _naive_regions(padded, win, shift)
    ref = W.window_partition(regions[None, ..., None], win)[..., 0]  # (nW, N)
    ref = torch.where(ref[:, None, :] != ref[:, :, None], -100.0, 0.0)
    # official padding (attended) gives exactly that mask; masked padding adds -inf on padded keys only
    assert torch.equal(W.attention_mask(feat, win, shift, CPU, mask_padding=False), ref)
    pad = W.window_padding(feat, win, shift, CPU)  # (nW, N)
    assert pad.any() == (padded != feat)
    expected = ref.masked_fill(pad[:, None, :], float("-inf"))  # -inf on padded keys, the regions elsewhere
    real = ~pad  # the rows of padded queries are cropped away, whatever they hold
    assert torch.equal(W.attention_mask(feat, win, shift, CPU)[real], expected[real])


def test_3d_partition_and_gather_match_pad_roll_partition():
    feat, win, shift = (3, 5, 7), (2, 3, 3), (1, 1, 1)
    x = torch.randn(2, *feat, 4)
    padded = W.padded_size(feat, win)
    ref = W.pad_to(x, padded).roll((-1, -1, -1), (1, 2, 3))
    ref = ref.view(2, 2, 2, 2, 3, 3, 3, 4).permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, 18, 4)  # official 3-D order
    to_windows, from_windows = W.window_order(feat, win, shift, CPU)
    got = W.pad_to(x, padded).reshape(2, -1, 4).index_select(1, to_windows).view(-1, 18, 4)
    assert torch.equal(got, ref)
    back = got.view(2, -1, 4).index_select(1, from_windows).view(2, *feat, 4)
    assert torch.equal(back, x)


def test_3d_relative_index_is_the_official_one():
    win = (2, 3, 4)
    coords = torch.stack(torch.meshgrid(*(torch.arange(w) for w in win), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 3)
    rel = rel + torch.tensor(win) - 1
    ref = rel[..., 0] * (2 * win[1] - 1) * (2 * win[2] - 1) + rel[..., 1] * (2 * win[2] - 1) + rel[..., 2]
    assert torch.equal(W.relative_position_index(win, win, CPU), ref)
    # a clamped window indexes the entries of its own offsets in the larger table
    small = W.relative_position_index((1, 2, 2), win, CPU)
    full = ref.view(*win, *win)[:1, :2, :2, :1, :2, :2].reshape(4, 4)
    assert torch.equal(small, full)


def test_clamped_bias_offsets_and_prefix():
    model = _tiny()
    attn = model.layers[0].blocks[0].attn
    full = attn.position_bias((2, 3, 3))  # (h, 18, 18)
    sub = attn.position_bias((1, 3, 3))  # the first frame's slots have the same offsets as the 3x3 block
    assert torch.equal(sub, full[:, :9, :9])
    sub2 = attn.position_bias((2, 2, 2))
    keep = torch.tensor([t * 9 + y * 3 + x for t in range(2) for y in range(2) for x in range(2)])
    assert torch.equal(sub2, full[:, keep][:, :, keep])
    prefix = _tiny(clamped_bias="prefix").layers[0].blocks[0].attn
    assert torch.equal(prefix.position_bias((2, 2, 2)), full[:, :8, :8])  # the official / torchvision indexing


def test_one_frame_clip_is_the_2d_model():
    """patch (1, p, p) and window (1, w, w) on a T=1 clip: the 3-D core reduces exactly to the 2-D model."""
    video = _tiny(patch_size=(1, 4, 4), window_size=(1, 3, 3))
    image = SwinTransformer(SwinConfig(embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=3, num_classes=5,
                                       drop_path_rate=0.0)).eval()
    sd = video.state_dict()
    sd["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"][:, :, 0]
    image.load_state_dict(sd)
    x = torch.randn(2, 3, 1, 44, 52)
    with torch.no_grad():
        assert torch.allclose(video(x), image(x[:, :, 0]), atol=1e-5)


def test_no_temporal_mixing_means_frames_are_independent():
    """With temporal patch and window 1, each frame's features are the 2-D model's of that frame alone."""
    model = _tiny(patch_size=(1, 4, 4), window_size=(1, 3, 3))
    x = torch.randn(1, 3, 4, 24, 24)
    with torch.no_grad():
        whole = model.forward_features(x)
        alone = torch.cat([model.forward_features(x[:, :, t:t + 1]) for t in range(4)], dim=2)
    assert torch.allclose(whole, alone, atol=1e-5)
    shuffled = x[:, :, [2, 0, 3, 1]]
    with torch.no_grad():
        assert torch.allclose(model(shuffled), model(x), atol=1e-5)  # frame order cannot matter
    mixing = _tiny()
    with torch.no_grad():
        assert not torch.allclose(mixing(shuffled), mixing(x), atol=1e-3)  # 3-D windows see the order


@pytest.mark.parametrize("mask_padding", [True, False])
@pytest.mark.parametrize("size", [(6, 40, 44), (3, 17, 23), (16, 24, 24)])
def test_every_inference_path_gives_the_same_numbers(size, mask_padding):
    model = _tiny(mask_padding=mask_padding, chunk_mb=0.05)  # small budget: several chunks per block
    x = torch.randn(2, 3, *size)
    ref = model(x).detach()  # autograd: the plain training path
    for path in ("plain", "windows", "auto"):
        model.set_inference_path(path)
        with torch.no_grad():
            assert torch.allclose(model(x), ref, atol=1e-5), path


def test_padded_keys_get_no_attention():
    model = _tiny()
    blk = model.layers[0].blocks[1]  # shifted
    blk.attn.keep_attn = True
    x = torch.randn(1, 3, 3, 20, 28)  # tokens (2, 5, 7): padded to (2, 6, 9)
    with torch.no_grad():
        model(x)
    feat = (2, 5, 7)
    win, shift = blk.attn.window_and_shift(*feat)
    pad = W.window_padding(feat, win, shift, CPU)  # (nW, N)
    attn = blk.attn.last_attn[0]  # (nW, h, N, N)
    assert pad.any()
    key_pad = pad[:, None, None, :].expand_as(attn)
    assert attn[key_pad].abs().max() == 0
    assert torch.allclose(attn.sum(-1), torch.ones(()))


def test_any_clip_size_and_shapes():
    model = _tiny()
    for size in [(2, 4, 4), (1, 9, 13), (5, 33, 21), (7, 64, 48)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            feats = model.forward_pyramid(x, out_indices=(0, 1))
            out = model(x)
        t = -(-size[0] // 2)
        assert [f.shape[2:] for f in feats] == [(t, -(-size[1] // 4), -(-size[2] // 4)),
                                              (t, -(-size[1] // 8), -(-size[2] // 8))]
        assert out.shape == (1, 5) and torch.isfinite(out).all()
    assert model.forward_features(torch.randn(1, 3, 4, 16, 16)).shape == (1, 32, 2, 2, 2)


def test_window_is_clamped_and_shift_dropped_per_axis():
    blk = _tiny(window_size=(8, 7, 7)).layers[0].blocks[1]
    assert blk.attn.window_and_shift(4, 10, 7) == ((4, 7, 7), (0, 3, 0))
    assert blk.attn.window_and_shift(9, 7, 20) == ((8, 7, 7), (4, 0, 3))


def test_input_errors_are_exact():
    model = _tiny()
    with pytest.raises(ValueError, match=r"expected a \(B, 3, T, H, W\) float video tensor.*add a batch dimension"):
        model(torch.randn(3, 4, 16, 16))
    with pytest.raises(ValueError, match=r"got 4 channels.*frames first\? use x.transpose\(1, 2\)"):
        model(torch.randn(1, 4, 3, 16, 16))
    with pytest.raises(ValueError, match=r"got an empty tensor of shape \(1, 3, 0, 16, 16\)"):
        model(torch.randn(1, 3, 0, 16, 16))
    with pytest.raises(ValueError, match=r"dtype torch.uint8 \(convert with x.float\(\)\)"):
        model(torch.zeros(1, 3, 2, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"a \(t, h, w\) triple"):
        VideoSwinConfig(window_size=[(7, 7)] * 4)
    with pytest.raises(ValueError, match="Video Swin supports version 1"):
        VideoSwinConfig(version=2)


def test_grad_checkpointing_and_bf16_autocast():
    model = _tiny().train()
    x = torch.randn(2, 3, 4, 24, 24)
    model(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing()
    model(x).sum().backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(grads, model.parameters()))
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x)
    with torch.no_grad():
        ref = model(x)
    # bf16 autocast rounds each op's output by up to u = 2^-9 of its scale: 4 blocks (~10 rounded ops each), the
    # embedding, merging and head make ~50 roundings, about sqrt(50) u = 1.4% of the logits' scale in quadrature;
    # 5% allows 3.5x that on any CPU, native or emulated bf16 (measured 0.35% on an AMD EPYC, vectorised kernels or
    # not). Relative, as the logits' scale is 0.045: the absolute 0.1 this test had would pass any output at all.
    assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_video_window_and_mask_figures_come_from_the_blocks():
    model = _tiny()
    d = viz.video_windows_data(model, (6, 40, 44), stage=0)  # tokens (3, 10, 11) -> padded (4, 12, 12)
    assert d["feat"] == (3, 10, 11) and d["padded"] == (4, 12, 12) and d["shift"] == (1, 1, 1)
    assert d["n_windows"] == 2 * 4 * 4
    for key in ("regular", "shifted"):  # every window holds exactly N tokens
        assert torch.equal(torch.bincount(d[key].flatten()), torch.full((32,), 18))
    m = viz.video_mask_data(model, (6, 40, 44), stage=0)
    assert m["mask"] is model.layers[0].blocks[1].attn.attention_mask(3, 10, 11, CPU)
    m = viz.video_mask_data(model, (8, 48, 48), stage=0)  # tokens (4, 12, 12): no padding
    assert len(m["labels"][m["window_index"]].unique()) == 8  # 2^3 regions meet in the corner window
    fig, _ = viz.video_windows(model, (6, 40, 44))
    fig2, _ = viz.video_mask(model, (6, 40, 44))
    assert len(fig.axes) == 8 and len(fig2.axes) >= 3


def test_viz_cli_draws_video_figures(tmp_path, capsys):
    from swinkit.cli import main
    assert main(["viz", "windows", "--model", "video_swin_t", "--size", "16", "64", "64",
                 "--out", str(tmp_path / "w.png")]) == 0
    assert main(["viz", "mask", "--model", "video_swin_t", "--out", str(tmp_path / "m.png")]) == 0
    out = capsys.readouterr().out
    assert "token map (8, 16, 16), window (8, 7, 7), shift (0, 3, 3)" in out
    assert "mask (8, 392, 392)" in out
    assert main(["viz", "mask", "--model", "video_swin_t", "--size", "64", "64",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "--size takes T H W (a video model)" in capsys.readouterr().err



@pytest.mark.parametrize("name", ["video_swin_t", "video_swin_b", "video_swin_b_ssv2"])
def test_params_and_flops_match_the_published_figures(name):
    from swinkit.counting import measure_video_variant

    r = measure_video_variant(name)  # on the meta device, at 32x224x224
    assert r["params_m"] == pytest.approx(r["paper_params_m"], rel=0.01)
    assert r["gmacs"] == pytest.approx(r["paper_gmacs"], rel=0.01)
