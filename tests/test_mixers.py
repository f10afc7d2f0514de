"""Token mixers (swinkit.nn.mixers) other than window attention: each against an independent reference.

The references are loop-by-loop numpy float64 versions written from each method's definition (per query, per
head, its own set of keys, softmax written out), so they share no code with the modules; cswin is also checked
against a re-implementation of the official CSWin algorithm (stripe partition by view/permute, per-stripe LePE),
neighborhood against the NATTEN library where installed, pool against PoolFormer's formula.
"""
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from swinkit.config import SwinConfig
from swinkit.nn.mixers import MixerSpec, create_mixer, mixer_names
from swinkit.nn.mixers.cluster import balanced_kmeans, group_capacities

C, HEADS, B = 16, 4, 2
WINDOW = (4, 4)  # hub windows, cluster groups of 16
KERNEL = (5, 5)  # neighbourhood (odd)
SIZES = [(5, 7), (9, 6), (3, 3), (2, 3)]  # odd sizes; (3, 3) and (2, 3) are smaller than the window / kernel
ANY_SIZES = [(1, 1), (1, 5), (5, 7), (9, 6), (3, 3), (2, 3), (12, 11)]
NEW_MIXERS = ("cswin", "axial", "neighborhood", "hub", "cluster", "pool", "dwconv", "identity")
TEMPERATURES = (4.0, 12.0, 2.0, 7.0)  # V2: exp(logit_scale) per head, set by `randomize`
EPS = {torch.float64: torch.finfo(torch.float64).eps, torch.float32: torch.finfo(torch.float32).eps}


def tolerance(dtype: torch.dtype, n: int, scale: float) -> float:
    """Rounding bound derived from the computation: about 8 chained roundings (qkv, V2 normalisation, logits, exp,
    softmax sum, weighted sum, LePE, proj), each a sum of at most n terms with error eps * sqrt(n) (random-walk
    accumulation), amplified up to 16 times by logits of magnitude <= 16 (V1 with these weights; V2 temperature at
    most max(TEMPERATURES) = 12); relative to the output scale. Float64: ~1e-13 of the output."""
    stages, amplification = 8, 16
    return stages * amplification * EPS[dtype] * math.sqrt(n) * scale


def assert_close(out: torch.Tensor, ref, n: int):
    ref = torch.as_tensor(ref, dtype=out.dtype)
    scale = ref.abs().max().item()
    err = (out.detach() - ref).abs().max().item()
    assert err <= tolerance(out.dtype, n, scale), f"max error {err:.3g} at output scale {scale:.3g}"


def config(version=1, **kw) -> SwinConfig:
    base = dict(embed_dim=C, depths=(1, 1), num_heads=(HEADS, HEADS), window_size=WINDOW, img_size=32,
                version=version, split_size=(2, 2), hub_tokens=3, drop_path_rate=0.0)
    return SwinConfig(**{**base, **kw})


def build(name: str, version: int = 1, window=WINDOW, stage: int = 0, num_stages: int = 2, grid=(8, 8),
          dtype=torch.float64, heads=HEADS, **cfg) -> torch.nn.Module:
    """The mixer with random weights (std 0.3: peaked attention) and, in V2, TEMPERATURES."""
    spec = MixerSpec(dim=C, num_heads=heads, window=tuple(window), shift=False, pretrained_window=(0, 0),
                     stage=stage, num_stages=num_stages, grid=tuple(grid), cfg=config(version, **cfg))
    m = create_mixer(name, spec).to(dtype).eval()
    with torch.no_grad():
        for pname, p in m.named_parameters():
            if pname.endswith("logit_scale"):
                heads = p.shape[0]
                p.copy_(torch.log(torch.tensor(TEMPERATURES[:heads], dtype=p.dtype)).view(-1, 1, 1))
            else:
                p.normal_(0, 0.3)
    return m


def inputs(size, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(B, *size, C, dtype=dtype)


# ------------------------------------------------------------------------------------------------ loop references
def np_(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def linear(mod, x: np.ndarray) -> np.ndarray:
    """x @ W^T + b of an nn.Linear, in numpy."""
    out = x @ np_(mod.weight).T
    return out if mod.bias is None else out + np_(mod.bias)


def temperatures(m) -> list | None:
    """V2: each head's exp(logit_scale) clamped at 100; None for V1."""
    ls = getattr(m, "logit_scale", None)
    return None if ls is None else [math.exp(min(v, math.log(100.0))) for v in np_(ls).flatten()]


def head_attend(q, K, V, scale, temp=None, bias=None) -> np.ndarray:
    """One query of one head: q (d,), keys K and values V (n, d), optional additive bias (n,) -> (d,). V2 (temp):
    cosine similarity times temp."""
    if temp is not None:
        q = q / max(np.linalg.norm(q), 1e-12) * temp
        K = K / np.maximum(np.linalg.norm(K, axis=1, keepdims=True), 1e-12)
        scale = 1.0
    logits = np.array([scale * float(q @ k) for k in K])
    if bias is not None:
        logits = logits + bias
    w = np.exp(logits - logits.max())
    return (w / w.sum()) @ V


def heads_of(t: np.ndarray, heads: int) -> np.ndarray:
    """(..., c) -> (..., heads, c / heads): channels split into contiguous heads."""
    return t.reshape(*t.shape[:-1], heads, -1)


def group_reference(att, x: np.ndarray, keys_of, context=None) -> np.ndarray:
    """GroupAttention by loops: x (n_tokens, C) rows are the queries; keys_of(t) lists the rows of x that token t
    attends to; context (M, C) rows are extra keys for every query. -> (n_tokens, C) after proj."""
    qkv = linear(att.qkv, x)
    ctx = None if context is None else linear(att.qkv, context)
    h = att.num_heads
    temps = temperatures(att)
    out = np.zeros_like(x)
    for t in range(len(x)):
        keys = keys_of(t)
        q = heads_of(qkv[t, :C], h)
        K = heads_of(qkv[keys, C:2 * C], h)
        V = heads_of(qkv[keys, 2 * C:], h)
        if ctx is not None:
            K = np.concatenate((K, heads_of(ctx[:, C:2 * C], h)))
            V = np.concatenate((V, heads_of(ctx[:, 2 * C:], h)))
        out[t] = np.concatenate([head_attend(q[i], K[:, i], V[:, i], att.scale, temps and temps[i])
                                 for i in range(h)])
    return linear(att.proj, out)


def cswin_reference(m, x: np.ndarray) -> np.ndarray:
    """CSWin by loops: for each query, each branch attends to the real tokens of its stripe (vertical: its
    `split`-wide column band over the full height; horizontal: its row band over the full width; last stage: the
    whole map), LePE = the 3x3 depthwise conv of the values over the stripe with zeros outside it."""
    Bn, H, W, _ = x.shape
    nb, sp, d = m.branches, m.split, C // HEADS
    c, hb = C // nb, HEADS // nb
    temps = temperatures(m)
    qkv = linear(m.qkv, x)
    q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
    out = np.zeros_like(x)
    for br in range(nb):
        sh, sw = (H, W) if nb == 1 else [(H, min(sp, W)), (min(sp, H), W)][br]
        w, bias = np_(m.lepe[br].weight)[:, 0], np_(m.lepe[br].bias)  # (c, 3, 3), (c,)
        ch = slice(br * c, (br + 1) * c)
        for b in range(Bn):
            for i in range(H):
                for j in range(W):
                    rows = range(i // sh * sh, min(i // sh * sh + sh, H))
                    cols = range(j // sw * sw, min(j // sw * sw + sw, W))
                    keys = [(a, e) for a in rows for e in cols]
                    K = np.stack([heads_of(k[b, a, e, ch], hb) for a, e in keys])
                    V = np.stack([heads_of(v[b, a, e, ch], hb) for a, e in keys])
                    qh = heads_of(q[b, i, j, ch], hb)
                    att = np.concatenate([head_attend(qh[t], K[:, t], V[:, t], m.scale,
                                                      temps and temps[br * hb + t]) for t in range(hb)])
                    lepe = bias.copy()
                    for di in range(3):
                        for dj in range(3):
                            a, e = i + di - 1, j + dj - 1
                            if a in rows and e in cols:  # zeros outside the stripe
                                lepe += w[:, di, dj] * v[b, a, e, ch]
                    out[b, i, j, ch] = att + lepe
    assert d == c // hb
    return linear(m.proj, out)


def official_cswin(m, x: torch.Tensor) -> torch.Tensor:
    """The official CSWinBlock attention (microsoft/CSWin-Transformer models/cswin.py: LePEAttention, img2windows,
    windows2img, CSWinBlock.forward), re-implemented from its algorithm for a square map that the split divides."""
    Bn, H, W, Cx = x.shape
    assert H == W, "the official block takes square maps"
    reso = H

    def img2windows(img, H_sp, W_sp):  # (B, C, H, W) -> (B * nW, H_sp * W_sp, C)
        Bi, Ci, Hi, Wi = img.shape
        img = img.view(Bi, Ci, Hi // H_sp, H_sp, Wi // W_sp, W_sp)
        return img.permute(0, 2, 4, 3, 5, 1).contiguous().reshape(-1, H_sp * W_sp, Ci)

    def windows2img(win, H_sp, W_sp):
        Bi = int(win.shape[0] / (H * W / H_sp / W_sp))
        img = win.view(Bi, H // H_sp, W // W_sp, H_sp, W_sp, -1)
        return img.permute(0, 1, 3, 2, 4, 5).contiguous().view(Bi, H, W, -1)

    def lepe_attention(qkv, idx, heads, get_v):
        H_sp, W_sp = {-1: (reso, reso), 0: (reso, m.split), 1: (m.split, reso)}[idx]
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, L, c)
        Bq, _, c = q.shape

        def im2cswin(t):
            t = t.transpose(-2, -1).contiguous().view(Bq, c, H, W)
            t = img2windows(t, H_sp, W_sp)
            return t.reshape(-1, H_sp * W_sp, heads, c // heads).permute(0, 2, 1, 3).contiguous()

        def get_lepe(t):
            t = t.transpose(-2, -1).contiguous().view(Bq, c, H, W)
            t = t.view(Bq, c, H // H_sp, H_sp, W // W_sp, W_sp)
            t = t.permute(0, 2, 4, 1, 3, 5).contiguous().reshape(-1, c, H_sp, W_sp)
            lepe = get_v(t)
            lepe = lepe.reshape(-1, heads, c // heads, H_sp * W_sp).permute(0, 1, 3, 2).contiguous()
            t = t.reshape(-1, heads, c // heads, H_sp * W_sp).permute(0, 1, 3, 2).contiguous()
            return t, lepe

        q, k = im2cswin(q), im2cswin(k)
        v, lepe = get_lepe(v)
        attn = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
        attn = F.softmax(attn, dim=-1, dtype=attn.dtype)
        out = (attn @ v) + lepe
        out = out.transpose(1, 2).reshape(-1, H_sp * W_sp, c)
        return windows2img(out, H_sp, W_sp).view(Bq, -1, c)

    qkv = m.qkv(x.reshape(Bn, H * W, Cx)).reshape(Bn, -1, 3, Cx).permute(2, 0, 1, 3)
    if m.branches == 2:
        out = torch.cat([lepe_attention(qkv[:, :, :, :Cx // 2], 0, HEADS // 2, m.lepe[0]),
                         lepe_attention(qkv[:, :, :, Cx // 2:], 1, HEADS // 2, m.lepe[1])], dim=2)
    else:
        out = lepe_attention(qkv, -1, HEADS, m.lepe[0])
    return m.proj(out).view(Bn, H, W, Cx)


def neighbourhood(i: int, n: int, k: int) -> range:
    """NAT: the k (or n, if fewer) positions around i along an axis of length n, moved inward at the borders."""
    size = min(k, n)
    start = i - size // 2
    if start + size > n:
        start = n - size
    start = max(start, 0)
    return range(start, start + size)


def neighborhood_reference(m, x: np.ndarray) -> np.ndarray:
    Bn, H, W, _ = x.shape
    (kh, kw), temps = m.kernel, temperatures(m)
    qkv = linear(m.qkv, x)
    rpb = None if m.rpb is None else np_(m.rpb)
    out = np.zeros_like(x)
    for b in range(Bn):
        for i in range(H):
            for j in range(W):
                keys = [(a, e) for a in neighbourhood(i, H, kh) for e in neighbourhood(j, W, kw)]
                q = heads_of(qkv[b, i, j, :C], HEADS)
                K = np.stack([heads_of(qkv[b, a, e, C:2 * C], HEADS) for a, e in keys])
                V = np.stack([heads_of(qkv[b, a, e, 2 * C:], HEADS) for a, e in keys])
                out[b, i, j] = np.concatenate([
                    head_attend(q[t], K[:, t], V[:, t], m.scale, temps and temps[t],
                                None if rpb is None else np.array([rpb[t, a - i + kh - 1, e - j + kw - 1]
                                                                   for a, e in keys]))
                    for t in range(HEADS)])
    return linear(m.proj, out)


def axial_reference(m, x: np.ndarray) -> np.ndarray:
    Bn, H, W, _ = x.shape
    y = np.stack([np.stack([group_reference(m.row, x[b, i], lambda t: list(range(W))) for i in range(H)])
                  for b in range(Bn)])  # (B, H, W, C): each row
    return np.stack([np.stack([group_reference(m.col, y[b, :, j], lambda t: list(range(H))) for j in range(W)], 1)
                     for b in range(Bn)])


def hub_reference(m, x: np.ndarray) -> np.ndarray:
    """Hubs first read every token and each other (write, residual), then each token attends to the real tokens of
    its (clamped, non-shifted) window plus the written hubs (read)."""
    Bn, H, W, _ = x.shape
    wh, ww = min(m.window[0], H), min(m.window[1], W)
    hubs0 = np_(m.hubs)
    M = len(hubs0)
    out = np.zeros_like(x)
    for b in range(Bn):
        tokens = x[b].reshape(H * W, C)
        both = np.concatenate((hubs0, tokens))  # hubs query hubs + every token
        everything = list(range(len(both)))
        hubs = hubs0 + group_reference(m.write, both, lambda t, keys=everything: keys)[:M] if M else hubs0

        def window_of(t):
            i, j = divmod(t, W)
            return [a * W + e for a in range(i // wh * wh, min(i // wh * wh + wh, H))
                    for e in range(j // ww * ww, min(j // ww * ww + ww, W))]
        out[b] = group_reference(m.read, tokens, window_of, context=hubs if M else None).reshape(H, W, C)
    return out


def kmeans_reference(f: np.ndarray, N: int, iters: int) -> list[int]:
    """Balanced k-means by loops: groups of N (the last the remainder), centroids starting at tokens (g + 1/2) L / G;
    assignment group after group, each taking its nearest untaken tokens (lower index first at equal distance)."""
    L = len(f)
    G = math.ceil(L / N)
    caps = [N] * (G - 1) + [L - (G - 1) * N]
    centroids = [f[int((g + 0.5) * L / G)] for g in range(G)]

    def assign(centroids):
        group, taken = [None] * L, set()
        for g, cap in enumerate(caps):
            free = sorted((float(np.linalg.norm(f[t] - centroids[g])), t) for t in range(L) if t not in taken)
            for _, t in free[:cap]:
                taken.add(t)
                group[t] = g
        return group

    for _ in range(iters):
        group = assign(centroids)
        centroids = [np.mean([f[t] for t in range(L) if group[t] == g], axis=0) for g in range(G)]
    return assign(centroids)


# ------------------------------------------------------------------------------------------------------ the tests
def test_every_mixer_is_registered():
    assert set(NEW_MIXERS) <= set(mixer_names())


@pytest.mark.parametrize("name", NEW_MIXERS)
@pytest.mark.parametrize("version", [1, 2])
def test_any_size_keeps_shape_and_dtype(name, version):
    """Every H, W >= 1 (odd, smaller than the window, stripe or kernel), batch 2, float32 and float64."""
    window = KERNEL if name == "neighborhood" else WINDOW
    for dtype in (torch.float32, torch.float64):
        m = build(name, version, window=window, dtype=dtype)
        for size in ANY_SIZES:
            x = inputs(size, dtype)
            y = m(x)
            assert y.shape == x.shape and y.dtype == dtype and torch.isfinite(y).all(), (name, size)


@pytest.mark.parametrize("name", [n for n in NEW_MIXERS if n != "identity"])
@pytest.mark.parametrize("version", [1, 2])
def test_gradients_flow(name, version):
    """Training mode, float32: backward reaches the input and every parameter, all finite."""
    m = build(name, version, window=KERNEL if name == "neighborhood" else WINDOW, dtype=torch.float32).train()
    x = inputs((5, 7), torch.float32).requires_grad_()
    (m(x) * torch.randn(B, 5, 7, C)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


# cswin ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("stage, split", [(0, 2), (0, 4), (1, 2)])  # stage 1 of 2: the last, full attention
@pytest.mark.parametrize("size", SIZES)
def test_cswin_matches_loop_reference(version, stage, split, size):
    m = build("cswin", version, stage=stage, split_size=(split, split))
    assert m.branches == (1 if stage == 1 else 2)
    x = inputs(size)
    assert_close(m(x), cswin_reference(m, np_(x)), C)


def test_cswin_explicit_attention_matches_fused():
    fused, explicit = build("cswin", 2), build("cswin", 2, fused_attn=False)
    explicit.load_state_dict(fused.state_dict())
    x = inputs((5, 7))
    assert_close(explicit(x), cswin_reference(fused, np_(x)), C)


@pytest.mark.parametrize("size, split, stage", [((8, 8), 2, 0), ((8, 8), 4, 0), ((6, 6), 3, 0), ((4, 4), 2, 1)])
def test_cswin_matches_official_algorithm(size, split, stage):
    """At the official block's own sizes (square, divisible by the split), V1 is the official computation."""
    m = build("cswin", 1, stage=stage, split_size=(split, split), grid=(16, 16))
    x = inputs(size)
    assert_close(m(x), official_cswin(m, x), C)


def test_cswin_parameters_are_the_official_ones_renamed():
    two = build("cswin", stage=0)
    assert {k: tuple(v.shape) for k, v in two.state_dict().items()} == {
        "qkv.weight": (3 * C, C), "qkv.bias": (3 * C,), "proj.weight": (C, C), "proj.bias": (C,),
        "lepe.0.weight": (C // 2, 1, 3, 3), "lepe.0.bias": (C // 2,),
        "lepe.1.weight": (C // 2, 1, 3, 3), "lepe.1.bias": (C // 2,)}
    last = build("cswin", stage=1)
    assert tuple(last.lepe[0].weight.shape) == (C, 1, 3, 3) and len(last.lepe) == 1
    # as the official CSWinBlock: a map equal to the split at the config's img_size also takes one branch
    assert build("cswin", stage=0, grid=(2, 2), split_size=(2, 2)).branches == 1
    with pytest.raises(ValueError, match="num_heads even"):
        create_mixer("cswin", MixerSpec(15, 3, WINDOW, False, (0, 0), 0, 2, (8, 8), config()))


def test_cswin_query_reads_only_its_cross():
    """A token's output depends only on its vertical and horizontal stripes (padded keys and other stripes get no
    weight): changing every other token leaves it unchanged."""
    m = build("cswin", split_size=(2, 2))
    x = inputs((5, 7))
    i, j = 4, 6  # in the last (padded) stripe of both branches
    y = x.clone()
    outside = torch.ones(5, 7, dtype=torch.bool)
    outside[4:, :] = False  # horizontal stripe: rows 4..5 (row 5 is padding)
    outside[:, 6:] = False  # vertical stripe: columns 6..7 (column 7 is padding)
    y[:, outside] += 5 * torch.randn(B, int(outside.sum()), C, dtype=y.dtype)
    torch.testing.assert_close(m(y)[:, i, j], m(x)[:, i, j], rtol=0, atol=tolerance(torch.float64, C, 1.0))
    assert not torch.allclose(m(y)[:, 0, 0], m(x)[:, 0, 0])


# axial ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("size", SIZES)
def test_axial_matches_loop_reference(version, size):
    m = build("axial", version)
    x = inputs(size)
    assert_close(m(x), axial_reference(m, np_(x)), C)


# neighborhood ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("size", SIZES + [(7, 5)])
@pytest.mark.parametrize("pos_embed", ["relative", "none"])
def test_neighborhood_matches_loop_reference(version, size, pos_embed):
    m = build("neighborhood", version, window=KERNEL, pos_embed=pos_embed)
    assert (m.rpb is None) == (pos_embed == "none")
    x = inputs(size)
    assert_close(m(x), neighborhood_reference(m, np_(x)), C)


def test_neighborhood_chunks_give_the_same_output():
    m = build("neighborhood", window=(3, 3))
    x = inputs((9, 6))
    whole = m(x)
    m.chunk_mb = 1e-5  # one query per chunk
    assert_close(m(x), whole, C)


def test_neighborhood_query_reads_only_its_neighbourhood():
    m = build("neighborhood", window=(3, 3))
    x = inputs((9, 6))
    for i, j in ((0, 0), (4, 3), (8, 5)):
        rows, cols = neighbourhood(i, 9, 3), neighbourhood(j, 6, 3)
        y = x.clone()
        outside = torch.ones(9, 6, dtype=torch.bool)
        outside[rows.start:rows.stop, cols.start:cols.stop] = False
        assert outside.sum() == 9 * 6 - 9  # every query has exactly k*k real keys
        y[:, outside] += 5 * torch.randn(B, int(outside.sum()), C, dtype=y.dtype)
        torch.testing.assert_close(m(y)[:, i, j], m(x)[:, i, j], rtol=0, atol=tolerance(torch.float64, C, 1.0))


def test_neighborhood_kernel_is_the_window_rounded_up_to_odd():
    assert build("neighborhood", window=(4, 7)).kernel == (5, 7)


@pytest.mark.parametrize("size", [(5, 7), (9, 11)])
def test_neighborhood_matches_natten(size):
    """The NATTEN library's na2d (V1, no position bias; its CPU path takes float32 and head_dim >= 8 only)."""
    natten = pytest.importorskip("natten")
    m = build("neighborhood", window=KERNEL, pos_embed="none", dtype=torch.float32, heads=2)
    x = inputs(size, torch.float32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NATTEN on CPU: flex attention without torch.compile
        q, k, v = m.qkv(x).view(B, *size, 3, 2, C // 2).unbind(3)  # (B, H, W, heads, d)
        ref = m.proj(natten.na2d(q, k, v, kernel_size=KERNEL).reshape(B, *size, C))
    assert_close(m(x), ref, max(C, math.prod(KERNEL)))  # the longest sum: K keys or C channels


# hub ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("size", SIZES)
def test_hub_matches_loop_reference(version, size):
    m = build("hub", version)
    x = inputs(size)
    assert_close(m(x), hub_reference(m, np_(x)), C)


def test_hub_without_hubs_is_local_window_attention():
    """hub_tokens=0: a token reads only its own window (padded keys and other windows get no weight); with hubs
    every token depends on the whole map."""
    x = inputs((5, 7))
    y = x.clone()
    y[:, :4, :4] += 5  # the first window only
    local = build("hub", hub_tokens=0)
    assert_close(local(y)[:, 4:, 4:], local(x)[:, 4:, 4:], C)
    assert_close(local(x), hub_reference(local, np_(x)), C)
    hub = build("hub")
    assert not torch.allclose(hub(y)[:, 4:, 4:], hub(x)[:, 4:, 4:])


# cluster --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES + [(6, 8)])
def test_balanced_kmeans_matches_loop_reference(size):
    L = math.prod(size)
    N = min(math.prod(WINDOW), L)
    f = inputs(size).reshape(B, L, C)
    groups = balanced_kmeans(f, N, 3)
    for b in range(B):
        assert groups[b].tolist() == kmeans_reference(np_(f[b]), N, 3)
        counts = torch.bincount(groups[b]).tolist()
        assert counts == list(group_capacities(L, N))  # balanced: every group full, the last one the rest
    assert torch.equal(balanced_kmeans(f, N, 3), groups)  # deterministic


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("size", SIZES)
def test_cluster_matches_loop_reference(version, size):
    m = build("cluster", version)
    x = inputs(size)
    L = math.prod(size)
    group = balanced_kmeans(x.reshape(B, L, C), min(16, L), m.iters)
    ref = np.stack([group_reference(m.attn, np_(x[b]).reshape(L, C),
                                    lambda t, g=group[b]: [s for s in range(L) if g[s] == g[t]]).reshape(*size, C)
                    for b in range(B)])
    assert_close(m(x), ref, C)


def test_cluster_query_reads_only_its_group():
    """With the grouping fixed, changing the tokens of other groups leaves a group's output unchanged (the zero pad
    tokens of the last group get no weight: the loop reference above attends to real tokens only)."""
    m = build("cluster")
    x = inputs((5, 7))
    L, N = 35, 16
    group = balanced_kmeans(x.reshape(B, L, C), N, m.iters)
    out = m.attend_groups(x, group, N).reshape(B, L, C)
    y = x.reshape(B, L, C).clone()
    y[group != 2] += 5 * torch.randn(int((group != 2).sum()), C, dtype=y.dtype)
    out2 = m.attend_groups(y.view_as(x), group, N).reshape(B, L, C)
    torch.testing.assert_close(out2[group == 2], out[group == 2], rtol=0, atol=tolerance(torch.float64, C, 1.0))


# pool, dwconv, identity -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("size", SIZES + [(1, 1)])
def test_pool_is_poolformer(k, size):
    """PoolFormer's Pooling: nn.AvgPool2d(k, 1, k // 2, count_include_pad=False)(x) - x on NCHW."""
    m = build("pool", pool_size=k)
    assert not list(m.parameters())
    x = inputs(size)
    nchw = x.permute(0, 3, 1, 2)
    ref = (F.avg_pool2d(nchw, k, 1, k // 2, count_include_pad=False) - nchw).permute(0, 2, 3, 1)
    torch.testing.assert_close(m(x), ref, rtol=0, atol=0)
    # and the definition by loops: the mean over the window's positions inside the map, minus the token
    H, W = size
    a = np_(x)
    loop = np.zeros_like(a)
    for i in range(H):
        for j in range(W):
            inside = a[:, max(i - k // 2, 0):i + k // 2 + 1, max(j - k // 2, 0):j + k // 2 + 1]  # (B, h, w, C)
            loop[:, i, j] = inside.mean((1, 2)) - a[:, i, j]
    assert_close(m(x), loop, k * k)


@pytest.mark.parametrize("size", SIZES)
def test_dwconv_matches_loop_reference(size):
    m = build("dwconv", conv_kernel=5)
    x = inputs(size)
    H, W = size
    w, bias, a = np_(m.dwconv.weight)[:, 0], np_(m.dwconv.bias), np_(x)
    ref = np.zeros_like(a) + bias
    for i in range(H):
        for j in range(W):
            for di in range(5):
                for dj in range(5):
                    p, q = i + di - 2, j + dj - 2
                    if 0 <= p < H and 0 <= q < W:  # zero padding
                        ref[:, i, j] += w[:, di, dj] * a[:, p, q]
    assert_close(m(x), ref, 25)


def test_even_kernels_are_refused():
    with pytest.raises(ValueError, match="pool_size must be odd"):
        build("pool", pool_size=4)
    with pytest.raises(ValueError, match="conv_kernel must be odd"):
        build("dwconv", conv_kernel=6)


def test_identity():
    m = build("identity")
    x = inputs((5, 7))
    assert m(x) is x and not list(m.parameters())
