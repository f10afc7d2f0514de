"""Swin-UNet: parity with the official fixture, round trips of the official layout, any input size, invariants
(transposition, zero padding, window modes, batch independence, gradient checkpointing) and the error cases."""
import warnings

import pytest
import torch
import torch.nn.functional as F

from swinkit.config import SwinUNetConfig
from swinkit.io.formats.unet import convert_unet_state_dict, infer_unet_config, load_unet
from swinkit.models.unet import SwinUNet

from conftest import SHARED, randomize_

UNET = SHARED / "fixtures" / "swin_unet"
needs_fixture = pytest.mark.skipif(not (UNET / "unet_tiny.pth").exists(), reason="needs ../shared/fixtures/swin_unet")


def tiny(**overrides) -> SwinUNetConfig:
    """3 stages, window 2: maps 8, 4, 2 at 32 px."""
    kw = dict(embed_dim=8, depths=(2, 2, 2), num_heads=(1, 2, 4), window_size=2, num_classes=3, img_size=32,
              drop_path_rate=0.0)
    return SwinUNetConfig(**{**kw, **overrides})


def tiny_model(**overrides) -> SwinUNet:
    return randomize_(SwinUNet(tiny(**overrides)), std=0.2).eval()


def fixture() -> tuple[dict, dict]:
    sd = torch.load(UNET / "unet_tiny.pth", weights_only=True)["model"]
    return sd, torch.load(UNET / "unet_tiny.io.pt", weights_only=True)


# ----------------------------------------------------------------------------------------------------------
# the official fixture


@needs_fixture
@pytest.mark.parametrize("official_order", [False, True])
def test_fixture_logits(official_order):
    """In float64 the model reproduces the official float32 logits up to their own rounding; in float32 it errs from
    exact math by no more than that rounding allows. The fixture's random weights (std 0.5) make attention nearly
    one-hot, which amplifies float32 rounding: the official output is 4.5e-4 (4e-5 of the logits' scale, 11.3) from
    its float64 recomputation, a property of the file, not of a CPU. So:
    - float64: within 1e-3 of the scale, 25x the fixture's own rounding; one reversed bias table gives 1.1;
    - float32 against float64: within 4x the fixture's own float32 error (two float32 evaluations in other orders,
      on other kernels, each may err twice as much), whatever this CPU's BLAS, fused kernels and threads do."""
    sd, io = fixture()
    extra = dict(fused_attn=False, inference_path="plain") if official_order else {}
    model = load_unet(UNET / "unet_tiny.pth", **extra).eval()
    with torch.no_grad():
        out = model(io["input"])
        exact = model.double()(io["input"].double())
    assert out.shape == io["output"].shape
    scale = io["output"].abs().max().item()
    fixture_rounding = (exact - io["output"].double()).abs().max().item()
    assert fixture_rounding <= 1e-3 * scale
    assert (out.double() - exact).abs().max().item() <= 4 * fixture_rounding


@needs_fixture
def test_load_model_reads_swin_unet_files_and_save_model_round_trips(tmp_path):
    """swinkit.load_model detects a Swin-UNet (official file, any wrapper) and gives the same model load_unet
    does; save_model + load_model round-trips it exactly."""
    import swinkit

    sd, io = fixture()
    torch.save({"state_dict": {f"module.swin_unet.{k}": v for k, v in sd.items()}}, tmp_path / "wrapped.pth")
    model = swinkit.load_model(tmp_path / "wrapped.pth")
    assert isinstance(model, SwinUNet) and not model.training
    with torch.no_grad():
        expected = load_unet(UNET / "unet_tiny.pth").eval()(io["input"])
        assert torch.equal(model(io["input"]), expected)
        swinkit.save_model(model, tmp_path / "unet.safetensors")
        assert torch.equal(swinkit.load_model(tmp_path / "unet.safetensors")(io["input"]), expected)
    with pytest.raises(swinkit.io.files.CheckpointError, match="is a Swin-UNet checkpoint: class_map"):
        swinkit.load_model(tmp_path / "wrapped.pth", class_map=[0, 1])


@needs_fixture
def test_fixture_config_inferred_from_keys():
    model = load_unet(UNET / "unet_tiny.pth")
    c = model.cfg
    assert (c.embed_dim, c.depths, c.num_heads, c.window_size, c.img_size, c.num_classes, c.depths_decoder) == \
        (24, (2, 2, 2, 2), (2, 4, 8, 16), ((2, 2),) * 4, (64, 64), 5, (2, 2, 2))


@needs_fixture
def test_fixture_wrappers_load_the_same_weights():
    """bare, {"model": ...}, {"state_dict": ...}, `swin_unet.` and `module.swin_unet.` prefixes."""
    sd, _ = fixture()
    ref = load_unet({"model": sd}).state_dict()
    for wrapped in (sd, {"state_dict": {"swin_unet." + k: v for k, v in sd.items()}},
                    {f"module.swin_unet.{k}": v for k, v in sd.items()}):
        got = load_unet(wrapped).state_dict()
        assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)


@needs_fixture
def test_fixture_round_trip_is_exact():
    """official -> swinkit -> official gives back every tensor of the file, buffers (attn_mask,
    relative_position_index) included, with its dtype."""
    sd, _ = fixture()
    cfg = load_unet(sd).cfg  # inferred from the keys
    back = convert_unet_state_dict(convert_unet_state_dict(sd), "official", cfg=cfg)
    assert back.keys() == sd.keys()
    assert all(back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]) for k in sd)


# ----------------------------------------------------------------------------------------------------------
# round trips and config inference without the fixture


def test_round_trip_swinkit_official_swinkit():
    model = tiny_model()
    sd = model.state_dict()
    official = convert_unet_state_dict(sd, "official", cfg=model.cfg, prefix="swin_unet.")
    assert all(k.startswith("swin_unet.") for k in official)
    assert any("layers_up.1.blocks.1.attn_mask" in k for k in official)  # buffers for the official code
    back = convert_unet_state_dict(official)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    reloaded = load_unet(official).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))


def test_inferred_config_reproduces_the_model():
    """From the official keys alone: structure, windows, decoder depths, classes and (from the attention masks)
    the image size."""
    cfg = tiny(depths=(2, 4, 2), depths_decoder=(3, 1), num_classes=7, img_size=48)
    official = convert_unet_state_dict(SwinUNet(cfg).state_dict(), "official", cfg=cfg)
    inferred = load_unet(official).cfg
    fields = ("embed_dim", "depths", "num_heads", "window_size", "img_size", "num_classes", "depths_decoder")
    assert {f: getattr(inferred, f) for f in fields} == {f: getattr(cfg, f) for f in fields}


def test_named_variant_is_recognised():
    cfg = SwinUNetConfig.from_name("swin_unet_tiny")
    with torch.device("meta"):
        sd = SwinUNet(cfg).state_dict()
    inferred, guessed = infer_unet_config(sd)
    assert inferred.name == "swin_unet_tiny" and guessed == ["img_size"]
    assert sum(v.numel() for v in sd.values()) == 27_168_900  # measured: 27.17M, the Swin-Unet figure


# ----------------------------------------------------------------------------------------------------------
# any input size and invariants


@pytest.mark.parametrize("size", [(4, 4), (5, 7), (37, 70), (33, 18)])
def test_any_size_gives_input_sized_logits(size):
    """Odd and non-square sizes: (B, classes, H, W), each image independent of the others in the batch."""
    model = tiny_model()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out, first = model(x), model(x[:1])
    assert out.shape == (2, 3, *size)
    # batch 1 and batch 2 may take other kernels (blocking, vector tails), so they part by float32 rounding: this
    # model's longest sums have n = 128 terms (the last stage's MLP), rounded to about sqrt(n) u = 7e-7 of their
    # scale (u = 2^-24, errors of either sign), ~4e-6 over its ~30 sublayers in quadrature, twice over for two
    # evaluations: 1e-5 of the scale (measured <= 4e-7 on an AMD EPYC, vectorised kernels or not). Mixing the two
    # images would move the logits by a share of their scale of order one.
    assert (out[:1] - first).abs().max() <= 1e-5 * out.abs().max()


def _transposed(sd: dict, patch: int) -> dict:
    """The weights of the same network for transposed images: conv kernels and bias tables transposed, the
    patch-merging neighbours (00, 10, 01, 11) -> (00, 01, 10, 11), the expanding's (row, column) swapped."""
    out = {}
    for k, v in sd.items():
        if k.endswith("patch_embed.proj.weight"):
            v = v.transpose(-1, -2)
        elif k.endswith("relative_position_bias_table"):
            s = round(v.shape[0] ** 0.5)
            v = v.view(s, s, -1).transpose(0, 1).reshape(v.shape)
        elif ".downsample." in k:
            v = v.unflatten(-1, (4, -1))[..., [0, 2, 1, 3], :].flatten(-2)
        elif k.endswith(".expand.weight"):
            s = 2 if "upsample" in k else patch
            v = v.view(s, s, -1, v.shape[-1]).transpose(0, 1).reshape(v.shape)
        out[k] = v
    return out


@pytest.mark.parametrize("size", [(37, 70), (20, 9)])
def test_transposition_equivariance(size):
    """With transposed weights the model maps transposed images to transposed logits: no step confuses H and W
    (padding, crops, expanding, skips) at sizes that need padding in the encoder and crops in the decoder."""
    model = tiny_model()
    mirror = SwinUNet(model.cfg).eval()
    mirror.load_state_dict(_transposed(model.state_dict(), model.cfg.patch_size))
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        out, out_t = model(x), mirror(x.transpose(-1, -2)).transpose(-1, -2)
    # the same float32 rounding as test_any_size_gives_input_sized_logits (two evaluations of ~30 sublayers of sums
    # of <= 128 terms: 1e-5 of the scale; measured <= 5e-7 on an AMD EPYC, vectorised kernels or not); leaving the
    # bias tables untransposed moves the logits by 8e-3 of their scale, the expanding's by 1.0
    assert (out - out_t).abs().max() <= 1e-5 * out.abs().max()


def test_logits_are_those_of_the_zero_padded_image():
    """An image that is not a multiple of the patch is the zero-padded image, cropped: the output is aligned
    to the input's top-left corner."""
    model = tiny_model()
    x = torch.randn(1, 3, 37, 70)
    with torch.no_grad():
        out, padded = model(x), model(F.pad(x, (0, 2, 0, 3)))
    assert torch.allclose(out, padded[..., :37, :70], atol=1e-6)


def test_window_modes_agree_where_nothing_is_padded():
    """clamp and pad differ only where a map is padded or no larger than a window: at 64 px (maps 16, 8, 4,
    windows 2) they give the same logits; at 36 px (maps 9, 5, 3) pad mode's padded zeros change them, in the
    decoder's blocks as well as the encoder's."""
    model = tiny_model()
    padded = SwinUNet(tiny(window_mode="pad")).eval()
    padded.load_state_dict(model.state_dict())
    assert {blk.attn.window_mode for blk in padded.decoder_blocks()} == {"pad"}
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        assert (model(x) - padded(x)).abs().max() <= 1e-6 * model(x).abs().max()
        x = torch.randn(1, 3, 36, 36)
        assert (model(x) - padded(x)).abs().max() > 1e-3 * model(x).abs().max()


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_model().train()
    x = torch.randn(1, 3, 13, 22)
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        model(x).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------------------------------------
# errors


def test_bad_input_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"^expected a \(B, 3, H, W\) float tensor with H, W >= 4 \(patch_size\), "
                                         r"got shape \(3, 32, 32\) \(add a batch dimension with x\[None\]\)$"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"got shape \(1, 3, 3, 32\): smaller than one patch$"):
        model(torch.randn(1, 3, 3, 32))


def test_config_errors():
    with pytest.raises(ValueError, match=r"^a Swin-UNet needs at least 2 stages \(a skip connection\), got "
                                         r"depths=\(2,\)$"):
        SwinUNetConfig(depths=(2,), num_heads=(3,))
    with pytest.raises(ValueError, match=r"^depths_decoder needs 2 entries >= 1 \(one per decoder stage, deepest "
                                         r"first\) for 3 encoder stages, got \(2, 2, 2\); None mirrors"):
        tiny(depths_decoder=(2, 2, 2))
    with pytest.raises(ValueError, match=r"^unknown Swin-UNet 'swin_unet_huge'; choose one of \['swin_unet_tiny'\]"):
        SwinUNetConfig.from_name("swin_unet_huge")


def test_checkpoint_errors():
    sd = convert_unet_state_dict(tiny_model().state_dict(), "official", cfg=tiny())
    with pytest.raises(ValueError, match=r"^not a Swin-UNet state dict: expected the official layout .* its first "
                                         r"keys are: patch_embed\.proj\.weight"):
        load_unet({k: v for k, v in sd.items() if not k.startswith(("layers_up", "concat", "up.", "output",
                                                                         "norm_up"))})
    extra = {**sd, "layers_up.1.blocks.0.attn.gamma": torch.ones(1), "classifier.weight": torch.ones(1)}
    with pytest.raises(ValueError, match=r"^2 keys of this official Swin-UNet checkpoint have no place in swinkit: "
                                         r"classifier\.weight, layers_up\.1\.blocks\.0\.attn\.gamma\. To skip"):
        load_unet(extra)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_unet(extra, strict=False)
    assert any("(skipped)" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match=r"^the official Swin-UNet is Swin V1 only; this model is V2"):
        convert_unet_state_dict(SwinUNet(tiny(version=2)).state_dict(), "official", cfg=tiny(version=2))
