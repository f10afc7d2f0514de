"""SwinIR / Swin2SR: parity with the official SwinIR fixtures and transformers' Swin2SR, checkpoint round trips,
chunked inference equal to one pass, and the errors for bad inputs."""
import math
from pathlib import Path

import pytest
import torch

import swinkit
from swinkit.config import SwinIRConfig
from swinkit.io import hub as hub_io
from swinkit.io.files import CheckpointError
from swinkit.io.load import write_checkpoint
from swinkit.io.formats.restoration import (hf_swin2sr_config, infer_swinir_config, swinir_fields_from_hf,
                                       swinir_from_swinkit, swinir_to_swinkit)
from swinkit.models import swinir as swinir_module
from swinkit.models.swinir import SwinIR

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "swinir"
# the fixtures' README table: name -> (upscale, in_chans, embed_dim, upsampler, resi_connection, img_range)
OFFICIAL = {
    "classical_x2": (2, 3, 24, "pixelshuffle", "1conv", 1.0),
    "lightweight_x3": (3, 3, 12, "pixelshuffledirect", "1conv", 1.0),
    "realworld_x4": (4, 3, 24, "nearest+conv", "3conv", 1.0),
    "denoise_gray": (1, 1, 24, "none", "1conv", 1.0),
    "jpeg_color": (1, 3, 24, "none", "1conv", 255.0),
}
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason="../shared/fixtures/swinir is not present")
TINY = dict(img_size=16, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4), num_feat=8)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to max |b| (at least 1): the fixtures' random weights give outputs up to ~8e5."""
    return ((a - b).abs().max() / b.abs().max().clamp(min=1)).item()


# Parity with the official SwinIR and transformers' Swin2SR, in _rel. Float64 runs of ours and transformers agree
# to 2e-15, and the official fixtures' float32 outputs lie within 2e-6 of their scale of a float64 recomputation (a
# property of the files), so float32 rounding alone parts the two sides: 3x3 convs over 64 channels sum 576 terms,
# rounded by about sqrt(576) u = 1.4e-6 of their scale (u = 2^-24, errors of either sign), ~6e-6 over ~20 layers in
# quadrature per model. 1e-4 is 10x the two models' ~9e-6 on any CPU's kernels (measured <= 2.3e-6 on an AMD EPYC,
# vectorised kernels or not), and 200x under what a transposed bias table or swapped q and k do (>= 2e-2).
PARITY = 1e-4


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (norms around 1, V2 logit scales around log 10), so no zero-initialised path hides."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "logit_scale" in name:
                p.copy_(math.log(10) + 0.2 * noise)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)
    return model.eval()


# ----------------------------------------------------------------------------------------------------------
# the official SwinIR


@needs_fixtures
@pytest.mark.parametrize("name", list(OFFICIAL))
def test_official_fixture_parity_and_config(name):
    upscale, chans, dim, upsampler, resi, img_range = OFFICIAL[name]
    # the file does not store img_range: the JPEG rule (window 7) does not cover this window-4 fixture
    model = swinkit.load_model(FIXTURES / f"{name}.pth", **({"img_range": 255.0} if img_range != 1 else {}))
    cfg = model.cfg
    assert (cfg.version, cfg.upscale, cfg.in_chans, cfg.embed_dim, cfg.upsampler, cfg.resi_connection) == \
        (1, upscale, chans, dim, upsampler, resi)
    assert (cfg.img_size, cfg.window_size, cfg.depths, cfg.num_heads, cfg.mlp_ratio) == (16, 4, (2, 2), (2, 2), 2.0)
    io = torch.load(FIXTURES / f"{name}.io.pt", weights_only=True)
    with torch.no_grad():
        out = model(io["input"])
    assert out.shape == io["output"].shape
    assert _rel(out, io["output"]) < PARITY


@needs_fixtures
def test_official_round_trip_with_buffers():
    raw = torch.load(FIXTURES / "realworld_x4.pth", weights_only=True)["params"]
    imp = swinir_to_swinkit(raw)
    assert imp.format == "official" and not imp.unknown
    cfg, guessed = infer_swinir_config(imp.state_dict, imp.buffers)
    assert guessed == [] and cfg.img_size == 16  # from the attn_mask buffers
    back = swinir_from_swinkit(imp.state_dict, "official", cfg)  # buffers rebuilt at img_size, as the official init
    assert set(back) == set(raw) and all(torch.equal(back[k], raw[k]) for k in raw)


@needs_fixtures
def test_jpeg_img_range_rule():
    raw = torch.load(FIXTURES / "jpeg_color.pth", weights_only=True)["params"]
    imp = swinir_to_swinkit(raw)
    assert infer_swinir_config(imp.state_dict, imp.buffers)[0].img_range == 1.0  # window 4: not the JPEG zoo's 7
    jpeg = SwinIR(SwinIRConfig(**{**TINY, "window_size": 7, "img_size": 14}, upscale=1, upsampler="none"))
    official = swinir_from_swinkit(jpeg.state_dict(), "official", jpeg.cfg)
    imp = swinir_to_swinkit(official)
    assert infer_swinir_config(imp.state_dict, imp.buffers)[0].img_range == 255.0


def test_named_variant_recognised_and_pretrained_from_local_url(tmp_path, monkeypatch):
    name = "swinir_lightweight_x2"
    model = _randomise(swinkit.create_restoration_model(name))
    file = tmp_path / "002_lightweightSR_DIV2K_s64w8_SwinIR-S_x2.pth"
    write_checkpoint(model.state_dict(), model.cfg, file, "official")
    assert set(torch.load(file, weights_only=True)) == {"params"}
    loaded = swinkit.load_model(file)
    assert loaded.cfg.name == name and loaded.cfg == model.cfg
    monkeypatch.setitem(hub_io.RESTORATION_PRETRAINED, name, (file.as_uri(), None))
    torch.hub.set_dir(str(tmp_path / "hub"))
    with pytest.warns(UserWarning, match="no published checksum"):
        pre = swinkit.create_restoration_model(name, pretrained=True)
    x = torch.rand(1, 3, 12, 20)
    with torch.no_grad():
        assert torch.equal(pre(x), model(x))
    assert hub_io.RESTORATION_PRETRAINED["swinir_classical_x4"][0] == \
        "https://github.com/JingyunLiang/SwinIR/releases/download/v0.0/001_classicalSR_DF2K_s64w8_SwinIR-M_x4.pth"


def test_swinkit_round_trip(tmp_path):
    model = _randomise(SwinIR(SwinIRConfig(**TINY, version=2, upscale=3, resi_connection="3conv")))
    swinkit.save_model(model, tmp_path / "m.safetensors")
    assert SwinIRConfig.from_json((tmp_path / "m.json").read_text()) == model.cfg
    loaded = swinkit.load_model(tmp_path / "m.safetensors")
    x = torch.rand(2, 3, 9, 13)
    with torch.no_grad():
        assert loaded.cfg == model.cfg and torch.equal(loaded(x), model(x))


# ----------------------------------------------------------------------------------------------------------
# transformers' Swin2SR


HF_CASES = [dict(upscale=2, upsampler="pixelshuffle"), dict(upscale=3, upsampler="pixelshuffle"),
            dict(upscale=2, upsampler="pixelshuffledirect"),
            dict(upscale=4, upsampler="nearest+conv", resi_connection="3conv"),
            # transformers adds the raw input (not the normalised one) before undoing img_range and the mean: the
            # same as the official SwinIR only with img_range 1 and mean 0 (grey); no Swin2SR of its hub has this head
            dict(upscale=1, upsampler="none", in_chans=1)]


@pytest.mark.parametrize("case", HF_CASES, ids=lambda c: f"{c['upsampler']}-x{c['upscale']}")
def test_transformers_swin2sr_parity_both_ways(case, tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = SwinIRConfig(**{**TINY, "num_feat": 64}, version=2, drop_path_rate=0.0, **case)  # transformers': 64
    hf_cfg = transformers.Swin2SRConfig(**{k: v for k, v in hf_swin2sr_config(cfg).items()
                                           if k not in ("model_type", "architectures")})
    hf = _randomise(transformers.Swin2SRForImageSuperResolution(hf_cfg), seed=1)
    hf.save_pretrained(tmp_path / "hf")
    ours = swinkit.load_model(tmp_path / "hf")  # config.json read back: window, img_range, upsampler
    assert ours.cfg.to_dict() == {**cfg.to_dict(), "name": ours.cfg.name}
    x = torch.rand(2, cfg.in_chans, 16, 24)  # transformers' Swin2SR takes window multiples only
    with torch.no_grad():
        assert _rel(ours(x), hf(x).reconstruction) < PARITY
        mine = _randomise(SwinIR(cfg), seed=2)
        write_checkpoint(mine.state_dict(), cfg, tmp_path / "back", "hf")
        back = transformers.Swin2SRForImageSuperResolution.from_pretrained(tmp_path / "back").eval()
        assert _rel(back(x).reconstruction, mine(x)) < PARITY
        odd = torch.rand(1, cfg.in_chans, 17, 24)
        assert ours(odd).shape == (1, cfg.in_chans, 17 * cfg.upscale, 24 * cfg.upscale)
        with pytest.raises(RuntimeError):  # its patch unembedding views the padded map at the unpadded size
            hf(odd)


def test_hf_config_refusals():
    with pytest.raises(ValueError, match="pixelshuffle_aux"):
        swinir_fields_from_hf({"model_type": "swin2sr", "upsampler": "pixelshuffle_aux"})
    v1 = SwinIR(SwinIRConfig(**TINY))
    with pytest.raises(ValueError, match="version 2"):
        swinir_from_swinkit(v1.state_dict(), "hf", v1.cfg)
    v2 = SwinIR(SwinIRConfig(**TINY, version=2))
    with pytest.raises(ValueError, match="version 1"):
        swinir_from_swinkit(v2.state_dict(), "official", v2.cfg)


# ----------------------------------------------------------------------------------------------------------
# chunked inference


@pytest.mark.parametrize("version, upsampler, upscale", [(1, "pixelshuffle", 4), (2, "nearest+conv", 4),
                                                         (1, "none", 1), (2, "pixelshuffledirect", 3)])
def test_chunks_and_strips_equal_one_pass(version, upsampler, upscale, monkeypatch):
    cfg = SwinIRConfig(**TINY, version=version, upsampler=upsampler, upscale=upscale,
                       resi_connection="3conv" if version == 2 else "1conv")
    model = _randomise(SwinIR(cfg))
    x = torch.rand(2, 3, 19, 23)  # padded to 20 x 24 by reflection
    with torch.no_grad():
        ref = model(x)
        strips = []
        real = swinir_module.in_strips
        monkeypatch.setattr(swinir_module, "in_strips",
                            lambda fn, t, halo, s, rows: strips.append(rows) or real(fn, t, halo, s, rows))
        for path in ("plain", "windows"):
            model.set_inference_path(path)
            model.set_chunk_mb(0.01)  # ~10 KB: a few conv rows, attention windows and MLP tokens at a time
            out = model(x)
            assert out.shape == ref.shape and (out - ref).abs().max().item() <= 1e-5 * max(1, ref.abs().max().item())
    assert strips and all(r is not None for r in strips)  # every full-resolution conv ran in strips


# ----------------------------------------------------------------------------------------------------------
# errors


def test_bad_inputs_and_configs(tmp_path):
    model = SwinIR(SwinIRConfig(**TINY)).eval()
    cases = [(torch.rand(3, 16, 16), "add a batch dimension"), (torch.rand(1, 1, 16, 16), "got 1 channels"),
             (torch.rand(1, 16, 16, 3), "channels-last"), (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), "x.float"),
             (torch.rand(1, 3, 2, 16), "reflection-padded")]
    for x, message in cases:
        with pytest.raises(ValueError, match=message):
            model(x)
    with pytest.raises(ValueError, match="takes upscale"):
        SwinIRConfig(upsampler="nearest+conv", upscale=2)
    with pytest.raises(ValueError, match="upsampler must be one of"):
        SwinIRConfig(upsampler="bicubic")
    with pytest.raises(ValueError, match="divisible by every num_heads"):
        SwinIRConfig(embed_dim=60, num_heads=(7,) * 6)
    with pytest.raises(ValueError, match="unknown restoration model"):
        swinkit.create_restoration_model("swinir_x4")
    swinkit.save_model(model, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="embed_dim=16 .model: 32."):
        swinkit.load_model(tmp_path / "m.safetensors", embed_dim=32)
    with pytest.raises(CheckpointError, match="class_map"):
        swinkit.load_model(tmp_path / "m.safetensors", class_map=[0])


def test_measured_params_match_the_paper():
    from swinkit.counting import measure_restoration_variant

    for name, tables in (("swinir_lightweight_x2", 24 * 225 * 6), ("swinir_classical_x4", 36 * 225 * 6)):
        row = measure_restoration_variant(name)
        assert row["size"] == [64, 64] and row["gmacs"] > 0
        # the SwinIR paper counts no relative position bias tables ((2*8-1)^2 x heads per block)
        assert abs(row["params_m"] - tables / 1e6 - row["paper_params_m"]) / row["paper_params_m"] < 0.01
