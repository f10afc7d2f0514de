"""Image-folder datasets: RGB conversion, unreadable files, folder errors, splits, the digits cache, transforms."""
import io
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from swinkit import data
from swinkit.io.files import cache_dir
from swinkit.data import (ImageFolderDataset, build_datasets, digits_folder, eval_transform, mixup_cutmix,
                          split_indices, train_transform)
from swinkit.data.transforms import RandAugmentMstd
from swinkit.train.sampling import SeededSamples


def write_png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    img.save(path)
    return path


def make_folder(root, counts: dict[str, int], size=8):
    """root/<class>/<i>.png, each class a different gray level."""
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            write_png(root / name / f"{i}.png", np.full((size, size), 40 * c + i, np.uint8))
    return root


def jpeg_bytes(size=32) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


# ---- conversion to RGB


def test_every_mode_is_read_as_8bit_rgb(tmp_path):
    root = tmp_path / "imgs"
    write_png(root / "gray" / "l.png", np.array([[0, 100]], np.uint8))
    write_png(root / "gray16" / "i16.png", np.array([[0, 32768, 65535]], np.uint16))  # PIL mode I;16
    rgba = np.array([[[10, 20, 30, 0], [40, 50, 60, 255]]], np.uint8)
    write_png(root / "rgba" / "rgba.png", rgba)
    write_png(root / "la" / "la.png", np.array([[[70, 0]]], np.uint8))
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0
    (root / "palette").mkdir()
    pal.save(root / "palette" / "p.png")
    assert Image.open(root / "gray16" / "i16.png").mode.startswith("I;16")

    ds = ImageFolderDataset(root)
    got = {ds.classes[t]: np.asarray(img) for img, t in ds}
    assert all(img.dtype == np.uint8 and img.shape[-1] == 3 for img in got.values())
    np.testing.assert_array_equal(got["gray"][0, :, 0], [0, 100])
    np.testing.assert_array_equal(got["gray16"][0, :, 1], [0, 128, 255])  # scaled, not clipped at 255
    np.testing.assert_array_equal(got["rgba"][0], [[10, 20, 30], [40, 50, 60]])  # alpha dropped
    np.testing.assert_array_equal(got["la"][0, 0], [70, 70, 70])
    np.testing.assert_array_equal(got["palette"][0], [[0, 0, 0], [200, 0, 0]])


# ---- unreadable files and folder errors


def test_unreadable_files_are_skipped_with_a_warning_and_counted(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 2, "b": 2})
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "a" / "text.png").write_text("not an image")
    (root / "b" / "truncated.jpg").write_bytes(jpeg_bytes()[:400])
    with pytest.warns(UserWarning, match=r"skipped 3 unreadable image file\(s\)"):
        ds = ImageFolderDataset(root)
    assert len(ds) == 4 and ds.targets == [0, 0, 1, 1]
    assert sorted(p.rsplit("/", 1)[1] for p, _ in ds.skipped) == ["empty.jpg", "text.png", "truncated.jpg"]
    assert "truncated" in dict(ds.skipped)[str(root / "b" / "truncated.jpg")].lower()
    assert [np.asarray(img).shape for img, _ in ds] == [(8, 8, 3)] * 4


def test_a_file_that_breaks_after_the_scan_is_replaced_by_the_next(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 2})
    ds = ImageFolderDataset(root)
    (root / "a" / "0.png").write_bytes(b"broken")
    with pytest.warns(UserWarning, match="could not read .*0.png"):
        img, target = ds[0]
    assert np.asarray(img)[0, 0, 0] == 1  # the gray level of 1.png


def test_empty_class_folder_is_an_error(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 2, "b": 2})
    (root / "c").mkdir()
    (root / "c" / "notes.txt").write_text("no images here")
    msg = (f"class folder(s) ['c'] in {root} hold no readable images (extensions "
           f"{', '.join(data.IMG_EXTENSIONS)}); add images or remove the folder(s)")
    with pytest.raises(ValueError, match=re.escape(msg)):
        ImageFolderDataset(root)


def test_class_of_only_corrupt_files_is_an_error(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 2})
    (root / "b").mkdir()
    (root / "b" / "x.jpg").write_bytes(b"junk")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=re.escape("class folder(s) ['b']")):
            ImageFolderDataset(root)


def test_val_class_unknown_to_train_is_an_error(tmp_path):
    make_folder(tmp_path / "train", {"cat": 2, "dog": 2})
    make_folder(tmp_path / "val", {"cat": 1, "zebra": 1})
    msg = (f"{tmp_path / 'val'} has class folders that the training set does not have: ['zebra']; expected only "
           "its classes ['cat', 'dog']. Rename or remove those folders")
    with pytest.raises(ValueError, match=re.escape(msg)):
        build_datasets(tmp_path, None, None)


def test_val_missing_a_class_keeps_train_indices(tmp_path):
    make_folder(tmp_path / "train", {"cat": 2, "dog": 2})
    make_folder(tmp_path / "val", {"dog": 3})
    train, val = build_datasets(tmp_path, None, None)
    assert val.classes == ["cat", "dog"] and val.targets == [1, 1, 1]


def test_missing_or_classless_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected a folder with train/ and val/ sub-folders"):
        build_datasets(tmp_path / "nope", None, None)
    (tmp_path / "flat").mkdir()
    write_png(tmp_path / "flat" / "x.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(FileNotFoundError, match=re.escape(f"expected one sub-folder per class in {tmp_path / 'flat'}")):
        build_datasets(tmp_path / "flat", None, None)


# ---- splits


def test_single_folder_split_is_seeded_stratified_and_disjoint(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 10, "b": 20, "c": 1})
    train_tf, eval_tf = object(), object()
    train, val = build_datasets(root, train_tf, eval_tf, val_fraction=0.2, seed=3)
    again_train, again_val = build_datasets(root, None, None, val_fraction=0.2, seed=3)
    other_train, other_val = build_datasets(root, None, None, val_fraction=0.2, seed=4)
    assert train.samples == again_train.samples and val.samples == again_val.samples
    assert val.samples != other_val.samples
    assert not set(train.samples) & set(val.samples) and len(train) + len(val) == 31
    assert np.bincount(val.targets, minlength=3).tolist() == [2, 4, 0]  # 20% per class; a lone image trains
    assert train.transform is train_tf and val.transform is eval_tf


def test_split_of_train_folder_without_val(tmp_path):
    make_folder(tmp_path / "train", {"a": 5, "b": 5})
    train, val = build_datasets(tmp_path, None, None, val_fraction=0.4)
    assert len(train) == 6 and len(val) == 4 and train.classes == val.classes == ["a", "b"]


def test_split_indices_validates_fraction():
    with pytest.raises(ValueError, match=re.escape("val_fraction must be in (0, 1), got 1.5")):
        split_indices([0, 1], 1.5, 0)


# ---- the embedded digits


def test_digits_folder_is_written_once_and_holds_the_sklearn_digits(tmp_path, monkeypatch):
    from sklearn.datasets import load_digits

    root = digits_folder(tmp_path)
    assert root == tmp_path / "digits"
    files = sorted(root.glob("*/*/*.png"))
    assert len(files) == 1797 and {f.parent.name for f in files} == {str(d) for d in range(10)}
    digits = load_digits()
    for f in files[:: 97]:
        img = Image.open(f)
        i = int(f.stem)
        assert img.mode == "L" and img.size == (8, 8) and int(f.parent.name) == digits.target[i]
        np.testing.assert_array_equal(np.asarray(img), np.round(digits.images[i] * 255 / 16))
    train, val = build_datasets(root, None, None)
    assert len(val) == 359 and np.bincount(val.targets).min() >= 35  # the stratified 20% split
    monkeypatch.setattr("sklearn.datasets.load_digits", lambda: pytest.fail("rewrote the cached digits"))
    assert digits_folder(tmp_path) == root


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SWINKIT_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SWINKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "swinkit"


# ---- transforms and seeded augmentation


def test_transforms_give_normalised_tensors_of_the_requested_size():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    x = train_transform(32)(img)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    y = eval_transform(32, crop_pct=0.875)(img)  # short side 48 -> 36, centre 32x32
    assert y.shape == (3, 32, 32)
    assert eval_transform((24, 40), crop_pct=1.0)(img).shape == (3, 24, 40)
    flat = eval_transform(32, crop_pct=1.0)(Image.new("RGB", (32, 32), (124, 116, 104)))
    assert flat.abs().max() < 0.01  # ImageNet mean colour -> ~0


def test_seeded_samples_repeat_per_epoch_and_index_and_leave_the_global_rng_alone(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "d"
    for i in range(3):
        write_png(root / "a" / f"{i}.png", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    ds = SeededSamples(ImageFolderDataset(root, train_transform(16)), seed=0)
    torch.manual_seed(123)
    first = [ds[i][0] for i in (0, 1, 2)]
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)  # the caller's RNG stream is untouched
    backwards = [ds[i][0] for i in (2, 1, 0)][::-1]
    assert all(torch.equal(a, b) for a, b in zip(first, backwards))
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], first[0])


def test_randaugment_magnitude_is_drawn_around_m_with_mstd():
    ra = RandAugmentMstd(num_ops=1, magnitude=9, mstd=0.5)
    img = torch.zeros(3, 8, 8, dtype=torch.uint8)
    torch.manual_seed(0)
    mags = []
    for _ in range(400):
        ra(img)
        mags.append(ra.magnitude)
    assert set(mags) <= {7, 8, 9, 10, 11} and {8, 9, 10} <= set(mags)
    # round(9 + 0.5 z) is 9 with probability 0.683, 8 or 10 with 0.157 each, 7 or 11 with 0.0013 each: mean 9,
    # std 0.57. Over 400 draws the sample mean has a standard error of 0.029 and the sample std of 0.022, so both
    # bounds lie 5 standard errors or more away (a seeded stream: no CPU changes the draws)
    assert abs(np.mean(mags) - 9) < 0.15 and 0.3 < np.std(mags) < 0.7
    fixed = RandAugmentMstd(num_ops=1, magnitude=5, mstd=0.0)
    fixed(img)
    assert fixed.magnitude == 5


def test_mixup_cutmix_gives_soft_targets():
    assert mixup_cutmix(4, mixup=0.0, cutmix=0.0) is None
    torch.manual_seed(0)
    x, y = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    mx, my = mixup_cutmix(4)(x, y)
    assert mx.shape == x.shape and my.shape == (6, 4)
    torch.testing.assert_close(my.sum(1), torch.ones(6))
    assert (my.max(1).values < 1).all()  # every sample mixes with its neighbour
