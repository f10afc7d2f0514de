"""Video Swin checkpoints: the official fixture reproduced through load_model with no hints, torchvision's swin3d
both ways, the official inflation of 2-D weights matched exactly, save / load, pretrained weights from a file URL,
the CLI, and the errors."""
import dataclasses
import hashlib
import warnings
from pathlib import Path

import pytest
import torch

import swinkit
from swinkit import VideoSwinTransformer, create_video_model, load_model, save_model
from swinkit.cli import main as cli
from swinkit.config import VideoSwinConfig
from swinkit.io import hub as hub_io
from swinkit.io.files import CheckpointError
from swinkit.io.load import write_checkpoint
from swinkit.io.formats.video import (inflate_checkpoint, read_video_checkpoint, convert_video_state_dict, infer_video_config, video_from_swinkit,
                                      video_to_swinkit)

from conftest import SHARED, randomize_, tiny_config

tv_video = pytest.importorskip("torchvision.models.video")

VIDEO = SHARED / "fixtures" / "video_swin"
needs_fixtures = pytest.mark.skipif(not VIDEO.exists(), reason=f"official Video Swin fixtures not found at {VIDEO}")

# SwinTransformer3D(patch_size=(2,4,4), embed_dim=24, depths=[2,2,2], num_heads=[2,4,8], window_size=(2,3,3)) of
# the fixtures README, as the official and torchvision code compute it: padded tokens attended, bias prefixes
FIXTURE_CONFIG = VideoSwinConfig(patch_size=(2, 4, 4), embed_dim=24, depths=(2, 2, 2), num_heads=(2, 4, 8),
                                 window_size=(2, 3, 3), num_classes=0, mask_padding=False, clamped_bias="prefix")
TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=(8, 7, 7))  # video_swin_t's window
SIZES = [(2, 3, 16, 56, 56),  # 8 x 14 x 14 tokens: windows tile stage 0, later stages clamp in space
         (1, 3, 18, 50, 62),  # 9 x 13 x 16 tokens: every axis padded to a window multiple
         (1, 3, 6, 64, 64)]  # 3 frames of tokens: the temporal window clamped to 3


def _clip(shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _tv_model(num_classes=5):
    """A small torchvision SwinTransformer3d with random weights (bias tables included), in float64."""
    shape = {k: v if isinstance(v, int) else list(v) for k, v in TINY.items()}
    tv = tv_video.swin_transformer.SwinTransformer3d(patch_size=[2, 4, 4], num_classes=num_classes, **shape)
    return randomize_(tv).double().eval()


def _official_sd():
    return torch.load(VIDEO / "backbone_tiny.pth", weights_only=True)["state_dict"]


# ------------------------------------------------------------------------------------------- official format


@needs_fixtures
def test_official_fixture_parity_with_no_hints():
    """As test_unet's fixture test: the fixture's random weights make attention nearly one-hot, and its float32
    output is 4.4e-4 (1.3e-4 of its scale, 3.3) from its float64 recomputation, a property of the file. In float64
    the model must reproduce it within 1e-3 of the scale (masking the padded tokens, which the official code does
    not, gives 0.97); in float32, fused attention included, it must err from float64 by no more than 4x the
    fixture's own float32 error."""
    io = torch.load(VIDEO / "backbone_tiny.io.pt", weights_only=True)
    model = load_model(VIDEO / "backbone_tiny.pth")
    assert isinstance(model, VideoSwinTransformer) and not model.training
    with torch.no_grad():
        out = model.forward_features(io["input"])
        exact = model.double().forward_features(io["input"].double())
    assert out.shape == io["output"].shape == (2, 96, 3, 3, 3)
    fixture_rounding = (exact - io["output"].double()).abs().max().item()
    assert fixture_rounding <= 1e-3 * io["output"].abs().max().item()
    assert (out.double() - exact).abs().max().item() <= 4 * fixture_rounding


@needs_fixtures
def test_official_fixture_config_is_recognised():
    ckpt = read_video_checkpoint(VIDEO / "backbone_tiny.pth")
    assert ckpt.format == "official" and ckpt.guessed == [] and ckpt.unknown == []
    assert ckpt.config == FIXTURE_CONFIG
    assert load_model(VIDEO / "backbone_tiny.pth").cfg == FIXTURE_CONFIG


@needs_fixtures
def test_official_and_mmaction2_round_trips_are_bit_exact(tmp_path):
    sd = _official_sd()
    ours = video_to_swinkit(sd).state_dict
    back = video_from_swinkit(ours, "official", FIXTURE_CONFIG, prefix="")  # SwinTransformer3D alone
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)  # index buffers included
    again = video_to_swinkit(back).state_dict
    assert again.keys() == ours.keys() and all(torch.equal(again[k], ours[k]) for k in ours)
    # the recognizer layout (backbone. + cls_head.fc_cls), through files
    model = randomize_(VideoSwinTransformer(dataclasses.replace(FIXTURE_CONFIG, num_classes=7))).eval()
    write_checkpoint(model.state_dict(), model.cfg, tmp_path / "recognizer.pth", "official")
    saved = torch.load(tmp_path / "recognizer.pth", weights_only=True)["state_dict"]
    assert {k.split(".")[0] for k in saved} == {"backbone", "cls_head"}
    assert saved["cls_head.fc_cls.weight"].shape == (7, 96)
    loaded = load_model(tmp_path / "recognizer.pth")
    assert loaded.cfg == model.cfg
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    # mmaction2 1.x names the last stage's norm after its out_indices entry
    write_checkpoint(model.state_dict(), model.cfg, tmp_path / "mmaction2.pth", "mmaction2")
    saved = torch.load(tmp_path / "mmaction2.pth", weights_only=True)["state_dict"]
    assert "backbone.norm2.weight" in saved and "backbone.norm.weight" not in saved
    ckpt = read_video_checkpoint(tmp_path / "mmaction2.pth")
    assert ckpt.format == "mmaction2" and ckpt.config == model.cfg
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ckpt.state_dict.items())


# -------------------------------------------------------------------------------------------- torchvision


def test_torchvision_to_swinkit_parity(tmp_path):
    tv = _tv_model()
    torch.save(tv.state_dict(), tmp_path / "swin3d.pth")
    model = load_model(tmp_path / "swin3d.pth").double()
    assert (model.cfg.mask_padding, model.cfg.clamped_bias, model.cfg.num_classes) == (False, "prefix", 5)
    assert model.cfg.window_size == ((8, 7, 7),) * 4
    with torch.no_grad():
        for shape in SIZES:
            x = _clip(shape)
            assert (model(x) - tv(x)).abs().max() < 1e-10, shape


def test_swinkit_to_torchvision_parity(tmp_path):
    cfg = VideoSwinConfig(patch_size=(2, 4, 4), num_classes=5, mask_padding=False, clamped_bias="prefix", **TINY)
    model = randomize_(VideoSwinTransformer(cfg)).double().eval()
    write_checkpoint(model.state_dict(), cfg, tmp_path / "swin3d.pth", "torchvision")
    tv = _tv_model()
    tv.load_state_dict(torch.load(tmp_path / "swin3d.pth", weights_only=True), strict=True)
    with torch.no_grad():
        for shape in SIZES:
            x = _clip(shape)
            assert (model(x) - tv(x)).abs().max() < 1e-10, shape


def test_swin3d_t_is_recognised_and_loads_strictly():
    tv = tv_video.swin3d_t()
    imp = video_to_swinkit(tv.state_dict())
    cfg, guessed = infer_video_config(imp.state_dict, imp.buffers, imp.format)
    assert imp.format == "torchvision" and guessed == []
    assert cfg == VideoSwinConfig.from_name("video_swin_t", mask_padding=False, clamped_bias="prefix")
    back = video_from_swinkit(imp.state_dict, "torchvision", cfg)
    assert back.keys() == tv.state_dict().keys() and all(torch.equal(back[k], v) for k, v in tv.state_dict().items())
    tv_video.swin3d_t().load_state_dict(back, strict=True)


# -------------------------------------------------------------------------------------------- inflation


@needs_fixtures
def test_inflation_matches_the_official_exactly():
    reference = video_to_swinkit(torch.load(VIDEO / "inflated_from_2d.pth", weights_only=True)["state_dict"])
    shape = {k: getattr(FIXTURE_CONFIG, k) for k in ("embed_dim", "depths", "num_heads", "window_size")}
    model = create_video_model("video_swin_t", checkpoint=VIDEO / "image_swin_2d.pth", num_classes=0, **shape)
    sd = model.state_dict()
    assert sd.keys() == reference.state_dict.keys()
    assert all(torch.equal(sd[k], reference.state_dict[k]) for k in sd)
    with pytest.warns(UserWarning, match=r"inflated .* \(average\); new, freshly initialised tensors \(train them "
                                         r"before use\): head\.fc\.weight, head\.fc\.bias; dropped from the 2-D model: "
                                         r"head\.fc\.weight, head\.fc\.bias"):
        with_head = create_video_model("video_swin_t", checkpoint=VIDEO / "image_swin_2d.pth", num_classes=7, **shape)
    assert with_head.cfg.num_classes == 7
    assert all(torch.equal(v, sd[k]) for k, v in with_head.state_dict().items() if not k.startswith("head."))


@pytest.mark.parametrize("mode", ["average", "center"])
def test_inflated_model_embeds_a_static_clip_as_the_2d_model(mode, tmp_path):
    model2d = randomize_(swinkit.SwinTransformer(tiny_config(num_classes=10))).eval()
    save_model(model2d, tmp_path / "image.safetensors")
    cfg = VideoSwinConfig(patch_size=(3, 4, 4), embed_dim=16, depths=(2, 2, 2), num_heads=(2, 4, 8),
                          window_size=(2, 4, 4), num_classes=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # headless: every tensor comes from the 2-D model, nothing to warn about
        model3d = inflate_checkpoint(tmp_path / "image.safetensors", cfg, mode)
    w = model3d.patch_embed.proj.weight
    if mode == "center":  # the 2-D filters in frame 1 of 3, zeros elsewhere
        assert torch.equal(w[:, :, 1], model2d.patch_embed.proj.weight) and not w[:, :, [0, 2]].any()
    x = _clip((2, 3, 40, 36)).float()
    clip = x[:, :, None].expand(-1, -1, 6, -1, -1)  # 6 equal frames
    with torch.no_grad():
        frame, video = model2d.patch_embed(x), model3d.patch_embed(clip)  # (B, H', W', D), (B, T', H', W', D)
    assert video.shape[:2] == (2, 2)
    assert (video - frame[:, None]).abs().max() < 1e-5


# -------------------------------------------------------------------------------------- swinkit format, API


def test_save_load_round_trip(tmp_path):
    cfg = VideoSwinConfig(patch_size=(2, 4, 4), embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=(2, 4, 4),
                          num_classes=3, head_drop_rate=0.3)
    model = randomize_(VideoSwinTransformer(cfg)).eval()
    save_model(model, tmp_path / "m.safetensors", class_names=["run", "jump", "sit"])
    loaded = load_model(tmp_path / "m.safetensors")
    assert type(loaded) is VideoSwinTransformer and loaded.cfg == cfg and loaded.class_names == ["run", "jump", "sit"]
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    x = _clip((1, 3, 5, 30, 34)).float()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_named_model_from_a_video_checkpoint(tmp_path):
    tv = _tv_model()
    torch.save(tv.state_dict(), tmp_path / "swin3d.pth")
    model = create_video_model("video_swin_t", checkpoint=tmp_path / "swin3d.pth", **TINY)
    assert model.cfg.name == "video_swin_t" and model.cfg.num_classes == 5
    assert (model.cfg.mask_padding, model.cfg.clamped_bias) == (False, "prefix")  # as the checkpoint computes
    with pytest.warns(UserWarning, match="has a 5-class head, the model 3 classes: the head is freshly initialised"):
        fresh = create_video_model("video_swin_t", checkpoint=tmp_path / "swin3d.pth", num_classes=3, **TINY)
    assert fresh.head.fc.out_features == 3
    assert torch.equal(fresh.norm.weight, tv.norm.weight.float())
    with pytest.raises(CheckpointError, match=r"different architecture: embed_dim=16 \(model: 96\).* pick a matching"):
        create_video_model("video_swin_t", checkpoint=tmp_path / "swin3d.pth")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


def test_pretrained_release_from_a_file_url(hub, tmp_path, monkeypatch):
    tv = _tv_model().float()
    release = tmp_path / "swin3d_t-release.pth"
    torch.save(tv.state_dict(), release)
    digest = hashlib.sha256(release.read_bytes()).hexdigest()
    monkeypatch.setitem(hub_io.VIDEO_PRETRAINED, "video_swin_t", (release.as_uri(), "sha256:" + digest[:8]))
    model = create_video_model("video_swin_t", pretrained=True, **TINY)
    assert (hub / release.name).exists() and not model.training
    exported = convert_video_state_dict(model.state_dict(), dst="torchvision", cfg=model.cfg)
    assert all(torch.equal(v, tv.state_dict()[k]) for k, v in exported.items())
    (hub / release.name).unlink()
    monkeypatch.setitem(hub_io.VIDEO_PRETRAINED, "video_swin_t", (release.as_uri(), "sha256:00000000"))
    with pytest.raises(CheckpointError, match=r"checksum mismatch for file://.*expected sha256 00000000"):
        create_video_model("video_swin_t", pretrained=True, **TINY)
    assert [Path(u).name.split("-")[0] for u, _ in hub_io.VIDEO_PRETRAINED.values()] == ["swin3d_t", "swin3d_s",
                                                                                          "swin3d_b_1k"]


@needs_fixtures
def test_cli_inspect_and_convert(tmp_path, capsys):
    assert cli(["inspect", str(VIDEO / "backbone_tiny.pth")]) == 0
    out = capsys.readouterr().out
    assert "format:   official (Video Swin)" in out and "mask_padding: False" in out and "unknown:  none" in out
    assert cli(["convert", str(VIDEO / "backbone_tiny.pth"), str(tmp_path / "tv.pth"), "--to", "torchvision"]) == 0
    assert "wrote" in capsys.readouterr().out
    tv = torch.load(tmp_path / "tv.pth", weights_only=True)
    assert "features.1.reduction.weight" in tv and tv["features.0.0.attn.relative_position_index"].shape == (18, 18)
    assert cli(["convert", str(tmp_path / "tv.pth"), str(tmp_path / "m.safetensors")]) == 0
    assert load_model(tmp_path / "m.safetensors").cfg == FIXTURE_CONFIG
    assert cli(["convert", str(VIDEO / "backbone_tiny.pth"), str(tmp_path / "hf"), "--to", "hf"]) == 2
    assert capsys.readouterr().err.startswith("swinkit convert: --to hf has no Video Swin layout")


# ---------------------------------------------------------------------------------------------------- errors


def test_errors_for_what_is_not_a_video_checkpoint(tmp_path):
    with pytest.raises(ValueError, match=r"not a Video Swin state dict: expected a 5-D patch_embed\.proj\.weight"):
        video_to_swinkit(swinkit.SwinTransformer(tiny_config()).state_dict())
    (tmp_path / "notes.pth").write_text("not weights")
    with pytest.raises(CheckpointError, match=r"notes\.pth is not a checkpoint: expected a PyTorch file"):
        create_video_model("video_swin_t", checkpoint=tmp_path / "notes.pth")
    v2 = swinkit.SwinTransformer(tiny_config(version=2))
    save_model(v2, tmp_path / "v2.safetensors")
    with pytest.raises(CheckpointError, match="a Swin V2 checkpoint cannot be inflated: Video Swin is Swin V1"):
        create_video_model("video_swin_t", checkpoint=tmp_path / "v2.safetensors")
    save_model(swinkit.SwinTransformer(tiny_config()), tmp_path / "v1.safetensors")
    with pytest.raises(CheckpointError, match=r"does not fit this video model: embed_dim=16 \(model: 96\), depths="):
        create_video_model("video_swin_t", checkpoint=tmp_path / "v1.safetensors")
    with pytest.raises(CheckpointError, match="inflate must be one of"):
        create_video_model("video_swin_t", checkpoint=tmp_path / "v1.safetensors", inflate="middle")
    sd = video_from_swinkit(VideoSwinTransformer(FIXTURE_CONFIG).state_dict(), "torchvision", FIXTURE_CONFIG)
    torch.save(sd, tmp_path / "tv.pth")
    with pytest.raises(CheckpointError, match=r"different architecture: window_size=\(\(2, 3, 3\), .*\(model: "
                                              r"\(\(4, 3, 3\).*fix the shapes of its tensors"):
        load_model(tmp_path / "tv.pth", window_size=(4, 3, 3))
    torch.save({**sd, "features.0.0.attn.gate": torch.ones(1)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"1 keys of this torchvision Video Swin checkpoint have no place in "
                                              r"swinkit: features\.0\.0\.attn\.gate"):
        load_model(tmp_path / "extra.pth")
