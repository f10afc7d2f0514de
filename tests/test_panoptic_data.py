"""COCO panoptic data (swinkit.data.panoptic), panoptic quality (swinkit.metrics.panoptic) and `swinkit data
coco128-panoptic`: exact masks from a hand-made dataset, one error per kind of bad data, PQ against a hand
computation and torchmetrics, and the converter's invariants on real COCO128 images."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from swinkit.cli import main
from swinkit.data.panoptic import (PanopticDataError, PanopticDataset, coco128_to_panoptic, id2rgb, panoptic_map,
                                   rgb2id, semantic_targets)
from swinkit.metrics.panoptic import PanopticMeter, panoptic_quality

COCO128 = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128"
CATEGORIES = [{"id": 1, "name": "person", "isthing": 1}, {"id": 3, "name": "car", "isthing": 1},
              {"id": 187, "name": "sky", "isthing": 0}]
H, W = 24, 32
SEG_IDS = (5, 300, 70000)  # ids that use R, G and B of the PNG


def segment_map(flip: bool = False) -> np.ndarray:
    """(H, W) ids: a person (5) top left, a car (300) in the middle, sky (70000) on the right; the rest void."""
    ids = np.zeros((H, W), np.int64)
    ids[0:10, 0:8] = 5
    ids[10:20, 10:20] = 300
    ids[:, 24:] = 70000
    return ids[:, ::-1].copy() if flip else ids


def make_dataset(root: Path, split: str = "val") -> dict:
    """Two images of H x W; the second mirrors the first, and its person is a crowd. Returns the JSON written."""
    (root / split).mkdir(parents=True)
    (root / "annotations" / f"panoptic_{split}").mkdir(parents=True)
    rng = np.random.default_rng(0)
    data = {"images": [], "annotations": [], "categories": CATEGORIES}
    for i in range(2):
        ids = segment_map(flip=i == 1)
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / split / f"{i}.png")
        Image.fromarray(id2rgb(ids)).save(root / "annotations" / f"panoptic_{split}" / f"{i}.png")
        data["images"].append({"id": 10 + i, "file_name": f"{i}.png", "height": H, "width": W})
        data["annotations"].append({"image_id": 10 + i, "file_name": f"{i}.png", "segments_info": [
            {"id": s, "category_id": c, "iscrowd": int(i == 1 and c == 1), "area": int((ids == s).sum()), "bbox": []}
            for s, c in zip(SEG_IDS, (1, 3, 187), strict=True)]})
    write(root, split, data)
    return data


def write(root: Path, split: str, data: dict) -> None:
    (root / "annotations" / f"panoptic_{split}.json").write_text(json.dumps(data))


def test_rgb_ids_round_trip():
    ids = np.array([[0, 5, 300], [70000, 256 ** 3 - 1, 65536]])
    assert (rgb2id(id2rgb(ids)) == ids).all()


def test_items_hold_the_exact_segments(tmp_path):
    make_dataset(tmp_path)
    ds = PanopticDataset(tmp_path, "val")
    assert ds.class_names == ["person", "car", "sky"]
    assert (ds.is_thing, ds.category_ids) == ([True, True, False], [1, 3, 187])
    assert len(ds) == 2
    for i in range(2):
        img, t = ds[i]
        ids = torch.from_numpy(segment_map(flip=i == 1))
        assert img.dtype == torch.uint8 and img.shape == (3, H, W)
        assert t["masks"].dtype == torch.bool
        assert torch.equal(t["masks"], torch.stack([ids == s for s in SEG_IDS]))
        assert t["labels"].tolist() == [0, 1, 2] and t["labels"].dtype == torch.int64
        assert t["iscrowd"].tolist() == [False, False, False] if i == 0 else [True, False, False]
        assert t["segment_ids"].tolist() == list(SEG_IDS)
        assert (t["image_id"], t["file_name"]) == (10 + i, f"{i}.png")


def test_a_v2_transform_moves_masks_with_the_image(tmp_path):
    make_dataset(tmp_path)
    tf = v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.Resize((2 * H, 2 * W), v2.InterpolationMode.NEAREST)])
    img0, t0 = PanopticDataset(tmp_path, "val")[0]
    img, t = PanopticDataset(tmp_path, "val", transforms=tf)[0]
    up = lambda x: x.flip(-1).repeat_interleave(2, -2).repeat_interleave(2, -1)  # noqa: E731 - flip, then 2x nearest
    assert torch.equal(img, up(img0))
    assert torch.equal(t["masks"], up(t0["masks"]))
    assert torch.equal(t["labels"], t0["labels"])


def corrupt(root: Path, how: str) -> str:
    """Break the dataset made by make_dataset in one way; returns the name of the file the error must name."""
    data = json.loads((root / "annotations" / "panoptic_val.json").read_text())
    png = root / "annotations" / "panoptic_val" / "1.png"
    segments = data["annotations"][1]["segments_info"]
    if how == "id missing from the json":
        del segments[1]
    elif how == "json segment without pixels":
        segments.append({"id": 999, "category_id": 1, "iscrowd": 0, "area": 0, "bbox": []})
    elif how == "unknown category":
        segments[0]["category_id"] = 42
        write(root, "val", data)
        return "panoptic_val.json"
    elif how == "png size":
        Image.fromarray(id2rgb(segment_map(flip=True))[:, :-1]).save(png)
    elif how == "missing png":
        png.unlink()
    elif how == "missing image":
        (root / "val" / "1.png").unlink()
        return str(root / "val" / "1.png")
    write(root, "val", data)
    return str(png)


@pytest.mark.parametrize("how, when", [("id missing from the json", "item"), ("json segment without pixels", "item"),
                                       ("png size", "item"), ("unknown category", "init"), ("missing png", "init"),
                                       ("missing image", "init")])
def test_bad_data_is_one_clear_error_naming_the_file(tmp_path, how, when):
    make_dataset(tmp_path)
    name = corrupt(tmp_path, how)
    if when == "init":  # problems of the JSON and missing files: found before any item is read
        with pytest.raises(PanopticDataError, match=re.escape(name)):
            PanopticDataset(tmp_path, "val")
    else:  # problems of a PNG: found when its item is read
        ds = PanopticDataset(tmp_path, "val")
        ds[0]  # the first image is intact
        with pytest.raises(PanopticDataError, match=re.escape(name)):
            ds[1]


def test_semantic_targets_one_mask_per_class():
    label = torch.tensor([[3, 3, 255], [0, 3, 255]])
    masks, labels = semantic_targets(label)
    assert labels.tolist() == [0, 3]
    assert masks.tolist() == [[[False, False, False], [True, False, False]],
                              [[True, True, False], [False, True, False]]]


def test_panoptic_map_pairs_and_void():
    masks = torch.tensor([[[1, 1, 0]], [[0, 0, 1]]], dtype=torch.bool)  # (2, 1, 3)
    assert panoptic_map(masks, torch.tensor([4, 7])).tolist() == [[[4, 1], [4, 1], [7, 2]]]
    assert panoptic_map(masks[:, :, :2], torch.tensor([4, 7]), void=9).tolist() == [[[4, 1], [4, 1]]]
    assert panoptic_map(torch.zeros(0, 1, 2, dtype=torch.bool), torch.zeros(0)).tolist() == [[[-1, 0], [-1, 0]]]


def pq_case() -> tuple[torch.Tensor, torch.Tensor]:
    """4 x 8 pixels, thing class 1, stuff class 2, void -1.
    target: thing A = columns 0-1 (8 px), void = columns 2-3, stuff = columns 4-7 (16 px).
    pred:   thing P1 = rows 0-2 of columns 0-1 (6 px, inside A: IoU 6/8 = 0.75, a true positive);
            thing P2 = row 3 of columns 0-1 (2 px: IoU with A 2/8 < 0.5, a false positive);
            thing P3 = columns 2-3 (all on target void: neither matched nor counted);
            stuff = columns 4-7 (IoU 1.0, a true positive).
    things: TP 1, FP 1, FN 0 -> SQ = 0.75, RQ = 1 / (1 + 0.5) = 2/3, PQ = 0.5
    stuff:  SQ = RQ = PQ = 1
    all (mean over the two classes): PQ = 0.75, SQ = 0.875, RQ = 5/6"""
    target = torch.zeros(4, 8, 2, dtype=torch.long)
    target[:, 0:2] = torch.tensor([1, 1])
    target[:, 2:4] = torch.tensor([-1, 0])
    target[:, 4:8] = torch.tensor([2, 0])
    pred = target.clone()
    pred[3, 0:2] = torch.tensor([1, 2])
    pred[:, 2:4] = torch.tensor([1, 3])
    return pred, target


def test_panoptic_quality_matches_a_hand_computation_and_torchmetrics():
    from torchmetrics.detection import PanopticQuality

    pred, target = pq_case()
    got = panoptic_quality(pred, target, things={1}, stuffs={2})
    want = {"pq": 0.75, "sq": 0.875, "rq": 5 / 6, "pq_th": 0.5, "sq_th": 0.75, "rq_th": 2 / 3,
            "pq_st": 1.0, "sq_st": 1.0, "rq_st": 1.0}
    assert got.keys() == want.keys()
    assert all(abs(got[k] - want[k]) < 1e-6 for k in want), got
    void = torch.tensor([3, 0])  # torchmetrics' own void: 1 + the largest category
    ref = PanopticQuality({1}, {2}, return_sq_and_rq=True, allow_unknown_preds_category=True)
    ref.update(*(torch.where(t[..., :1] == -1, void, t)[None] for t in (pred, target)))
    assert torch.allclose(ref.compute(), torch.tensor([got["pq"], got["sq"], got["rq"]], dtype=torch.float64))


def test_a_segment_left_unpredicted_is_a_false_negative():
    """COCO's pq_compute: the thing left void in the prediction is a false negative (torchmetrics alone would ignore
    it, leaving the things with no count and PQ_th NaN). Stuff predicted exactly: PQ_st 1; PQ = (0 + 1) / 2."""
    _, target = pq_case()
    pred = target.clone()
    pred[:, 0:2] = torch.tensor([-1, 0])
    got = panoptic_quality(pred, target, things={1}, stuffs={2})
    assert (got["pq_th"], got["rq_th"], got["pq_st"], got["pq"]) == (0.0, 0.0, 1.0, 0.5)
    nothing = panoptic_quality(torch.full_like(pred, -1), target, things={1}, stuffs={2})
    assert nothing["pq"] == nothing["pq_th"] == nothing["pq_st"] == 0.0


def test_the_meter_accumulates_and_an_empty_group_is_nan():
    pred, target = pq_case()
    meter = PanopticMeter(things={1}, stuffs={2, 5})
    assert all(np.isnan(v) for v in meter.compute().values())  # nothing seen yet
    meter.update(pred, target)
    meter.update(target, target)  # a perfect image: thing TP 2 (IoU 0.75 + 1), FP 1 -> SQ 0.875, RQ 2/2.5
    got = meter.compute()
    assert abs(got["pq_th"] - 0.875 * 0.8) < 1e-6 and got["pq_st"] == 1.0  # class 5 never seen: not averaged
    only_stuff = PanopticMeter(things={1}, stuffs={2})
    only_stuff.update(target[..., 4:, :], target[..., 4:, :])
    assert np.isnan(only_stuff.compute()["pq_th"]) and only_stuff.compute()["pq"] == 1.0
    with pytest.raises(ValueError, match=r"categories \[7\]"):
        meter.update(torch.full_like(pred, 7), target)


# ----------------------------------------------------------------------------------------------------------
# the converter


def coco128_subset(root: Path) -> Path:
    """Two annotated train images, one val image and one train image without masks, in COCO128's layout."""
    if not COCO128.is_dir():
        pytest.skip(f"{COCO128} is absent")
    files = {"train2017": ["000000000009", "000000000025", "000000000540"], "val2017": ["000000000139"]}
    for d in ("instance_segmentation", "semantic_segmentation"):
        (root / d).mkdir(parents=True)
        shutil.copy(COCO128 / d / "config.yaml", root / d / "config.yaml")
    for split, stems in files.items():
        for sub, ext in (("images", ".jpg"), ("instance_segmentation/labels", ".txt"),
                         ("semantic_segmentation/masks", ".png")):
            (root / sub / split).mkdir(parents=True)
            for stem in stems:
                if (COCO128 / sub / split / f"{stem}{ext}").exists():
                    shutil.copy(COCO128 / sub / split / f"{stem}{ext}", root / sub / split / f"{stem}{ext}")
    assert not (root / "semantic_segmentation/masks/train2017/000000000540.png").exists()
    return root


def test_the_converter_writes_consistent_coco_panoptic(tmp_path):
    src, dst = coco128_subset(tmp_path / "src"), tmp_path / "out"
    report = coco128_to_panoptic(src, dst, verbose=False)
    assert report["categories"] == {"things": 80, "stuff": 53}
    assert {s: (r["images"], r["images_skipped"]) for s, r in report["splits"].items()} == {
        "train2017": (2, 1), "val2017": (1, 0)}
    for split, r in report["splits"].items():
        data = json.loads((dst / "annotations" / f"panoptic_{split}.json").read_text())
        cats = {c["id"]: c for c in data["categories"]}
        assert len(cats) == 133 and {k for k, c in cats.items() if c["isthing"]} == set(range(1, 91)) - {
            12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
        total, kinds = 0, {"things": 0, "stuff": 0}
        for image, ann in zip(data["images"], data["annotations"], strict=True):
            assert ann["image_id"] == image["id"]
            ids = rgb2id(np.asarray(Image.open(dst / "annotations" / f"panoptic_{split}" / ann["file_name"])))
            with Image.open(dst / split / image["file_name"]) as im:
                assert im.size == (ids.shape[1], ids.shape[0]) == (image["width"], image["height"])
            sem = np.asarray(Image.open(src / "semantic_segmentation/masks" / split / ann["file_name"]))
            segments = {s["id"]: s for s in ann["segments_info"]}
            assert set(np.unique(ids).tolist()) - {0} == set(segments)  # every PNG id in the JSON, and back
            for s in segments.values():
                assert s["area"] == (ids == s["id"]).sum() > 0
                assert (sem[ids == s["id"]] == s["category_id"]).all()  # the semantic mask decides the category
                kinds["things" if cats[s["category_id"]]["isthing"] else "stuff"] += 1
            total += ids.size
        px = r["pixels"]
        assert px["total"] == total == sum(v for k, v in px.items() if k != "total")
        assert r["segments"] == kinds
    ds = PanopticDataset(dst, "train2017")
    img, t = ds[0]
    assert t["masks"].sum(0).max() == 1 and img.shape[1:] == t["masks"].shape[1:]
    assert len(ds.categories) == 133


def test_the_cli_converts_and_refuses_an_existing_destination(tmp_path, capsys):
    src, dst = coco128_subset(tmp_path / "src"), tmp_path / "out"
    assert main(["data", "coco128-panoptic", str(src), str(dst)]) == 0
    assert "train2017: 2 images (1 without a semantic mask skipped)" in capsys.readouterr().out
    assert main(["data", "coco128-panoptic", str(src), str(dst)]) == 2
    assert re.search(r"^swinkit data: .*out exists: pass --overwrite", capsys.readouterr().err)
    (dst / "val2017" / "000000000139.jpg").unlink()
    assert main(["data", "coco128-panoptic", str(src), str(dst), "--overwrite"]) == 0
    assert (dst / "val2017" / "000000000139.jpg").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
