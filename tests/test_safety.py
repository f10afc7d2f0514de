"""Nothing a user owns is lost, no silent wrong answers, one clear line for every bad input (issue 29): outputs that
would replace an input or an existing file, non-finite weights and JSON, conversions that keep what a run needs,
one image reader, nonsense settings, unreadable files, and the newcomer's first commands."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from swinkit.cli import main
from swinkit.io import files as F
from swinkit.io.images import load_image

from test_detect_model import tiny as tiny_detector
from test_segment import write_checkpoint as write_segmentation_checkpoint, write_pair

CLASSES = ["ant", "bee", "cow"]
DATA = {"img_size": 16, "crop_pct": 0.875, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A classifier's run directory as `swinkit train` writes it (best.pt with task, class names, preprocessing)."""
    import swinkit

    torch.manual_seed(0)
    model = swinkit.create_model("swin_t", img_size=16, patch_size=2, window_size=4, embed_dim=16, depths=(2, 1),
                                 num_heads=(1, 2), num_classes=3).eval()
    root = tmp_path_factory.mktemp("run")
    torch.save({"task": "classify", "model": model.state_dict(), "config": model.cfg.to_dict(),
                "class_names": CLASSES, "data": DATA, "optimizer": {}, "epoch": 3}, root / "best.pt")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(root / f"p{i}.png")
    return sorted(root.iterdir())


def one_error_line(capsys) -> str:
    """The one line a failing command printed on stderr (no traceback)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(("error: ", "swinkit ")), err
    return err[0]


# ---- 1. nothing a user owns is lost


def test_check_outputs_refuses_inputs_existing_files_and_clashes(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.pt").write_bytes(b"weights")
    (tmp_path / "a.png").write_bytes(b"png")
    with pytest.raises(F.OutputError) as e:
        F.check_outputs([tmp_path / "a.png"], [tmp_path / "a.png"], overwrite=True)  # never an input
    assert str(e.value) == f"the output {tmp_path / 'a.png'} would overwrite the input {tmp_path / 'a.png'}: choose " \
                           "another --out"
    with pytest.raises(F.OutputError, match="would overwrite a file of the input folder"):
        F.check_outputs([tmp_path / "run" / "best.pt"], [tmp_path / "run"], overwrite=True)
    with pytest.raises(F.OutputError) as e:
        F.check_outputs([tmp_path / "a.png"])
    assert str(e.value) == f"{tmp_path / 'a.png'} exists: pass --overwrite to replace it, or choose another --out"
    F.check_outputs([tmp_path / "a.png"], overwrite=True)
    F.check_outputs([tmp_path / "run" / "new.onnx"], [tmp_path / "run"])  # a new file beside an input is fine
    plan = F.plan_outputs([tmp_path / "x" / "a.png", tmp_path / "y" / "a.png"], tmp_path / "out", ("{stem}.png",))
    assert plan == [(tmp_path / "out" / "a.png",), (tmp_path / "out" / "a_.png",)]  # same names stay apart


def test_segmentation_predict_never_writes_over_its_input(tmp_path, capsys):
    write_segmentation_checkpoint(tmp_path)
    photo = tmp_path / "d" / "photo.png"
    photo.parent.mkdir()
    Image.fromarray(np.full((24, 40, 3), 90, np.uint8)).save(photo)
    before = photo.read_bytes()
    for extra in ([], ["--overwrite"]):
        assert main(["predict", "--checkpoint", str(tmp_path / "best.pt"), "--out", str(photo.parent), str(photo),
                     *extra]) == 1
        assert one_error_line(capsys) == (f"error: the output {photo} would overwrite the input {photo}: choose "
                                          "another --out")
    assert photo.read_bytes() == before
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(tmp_path / "best.pt"), "--out", str(out), str(photo)]) == 0
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(tmp_path / "best.pt"), "--out", str(out), str(photo)]) == 1
    assert one_error_line(capsys) == (f"error: {out / 'photo.png'} exists: pass --overwrite to replace it, or choose "
                                      "another --out")
    assert main(["predict", "--checkpoint", str(tmp_path / "best.pt"), "--out", str(out), str(photo),
                 "--overwrite"]) == 0
    # the overlay carries a legend of the classes present, below the image
    with Image.open(out / "photo_overlay.jpg") as im, Image.open(photo) as src:
        assert im.width == src.width and im.height > src.height


def test_detection_predict_never_writes_over_its_input(tmp_path, capsys):
    model = tiny_detector("fcos", num_classes=2)
    torch.save({"task": "detect", "config": model.cfg.to_dict(), "model": model.state_dict(),
                "class_names": ["a", "b"], "category_ids": [1, 2]}, tmp_path / "best.pt")
    img = tmp_path / "d" / "x.jpg"
    img.parent.mkdir()
    Image.fromarray(np.full((96, 128, 3), 128, np.uint8)).save(img)
    before = img.read_bytes()
    assert main(["predict", "--checkpoint", str(tmp_path / "best.pt"), "--out", str(img.parent), str(img)]) == 1
    assert one_error_line(capsys) == f"error: the output {img} would overwrite the input {img}: choose another --out"
    assert img.read_bytes() == before
    # --score-thr below torchvision's own 0.05 reaches the detector
    from swinkit.tasks.detect import set_score_threshold

    set_score_threshold(model, 0.0)
    assert model.score_thresh == 0.0


def test_convert_never_overwrites_its_source_and_keeps_what_the_run_needs(run, photos, tmp_path, capsys):
    best = run / "best.pt"
    before = best.read_bytes()
    assert main(["convert", str(best), str(best), "--to", "timm"]) == 2
    assert one_error_line(capsys) == f"swinkit convert: the output {best} would overwrite the input {best}: choose " \
                                     "another dst"
    assert best.read_bytes() == before
    # swinkit -> swinkit keeps class names and preprocessing: predict gives the same probabilities
    st = tmp_path / "m.safetensors"
    assert main(["convert", str(best), str(st)]) == 0
    capsys.readouterr()
    got = {}
    for name, ck in (("run", run), ("file", st)):
        assert main(["predict", "--checkpoint", str(ck), *map(str, photos), "--json"]) == 0
        got[name] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert got["file"] == got["run"] and got["run"][0]["predictions"][0]["class"] in CLASSES
    assert main(["convert", str(best), str(st)]) == 2  # exists
    assert "exists: pass --overwrite" in one_error_line(capsys)
    # a foreign format that cannot hold them says so in one line
    assert main(["convert", str(best), str(tmp_path / "t.pth"), "--to", "timm"]) == 0
    assert capsys.readouterr().err.strip() == (
        "note: --to timm has no place for the class names, preprocessing (img_size 16, crop_pct 0.875, mean, std) of "
        "this classify run; eval and predict with the converted file use defaults (--to swinkit keeps them)")


# ---- 2. no silent wrong answers


def test_non_finite_weights_are_named_and_refused(run, photos, tmp_path, capsys):
    ck = torch.load(run / "best.pt", weights_only=True)
    ck["model"]["layers.0.blocks.0.attn.qkv.weight"][0, 0] = float("nan")
    torch.save(ck, tmp_path / "nan.pt")
    with pytest.warns(F.NonFiniteWarning, match=r"in 1 tensor\(s\): model.layers.0.blocks.0.attn.qkv.weight "
                                                r"\(1 of \d+\)"):
        F.read_weights(tmp_path / "nan.pt")
    want = (f"error: {tmp_path / 'nan.pt'} holds NaN or infinite weights in 1 tensor(s) "
            "(layers.0.blocks.0.attn.qkv.weight): every prediction of it would be meaningless. Retrain, or use an "
            "earlier checkpoint")
    folder = photos[0].parent
    for argv in (["eval", "--checkpoint", str(tmp_path / "nan.pt"), "--data", str(folder)],
                 ["predict", "--checkpoint", str(tmp_path / "nan.pt"), str(photos[0]), "--json"],
                 ["export", "--checkpoint", str(tmp_path / "nan.pt"), "--out", str(tmp_path / "nan.onnx")]):
        assert main(argv) == 1
        captured = capsys.readouterr()
        assert captured.err.strip() == want and captured.out == ""
    assert not (tmp_path / "nan.onnx").exists()
    # inspect names them too (the `swinkit` program prints it as one plain line: test_user_warnings_...)
    with pytest.warns(F.NonFiniteWarning, match="model.layers.0.blocks.0.attn.qkv.weight"):
        assert main(["inspect", str(tmp_path / "nan.pt")]) == 0


def test_json_is_always_valid_and_verification_fails_on_nan(tmp_path, monkeypatch):
    assert F.dumps({"loss": float("nan"), "x": [1.5, float("inf")], "n": 2}) == '{"loss": null, "x": [1.5, null], ' \
                                                                                '"n": 2}'
    F.write_json(tmp_path / "s.json", {"map": float("nan")})
    assert json.loads((tmp_path / "s.json").read_text(), parse_constant=pytest.fail) == {"map": None}
    from swinkit import SwinConfig, SwinTransformer
    from swinkit.tools import export as E

    model = SwinTransformer(SwinConfig(embed_dim=8, depths=(1,), num_heads=(1,), window_size=4, img_size=16,
                                       num_classes=3)).eval()
    monkeypatch.setattr(E, "_load_runner", lambda *a, **k: lambda x: np.full((x.shape[0], 3), np.nan, np.float32))
    with pytest.raises(E.ExportError, match=r"relative max \|diff\| nan > 1e-04"):
        E.verify(model, "onnx", tmp_path / "m.onnx", "classify", [(16, 16)], log=lambda _: None)


def test_one_image_reader_scales_16_bit_images_on_every_path(tmp_path):
    from swinkit import data
    from swinkit.tools import export, quantize

    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    for channels in (1, 3):
        a = np.asarray(load_image(tmp_path / "deep.png", channels), np.float64)
        assert a.max() == 255 and abs(a.mean() - 127.5) < 1  # scaled, not clipped to white
    assert data.load_image is export.load_image is quantize.load_image is load_image


def test_training_on_one_class_is_refused(tmp_path, capsys):
    for split in ("train", "val"):
        (tmp_path / "d" / split / "cat").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / "d" / split / "cat" / f"{i}.png")
    assert main(["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r"), "--epochs", "1"]) == 1
    assert one_error_line(capsys) == (
        f"error: {tmp_path / 'd' / 'train'} has 1 class folder (cat): a classifier needs two or more, one sub-folder "
        "of images per class. For images of one kind without labels, pre-train with --task pretrain")
    assert not (tmp_path / "r" / "best.pt").exists()


def test_camvid_is_known_by_its_labels_and_the_settings_are_said(tmp_path):
    from swinkit.data import segmentation as D
    from swinkit.tasks import segment as S

    rng = np.random.default_rng(0)
    for i in range(2):
        write_pair(tmp_path / "streets" / "train", f"f{i}", rng.integers(0, 12, (360, 480)))
    assert D.camvid_reason(tmp_path / "streets") == (f"the labels of {tmp_path / 'streets'} are 480x360 class "
                                                       "indices 0..11, as CamVid's")
    names, palette, ignore = S.resolve_labels(tmp_path / "streets")
    assert names == list(D.CAMVID_CLASSES) and ignore == 11  # void is not learnt as a twelfth class
    labels = S.LabelSet(names, palette, ignore)
    assert S.labels_note(tmp_path / "streets", labels) == (
        f"labels: 11 classes CamVid's, as the labels of {tmp_path / 'streets'} are 480x360 class indices 0..11, as "
        f"CamVid's; a classes.txt in {tmp_path / 'streets'} would name them otherwise; label value 11 is ignored")
    for i in range(2):  # the same values at another size are not CamVid: the note says what to do
        write_pair(tmp_path / "other" / "train", f"f{i}", rng.integers(0, 12, (64, 64)))
    assert not S.is_camvid(tmp_path / "other") and S.resolve_labels(tmp_path / "other") == (None, None, 255)
    note = S.labels_note(tmp_path / "other", S.LabelSet([str(i) for i in range(12)], S.default_palette(12), 255))
    assert note.endswith("if a value marks unlabelled pixels, pass --ignore-index VALUE; label value 255 is ignored")


# ---- 3. one line instead of a traceback


def test_unreadable_checkpoints_and_onnx_files_give_one_line(run, photos, tmp_path, capsys):
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(3000))
    (tmp_path / "zero.pt").write_bytes(b"")
    (tmp_path / "cut.pt").write_bytes((run / "best.pt").read_bytes()[:4000])
    for name in ("random.pt", "zero.pt", "cut.pt"):
        for argv in (["eval", "--checkpoint", str(tmp_path / name), "--data", str(photos[0].parent)],
                     ["predict", "--checkpoint", str(tmp_path / name), str(photos[0])]):
            assert main(argv) == 1
            line = one_error_line(capsys)
            assert line.startswith(f"error: {tmp_path / name} is ") and line.endswith(
                ("Re-download or re-save it.", f"but it starts with {(tmp_path / name).read_bytes()[:8]!r}"))
    assert main(["predict", "--onnx", str(tmp_path / "missing.onnx"), str(photos[0])]) == 1
    assert one_error_line(capsys) == (f"error: ONNX file {tmp_path / 'missing.onnx'} does not exist: expected a file "
                                      "written by `swinkit export`")
    assert main(["predict", "--onnx", str(tmp_path / "random.pt"), str(photos[0])]) == 1
    assert one_error_line(capsys).startswith(f"error: {tmp_path / 'random.pt'} is not a readable ONNX file (")


def test_resume_from_a_truncated_last_checkpoint_says_what_is_left(run, tmp_path, capsys):
    r = tmp_path / "r"
    r.mkdir()
    (r / "config.json").write_text(json.dumps({"args": {"task": "classify", "data": None}}))
    (r / "last.pt").write_bytes((run / "best.pt").read_bytes()[:5000])
    (r / "best.pt").write_bytes((run / "best.pt").read_bytes())
    assert main(["train", "--resume", str(r)]) == 1
    line = one_error_line(capsys)
    assert line.startswith(f"error: cannot resume {r}: {r / 'last.pt'} is truncated or corrupt (")
    assert line.endswith(f"Instead, fine-tune from its best weights with --pretrained {r / 'best.pt'}, or start a "
                         "fresh run with another --out")


def test_coco_image_entry_without_file_name_is_named(tmp_path):
    from swinkit.tasks.detect_data import open_detection_data

    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps(
        {"images": [{"id": 1, "width": 8, "height": 8}], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(ValueError) as e:
        open_detection_data(tmp_path, "val")
    assert str(e.value) == (f"{tmp_path / 'annotations' / 'instances_val.json'}: image entry 0 ({{'id': 1, 'width': "
                            "8, 'height': 8}) has no file_name: every entry of \"images\" needs an id and the "
                            "file_name of its image")


@pytest.mark.parametrize("flag, value, message", [("--batch-size", "0", "must be >= 1, got 0"),
                                                  ("--epochs", "0", "must be >= 1, got 0"),
                                                  ("--lr", "-1", "must be > 0, got -1.0"),
                                                  ("--hflip", "2", "must be 0..1, got 2.0"),
                                                  ("--ema-decay", "1", "must be [0, 1), got 1.0")])
def test_settings_that_make_no_sense_are_refused_before_any_work(flag, value, message, tmp_path, capsys):
    assert main(["train", flag, value, "--out", str(tmp_path / "r")]) == 1
    assert one_error_line(capsys) == f"error: {flag} {message}"
    assert not (tmp_path / "r").exists()


def test_export_prints_only_what_concerns_the_user(run, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "m.onnx")]) == 0
    out, err = capsys.readouterr()
    lines = (out + err).strip().splitlines()
    assert all(line.startswith(("note: ", "verify onnx: ", "wrote ")) for line in lines), lines
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "m.onnx")]) == 1
    assert "exists: pass --overwrite" in one_error_line(capsys)


# ---- 4. a newcomer's first commands


def test_the_readme_small_command_is_small():
    from swinkit import train as train_mod
    from swinkit.tasks import get_task

    line = next(ln for ln in Path(__file__).parents[1].joinpath("docs", "training.md").read_text().splitlines()
                if ln.startswith("swinkit train") and "# a small Swin" in ln)
    argv = line.split("#")[0].split()[2:]  # after `swinkit train`
    assert argv[:2] == ["--data", "DIR"]
    import argparse

    parser = argparse.ArgumentParser()
    train_mod.add_arguments(parser, "train", argv=argv[2:])
    s = train_mod.resolve_settings(parser.parse_args(argv[2:]))
    model = get_task("classify").model_from_config(
        {k: getattr(s.task, k) for k in ("img_size", "patch_size", "window_size", "embed_dim", "depths",
                                         "num_heads")} | {"num_classes": 10})
    assert sum(p.numel() for p in model.parameters()) < 1e6  # not a 27.5M-parameter Swin-T


def test_a_default_batch_larger_than_the_data_is_fitted(tmp_path, capsys):
    for c in ("a", "b"):
        (tmp_path / "d" / "train" / c).mkdir(parents=True)
        (tmp_path / "d" / "val" / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.full((32, 32, 3), 10 * i + (100 if c == "b" else 0), np.uint8)).save(
                tmp_path / "d" / "train" / c / f"{i}.png")
        Image.fromarray(np.full((32, 32, 3), 50, np.uint8)).save(tmp_path / "d" / "val" / c / "0.png")
    assert main(["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r"), "--epochs", "1",
                 "--threads", "1", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert ("batch size 16 instead of 32: the training set has 20 images per process (--batch-size sets it; the lr "
            "scales with it)") in out
    assert json.loads((tmp_path / "r" / "config.json").read_text())["args"]["batch_size"] == 16
    assert main(["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r2"), "--batch-size", "32"]) == 1
    assert "fewer than one update's --batch-size 32" in one_error_line(capsys)  # asked for: not changed


def test_video_clips_pick_a_recipe_at_their_size(tmp_path):
    from swinkit.tasks.video import VideoTask

    for c in ("left", "right"):
        for k in range(2):
            clip = tmp_path / "v" / "train" / c / f"clip{k}"
            clip.mkdir(parents=True)
            for t in range(8):
                Image.fromarray(np.full((32, 40, 3), 30 * t, np.uint8)).save(clip / f"{t:03d}.png")
    recipe, note = VideoTask.choose_recipe({"data": str(tmp_path / "v")})
    assert recipe == "small" and note.startswith("recipe small: 4 clips of 32x40 px from scratch: a two-stage Video "
                                                 "Swin of 0.14M parameters at 32 px and 8 frames")
    flat = VideoTask.resolve({**VideoTask.recipes["small"], "data": str(tmp_path / "v"), "recipe": "small",
                              "pretrained": None}, {"data": str(tmp_path / "v")})
    assert flat["img_size"] == 32 and flat["frames"] == 8
    assert VideoTask.choose_recipe({"data": str(tmp_path / "v"), "pretrained": "x.pt"})[0] == "default"


def test_help_and_models_are_quick_the_second_time(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SWINKIT_CACHE", str(tmp_path))
    # `swinkit models` streams its rows, and the second run reads them from the cache
    from swinkit.tools import measure

    import dataclasses

    from swinkit import counting, families

    def sections(measure_variant):  # the image family alone, two of its variants
        return lambda aliases: [(dataclasses.replace(families.SWIN, count=measure_variant), ["swin_t", "swinv2_t"])]

    monkeypatch.setattr(measure, "_sections", sections(counting.measure_variant))
    assert main(["models", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == ["swin_t", "swinv2_t"]

    def measure_variant(name):  # the same name, so the same cache entries
        pytest.fail("measured again")

    monkeypatch.setattr(measure, "_sections", sections(measure_variant))
    assert main(["models", "--json"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == rows
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    first = capsys.readouterr().out
    assert "--checkpoint" in first and len(list((tmp_path / "help").iterdir())) == 1
    import swinkit.cli as cli

    monkeypatch.setattr(cli, "_run", lambda argv: pytest.fail("the cached text is printed without building the parser"))
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert capsys.readouterr().out == first


def test_run_directories_work_where_checkpoints_do(run, capsys):
    assert main(["inspect", str(run)]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "format:   swinkit (Swin V1)"


def test_restore_without_released_weights_points_to_checkpoint(tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["restore", str(tmp_path / "a.png"), "--model", "swin2sr_lightweight_x2", "--out",
                 str(tmp_path / "o")]) == 1
    assert one_error_line(capsys).startswith(
        "error: swin2sr_lightweight_x2 has no released weights to download: train it (swinkit train --task restore "
        "--model swin2sr_lightweight_x2 --data HR_IMAGES) and restore with --checkpoint RUN_DIR, or pick a --model "
        "with weights: swinir_classical_x2, ")


def test_user_warnings_are_one_plain_line(capsys, monkeypatch):
    from swinkit import cli

    monkeypatch.setattr(warnings, "showwarning", cli._show_warning)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn_explicit("the labels say so", UserWarning, str(Path(cli.__file__).parent / "data.py"), 1)
    assert capsys.readouterr().err == "warning: the labels say so\n"
