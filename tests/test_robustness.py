"""swinkit.metrics.robustness and `swinkit eval --robustness`: severity 0 is the identity, each corruption follows its
documented definition and grows with severity, a pixel-permutation-invariant model keeps every cyclic shift,
consistency and relative mCE equal hand computations, bad inputs give exact errors, and the command writes it all."""
import itertools
import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

import swinkit
from swinkit.cli import main
from swinkit.metrics.robustness import (
    CORRUPTIONS,
    SEVERITY_PARAMS,
    corrupt,
    corruption_accuracy,
    evaluate_robustness,
    format_robustness,
    relative_mce,
    translation_consistency,
)

EPS64 = torch.finfo(torch.float64).eps


def images64(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------------------
# corruptions


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_0_is_the_identity(name):
    x = torch.rand(3, 3, 20, 24)
    y = corrupt(x, name, 0)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()  # equal, and a copy


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_severity_keeps_shape_dtype_and_range_and_changes_the_image(name):
    x = torch.rand(2, 3, 32, 32)
    for sev in range(1, 6):
        y = corrupt(x, name, sev)
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        assert 0 <= y.min() and y.max() <= 1 and not torch.equal(y, x)


def test_gaussian_noise_is_the_seeded_definition_and_grows_with_severity():
    x = torch.full((2, 3, 16, 16), 0.5, dtype=torch.float64)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert z.abs().max() * max(SEVERITY_PARAMS["gaussian_noise"]) < 0.5  # no clipping: the std is c * std(z)
    stds = []
    for sev, c in enumerate(SEVERITY_PARAMS["gaussian_noise"], 1):
        y = corrupt(x, "gaussian_noise", sev, torch.Generator().manual_seed(7))
        assert torch.equal(y, (x + c * z).clamp(0, 1))
        stds.append((y - x).std().item())
        # (0.5 + c z) - 0.5 is off by at most eps / 4 per element, c z is about 0.04: ~6 eps relative, plus the std
        assert stds[-1] == pytest.approx(c * z.std().item(), rel=64 * EPS64)
    assert stds == sorted(stds) and len(set(stds)) == 5
    a, b = (corrupt(x, "gaussian_noise", 3, torch.Generator().manual_seed(s)) for s in (1, 2))
    assert torch.equal(a, corrupt(x, "gaussian_noise", 3, torch.Generator().manual_seed(1))) and not torch.equal(a, b)
    assert torch.equal(corrupt(x, "gaussian_noise", 3), corrupt(x, "gaussian_noise", 3))  # None: seed 0


def test_contrast_scales_the_std_by_c():
    x = images64()
    for sev, c in enumerate(SEVERITY_PARAMS["contrast"], 1):
        y = corrupt(x, "contrast", sev)
        # y = c x + (1 - c) grey mean per image: every image's std is c times its own; 3 * 32 * 32 summed terms
        ratio = y.flatten(1).std(1) / x.flatten(1).std(1)
        torch.testing.assert_close(ratio, torch.full_like(ratio, c), rtol=x[0].numel() * EPS64, atol=0)


def test_brightness_adds_c_to_the_hsv_value_and_keeps_hue_and_saturation():
    x = images64()
    x[0, :, 0, 0] = 0  # a black pixel becomes grey
    v = x.amax(1)
    for sev, c in enumerate(SEVERITY_PARAMS["brightness"], 1):
        y = corrupt(x, "brightness", sev)
        torch.testing.assert_close(y.amax(1), (v + c).clamp(max=1), rtol=0, atol=4 * EPS64)
        lit = v > 0  # channel ratios (hue and saturation) are kept
        torch.testing.assert_close((y / y.amax(1, keepdim=True)).permute(1, 0, 2, 3)[:, lit],
                                   (x / v[:, None]).permute(1, 0, 2, 3)[:, lit], rtol=0, atol=8 * EPS64)
        assert torch.equal(y[0, :, 0, 0], torch.full((3,), float(c), dtype=torch.float64))


def test_pixelate_leaves_int_c_side_squared_distinct_colours():
    x = images64(n=2, size=32)
    counts = []
    for sev, c in enumerate(SEVERITY_PARAMS["pixelate"], 1):
        y = corrupt(x, "pixelate", sev)
        for img in y:  # random pixels: every box average is a distinct colour, each shown at least once
            counts.append(len(torch.unique(img.flatten(1).T, dim=0)))
            assert counts[-1] == int(32 * c) ** 2
    assert counts == sorted(counts, reverse=True)


def test_blur_lowers_the_spread_of_a_noise_image_at_every_severity():
    x = images64(n=2, size=32)
    stds = [corrupt(x, "blur", sev).std().item() for sev in range(6)]
    assert all(a > b for a, b in itertools.pairwise(stds))  # a wider normalised kernel averages more pixels


def test_jpeg_output_is_8_bit_and_drifts_further_from_a_smooth_image_at_lower_quality():
    ramp = torch.linspace(0, 1, 32, dtype=torch.float64)
    x = torch.stack([ramp[None, :] * ramp[:, None], ramp[None, :].expand(32, 32), ramp[:, None].expand(32, 32)])[None]
    y = [corrupt(x, "jpeg", sev) for sev in range(1, 6)]
    for img in y:
        assert torch.equal(img * 255, (img * 255).round())
    err = [(img - x).abs().mean().item() for img in y]
    assert err[0] < err[-1]  # quality 80 against 40


# ----------------------------------------------------------------------------------------------------------
# translation consistency


def test_a_pixel_permutation_invariant_model_keeps_every_cyclic_shift():
    # global max and min pooling are exactly invariant to any reordering of the pixels (a sum would round
    # differently in another order); a linear layer on them can then only see the same numbers
    head = torch.nn.Linear(6, 10)
    predict = lambda x: head(torch.cat([x.amax((2, 3)), x.amin((2, 3))], 1)).argmax(1)
    x = torch.rand(40, 3, 12, 12) * torch.rand(40, 3, 1, 1)  # ranges that differ between images and channels
    assert len(predict(x).unique()) > 1  # not a constant predictor
    r = translation_consistency(predict, x, max_shift=11, batch_size=16)
    assert all(r[f"cyclic_{s}"] == 1.0 for s in range(1, 12)) and r["cyclic_mean"] == 1.0
    assert set(r) == {f"{m}_{s}" for m in ("cyclic", "pad") for s in range(1, 12)} | {"cyclic_mean", "pad_mean"}


def test_consistency_of_a_one_pixel_predictor_matches_indexing_by_hand():
    # predict: the brightest channel of pixel (row 2, column 3); moving right and down by s brings pixel
    # (2 - s, 3 - s) there, wrapped (cyclic) or the fill colour when that leaves the image (pad)
    predict = lambda x: x[:, :, 2, 3].argmax(1)
    x = torch.rand(50, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    fill = (0.1, 0.2, 0.9)  # argmax 2
    r = translation_consistency(predict, x, max_shift=4, batch_size=7, fill=fill)
    ref = x[:, :, 2, 3].argmax(1)
    for s in range(1, 5):
        cyclic = x[:, :, (2 - s) % 8, (3 - s) % 8].argmax(1)
        pad = x[:, :, 2 - s, 3 - s].argmax(1) if s <= 2 else torch.full((50,), 2)
        assert r[f"cyclic_{s}"] == (cyclic == ref).sum().item() / 50
        assert r[f"pad_{s}"] == (pad == ref).sum().item() / 50
    assert r["pad_mean"] == pytest.approx(sum(r[f"pad_{s}"] for s in range(1, 5)) / 4, abs=0)


# ----------------------------------------------------------------------------------------------------------
# corruption accuracy and relative mCE


def test_corruption_accuracy_keys_and_means():
    predict = lambda x: (x.mean((1, 2, 3)) > 0.5).long()
    x = torch.rand(30, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    y = (x.mean((1, 2, 3)) > 0.5).long()  # clean accuracy 1 by construction
    r = corruption_accuracy(predict, x, y, batch_size=8)
    assert r["clean"] == 1.0
    assert r["brightness_5"] < 1.0  # brighter images cross the threshold
    for name in CORRUPTIONS:
        assert r[name] == pytest.approx(sum(r[f"{name}_{s}"] for s in range(1, 6)) / 5, abs=4 * EPS64)
    assert r["mean"] == pytest.approx(sum(r[n] for n in CORRUPTIONS) / 6, abs=4 * EPS64)
    assert r == corruption_accuracy(predict, x, y, batch_size=8)  # seeded: repeats


@pytest.mark.filterwarnings("ignore:relative mCE leaves out")  # whether the predictor loses to every corruption
def test_relative_mce_matches_a_hand_computation_and_is_1_against_itself():
    result = {"clean": 0.9, "gaussian_noise_1": 0.8, "gaussian_noise_2": 0.7, "blur_1": 0.9, "blur_2": 0.6}
    base = {"clean": 0.8, "gaussian_noise_1": 0.5, "gaussian_noise_2": 0.4, "blur_1": 0.7, "blur_2": 0.6}
    # noise: (0.1 + 0.2) / (0.3 + 0.4) = 3/7; blur: (0 + 0.3) / (0.1 + 0.2) = 1; mean 5/7 (a dozen float operations)
    assert relative_mce(result, base) == pytest.approx(5 / 7, rel=16 * EPS64)
    assert relative_mce(result, result) == 1.0
    predict = lambda x: (x[:, 0].mean((1, 2)) > 0.5).long()
    x = torch.rand(20, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    r = evaluate_robustness(predict, x, (x[:, 0].mean((1, 2)) > 0.5).long(), max_shift=2, batch_size=8)
    assert relative_mce(r, r) == 1.0
    assert evaluate_robustness(predict, x, (x[:, 0].mean((1, 2)) > 0.5).long(), max_shift=2, batch_size=8,
                               baseline=r)["relative_mce"] == 1.0


def test_relative_mce_leaves_out_a_corruption_the_baseline_did_not_lose_to():
    result = {"clean": 0.9, "blur_1": 0.6, "jpeg_1": 0.8}
    base = {"clean": 0.8, "blur_1": 0.8, "jpeg_1": 0.6}
    with pytest.warns(UserWarning, match=re.escape("relative mCE leaves out ['blur']")):
        assert relative_mce(result, base) == pytest.approx(0.1 / 0.2, rel=4 * EPS64)
    with pytest.warns(UserWarning):
        assert math.isnan(relative_mce(result, {"clean": 0.8, "blur_1": 0.8, "jpeg_1": 0.8}))


def test_the_table_shows_every_number_in_percent():
    r = {"cyclic_1": 0.5, "cyclic_2": 0.25, "cyclic_mean": 0.375, "clean": 0.9, "blur_1": 0.8, "blur": 0.8,
         "mean": 0.8, "relative_mce": 0.75}
    assert format_robustness(r).splitlines() == [
        "translation consistency (top-1 unchanged after moving right and down by s pixels)",
        "mode                 s=1     s=2    mean",
        "cyclic             50.0%   25.0%   37.5%",
        "corruption accuracy (clean 90.0%)",
        "corruption         sev 1    mean",
        "blur               80.0%   80.0%",
        "mean corruption accuracy 80.00%",
        "relative mCE 0.750 (1: loses as much accuracy to corruptions as the baseline)"]


# ----------------------------------------------------------------------------------------------------------
# errors


def test_bad_inputs_give_exact_errors():
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match=re.escape("images must be a tensor of shape (N, 3, H, W), got (3, 8, 8): "
                                                   "stack RGB images into one batch")):
        corrupt(x[0], "blur", 1)
    with pytest.raises(ValueError, match=re.escape("images must be floating point in [0, 1], got torch.uint8: "
                                                   "convert 8-bit images with images.float() / 255")):
        corrupt((x * 255).to(torch.uint8), "blur", 1)
    with pytest.raises(ValueError, match=re.escape("images must lie in [0, 1] (before normalisation), found values "
                                                   "in [-1, 0.5]: pass the images before Normalize, or undo it with "
                                                   "x * std + mean")):
        corrupt(torch.tensor([-1.0, 0.5]).view(1, 1, 1, 2).expand(1, 3, 1, 2), "blur", 1)
    with pytest.raises(ValueError, match=re.escape("unknown corruption 'fog': expected one of gaussian_noise, blur, "
                                                   "contrast, jpeg, pixelate, brightness")):
        corrupt(x, "fog", 1)
    with pytest.raises(ValueError, match=re.escape("severity must be an integer in 0..5 (0: the input unchanged), "
                                                   "got 6")):
        corrupt(x, "jpeg", 6)
    predict = lambda x: x[:, 0, 0, 0].long()
    for k in (0, 8):
        with pytest.raises(ValueError, match=re.escape(f"max_shift must be an integer >= 1 and smaller than the "
                                                       f"images' shorter side (8), got {k}")):
            translation_consistency(predict, x, max_shift=k)
    with pytest.raises(ValueError, match=re.escape("unknown translation modes ['reflect']: expected some of cyclic, "
                                                   "pad")):
        translation_consistency(predict, x, modes=("cyclic", "reflect"))
    with pytest.raises(ValueError, match=re.escape("predict(x) must return top-1 class indices of shape (N,) = (2,), "
                                                   "got (2, 5): for logits, return model(normalise(x)).argmax(1)")):
        translation_consistency(lambda x: torch.zeros(len(x), 5), x)
    with pytest.raises(ValueError, match=re.escape("labels must be a tensor of shape (N,) = (2,), one class index per "
                                                   "image, got (3,)")):
        corruption_accuracy(predict, x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=re.escape("baseline has no corruption results (expected keys like 'clean' "
                                                   "and 'gaussian_noise_1'")):
        relative_mce({"clean": 1.0, "blur_1": 0.5}, {"top1": 50.0})
    with pytest.raises(ValueError, match=re.escape("the baseline lacks ['blur_2']: evaluate it on the same "
                                                   "corruptions and severities")):
        relative_mce({"clean": 1.0, "blur_1": 0.5, "blur_2": 0.4}, {"clean": 1.0, "blur_1": 0.5})


# ----------------------------------------------------------------------------------------------------------
# swinkit eval --robustness


@pytest.fixture(scope="module")
def run_and_images(tmp_path_factory):
    """A run directory with a random tiny classifier's best.pt (the training-checkpoint contract, as in
    test_evaluate.py) and val/ with 3 random 20x20 images per class."""
    root = tmp_path_factory.mktemp("robust")
    torch.manual_seed(0)
    model = swinkit.create_model("swin_t", img_size=16, patch_size=2, window_size=4, embed_dim=16, depths=(2, 1),
                                 num_heads=(1, 2), num_classes=3)
    data = {"img_size": 16, "crop_pct": 1.0, "mean": [0.5] * 3, "std": [0.25] * 3}
    (root / "run").mkdir()
    torch.save({"model": model.state_dict(), "config": model.cfg.to_dict(), "class_names": ["a", "b", "c"],
                "data": data}, root / "run" / "best.pt")
    rng = np.random.default_rng(1)
    for name in ("a", "b", "c"):
        (root / "data" / "val" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / "data" / "val" / name /
                                                                                     f"{i}.png")
    return root / "run", root / "data"


def test_eval_robustness_writes_every_number(run_and_images, capsys, tmp_path):
    run, data = run_and_images
    args = ["eval", "--checkpoint", str(run), "--data", str(data), "--batch-size", "16",
            "--confusion", str(tmp_path / "cm.png")]
    assert main([*args, "--robustness", "--max-shift", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rob = result["robustness"]
    keys = ({f"{m}_{s}" for m in ("cyclic", "pad") for s in (1, 2)} | {"cyclic_mean", "pad_mean", "clean", "mean"}
            | set(CORRUPTIONS) | {f"{n}_{s}" for n in CORRUPTIONS for s in range(1, 6)})
    assert set(rob) == keys and all(0 <= v <= 1 for v in rob.values())
    # the same images and model: k / n computed two ways, each within a few roundings
    assert rob["clean"] == pytest.approx(result["top1"] / 100, abs=16 * EPS64)
    assert result["robustness_baseline"] is None

    baseline = tmp_path / "base.json"
    baseline.write_text(json.dumps(result))
    assert main([*args, "--robustness", "--max-shift", "2", "--robustness-baseline", str(baseline), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["robustness_baseline"] == str(baseline)
    # against itself: every ratio x / x is 1, or, where this random model lost nothing to a corruption, left out
    lost = any(rob["clean"] != rob[f"{n}_{s}"] for n in CORRUPTIONS for s in range(1, 6))
    assert again["robustness"]["relative_mce"] == (1.0 if lost else None)  # None: JSON's null for nan

    baseline.write_text(json.dumps({"top1": 50.0}))
    assert main([*args, "--robustness", "--robustness-baseline", str(baseline)]) == 1
    assert f"error: --robustness-baseline {baseline} has no corruption results" in capsys.readouterr().err
    assert main([*args, "--robustness-baseline", str(baseline)]) == 1
    assert "error: --robustness-baseline is used by --robustness: add --robustness" in capsys.readouterr().err
