"""Every fast path against the plain reference path (explicit softmax attention, no cache, no chunking)."""
import pytest
import torch

from swinkit import model as M
from swinkit.model import SwinTransformer

from conftest import randomize_, tiny_config

SIZES = [(64, 64), (45, 70), (97, 33), (8, 8)]


def _pair(version: int, **fast):
    ref = randomize_(SwinTransformer(tiny_config(version=version, fused_attn=False, chunk_mb=1e9))).eval()
    fast_model = SwinTransformer(tiny_config(version=version, **fast)).eval()
    fast_model.load_state_dict(ref.state_dict())
    return ref, fast_model


def _reference(model, x):
    with torch.enable_grad():  # grad mode: the inference cache is bypassed
        return model(x).detach()


@pytest.mark.parametrize("version", [1, 2])
def test_fused_cached_inference_matches_reference(version):
    ref, fast = _pair(version)
    for size in SIZES:
        x = torch.randn(2, 3, *size)
        with torch.inference_mode():
            first, second = fast(x), fast(x)  # second call reads the cached bias + mask
        assert (first - _reference(ref, x)).abs().max() <= 1e-5
        assert torch.equal(first, second)


@pytest.mark.parametrize("version", [1, 2])
def test_chunked_attention_matches_reference(version):
    ref, chunked = _pair(version, chunk_mb=0.01)  # ~10 KB: a few windows per attention call
    calls = []
    blk = chunked.layers[0].blocks[1]
    blk.attn.register_forward_hook(lambda *_: calls.append("grad path"))  # one call per chunk of windows
    blk.mlp.register_forward_hook(lambda *_: calls.append("inference path"))  # one call per chunk of windows
    x = torch.randn(2, 3, 97, 33)  # stage 0: 25x9 map -> 7x3 = 21 windows of 4x4
    with torch.no_grad():
        assert (chunked(x) - _reference(ref, x)).abs().max() <= 1e-5
    assert calls.count("inference path") > 2  # the block really ran its windows in several chunks
    x.requires_grad_(True)
    ref_grad = torch.autograd.grad(ref(x).sum(), x)[0]
    assert (torch.autograd.grad(chunked(x).sum(), x)[0] - ref_grad).abs().max() <= 1e-5
    assert calls.count("grad path") > 2


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("tokens", [16, 100, 10**6])  # 1 window of 16 tokens per chunk, 6, a whole mask group
def test_windowed_inference_path_matches_reference(version, tokens, monkeypatch):
    """The inference path runs whole blocks per chunk of windows (grouped by mask pattern across the batch, with
    a shorter last chunk per group) and writes tokens back in place; the result equals the plain path."""
    monkeypatch.setattr(M, "INFER_CHUNK_TOKENS", tokens)
    ref, fast = _pair(version)
    for size in SIZES:
        x = torch.randn(3, 3, *size)
        with torch.inference_mode():
            assert (fast(x) - _reference(ref, x)).abs().max() <= 1e-5


def test_token_chunks_are_for_cpu_only(monkeypatch):
    """CPU inference takes INFER_CHUNK_TOKENS tokens of windows per block call; other devices (here: meta) take
    each mask group whole while it fits chunk_mb."""
    monkeypatch.setattr(M, "INFER_CHUNK_TOKENS", 16)  # one 4x4 window per call on CPU
    model = SwinTransformer(tiny_config()).eval()
    calls = []
    model.layers[0].blocks[0].mlp.register_forward_hook(lambda *_: calls.append(1))  # unshifted: one mask group
    counts = {}
    for device in ("cpu", "meta"):
        calls.clear()
        with torch.inference_mode():
            model.to(device)(torch.randn(2, 3, 64, 64, device=device))  # stage 0: 16x16 map, 16 windows an image
        counts[device] = len(calls)
    assert counts == {"cpu": 32, "meta": 1}


def test_model_built_under_inference_mode_runs_uncached():
    """Parameters made under inference_mode have no version counter to key the bias cache on."""
    ref, _ = _pair(1)
    x = torch.randn(2, 3, 45, 70)
    with torch.inference_mode():
        fast = SwinTransformer(tiny_config(version=1)).eval()  # inference-tensor parameters
        fast.load_state_dict(ref.state_dict())
        assert (fast(x) - _reference(ref, x)).abs().max() <= 1e-5


def test_inference_cache_follows_weight_updates():
    model = randomize_(SwinTransformer(tiny_config())).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        before = model(x)
    with torch.no_grad():
        for blk in model.blocks():
            blk.attn.relative_position_bias_table.normal_(0, 1.0)
    with torch.inference_mode():
        after = model(x)
    assert not torch.allclose(before, after)
    assert (after - _reference(model, x)).abs().max() <= 1e-6


@pytest.mark.parametrize("feat, win, shift", [((9, 13), (4, 4), (2, 2)), ((9, 13), (4, 4), (0, 0)),
                                             ((3, 13), (3, 4), (0, 2))])
def test_gather_partition_equals_pad_roll_partition(feat, win, shift):
    x = torch.randn(2, *feat, 5)
    Hp, Wp = M.padded_size(feat, win)
    padded = torch.nn.functional.pad(x, (0, 0, 0, Wp - feat[1], 0, Hp - feat[0]))
    expected = M.window_partition(torch.roll(padded, (-shift[0], -shift[1]), (1, 2)), win)  # (B*nW, N, C)
    to_windows, from_windows = M.window_order(feat, win, shift, x.device)
    got = padded.reshape(2, -1, 5).index_select(1, to_windows)
    assert torch.equal(got.view_as(expected), expected)
    assert torch.equal(got.index_select(1, from_windows).view_as(x), x)


@pytest.mark.parametrize("feat, win, shift, patterns", [((16, 16), (4, 4), (2, 2), 4), ((14, 22), (4, 4), (2, 2), 4),
                                                       ((14, 22), (4, 4), (0, 0), 4), ((16, 16), (4, 4), (0, 0), 1),
                                                       ((23, 23), (7, 7), (3, 3), 9)])  # pad 5 + shift 3 > 7
def test_window_groups_share_one_mask_each(feat, win, shift, patterns):
    """Inference takes windows group by group with one mask per group: every window's own mask is its group's."""
    order, masks, counts = M.window_groups(feat, win, shift, torch.device("cpu"))
    nW = len(M.window_labels(feat, win, shift, torch.device("cpu")))
    assert sorted(order.tolist()) == list(range(nW)) and sum(counts) == nW and len(counts) == patterns
    full = M.attention_mask(feat, win, shift, torch.device("cpu"))  # (nW, N, N) or None
    if full is None:
        assert masks is None
        return
    for own, group in zip(full[order].split(counts), masks):
        assert torch.equal(own, group.expand_as(own))


@pytest.mark.parametrize("version", [1, 2])
def test_compiled_model_fullgraph_matches_reference(version):
    ref, fast = _pair(version)
    x = torch.randn(2, 3, 45, 70)
    if version == 1:  # graph capture only: fullgraph=True proves no graph break
        compiled = torch.compile(fast, fullgraph=True, dynamic=False, backend="eager")
    else:  # the real inductor code path, on a shallow model to keep the test short
        ref, fast = (SwinTransformer(tiny_config(version=2, depths=(1, 1), num_heads=(2, 4), fused_attn=f,
                                                 chunk_mb=1e9)).eval() for f in (False, True))
        randomize_(ref)
        fast.load_state_dict(ref.state_dict())
        compiled = torch.compile(fast, fullgraph=True, dynamic=False)
    with torch.no_grad():
        assert (compiled(x) - _reference(ref, x)).abs().max() <= 1e-5
