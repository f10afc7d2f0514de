"""The restore task: the SR papers' metrics (Set5 bicubic reproduced, SSIM equal to scikit-image's), the
degradations made on the fly, image files (grey, alpha, 16-bit), tiled inference, `swinkit restore` on bad inputs,
and `swinkit train --task restore` -> `swinkit eval` -> `swinkit restore` on a run."""
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader

from swinkit.cli import main
from swinkit.config import SwinIRConfig
from swinkit.models.swinir import SwinIR
from swinkit.tasks.restore import (Degradation, EvalDataset, Picture, RestoreTask, add_noise, bicubic_downscale,
                                   collate, default_model, evaluate, jpeg, psnr, read_picture, restore_tensor, ssim,
                                   to_y, write_picture)

from conftest import SHARED, randomize_

SET5 = SHARED / "data" / "set5"
TINY = dict(embed_dim=12, depths=(1,), num_heads=(2,), window_size=4, img_size=16, drop_path_rate=0.0)
TINY_FLAGS = ["--embed-dim", "12", "--depths", "1", "--num-heads", "2", "--window-size", "4", "--img-size", "16"]


class PilBicubic(nn.Module):
    """The SR papers' bicubic baseline as a model: 8-bit input up-scaled with PIL's bicubic resize."""

    def __init__(self, scale: int):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = (x[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        up = Image.fromarray(a).resize((a.shape[1] * self.scale, a.shape[0] * self.scale), Image.BICUBIC)
        return torch.from_numpy(np.asarray(up).copy()).permute(2, 0, 1)[None].float() / 255


def photo(h: int = 64, w: int = 48, seed: int = 0) -> np.ndarray:
    """A smooth (H, W, 3) uint8 test image with some texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 5 + c) * np.cos(yy / 7 - c) for c in range(3)], -1) * 80 + 128
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def restore_checkpoint(path: Path, **cfg) -> Path:
    """A `swinkit train --task restore`-style checkpoint of a tiny random SwinIR."""
    model = randomize_(SwinIR(SwinIRConfig(**{**TINY, **cfg})), 0.02)
    c = model.cfg
    kind = "sr" if c.upscale > 1 else "denoise"
    meta = {"task_kind": kind, "scale": c.upscale, "sigma": 25.0 if kind == "denoise" else None, "quality": None,
            "border": c.upscale if kind == "sr" else 0, "in_chans": c.in_chans}
    torch.save({"task": "restore", "config": c.to_dict(), "model": model.state_dict(), "restoration": meta}, path)
    return path


# ----------------------------------------------------------------------------------------------------------
# metrics


@pytest.mark.skipif(not SET5.is_dir(), reason="../shared/data/set5 is not on this machine")
def test_set5_bicubic_reproduces_the_published_protocol():
    """PIL bicubic up-scaling of the stored LR files, through the evaluator: the values measured with SwinIR's
    protocol (../shared/data/README.md; the papers' bicubic rows are 0.01 dB lower, from MATLAB's bicubic)."""
    expected = {2: (33.67, 0.9303), 3: (30.40, 0.8689), 4: (28.43, 0.8111)}
    for s, (p, q) in expected.items():
        ds = EvalDataset(SET5, Degradation("sr", s))
        assert ds.lr_dir == SET5 / "LR_bicubic" / f"X{s}" and len(ds) == 5
        m = evaluate(PilBicubic(s), DataLoader(ds, 1, collate_fn=collate), torch.device("cpu"), border=s)
        assert abs(m["psnr_y"] - p) < 0.01 and abs(m["ssim_y"] - q) < 1e-4, (s, m)
        assert m["psnr_rgb"] < m["psnr_y"]  # colour channels are harder than luma


def test_ssim_psnr_and_y_equal_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    from skimage.color import rgb2ycbcr

    a = photo(40, 52, 1).astype(np.float64)
    b = np.clip(a + np.random.default_rng(2).normal(0, 9, a.shape), 0, 255).round()
    ta, tb = (torch.from_numpy(x).permute(2, 0, 1) for x in (a, b))  # (3, H, W)
    ref = metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                        data_range=255, channel_axis=2)
    assert abs(ssim(ta, tb) - ref) < 1e-9
    ref_grey = metrics.structural_similarity(a[..., 0], b[..., 0], gaussian_weights=True, sigma=1.5,
                                             use_sample_covariance=False, data_range=255)
    assert abs(ssim(ta[:1], tb[:1]) - ref_grey) < 1e-9
    assert abs(psnr(ta, tb) - metrics.peak_signal_noise_ratio(a, b, data_range=255)) < 1e-9
    y = rgb2ycbcr(a / 255)[..., 0]  # ITU-R BT.601 from [0, 1] RGB
    assert torch.allclose(to_y(ta)[0], torch.from_numpy(y), atol=1e-9)
    assert torch.equal(to_y(ta[:1]), ta[:1])  # grey is its own Y


# ----------------------------------------------------------------------------------------------------------
# degradations


def test_bicubic_downscale_size_levels_and_closeness_to_pil():
    x = torch.from_numpy(photo(60, 48)).permute(2, 0, 1).float() / 255
    for s in (2, 3, 4):
        y = bicubic_downscale(x, s)
        assert y.shape == (3, 60 // s, 48 // s)
        assert torch.equal(y * 255, (y * 255).round())  # 8-bit levels, as stored LR files
        pil = Image.fromarray(photo(60, 48)).resize((48 // s, 60 // s), Image.BICUBIC)
        ref = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).double()
        assert ((y.double() * 255).round() - ref).abs().max() <= 1  # torch's antialiased bicubic is PIL's kernel
    with pytest.raises(ValueError, match="divisible by the scale 4"):
        bicubic_downscale(x[:, :58], 4)


@pytest.mark.skipif(not SET5.is_dir(), reason="../shared/data/set5 is not on this machine")
def test_bicubic_downscale_is_close_to_matlabs_imresize_lr_files():
    hr = read_picture(SET5 / "HR" / "baby.png").pixels
    for s in (2, 4):
        lr = read_picture(SET5 / "LR_bicubic" / f"X{s}" / f"babyx{s}.png").pixels
        ours = bicubic_downscale(hr[:, :lr.shape[1] * s, :lr.shape[2] * s], s)
        assert 50 < psnr(ours * 255, lr * 255) < 70  # close, not equal: MATLAB's imresize differs slightly


def test_jpeg_is_lossy_deterministic_and_follows_quality():
    x = torch.from_numpy(photo(48, 48)).permute(2, 0, 1).float() / 255
    q10, q10_again, q90 = jpeg(x, 10), jpeg(x, 10), jpeg(x, 90)
    assert torch.equal(q10, q10_again) and q10.shape == x.shape
    assert psnr(q10 * 255, x * 255) < psnr(q90 * 255, x * 255) < 45  # lossy at any quality, worse when lower
    assert jpeg(x[:1], 30).shape == (1, 48, 48)  # grey JPEG stays grey
    with pytest.raises(ValueError, match="JPEG quality in 1..95"):
        Degradation("jpeg", 1, quality=0)


def test_noise_has_sigma_over_255_and_is_fixed_per_file_in_evaluation(tmp_path):
    x = torch.full((3, 200, 200), 0.5)
    n = add_noise(x, 25, torch.Generator().manual_seed(0)) - x
    assert abs(n.std().item() * 255 - 25) < 0.5 and abs(n.mean().item()) < 1e-3
    assert n.min() < -0.5 + 0.5  # not clipped (as the official code)
    for i in range(2):
        Image.fromarray(photo(32, 32, i)).save(tmp_path / f"{i}.png")
    ds = EvalDataset(tmp_path, Degradation("denoise", 1, sigma=15))
    (a, _), (b, _) = ds[0], ds[1]
    assert torch.equal(a, ds[0][0]) and not torch.equal(a - ds[0][1], b - ds[1][1])
    assert torch.equal(a, ds[0][1] + add_noise(torch.zeros(3, 32, 32), 15, torch.Generator().manual_seed(
        zlib.crc32(b"0.png"))))


def test_degradation_settings_are_checked():
    with pytest.raises(ValueError, match="expected scale >= 1 for sr and 1 for denoise"):
        Degradation("denoise", 2)
    with pytest.raises(ValueError, match="unknown restoration task 'deblur'"):
        Degradation("deblur")
    assert (Degradation("sr", 3).border, Degradation("jpeg").border) == (3, 0)


# ----------------------------------------------------------------------------------------------------------
# image files


def test_grey_alpha_palette_and_16_bit_images_read_as_they_are(tmp_path):
    rgb = photo(20, 30)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("LA").save(tmp_path / "la.png")
    Image.fromarray(rgb).quantize(16).save(tmp_path / "palette.png")
    g16 = (np.arange(600).reshape(20, 30) * 109).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "grey16.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=95)

    grey = read_picture(tmp_path / "grey.png")
    assert grey.pixels.shape == (1, 20, 30) and grey.alpha is None and grey.bits == 8
    assert torch.equal(grey.pixels[0] * 255, torch.from_numpy(rgb[..., 0]).float())
    rgba = read_picture(tmp_path / "rgba.png")
    assert rgba.pixels.shape == (3, 20, 30) and torch.equal(rgba.alpha[0] * 255, torch.from_numpy(rgb[..., 0]).float())
    assert read_picture(tmp_path / "la.png").pixels.shape == (1, 20, 30)
    assert read_picture(tmp_path / "la.png").alpha.shape == (1, 20, 30)
    assert read_picture(tmp_path / "palette.png").pixels.shape == (3, 20, 30)
    assert read_picture(tmp_path / "rgb.jpg").pixels.shape == (3, 20, 30)
    g = read_picture(tmp_path / "grey16.png")
    assert g.bits == 16 and torch.allclose(g.pixels[0].double() * 65535, torch.from_numpy(g16).double(), atol=1e-2)


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
def test_16_bit_and_8_bit_pngs_round_trip_exactly(tmp_path):
    from torchvision.io import ImageReadMode, decode_png, read_file

    rng = np.random.default_rng(0)
    for c in (1, 3):
        v16 = torch.from_numpy(rng.integers(0, 65536, (c, 9, 11)).astype(np.float64))
        pic = Picture((v16 / 65535).float(), (v16[:1] / 65535).float(), 16)
        write_picture(tmp_path / f"p{c}.png", pic)
        raw = decode_png(read_file(str(tmp_path / f"p{c}.png")), mode=ImageReadMode.UNCHANGED)  # another decoder
        assert raw.dtype == torch.uint16 and torch.equal(raw.to(torch.int32)[:c].double(), v16)
        back = read_picture(tmp_path / f"p{c}.png")
        assert back.bits == 16 and torch.equal((back.pixels.double() * 65535).round(), v16)
        assert back.alpha is not None
        v8 = torch.from_numpy(rng.integers(0, 256, (c, 9, 11)).astype(np.float64))
        write_picture(tmp_path / f"q{c}.png", Picture((v8 / 255).float()))
        assert torch.equal((read_picture(tmp_path / f"q{c}.png").pixels.double() * 255).round(), v8)


# ----------------------------------------------------------------------------------------------------------
# tiles


def test_tiles_blend_to_the_whole_image_result():
    x = torch.rand(1, 3, 37, 45)
    up = nn.Upsample(scale_factor=2, mode="nearest")  # no context: tiles must equal the whole image
    assert torch.allclose(restore_tensor(up, x, 2, tile=16, overlap=5), up(x), atol=1e-6)
    model = randomize_(SwinIR(SwinIRConfig(**TINY)), 0.02).eval()
    with torch.no_grad():
        whole = model(x)
        assert torch.equal(restore_tensor(model, x, 2, tile=45, overlap=8), whole)  # tile >= image: one call
        tiled = restore_tensor(model, x, 2, tile=16, overlap=8)
    assert tiled.shape == whole.shape
    # Attention and convs reach past a tile, and a tile's windows start at its own corner, so tiles do not equal
    # the whole image here: by as much as the network's whole contribution with these random weights (0.013, its
    # output's std), which no bound can tell from a misplaced tile. What tiling must do is exact: average the
    # model's output on each tile (corners every tile - overlap, the last flush with the image) over the tiles
    # that cover a pixel. Rebuilt here, it differs only by float32's rounding of sums of at most 4 tiles: 3
    # roundings of u = 2^-24 of the output's scale, 1e-6 of it with room.
    with torch.no_grad():
        total, count = torch.zeros_like(whole), torch.zeros_like(whole[:, :1])
        for i in sorted({*range(0, 37 - 16, 8), 37 - 16}):
            for j in sorted({*range(0, 45 - 16, 8), 45 - 16}):
                total[..., 2 * i:2 * i + 32, 2 * j:2 * j + 32] += model(x[..., i:i + 16, j:j + 16])
                count[..., 2 * i:2 * i + 32, 2 * j:2 * j + 32] += 1
    assert (tiled - total / count).abs().max() <= 1e-6 * whole.abs().max()
    with pytest.raises(ValueError, match="0 <= --tile-overlap < the tile"):
        restore_tensor(model, x, 2, tile=16, overlap=16)


# ----------------------------------------------------------------------------------------------------------
# settings


def test_default_models_follow_the_task_and_recipe():
    assert default_model("sr", 4, 25, 40) == "swinir_classical_x4"
    assert default_model("sr", 3, 25, 40, "lightweight") == "swinir_lightweight_x3"
    assert default_model("denoise", 1, 50, 40) == "swinir_color_dn_50"
    assert default_model("jpeg", 1, 25, 12, in_chans=1) == "swinir_gray_jpeg_10"
    with pytest.raises(ValueError, match="no lightweight SwinIR for x8"):
        default_model("sr", 8, 25, 40, "lightweight")


def test_resolve_picks_scale_model_and_loss_and_rejects_what_cannot_work():
    base = {"data": ["x"], "model": None, "pretrained": None, "task_kind": "sr", "scale": None, "sigma": 25.0,
            "quality": 40, "loss": None, "val_images": 4, "repeat": 1, "recipe": "classical", "img_size": None,
            **{k: None for k in ("window_size", "embed_dim", "depths", "num_heads", "in_chans", "drop_path_rate")}}
    flat = RestoreTask.resolve(dict(base), {})
    assert (flat["scale"], flat["model"], flat["loss"], flat["img_size"]) == (2, "swinir_classical_x2", "l1", 64)
    flat = RestoreTask.resolve({**base, "model": "swinir_lightweight_x4"}, {"model": 1})
    assert flat["scale"] == 4
    flat = RestoreTask.resolve({**base, "task_kind": "denoise"}, {})
    assert (flat["scale"], flat["model"], flat["loss"], flat["img_size"]) == (1, "swinir_color_dn_25", "charbonnier",
                                                                              128)
    assert RestoreTask._config({**base, "model": "swinir_lightweight_x2", "scale": 3}).upscale == 3
    with pytest.raises(ValueError, match="swinir_classical_x2 up-scales x2, the task is x1"):
        RestoreTask.resolve({**base, "task_kind": "denoise", "model": "swinir_classical_x2"}, {"model": 1})
    with pytest.raises(ValueError, match="swinir_color_dn_15 .none head, x1. does not do sr"):
        RestoreTask.resolve({**base, "scale": 1, "model": "swinir_color_dn_15"}, {"model": 1})
    with pytest.raises(ValueError, match="pass --data DIR"):
        RestoreTask.resolve({**base, "data": None}, {})
    assert RestoreTask.primary_metric == "psnr_y"  # the loop keeps the highest as best.pt


# ----------------------------------------------------------------------------------------------------------
# swinkit restore, and a whole run


def test_restore_keeps_grey_alpha_and_16_bits_and_reports_bad_files(tmp_path, capsys):
    ck = restore_checkpoint(tmp_path / "sr.pt", upscale=2)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(photo(20, 24)).save(src / "rgb.png")
    Image.fromarray(photo(20, 24)[..., 0]).save(src / "grey.png")
    Image.fromarray(np.dstack([photo(20, 24), np.full((20, 24), 200, np.uint8)])).save(src / "alpha.png")
    Image.fromarray((np.arange(480).reshape(20, 24) * 130).astype(np.uint16)).save(src / "deep.png")
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    argv = ["restore", str(src), str(tmp_path / "missing.png"), str(tmp_path / "empty"), "--checkpoint", str(ck),
            "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "cannot restore" in err and "broken.jpg" in err and "missing.png" in err and "no images" in err
    assert sorted(p.name for p in out.iterdir()) == ["alpha.png", "deep.png", "grey.png", "rgb.png"]
    with Image.open(out / "rgb.png") as im:
        assert (im.mode, im.size) == ("RGB", (48, 40))
    with Image.open(out / "grey.png") as im:
        assert (im.mode, im.size) == ("L", (48, 40))
    with Image.open(out / "alpha.png") as im:
        assert im.mode == "RGBA" and np.asarray(im)[..., 3].min() >= 199  # alpha up-scaled with the image
    deep = read_picture(out / "deep.png")
    assert deep.bits == 16 and deep.pixels.shape == (1, 40, 48)

    # tiled, and the same model for a single file: the output matches restore_tensor
    assert main(["restore", str(src / "rgb.png"), "--checkpoint", str(ck), "--out", str(tmp_path / "t"), "--tile",
                 "12", "--tile-overlap", "4", "--scale", "2", "--task", "sr"]) == 0
    model = SwinIR(SwinIRConfig.from_dict(torch.load(ck)["config"]))
    model.load_state_dict(torch.load(ck)["model"])
    x = read_picture(src / "rgb.png").pixels[None]
    with torch.no_grad():
        ref = restore_tensor(model.eval(), x, 2, tile=12, overlap=4).clamp(0, 1)[0]
    assert (read_picture(tmp_path / "t" / "rgb.png").pixels - ref).abs().max() <= 0.5 / 255 + 1e-6

    for extra, message in [(["--scale", "4"], "restores at x2, not --scale 4"),
                           (["--task", "denoise"], "does not do denoise"),
                           (["--model", "swinir_classical_x2"], "not both")]:
        assert main(["restore", str(src / "rgb.png"), "--checkpoint", str(ck), "--out", str(out), *extra]) == 1
        assert message in capsys.readouterr().err
    grey_model = restore_checkpoint(tmp_path / "grey.pt", upscale=1, upsampler="none", in_chans=1)
    assert main(["restore", str(src / "rgb.png"), str(src / "grey.png"), "--checkpoint", str(grey_model), "--out",
                 str(tmp_path / "g")]) == 1
    assert "restores grey images (1 channel) and this one is RGB" in capsys.readouterr().err
    assert (tmp_path / "g" / "grey.png").is_file()


def test_train_eval_and_restore_a_run(tmp_path, capsys):
    data = tmp_path / "photos"
    data.mkdir()
    for i in range(5):
        Image.fromarray(photo(48, 40, i)).save(data / f"{i}.png")
    Image.fromarray(photo(20, 20)).save(data / "small.png")  # smaller than the 32px HR patch: left out
    bench = tmp_path / "bench"
    (bench / "HR").mkdir(parents=True)
    (bench / "LR_bicubic" / "X2").mkdir(parents=True)
    for i in range(2):
        hr = photo(40, 36, 10 + i)
        Image.fromarray(hr).save(bench / "HR" / f"b{i}.png")
        Image.fromarray(hr).resize((18, 20), Image.BICUBIC).save(bench / "LR_bicubic" / "X2" / f"b{i}x2.png")
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="smaller than the 32x32 training patch"):
        assert main(["train", "--task", "restore", "--data", str(data), "--scale", "2", *TINY_FLAGS, "--epochs", "2",
                     "--batch-size", "2", "--val-data", str(bench), "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "restore" and config["restoration"] == {
        "task_kind": "sr", "scale": 2, "sigma": None, "quality": None, "border": 2, "in_chans": 3}
    assert config["args"]["model"] == "swinir_classical_x2" and config["model"]["upscale"] == 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["skipped_files"] == 1 and np.isfinite(summary["best_val_psnr_y"])
    capsys.readouterr()

    assert main(["eval", "--checkpoint", str(run), "--data", str(bench), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["num_images"], result["lq"], result["border"]) == (2, "stored", 2)
    assert 0 < result["ssim_y"] < 1 and np.isfinite(result["psnr_y"])
    assert main(["eval", "--checkpoint", str(run), "--data", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lq"] == "on the fly"

    assert main(["restore", str(bench / "LR_bicubic" / "X2"), "--checkpoint", str(run), "--out",
                 str(tmp_path / "sr")]) == 0
    with Image.open(tmp_path / "sr" / "b0x2.png") as im:
        assert im.size == (36, 40)
    assert main(["restore", str(data / "0.png"), "--checkpoint", str(tmp_path / "nothing"), "--out",
                 str(tmp_path / "sr")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_restore_reads_swinir_weight_files(tmp_path):
    import swinkit

    model = randomize_(SwinIR(SwinIRConfig(**{**TINY, "upscale": 3})), 0.02)
    swinkit.save_model(model, tmp_path / "x3.safetensors")
    Image.fromarray(photo(20, 24)).save(tmp_path / "a.png")
    assert main(["restore", str(tmp_path / "a.png"), "--checkpoint", str(tmp_path / "x3.safetensors"), "--out",
                 str(tmp_path / "out"), "--scale", "3"]) == 0
    with Image.open(tmp_path / "out" / "a.png") as im:
        assert im.size == (72, 60)
