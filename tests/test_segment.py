"""Segmentation data, transforms, metrics, inference and prediction output (swinkit.tasks.segment)."""
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from torchvision import tv_tensors

from conftest import SHARED
from swinkit.inference import dense
from swinkit.data import segmentation as D
from swinkit.tasks import segment as S

CAMVID = SHARED / "data" / "camvid"


def write_pair(root, stem, mask, image=None, image_ext=".png"):
    """root/images/<stem><image_ext> (random RGB of the mask's size unless given) + root/labels/<stem>.png."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    mask = np.asarray(mask, dtype=np.uint8)
    if image is None:
        image = np.random.default_rng(0).integers(0, 256, (*mask.shape, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / "images" / f"{stem}{image_ext}")
    Image.fromarray(mask).save(root / "labels" / f"{stem}.png")


def small_folder(root, n=2, size=(12, 16), classes=3):
    for i in range(n):
        write_pair(root, f"im{i}", np.arange(size[0] * size[1]).reshape(size) % classes)
    return root


# ----------------------------------------------------------------------------------------------------------
# bad input: one error naming the file


def test_label_value_out_of_range_names_the_file(tmp_path):
    small_folder(tmp_path)
    mask = np.zeros((12, 16), np.uint8)
    mask[3, 4] = 7
    mask[0, 0] = 255  # the ignore index is allowed
    write_pair(tmp_path, "im1", mask)
    label = tmp_path / "labels" / "im1.png"
    expected = (f"{label}: label value 7 is not a class index (0..2) nor the ignore index 255; fix the label, or "
                "set --num-classes / --ignore-index to match the data")
    with pytest.raises(ValueError) as e:
        S.SegmentationFolder(tmp_path, num_classes=3)
    assert str(e.value) == expected
    ds = S.SegmentationFolder(tmp_path, num_classes=3, verify=False)  # the same check when a sample is read
    with pytest.raises(ValueError) as e:
        ds[1]
    assert str(e.value) == expected
    assert S.SegmentationFolder(tmp_path, num_classes=8).num_classes == 8
    assert S.SegmentationFolder(tmp_path).num_classes == 8  # counted from the data: values 0..7


def test_label_of_another_size_names_both_files(tmp_path):
    small_folder(tmp_path, n=1)
    Image.fromarray(np.zeros((10, 16), np.uint8)).save(tmp_path / "labels" / "im0.png")
    with pytest.raises(ValueError) as e:
        S.SegmentationFolder(tmp_path, num_classes=3)
    assert str(e.value) == (f"{tmp_path / 'labels' / 'im0.png'}: label is 16x10 but its image "
                            f"{tmp_path / 'images' / 'im0.png'} is 16x12: expected the same size; export the label "
                            "at the image's size")


def test_image_without_label_names_the_image(tmp_path):
    small_folder(tmp_path, n=3)
    for stem in ("im0", "im2"):
        (tmp_path / "labels" / f"{stem}.png").unlink()
    with pytest.raises(ValueError) as e:
        S.SegmentationFolder(tmp_path, num_classes=3)
    assert str(e.value) == (f"{tmp_path / 'images' / 'im0.png'}: no label for this image: expected "
                            f"{tmp_path / 'labels' / 'im0.png'} (a class-index PNG of the same name) (1 more images "
                            "have no label)")


@pytest.mark.parametrize("which", ["images", "labels"])
def test_corrupt_file_names_the_file(tmp_path, which):
    small_folder(tmp_path)
    bad = tmp_path / which / "im1.png"
    bad.write_bytes(bad.read_bytes()[:45])  # truncated inside the pixel data
    with pytest.raises(ValueError) as e:
        S.SegmentationFolder(tmp_path, num_classes=3)
    assert re.fullmatch(rf"{re.escape(str(bad))}: cannot read the file \(OSError: image file is truncated\): "
                        r"expected a readable image; replace or remove it", str(e.value)), str(e.value)


def test_colour_label_and_missing_folder_are_refused(tmp_path):
    small_folder(tmp_path, n=1)
    Image.new("RGB", (16, 12)).save(tmp_path / "labels" / "im0.png")
    with pytest.raises(ValueError) as e:
        S.SegmentationFolder(tmp_path, num_classes=3)
    assert str(e.value) == (f"{tmp_path / 'labels' / 'im0.png'}: label is a RGB image: expected a single-channel "
                            "PNG of class indices (mode L, P or 16-bit); convert colours to class indices")
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist: expected a folder with images/ and "):
        S.SegmentationFolder(tmp_path / "nowhere")
    (tmp_path / "other" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"expected a folder with images/ and labels/ .* lacks labels/$"):
        D.find_pairs(tmp_path / "other")


def test_classes_file_and_camvid_names(tmp_path):
    (tmp_path / "classes.txt").write_text("# name R G B\nroad 128 64 128\n\ncar 64 0 128  # vehicles\n")
    assert S.resolve_labels(tmp_path) == (["road", "car"], [(128, 64, 128), (64, 0, 128)], 255)
    (tmp_path / "classes.txt").write_text("road\ncar 1 2\n")
    with pytest.raises(ValueError, match=r"classes.txt, line 2: expected `name` or `name R G B` \(0..255\), "
                                         r"got 'car 1 2'"):
        S.resolve_labels(tmp_path)
    (tmp_path / "CamVid").mkdir()
    assert S.resolve_labels(tmp_path / "CamVid")[::2] == (list(D.CAMVID_CLASSES), 11)
    assert S.resolve_labels(tmp_path / "CamVid", ignore_index=255)[2] == 255
    assert S.resolve_labels(tmp_path / "CamVid", num_classes=5) == (None, None, 255)  # not CamVid's 11 classes
    with pytest.raises(ValueError, match="ignore index 3 is a class index"):
        S.LabelSet(["a", "b", "c", "d"], S.default_palette(4), ignore_index=3)
    assert len(set(S.default_palette(64))) == 64 and (0, 0, 0) not in S.default_palette(64)


# ----------------------------------------------------------------------------------------------------------
# joint transforms


def position_pair(h=64, w=96, block=16):
    """A mask of square blocks numbered by position, and an image whose colour encodes the block number."""
    mask = (np.arange(h)[:, None] // block) * (w // block) + np.arange(w)[None, :] // block  # (h, w) block index
    colours = np.stack([mask * 5 % 256, mask * 37 % 256, (mask * 91 + 17) % 256], -1).astype(np.uint8)
    return (tv_tensors.Image(torch.from_numpy(colours).permute(2, 0, 1).contiguous()),
            tv_tensors.Mask(torch.from_numpy(mask)), torch.from_numpy(colours).float() / 255)


def test_train_transform_keeps_image_and_mask_aligned():
    img, mask, colours = position_pair()
    table = colours.reshape(-1, 3)[torch.from_numpy(np.unique(mask.numpy(), return_index=True)[1])]  # block -> colour
    tf = S.train_transform((40, 56), ignore_index=255, scale=(0.5, 2.0), hflip=0.5, jitter=0, mean=(0, 0, 0),
                           std=(1, 1, 1))
    seen_pad = seen_flip = 0
    for seed in range(12):
        torch.manual_seed(seed)
        x, y = tf(img, mask)
        assert x.shape == (3, 40, 56) and y.shape == (40, 56) and y.dtype == torch.int64
        pad = y == 255
        seen_pad += bool(pad.any())
        assert torch.equal(x[:, pad], torch.zeros(3, int(pad.sum())))  # padding: mean colour and ignore index
        # 2 pixels away from block edges (where resizing blends colours) each pixel has its block's colour
        inner = ~pad
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                inner &= torch.roll(y, (dy, dx), (0, 1)) == y
        inner[[0, 1, -2, -1]] = inner[:, [0, 1, -2, -1]] = False
        assert inner.sum() > 100
        err = (x.permute(1, 2, 0)[inner] - table[y[inner]]).abs().max().item()
        assert err < 2.5 / 255, (seed, err)
        # a flip shows as block numbers falling from left to right
        row = y[inner.any(1).nonzero()[0, 0]]
        row = row[row != 255]
        seen_flip += bool(row[0] > row[-1])
    assert seen_pad and 0 < seen_flip < 12  # both branches were exercised


def test_colour_jitter_leaves_the_mask_alone():
    img, mask, _ = position_pair()
    tf = S.train_transform((64, 96), 255, scale=(1, 1), hflip=0, jitter=0.4)
    x, y = tf(img, mask)
    assert torch.equal(y, mask.long())
    plain = S.eval_transform()(img, mask)[0]
    assert not torch.allclose(x, plain)


# ----------------------------------------------------------------------------------------------------------
# inference


class Pointwise(nn.Module):
    """Each output pixel depends only on the same input pixel."""

    def __init__(self, classes=4):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GELU(), nn.Conv2d(8, classes, 1))

    def forward(self, x):
        return self.net(x)


class Global(nn.Module):
    """Each output pixel depends on the whole input (its mean) and on local 5x5 context."""

    def __init__(self, classes=4):
        super().__init__()
        self.local, self.glob = nn.Conv2d(3, classes, 5, padding=2), nn.Linear(3, classes)

    def forward(self, x):
        return self.local(x) + self.glob(x.mean((2, 3)))[:, :, None, None]


def test_sliding_window_equals_whole_image_for_a_pointwise_model():
    model, x = Pointwise().eval(), torch.randn(2, 3, 37, 53)
    whole = dense.logits(model, x)
    for window, stride in [((16, 20), (10, 7)), ((16, 20), (16, 20)), ((40, 60), (5, 5)), ((37, 53), (1, 1))]:
        slide = dense.logits(model, x, window, stride)
        assert slide.shape == (2, 4, 37, 53)
        torch.testing.assert_close(slide, whole, atol=1e-6, rtol=0)


def test_sliding_window_equals_whole_image_when_the_image_fits_one_window():
    model, x = Global().eval(), torch.randn(1, 3, 30, 44)
    whole = dense.logits(model, x)
    assert torch.equal(dense.logits(model, x, (30, 44), (10, 10)), whole)
    assert torch.equal(dense.logits(model, x, (64, 64)), whole)  # a window larger than the image is clipped to it
    assert not torch.allclose(dense.logits(model, x, (16, 16), (8, 8)), whole, atol=1e-3)  # it does use windows


def test_window_offsets_cover_the_image():
    assert dense.window_starts(37, 16, 10) == [0, 10, 20, 21]
    assert dense.window_starts(16, 16, 10) == [0]
    assert dense.window_starts(40, 16, 12) == [0, 12, 24]


def test_flip_and_multiscale_bring_predictions_back():
    model, x = Pointwise().eval(), torch.randn(1, 3, 21, 30)
    single = dense.infer(model, x)
    torch.testing.assert_close(single, dense.logits(model, x).softmax(1))
    torch.testing.assert_close(dense.infer(model, x, flip=True), single, atol=1e-6, rtol=0)  # flip equivariant model
    flat = torch.randn(1, 3, 1, 1).expand(1, 3, 21, 30)  # same output at any scale
    ms = dense.infer(model, flat, scales=(0.5, 0.75, 1.5), flip=True)
    assert ms.shape == (1, 4, 21, 30)
    torch.testing.assert_close(ms, dense.infer(model, flat), atol=1e-6, rtol=0)
    ms = dense.infer(model, x, window=(12, 12), stride=(8, 8), scales=(0.5, 1.25), flip=True)
    torch.testing.assert_close(ms.sum(1), torch.ones(1, 21, 30))


# ----------------------------------------------------------------------------------------------------------
# metrics


@pytest.mark.parametrize("ignore_index", [255, 5])
def test_metrics_equal_torchmetrics(ignore_index):
    from torchmetrics.classification import (MulticlassAccuracy, MulticlassConfusionMatrix,
                                             MulticlassJaccardIndex)

    C, g = 5, torch.Generator().manual_seed(1)
    target = torch.randint(0, C, (4, 33, 47), generator=g)
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.6, target, torch.randint(0, C, target.shape,
                                                                                          generator=g))
    target[torch.rand(target.shape, generator=g) < 0.2] = ignore_index
    conf = S.confusion_matrix(pred[:2], target[:2], C, ignore_index) + \
        S.confusion_matrix(pred[2:], target[2:], C, ignore_index)  # accumulated over batches
    kw = dict(num_classes=C, ignore_index=ignore_index)
    assert torch.equal(conf, MulticlassConfusionMatrix(**kw)(pred, target))
    m = S.segmentation_metrics(conf, list("abcde"))
    iou = MulticlassJaccardIndex(**kw, average="none")(pred, target)
    assert m["per_class_iou"] == pytest.approx(dict(zip("abcde", iou.tolist())), abs=1e-6)
    assert m["miou"] == pytest.approx(MulticlassJaccardIndex(**kw, average="macro")(pred, target).item(), abs=1e-6)
    assert m["pixel_acc"] == pytest.approx(MulticlassAccuracy(**kw, average="micro")(pred, target).item(), abs=1e-6)
    assert m["mean_acc"] == pytest.approx(MulticlassAccuracy(**kw, average="macro")(pred, target).item(), abs=1e-6)
    assert m["num_pixels"] == int((target != ignore_index).sum())


def test_a_class_seen_nowhere_is_left_out_of_the_means():
    target = torch.tensor([0, 0, 1, 1, 3, 9])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])  # class 2 predicted only on an ignored pixel, class 3 never
    m = S.segmentation_metrics(S.confusion_matrix(pred, target, 4, ignore_index=9))
    assert m["per_class_iou"] == {"0": 1 / 3, "1": 2 / 3, "2": None, "3": 0.0}
    assert m["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert m["per_class_acc"] == {"0": 0.5, "1": 1.0, "2": None, "3": 0.0}
    assert m["pixel_acc"] == pytest.approx(3 / 5) and m["mean_acc"] == pytest.approx(0.5)


def test_evaluate_over_images_of_different_sizes_sums_their_confusions(tmp_path):
    model, rng = Pointwise(3).eval(), np.random.default_rng(0)
    for i, (h, w) in enumerate([(12, 16), (12, 16), (20, 9)]):
        write_pair(tmp_path, f"im{i}", rng.integers(0, 3, (h, w)))
    ds = S.SegmentationFolder(tmp_path, num_classes=3, transform=S.eval_transform())
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=S.collate)
    m = S.evaluate(model, loader, 3, 255, torch.device("cpu"))
    with torch.no_grad():
        expected = sum(S.confusion_matrix(model(x[None]).argmax(1)[0], y, 3, 255) for x, y in ds)
        ce = sum(torch.nn.functional.cross_entropy(model(x[None]), y[None], reduction="sum") for x, y in ds)
    pixels = 2 * 12 * 16 + 20 * 9
    assert torch.equal(m["confusion"], expected) and int(expected.sum()) == pixels and m["num_images"] == 3
    assert m["loss"] == pytest.approx(ce.item() / pixels, rel=1e-5)  # cross-entropy per labelled pixel


# ----------------------------------------------------------------------------------------------------------
# output


def test_palette_mask_png_round_trips(tmp_path):
    palette = S.default_palette(20)
    mask = torch.randint(0, 20, (17, 23))
    S.colorize(mask, palette).save(tmp_path / "m.png")
    with Image.open(tmp_path / "m.png") as back:
        assert back.mode == "P"
        assert torch.equal(torch.from_numpy(D.read_mask(tmp_path / "m.png")), mask)
        assert back.getpalette()[:60] == [v for c in palette for v in c]
        assert np.array_equal(np.asarray(back.convert("RGB")), np.asarray(palette, np.uint8)[mask.numpy()])
    img = Image.fromarray(np.full((17, 23, 3), 200, np.uint8))
    blend = np.asarray(S.overlay(img, mask, palette, alpha=0.25), np.float64)
    expected = 0.75 * 200 + 0.25 * np.asarray(palette, np.float64)[mask.numpy()]
    assert np.abs(blend - expected).max() <= 1


# ----------------------------------------------------------------------------------------------------------
# CamVid


@pytest.mark.skipif(not CAMVID.is_dir(), reason="needs ../shared/data/camvid")
def test_reads_camvid():
    names, palette, ignore = S.resolve_labels(CAMVID)
    assert (names, ignore) == (list(D.CAMVID_CLASSES), 11)
    train, val = S.split_root(CAMVID)
    ds = S.SegmentationFolder(val, transform=S.eval_transform(), ignore_index=ignore)
    assert len(ds) == 101 and ds.num_classes == 11  # counted from the labels: values 0..10 plus void
    x, y = ds[0]
    assert x.shape == (3, 360, 480) and x.dtype == torch.float32 and y.shape == (360, 480)
    assert set(y.unique().tolist()) <= set(range(12)) and S.eval_root(CAMVID) == val
    crop = S.train_transform((256, 320), ignore)
    x, y = S.SegmentationFolder(train, 11, ignore, crop, verify=False)[5]
    assert x.shape == (3, 256, 320) and y.shape == (256, 320)


# ----------------------------------------------------------------------------------------------------------
# the task: settings, loss, checkpoints, `swinkit eval` and `swinkit predict`

TINY = dict(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], window_size=[4], head_channels=8,
            crop_size=[32, 48], batch_size=2)


def make_task(data, **flat):
    from swinkit.tasks.base import Env, TrainSettings

    settings = TrainSettings.from_flat({"task": "segment", "data": str(data), **TINY, **flat}, S.SegmentSettings)
    return S.SegmentTask(settings, Env(torch.device("cpu")))


def test_task_holds_out_validation_and_reads_the_class_list(tmp_path):
    small_folder(tmp_path, n=10, size=(32, 48))
    (tmp_path / "classes.txt").write_text("sky 10 20 30\nroad 40 50 60\ncar 70 80 90\n")
    task = make_task(tmp_path, val_fraction=0.3)
    train, val = task.build_datasets()
    assert (len(train), len(val)) == (7, 3) and not set(train.samples) & set(val.samples)
    assert task.labels == S.LabelSet(["sky", "road", "car"], [(10, 20, 30), (40, 50, 60), (70, 80, 90)], 255)
    x, y = train[0]
    assert x.shape == (3, 32, 48) and y.shape == (32, 48)  # the training crop
    assert val[0][0].shape == (3, 32, 48)  # evaluation: the whole image


def test_loss_adds_the_auxiliary_head_at_its_weight(tmp_path):
    import torch.nn.functional as F

    small_folder(tmp_path / "train", n=2, size=(32, 48))
    small_folder(tmp_path / "val", n=1, size=(32, 48))
    task = make_task(tmp_path)
    train, _ = task.build_datasets()
    model = task.build_model()
    assert model.auxiliary_head is not None and model.cfg.aux_loss_weight == 0.4
    batch = S.collate([train[0], train[1]])
    torch.manual_seed(0)
    loss = task.loss(model.eval(), batch)  # eval: dropout off, so both passes see the same network
    out, aux = model.forward_with_aux(batch[0])
    expected = F.cross_entropy(out, batch[1], ignore_index=255) + 0.4 * F.cross_entropy(aux, batch[1], ignore_index=255)
    torch.testing.assert_close(loss, expected)
    assert task.describe_model(model) == ("UPerNet (8 ch, aux head) on custom Swin V1: patch 4, window 4, C 16, "
                                          "depths 1-1-2-1, heads 1-2-4-8")


def test_median_frequency_weights_and_the_weighted_loss(tmp_path):
    """SegNet's balancing by hand: image 0 is 12 pixels of class 0 and 4 of class 1, image 1 is 8 of class 1 and
    8 ignored, class 2 appears nowhere. freq = (12/16, 12/32, -): median 0.5625 -> weights (0.75, 1.5, 0)."""
    import torch.nn.functional as F

    write_pair(tmp_path / "train", "a", np.array([0] * 12 + [1] * 4).reshape(4, 4))
    write_pair(tmp_path / "train", "b", np.array([1] * 8 + [255] * 8).reshape(4, 4))
    write_pair(tmp_path / "val", "c", np.zeros((4, 4)))
    labels = sorted((tmp_path / "train" / "labels").iterdir())
    weights = S.median_frequency_weights(labels, 3, 255)
    torch.testing.assert_close(weights, torch.tensor([0.5625 / 0.75, 0.5625 / 0.375, 0.0]))
    task = make_task(tmp_path, class_weight="median-freq", num_classes=3, crop_size=[4], scale=[1.0, 1.0],
                     aux_head=False)
    train, _ = task.build_datasets()
    torch.testing.assert_close(task.class_weights, weights)
    model = task.build_model().eval()
    batch = S.collate([train[0], train[1]])
    expected = F.cross_entropy(model(batch[0]), batch[1], weights, ignore_index=255)
    torch.testing.assert_close(task.loss(model, batch), expected)


def test_recipe_choice():
    assert S.SegmentTask.choose_recipe({"data": "../shared/data/camvid"}) == ("camvid", None)
    assert S.SegmentTask.choose_recipe({"data": "x", "pretrained": "swin_t.pth"}) == ("default", None)
    recipe, why = S.SegmentTask.choose_recipe({"data": "my_streets"})
    assert recipe == "camvid" and why.startswith("recipe camvid: training from scratch")
    with pytest.raises(ValueError, match="--task segment needs --data"):
        S.SegmentTask.resolve({"data": None}, {})


def write_checkpoint(tmp_path, **flat):
    """best.pt of a tiny segmentation model as `swinkit train --task segment` writes it, over tmp_path/data."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("val", 3)):
        for i in range(n):
            write_pair(tmp_path / "data" / split, f"{split}{i}", rng.integers(0, 3, (24 + 8 * i, 40)))
    task = make_task(tmp_path / "data", **flat)
    task.build_datasets()
    model = task.build_model().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    ck = {"task": "segment", "config": task.model_config(model), "model": model.state_dict(), **task.checkpoint_meta()}
    torch.save(ck, tmp_path / "best.pt")
    return task, model


def test_eval_json_matches_the_metrics_of_the_model(tmp_path, capsys):
    import json

    from swinkit.cli import main

    task, model = write_checkpoint(tmp_path)
    assert main(["eval", "--checkpoint", str(tmp_path / "best.pt"), "--data", str(tmp_path / "data"), "--json",
                 "--batch-size", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    ds = S.SegmentationFolder(tmp_path / "data" / "val", 3, 255, S.eval_transform())
    conf = sum(S.confusion_matrix(model(x[None]).argmax(1)[0], y, 3, 255) for x, y in ds)
    expected = S.segmentation_metrics(conf, ["0", "1", "2"])
    for k in ("miou", "pixel_acc", "mean_acc"):
        assert result[k] == pytest.approx(expected[k], abs=1e-9)
    assert result["per_class_iou"] == pytest.approx(expected["per_class_iou"], abs=1e-9)
    assert result["num_images"] == 3 and result["num_pixels"] == 40 * (24 + 32 + 40)
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 0
    # a window as large as the image is whole-image inference; multi-scale + flip is another number
    assert main(["eval", "--checkpoint", str(tmp_path / "best.pt"), "--data", str(tmp_path / "data" / "val"),
                 "--json", "--window", "64", "64", "--stride", "32", "32"]) == 0
    assert json.loads(capsys.readouterr().out)["miou"] == pytest.approx(result["miou"], abs=1e-9)
    assert main(["eval", "--checkpoint", str(tmp_path / "best.pt"), "--data", str(tmp_path / "data"), "--json",
                 "--scales", "0.75", "1.25", "--flip"]) == 0
    ms = json.loads(capsys.readouterr().out)
    assert ms["inference"] == {"window": None, "stride": None, "scales": [0.75, 1.25], "flip": True}
    assert ms["miou"] != pytest.approx(result["miou"], abs=1e-9)


def test_predict_writes_palette_masks_and_overlays(tmp_path, capsys):
    import json

    from swinkit.cli import main

    task, model = write_checkpoint(tmp_path)
    images = sorted((tmp_path / "data" / "val" / "images").iterdir())
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    argv = ["predict", "--checkpoint", str(tmp_path / "best.pt"), *map(str, images), str(tmp_path / "bad.jpg"),
            "--out", str(tmp_path / "pred"), "--json"]
    assert main(argv) == 1  # one file failed, the others were written
    out = capsys.readouterr()
    assert "error: cannot read" in out.err and str(tmp_path / "bad.jpg") in out.err
    lines = [json.loads(line) for line in out.out.splitlines()]
    assert [r["image"] for r in lines] == list(map(str, images))
    tf = S.eval_transform()
    for path, r in zip(images, lines):
        x, _ = tf(tv_tensors.Image(torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)),
                  tv_tensors.Mask(torch.zeros(1, 1)))
        with torch.no_grad():
            expected = model(x[None]).argmax(1)[0]
        with Image.open(r["mask"]) as m:
            assert m.mode == "P" and m.getpalette()[:9] == [v for c in task.labels.palette for v in c]
        assert torch.equal(torch.from_numpy(D.read_mask(r["mask"])), expected)
        with Image.open(r["overlay"]) as ov, Image.open(path) as src:  # the image, then a legend below it
            assert ov.width == src.width and ov.height > src.height
        assert sum(r["class_fractions"].values()) == pytest.approx(1.0)


def test_pretrained_initialises_the_backbone_from_a_classifier(tmp_path):
    from swinkit import create_model, save_model

    classifier = create_model("swin_t", window_size=4, num_classes=5, embed_dim=16, depths=[1, 1, 2, 1],
                              num_heads=[1, 2, 4, 8])
    save_model(classifier, tmp_path / "cls.safetensors")
    small_folder(tmp_path / "data" / "train", n=2, size=(32, 48))
    small_folder(tmp_path / "data" / "val", n=1, size=(32, 48))
    task = make_task(tmp_path / "data", pretrained=str(tmp_path / "cls.safetensors"))  # TINY: the same backbone
    task.build_datasets()
    model = task.build_model()
    backbone, source = model.backbone.state_dict(), classifier.state_dict()
    shared = [k for k in source if k.startswith(("patch_embed.", "layers."))]
    assert shared and all(torch.equal(backbone[k], source[k]) for k in shared)
    task = make_task(tmp_path / "data", pretrained=str(tmp_path / "cls.safetensors"), embed_dim=32)
    task.build_datasets()
    with pytest.raises(ValueError, match="the checkpoint is a different architecture: embed_dim=16 "):
        task.build_model()
