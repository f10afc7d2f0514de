import contextlib
import io
import json

import numpy as np
import pytest
import torch
import yaml
from conftest import SHARED
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import masks_to_boxes

from swinkit.tasks.detect_data import (collate, eval_transform, has_split, open_detection_data,
                                       train_transform)

COCO128 = SHARED / "data" / "coco128"
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools, numpy 2


def write_image(path, w, h, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def make_yolo(root, labels: dict, size=(200, 100), split="train", names=("cat", "dog"), label_set="",
              yaml_extra=None):
    """root/images/<split>/<stem>.png (size W, H) and <label_set>/labels/<split>/<stem>.txt (None: no file)."""
    for i, (stem, text) in enumerate(labels.items()):
        write_image(root / "images" / split / f"{stem}.png", *size, seed=i)
        if text is not None:
            f = root / label_set / "labels" / split / f"{stem}.txt"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text)
    if names is not None:
        cfg = {"names": dict(enumerate(names)) if not isinstance(names, dict) else names, **(yaml_extra or {})}
        (root / label_set / "data.yaml").write_text(yaml.safe_dump(cfg))
    return root


def xywh_to_xyxy(b):
    return [b[0], b[1], b[0] + b[2], b[1] + b[3]]


# ---------------------------------------------------------------------------------------------------------
# YOLO text


def test_yolo_box_lines_become_exact_pixel_xyxy(tmp_path):
    make_yolo(tmp_path, {"a": "0 0.5 0.5 0.25 0.5\n1 0.125 0.375 0.25 0.25\n"})
    ds = open_detection_data(tmp_path, "train")
    assert ds.format == "yolo" and ds.classes == ["cat", "dog"] and ds.category_ids == [0, 1]
    image, target = ds[0]
    assert image.shape == (3, 100, 200) and image.dtype == torch.uint8
    assert torch.equal(target["boxes"], torch.tensor([[75.0, 25.0, 125.0, 75.0], [0.0, 25.0, 50.0, 50.0]]))
    assert target["boxes"].format.value == "XYXY" and tuple(target["boxes"].canvas_size) == (100, 200)
    assert target["labels"].tolist() == [1, 2] and target["labels"].dtype == torch.int64  # 0 is the background
    assert "masks" not in target and target["image_id"] == 1


def test_yolo_polygon_gives_its_bounding_box_and_a_mask_of_its_area(tmp_path):
    # triangle (20, 10), (180, 10), (20, 90) px on a 200 x 100 image: area 0.5 * 160 * 80 = 6400
    make_yolo(tmp_path, {"a": "1 0.1 0.1 0.9 0.1 0.1 0.9\n"})
    _, target = open_detection_data(tmp_path, "train", masks=True)[0]
    assert torch.allclose(target["boxes"], torch.tensor([[20.0, 10.0, 180.0, 90.0]]))
    masks = target["masks"]
    assert masks.shape == (1, 100, 200) and masks.dtype == torch.uint8
    assert abs(int(masks.sum()) - 6400) < 0.03 * 6400
    ys, xs = torch.nonzero(masks[0], as_tuple=True)
    assert (xs.min(), ys.min()) == (20, 10) and xs.max() < 180 and ys.max() < 90


def test_yolo_clipping_and_degenerate_objects_are_counted(tmp_path):
    make_yolo(tmp_path, {"a": "\n".join([
        "0 0.9 0.5 0.4 0.2",            # x2 = 1.1: clipped to the image
        "0 0.75 0.5 0.5000005 0.2",     # x2 = 1.00000025: round-off, clipped but not counted
        "0 0.5 0.5 0 0.2",              # zero width: dropped
        "0 1.5 0.5 0.2 0.2",            # wholly outside: nothing left after clipping
        "1 0.1 0.1 0.2 0.2 0.3 0.3",    # collinear polygon: zero area
        "1 0.5 0.5",                    # a one-point polygon
        "1 -0.1 0.5 0.5 0.5 0.5 1.2",   # polygon partly outside: clipped
    ]) + "\n"})
    ds = open_detection_data(tmp_path, "train", masks=True)
    assert {k: ds.issues[k] for k in ("boxes_clipped", "boxes_dropped", "polygons_dropped", "box_masks")} == \
        {"boxes_clipped": 2, "boxes_dropped": 2, "polygons_dropped": 2, "box_masks": 2}
    _, target = ds[0]
    assert torch.allclose(target["boxes"], torch.tensor([[140.0, 40.0, 200.0, 60.0], [100.0, 40.0, 200.0, 60.0],
                                                         [0.0, 50.0, 100.0, 100.0]]))
    assert target["labels"].tolist() == [1, 1, 2] and target["masks"].shape == (3, 100, 200)
    assert "clipped 2 boxes" in ds.summary() and "dropped 2 degenerate polygons" in ds.summary()


@pytest.mark.parametrize("line, message", [
    ("93 0.5 0.5 0.1 0.1", r"a\.txt, line 3: class id 93 is not in the 2 classes of .*data\.yaml \(ids 0\.\.1\)"),
    ("0 0.5 0.5 0.1", r"a\.txt, line 3: .*found 4 values \(an odd number of coordinates\)"),
    ("0", r"a\.txt, line 3: expected `class cx cy w h` .*found 1 values"),
    ("0 0.5 half 0.1 0.1", r"a\.txt, line 3: could not convert string to float: 'half': expected numbers"),
    ("0.5 0.5 0.5 0.1 0.1", r"a\.txt, line 3: expected an integer class id"),
])
def test_yolo_bad_lines_name_the_file_and_line(tmp_path, line, message):
    make_yolo(tmp_path, {"a": f"0 0.5 0.5 0.1 0.1\n\n{line}\n"})
    with pytest.raises(ValueError, match=message):
        open_detection_data(tmp_path, "train")


def test_yolo_negatives_and_missing_label_files(tmp_path):
    make_yolo(tmp_path, {"a": "0 0.5 0.5 0.1 0.1\n", "b": "", "c": None})
    ds = open_detection_data(tmp_path, "train", masks=True)
    assert len(ds) == 3 and ds.issues["negatives"] == 2 and ds.issues["missing_labels"] == 1
    for i in (1, 2):
        _, target = ds[i]
        assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
        assert target["masks"].shape == (0, 100, 200)
    assert "1 images without a label file kept as negatives" in ds.summary()

    skip = make_yolo(tmp_path / "skip", {"a": "0 0.5 0.5 0.1 0.1\n", "c": None},
                     yaml_extra={"skip_if_label_file_missing": True})
    ds = open_detection_data(skip, "train")
    assert [p.stem for p in map(ds.image_path, range(len(ds)))] == ["a"] and ds.issues["missing_labels"] == 1


def test_yolo_class_names_from_list_dict_classes_txt_or_numbers(tmp_path):
    make_yolo(tmp_path / "list", {"a": "1 0.5 0.5 0.1 0.1\n"}, names=["x", "y", "z"])
    assert open_detection_data(tmp_path / "list", "train").classes == ["x", "y", "z"]

    ds = open_detection_data(make_yolo(tmp_path / "dict", {"a": "7 0.5 0.5 0.1 0.1\n"}, names={7: "b", 2: "a"}),
                             "train")
    assert ds.classes == ["a", "b"] and ds.category_ids == [2, 7] and ds[0][1]["labels"].tolist() == [2]

    txt = make_yolo(tmp_path / "txt", {"a": "1 0.5 0.5 0.1 0.1\n"}, names=None)
    (txt / "classes.txt").write_text("red\nblue\n")
    assert open_detection_data(txt, "train").classes == ["red", "blue"]

    bare = make_yolo(tmp_path / "bare", {"a": "5 0.5 0.5 0.1 0.1\n3 0.5 0.5 0.1 0.1\n"}, names=None)
    make_yolo(bare, {"v": "3 0.5 0.5 0.1 0.1\n"}, split="val", names=None)
    ds = open_detection_data(bare, "train")
    assert ds.classes == ["3", "5"] and ds.category_ids == [3, 5]
    assert open_detection_data(bare, "val").classes == ["3", "5"]  # val is numbered by the training labels
    (bare / "labels" / "val" / "v.txt").write_text("4 0.5 0.5 0.1 0.1\n")
    with pytest.raises(ValueError, match=r"v\.txt, line 1: class id 4 is not in the 2 classes of the training"):
        open_detection_data(bare, "val")


def test_val_follows_the_training_classes(tmp_path):
    make_yolo(tmp_path, {"a": "0 0.5 0.5 0.1 0.1\n"}, names=["cat", "dog"])
    val = make_yolo(tmp_path / "v", {"b": "0 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.2 0.2\n"}, split="val",
                    names=["dog", "cat"])
    ds = open_detection_data(val, "val", classes=["cat", "dog"])
    assert ds.classes == ["cat", "dog"] and ds.category_ids == [1, 0]
    assert ds[0][1]["labels"].tolist() == [2, 1]  # the file's dog (0) is training's class 1 -> label 2
    (val / "data.yaml").write_text(yaml.safe_dump({"names": ["dog", "bird"]}))
    with pytest.raises(ValueError, match=r"b\.txt, line 2: class id 1 \(bird\) is not in the training set's 2"):
        open_detection_data(val, "val", classes=["cat", "dog"])


def test_label_set_is_chosen_by_kind(tmp_path):
    make_yolo(tmp_path, {"a": "0 0.5 0.5 0.5 0.5\n"}, split="train2017", label_set="boxes")
    make_yolo(tmp_path, {"a": "0 0.3 0.3 0.7 0.3 0.7 0.7 0.3 0.7\n"}, split="train2017", label_set="polys")
    boxes, polys = (open_detection_data(tmp_path, "train", masks=m) for m in (False, True))
    assert boxes.source == "boxes/labels" and polys.source == "polys/labels"
    assert torch.allclose(boxes[0][1]["boxes"], torch.tensor([[50.0, 25.0, 150.0, 75.0]]))
    assert torch.allclose(polys[0][1]["boxes"], torch.tensor([[60.0, 30.0, 140.0, 70.0]]))
    assert polys.issues["box_masks"] == 0 and has_split(tmp_path, "train") and not has_split(tmp_path, "val")


def test_missing_layout_and_unreadable_image_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"has no 'val' split: expected .*instances_val\*\.json .*images/val"):
        open_detection_data(make_yolo(tmp_path, {"a": ""}), "val")
    (tmp_path / "images" / "train" / "b.png").write_bytes(b"not an image")
    ds = open_detection_data(tmp_path, "train")
    with pytest.raises(ValueError, match=r"b\.png: cannot read the image"):
        ds[1]


# ---------------------------------------------------------------------------------------------------------
# COCO json


def make_coco(root, anns, images=((1, 64, 48), (2, 32, 32)), categories=((90, "zebra"), (3, "car"), (7, "cat")),
              split="train2017"):
    """root/annotations/instances_<split>.json and root/<split>/<id>.png for images (id, W, H)."""
    for i, w, h in images:
        write_image(root / split / f"{i}.png", w, h, seed=i)
    data = {"images": [{"id": i, "width": w, "height": h, "file_name": f"{i}.png"} for i, w, h in images],
            "annotations": [{"iscrowd": 0, "area": float(np.prod(a["bbox"][2:])), **a} for a in anns],
            "categories": [{"id": c, "name": n} for c, n in categories]}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def crowd_rle(h, w, box):
    m = np.zeros((h, w), dtype=np.uint8, order="F")
    m[box[1]:box[3], box[0]:box[2]] = 1
    counts = []  # uncompressed RLE as in COCO's crowd annotations: run lengths down the columns, zeros first
    flat, value, run = m.ravel(order="F"), 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    return {"counts": counts + [run], "size": [h, w]}


COCO_ANNS = [
    {"id": 11, "image_id": 1, "category_id": 7, "bbox": [4, 6, 20, 10],
     "segmentation": [[4, 6, 24, 6, 24, 16, 4, 16]]},
    {"id": 12, "image_id": 1, "category_id": 90, "bbox": [50, 30, 20, 30],       # past the right and bottom edge
     "segmentation": [[50, 30, 70, 30, 70, 60, 50, 60]]},
    {"id": 13, "image_id": 1, "category_id": 3, "bbox": [10, 10, 0, 5], "segmentation": [[10, 10, 10, 15, 10, 12]]},
    {"id": 14, "image_id": 1, "category_id": 3, "bbox": [30, 2, 10, 10], "iscrowd": 1,
     "segmentation": crowd_rle(48, 64, (30, 2, 40, 12))},
]


def test_coco_sparse_categories_map_contiguously_and_back(tmp_path):
    ds = open_detection_data(make_coco(tmp_path, COCO_ANNS), "train", masks=True)
    assert ds.format == "coco" and len(ds) == 2
    assert ds.classes == ["car", "cat", "zebra"] and ds.category_ids == [3, 7, 90]  # in category-id order
    _, target = ds[0]
    assert [ds.category_ids[k - 1] for k in target["labels"].tolist()] == [7, 90]
    assert torch.equal(target["boxes"], torch.tensor([[4.0, 6.0, 24.0, 16.0], [50.0, 30.0, 64.0, 48.0]]))
    assert torch.equal(masks_to_boxes(target["masks"]) + torch.tensor([0, 0, 1, 1]), target["boxes"])
    assert ds.issues["boxes_clipped"] == 1 and ds.issues["boxes_dropped"] == 1 and ds.issues["crowd"] == 1
    _, empty = ds[1]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 32, 32) and ds.issues["negatives"] == 1
    assert ds.summary().startswith("2 images, 2 objects, 3 classes (")


def _evaluate(gt: dict, detections: list[dict]) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(detections), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return ev.stats[0]


def test_coco_gt_matches_the_targets_and_keeps_crowd_regions(tmp_path):
    ds = open_detection_data(make_coco(tmp_path, COCO_ANNS), "train", masks=True)
    gt = ds.coco_gt()
    assert gt["categories"] == [{"id": 1, "name": "car"}, {"id": 2, "name": "cat"}, {"id": 3, "name": "zebra"}]
    assert [(i["id"], i["width"], i["height"]) for i in gt["images"]] == [(1, 64, 48), (2, 32, 32)]
    plain = [a for a in gt["annotations"] if not a["iscrowd"]]
    crowd = [a for a in gt["annotations"] if a["iscrowd"]]
    _, target = ds[0]
    assert target["image_id"] == 1
    assert torch.equal(torch.tensor([xywh_to_xyxy(a["bbox"]) for a in plain]), target["boxes"])
    assert [a["category_id"] for a in plain] == target["labels"].tolist()
    assert len(crowd) == 1 and crowd[0]["id"] == 14 and crowd[0]["category_id"] == 1
    assert isinstance(crowd[0]["segmentation"]["counts"], str)
    json.dumps(gt)  # plain JSON: no numpy values, no bytes

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
    assert torch.equal(torch.from_numpy(coco.annToMask(plain[0])), target["masks"][0])

    # the targets as detections score AP 1; a confident detection on the crowd region is ignored, as in the
    # official evaluation, but is a false positive once the crowd region is gone
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in plain] + [{"image_id": 1, "category_id": 1, "bbox": crowd[0]["bbox"], "score": 1.0},
                               {"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.1}]
    assert _evaluate(gt, dets) == pytest.approx(1.0)
    no_crowd = {**gt, "annotations": plain + [{**crowd[0], "bbox": [0, 40, 1, 1], "iscrowd": 0, "area": 1}]}
    assert _evaluate(no_crowd, dets) < 0.9


def test_coco_bad_annotations_name_the_json_and_annotation(tmp_path):
    bad_cat = [{"id": 5, "image_id": 1, "category_id": 4, "bbox": [1, 1, 2, 2]}]
    with pytest.raises(ValueError, match=r"instances_train2017\.json, annotation 5: category_id 4 is not in the 3"):
        open_detection_data(make_coco(tmp_path / "a", bad_cat), "train")
    bad_box = [{"id": 6, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2]}]
    with pytest.raises(ValueError, match=r"annotation 6: bbox \[1, 1, 2\] is not 4 numbers"):
        open_detection_data(make_coco(tmp_path / "b", bad_box), "train")
    with pytest.raises(ValueError, match=r"annotation 11: category_id 7 \(cat\) is not in the training set's"):
        open_detection_data(make_coco(tmp_path / "c", COCO_ANNS, split="val2017"), "val", classes=["car", "zebra"])


def test_coco_layout_wins_and_images_are_found_beside_it(tmp_path):
    root = make_coco(tmp_path, COCO_ANNS[:1])
    (root / "train2017").rename(root / "images")  # root/images instead of root/train2017
    assert has_split(root, "train") and not has_split(root, "val")
    ds = open_detection_data(root, "train")
    assert ds.image_path(0) == root / "images" / "1.png" and not ds.with_masks and "masks" not in ds[0][1]


# ---------------------------------------------------------------------------------------------------------
# transforms and batching


def boxes_of_masks(target):
    return masks_to_boxes(target["masks"]) + torch.tensor([0.0, 0.0, 1.0, 1.0])  # pixel indices -> edges


def test_train_transform_flip_and_resize_keep_boxes_on_their_masks(tmp_path):
    # box lines with whole-pixel edges on 200 x 100: their box masks fill exactly the box
    make_yolo(tmp_path, {"a": "0 0.25 0.5 0.1 0.4\n1 0.8 0.25 0.3 0.3\n"})
    ds = open_detection_data(tmp_path, "train", masks=True)
    _, plain = ds[0]
    assert torch.equal(boxes_of_masks(plain), plain["boxes"])
    ds.transform = train_transform([200], max_size=1000, hflip=1.0)  # shorter side 100 -> 200: twice the size
    image, target = ds[0]
    assert image.shape == (3, 200, 400) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    expected = plain["boxes"] * 2
    expected = torch.stack([400 - expected[:, 2], expected[:, 1], 400 - expected[:, 0], expected[:, 3]], 1)
    assert torch.equal(target["boxes"], expected)
    assert torch.equal(boxes_of_masks(target), target["boxes"])


def test_train_transform_sizes_and_large_scale_jitter(tmp_path):
    make_yolo(tmp_path, {"a": "0 0.5 0.5 0.5 0.5\n1 0.1 0.1 0.02 0.02\n"}, size=(60, 40))
    ds = open_detection_data(tmp_path, "train", masks=True)
    sizes, max_size, seen = (40, 80, 120), 150, set()
    ds.transform = train_transform(sizes, max_size)
    for _ in range(20):
        image, target = ds[0]
        h, w = image.shape[-2:]
        assert max(h, w) <= max_size and (min(h, w) in sizes or max(h, w) == max_size)
        assert target["masks"].shape[-2:] == (h, w) and tuple(target["boxes"].canvas_size) == (h, w)
        seen.add((h, w))
    assert seen == {(40, 60), (80, 120), (100, 150)}  # 120 would make the longer side 180 > 150

    ds.transform = train_transform(sizes, max_size, lsj=True, lsj_range=(0.05, 2.0))
    kept = 0
    for _ in range(20):
        image, target = ds[0]
        n = len(target["boxes"])
        assert image.shape == (3, 120, 120) and target["masks"].shape == (n, 120, 120)
        assert len(target["labels"]) == n and n <= 2  # the sanitizer drops boxes with their labels and masks
        b = target["boxes"]
        assert (b[:, 2] - b[:, 0] >= 1).all() and (b[:, 3] - b[:, 1] >= 1).all()
        assert (b >= 0).all() and (b <= 120).all()
        kept += n
    assert 0 < kept < 40  # the small box falls below a pixel at small scales


def test_eval_transform_and_collate(tmp_path):
    make_yolo(tmp_path, {"a": "0 0.5 0.5 0.5 0.5\n", "b": ""})
    ds = open_detection_data(tmp_path, "train")
    raw_image, raw = ds[0]
    ds.transform = eval_transform()
    images, targets = collate([ds[0], ds[1]])
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 2
    assert images[0].dtype == torch.float32 and torch.allclose(images[0] * 255, raw_image.float())
    assert torch.equal(targets[0]["boxes"], raw["boxes"]) and targets[1]["boxes"].shape == (0, 4)


# ---------------------------------------------------------------------------------------------------------
# COCO128 (../shared/data/coco128): two YOLO label sets over one image folder


@pytest.mark.skipif(not COCO128.is_dir(), reason=f"{COCO128} is absent")
def test_coco128_opens_in_both_modes():
    boxes = open_detection_data(COCO128, "train")
    assert len(boxes) == 128 and len(boxes.classes) == 80 and boxes.classes[0] == "person"
    assert boxes.issues["missing_labels"] == boxes.issues["negatives"] == 2  # 250 and 508: no objects
    assert boxes.issues["orphan_labels"] == 2  # 656 and 659 have labels but no image
    assert boxes.source == "object_detection/labels" and boxes.category_ids == list(range(80))
    polys = open_detection_data(COCO128, "train", masks=True)
    assert polys.source == "instance_segmentation/labels" and len(polys.classes) == 80
    assert polys.category_ids[-1] == 90 and polys.issues["missing_labels"] == 28 and len(polys) == 100
    assert polys.issues["box_masks"] == 0  # every line there is a polygon
    val = open_detection_data(COCO128, "val", masks=True, classes=polys.classes)
    assert val.category_ids == polys.category_ids
    image, target = polys[0]
    n, h, w = target["masks"].shape
    assert (h, w) == tuple(image.shape[-2:]) and n == len(target["boxes"]) > 0
    assert ((boxes_of_masks(target) - target["boxes"]).abs() <= 1.5).all()  # polygon boxes hug their masks
    print("\nCOCO128 train boxes:", boxes.summary(), "\nCOCO128 train masks:", polys.summary(),
          "\nCOCO128 val masks:", val.summary())
