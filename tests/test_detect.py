"""The detection task: COCO metrics against hand computations and torchmetrics, COCO results, training /
evaluation / prediction through the CLI on a synthetic YOLO folder, and (when ../shared is present) COCO128."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED
from swinkit.tasks import detect as D

COCO128 = SHARED / "data" / "coco128"


def gt_dict(boxes_per_image, sizes=None, categories=2):
    """A COCO ground truth: boxes [x, y, w, h, category] per image, 100x100 images unless sizes say otherwise."""
    images, anns = [], []
    for i, boxes in enumerate(boxes_per_image, 1):
        h, w = (sizes or {}).get(i, (100, 100))
        images.append({"id": i, "width": w, "height": h, "file_name": f"{i}.jpg"})
        for x, y, bw, bh, c in boxes:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": [x, y, bw, bh],
                         "area": bw * bh, "iscrowd": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": k, "name": str(k)} for k in range(1, categories + 1)]}


def test_metrics_by_hand():
    """One object, one detection of IoU 0.6 (a 40x50 box against 40x30 inside it): a true positive at IoU 0.50,
    0.55, 0.60 and a miss above, so AP = 3/10 over the ten thresholds, AP50 = 1, AP75 = 0. The box area 1200 is
    'medium' (32^2..96^2)."""
    gt = gt_dict([[(10, 10, 40, 30, 1)]])
    det = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 50], "score": 0.9}]
    m = D.coco_metrics(gt, det)
    assert (m["map"], m["map50"], m["map75"]) == pytest.approx((0.3, 1.0, 0.0))
    assert m["map_medium"] == pytest.approx(0.3) and math.isnan(m["map_small"]) and math.isnan(m["map_large"])
    # a false positive of higher score in front of it halves the precision at recall 1: AP50 = 0.5
    det2 = det + [{"image_id": 1, "category_id": 1, "bbox": [60, 60, 20, 20], "score": 0.95}]
    assert D.coco_metrics(gt, det2)["map50"] == pytest.approx(0.5, abs=0.01)
    # a second class that is never detected averages in as 0; no detections at all is 0, not an error
    gt2 = gt_dict([[(10, 10, 40, 30, 1), (50, 50, 20, 20, 2)]])
    assert D.coco_metrics(gt2, det)["map50"] == pytest.approx(0.5)
    assert D.coco_metrics(gt2, [])["map"] == 0.0


def test_metrics_equal_torchmetrics_on_random_boxes():
    from torchmetrics.detection import MeanAveragePrecision

    g = torch.Generator().manual_seed(0)
    boxes = [[(*(torch.rand(2, generator=g) * 60).tolist(), *(10 + torch.rand(2, generator=g) * 40).tolist(),
               int(torch.randint(1, 4, (1,), generator=g))) for _ in range(5)] for _ in range(3)]
    gt = gt_dict(boxes, categories=3)
    dets, preds, targets = [], [], []
    for i, bs in enumerate(boxes, 1):
        t = torch.tensor([b[:4] for b in bs])
        noisy = t + torch.randn(t.shape, generator=g) * 4
        scores, labels = torch.rand(len(bs), generator=g), torch.tensor([b[4] for b in bs])
        xyxy = torch.cat([noisy[:, :2], noisy[:, :2] + noisy[:, 2:].clamp(min=1)], 1)
        dets += D.to_coco_results({"boxes": xyxy, "labels": labels, "scores": scores}, i)
        preds.append({"boxes": torch.tensor([d["bbox"] for d in dets if d["image_id"] == i]), "scores": scores,
                      "labels": labels})
        targets.append({"boxes": t, "labels": labels})
    ref = MeanAveragePrecision(box_format="xywh", backend="pycocotools")
    ref.update(preds, targets)
    r = ref.compute()
    m = D.coco_metrics(gt, dets)
    for ours, theirs in (("map", "map"), ("map50", "map_50"), ("map75", "map_75"), ("mar_100", "mar_100")):
        assert m[ours] == pytest.approx(r[theirs].item(), abs=1e-6)


def test_results_carry_masks_as_rle_and_boxes_as_xywh():
    from pycocotools import mask as mask_utils

    masks = torch.zeros(2, 1, 20, 30)
    masks[0, 0, 2:8, 3:9] = 0.9
    masks[1, 0, 10:20, 0:30] = 0.7
    masks[1, 0, 0, 0] = 0.4  # below the 0.5 threshold
    out = {"boxes": torch.tensor([[3.0, 2, 9, 8], [0, 10, 30, 20]]), "labels": torch.tensor([1, 2]),
           "scores": torch.tensor([0.8, 0.6]), "masks": masks}
    rows = D.to_coco_results(out, image_id=7)
    assert [r["bbox"] for r in rows] == [[3.0, 2.0, 6.0, 6.0], [0.0, 10.0, 30.0, 10.0]]
    assert [r["category_id"] for r in rows] == [1, 2] and rows[0]["image_id"] == 7
    for r, m in zip(rows, masks):
        assert np.array_equal(mask_utils.decode(r["segmentation"]), (m[0] > 0.5).numpy().astype(np.uint8))
    gt = gt_dict([[(3, 2, 6, 6, 1), (0, 10, 30, 10, 2)]], sizes={1: (20, 30)})
    for a in gt["annotations"]:  # the same regions as polygons
        x, y, w, h = a["bbox"]
        a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    for r in rows:
        r["image_id"] = 1
    m = D.detection_metrics(gt, rows, masks=True)
    assert (m["map50"], m["mask_map50"]) == pytest.approx((1.0, 1.0))


# ----------------------------------------------------------------------------------------------------------
# the task end to end on a synthetic YOLO folder


def yolo_folder(root, n_train=4, n_val=2, polygons=True):
    """Images of a bright rectangle (class 0) and a dark square (class 1) on grey, with YOLO labels."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    (root / "data.yaml").write_text("names:\n  0: bright\n  1: dark\n")
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            h, w = 96 + 8 * i, 128
            img = np.full((h, w, 3), 128, np.uint8)
            x0, y0 = rng.integers(4, 40), rng.integers(4, 30)
            img[y0:y0 + 40, x0:x0 + 50] = 250
            img[60:84, 90:114] = 10
            Image.fromarray(img).save(root / "images" / split / f"{split}{i}.jpg")

            def line(c, x, y, bw, bh):
                if polygons:
                    pts = [x, y, x + bw, y, x + bw, y + bh, x, y + bh]
                    return f"{c} " + " ".join(f"{v / (w if k % 2 == 0 else h):.6f}" for k, v in enumerate(pts))
                return f"{c} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}"

            (root / "labels" / split / f"{split}{i}.txt").write_text(
                line(0, x0, y0, 50, 40) + "\n" + line(1, 90, 60, 24, 24) + "\n")
    return root


TINY = ["--embed-dim", "16", "--depths", "1", "1", "2", "1", "--num-heads", "1", "2", "4", "8", "--window-size", "4",
        "--img-size", "96", "--batch-size", "2", "--threads", "1", "--recipe", "cpu", "--proposals", "100", "50",
        "--roi-batch", "64", "--detections-per-img", "20"]


@pytest.mark.parametrize("model", ["maskrcnn_swin_t", "fcos_swin_t"])
def test_train_eval_predict_from_the_cli(tmp_path, capsys, model):
    from swinkit.cli import main

    data = yolo_folder(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", "--task", "detect", "--data", str(data), "--model", model, "--epochs", "2", "--out",
                 str(run), *TINY]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["task"] == "detect" and summary["epochs"] == 2
    ck = torch.load(run / "best.pt", weights_only=True)
    assert ck["class_names"] == ["bright", "dark"] and ck["config"]["detector"] == model.split("_")[0]
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--data", str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    keys = ["map", "map50", "map75"] + (["mask_map", "mask_map50"] if model.startswith("mask") else [])
    assert all(0.0 <= result[k] <= 1.0 for k in keys) and result["num_images"] == 2
    detections = json.loads((run / "detections_val.json").read_text())
    assert len(detections) == result["num_detections"]
    assert {d["image_id"] for d in detections} <= {1, 2}
    # the metrics are those of the written detections against the data's ground truth
    from swinkit.tasks.detect_data import open_detection_data

    gt = open_detection_data(data, "val", masks=model.startswith("mask"), classes=["bright", "dark"]).coco_gt()
    again = D.detection_metrics(gt, detections, model.startswith("mask"))
    assert again["map"] == pytest.approx(result["map"], abs=1e-9)
    out = tmp_path / "pred"
    img = data / "images" / "val" / "val0.jpg"
    assert main(["predict", "--checkpoint", str(run), str(img), "--out", str(out), "--score-thr", "0.0",
                 "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["size"] == [96, 128] and Image.open(out / "val0.jpg").size == (128, 96)
    assert json.loads((out / "val0.json").read_text()) == record
    assert all(d["label"] in ("bright", "dark") and 0 <= d["score"] <= 1 for d in record["detections"])
    assert main(["predict", "--checkpoint", str(run), str(tmp_path / "missing.jpg"), "--out", str(out)]) == 1


def test_task_errors_say_what_to_do(tmp_path):
    from swinkit.tasks.base import Env, TrainSettings

    def task(**flat):
        s = TrainSettings.from_flat({"task": "detect", **flat}, D.DetectSettings)
        return D.DetectTask(s, Env(torch.device("cpu")))

    with pytest.raises(ValueError, match="--task detect needs --data"):
        task().build_datasets()
    data = yolo_folder(tmp_path / "d", n_val=1)
    import shutil

    shutil.rmtree(data / "images" / "val")
    shutil.rmtree(data / "labels" / "val")
    with pytest.raises(ValueError, match="--val-split train"):
        task(data=str(data)).build_datasets()
    with pytest.raises(ValueError, match="unknown detection model 'yolo'"):
        task(data=str(data), model="yolo").build_datasets()
    t = task(data=str(data), val_split="train", img_size=320, multiscale=True)
    assert t.train_sizes() == [192, 224, 256, 288, 320] and t.max_size == 533


def test_training_resizes_in_the_data_and_evaluation_in_the_model(tmp_path):
    """Training images arrive at the data pipeline's size and the detector does not resize them again; at
    evaluation the detector resizes to img_size and maps the boxes back to the original pixels."""
    from swinkit.tasks.base import Env, TrainSettings

    data = yolo_folder(tmp_path / "d")
    flat = {"task": "detect", "data": str(data), "model": "fasterrcnn_swin_t", "img_size": 64, "embed_dim": 16,
            "depths": [1, 1, 2, 1], "num_heads": [1, 2, 4, 8], "window_size": 4}
    task = D.DetectTask(TrainSettings.from_flat(flat, D.DetectSettings), Env(torch.device("cpu")))
    train, val = task.build_datasets()
    model = task.build_model().train()
    img, target = train[0]
    assert min(img.shape[-2:]) == 64
    batch, targets = model.transform([img], [target])
    assert batch.image_sizes[0] == tuple(img.shape[-2:])
    torch.testing.assert_close(targets[0]["boxes"], target["boxes"].as_subclass(torch.Tensor))
    model.eval()
    vimg, _ = val[1]
    assert tuple(vimg.shape[-2:]) == (104, 128)
    batch, _ = model.transform([vimg])
    assert min(batch.image_sizes[0]) == 64


@pytest.mark.skipif(not COCO128.is_dir(), reason="../shared/data/coco128 is absent")
@pytest.mark.parametrize("model", ["maskrcnn_swin_t", "fasterrcnn_swin_t", "retinanet_swin_t", "fcos_swin_t"])
def test_every_detector_trains_evaluates_and_predicts_on_coco128(tmp_path, capsys, model):
    """A few steps on COCO128 at 64 px with a tiny backbone: the data reads, the detector trains and COCO-evaluates
    on val2017, and predicts an image."""
    from swinkit.cli import main

    run = tmp_path / "run"
    tiny = [a if a != "96" else "64" for a in TINY]
    assert main(["train", "--task", "detect", "--data", str(COCO128), "--model", model, "--epochs", "1", "--out",
                 str(run), *tiny, "--batch-size", "16"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and 0.0 <= summary["val_map"] <= 1.0
    ck = torch.load(run / "best.pt", weights_only=True)
    assert len(ck["class_names"]) == 80 and ck["class_names"][0] == "person"
    img = sorted((COCO128 / "images" / "val2017").iterdir())[0]
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run), str(img), "--out", str(tmp_path / "p"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["image"] == str(img) and (tmp_path / "p" / f"{img.stem}.jpg").is_file()


def test_detection_files_load_through_load_model_eval_and_pretrained(tmp_path):
    """A saved detector comes back from load_model, is routed to the detect task by its weights' layout, and
    initialises training with --pretrained (a different class count: the class-dependent head tensors restart)."""
    import swinkit
    from conftest import randomize_
    from swinkit.inference.load import task_of
    from swinkit.tasks.base import Env, TrainSettings

    arch = dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=4)
    det = randomize_(swinkit.create_detector("fasterrcnn", num_classes=3, **arch), 0.02)
    swinkit.save_detector(det, tmp_path / "det.safetensors", ["a", "b", "c"])
    back = swinkit.load_model(tmp_path / "det.safetensors")
    assert type(back) is type(det) and back.class_names == ["a", "b", "c"]
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in det.state_dict().items())
    assert task_of(tmp_path / "det.safetensors").name == "detect"
    data = yolo_folder(tmp_path / "data")
    flat = {"task": "detect", "data": str(data), "model": "fasterrcnn_swin_t", "pretrained": str(tmp_path /
            "det.safetensors"), "img_size": 64, **{k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()}}
    task = D.DetectTask(TrainSettings.from_flat(flat, D.DetectSettings), Env(torch.device("cpu")))
    task.build_datasets()
    with pytest.warns(UserWarning, match="class-dependent head tensors start from their initialisation"):
        model = task.build_model()
    assert model.roi_heads.box_predictor.cls_score.out_features == 3  # 2 classes + background
    own = model.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in det.state_dict().items() if k.startswith("backbone."))
    assert torch.equal(own["roi_heads.box_head.fc6.weight"], det.state_dict()["roi_heads.box_head.fc6.weight"])
    assert model.training and model.transform._skip_resize


def test_inspect_and_convert_detection_files(tmp_path, capsys):
    """`swinkit inspect` names the detector; `swinkit convert --to mmdet` writes mmdet's backbone + neck keys, which
    read back to the same tensors."""
    import swinkit
    from swinkit.cli import main
    from swinkit.io.formats.detection import detection_to_swinkit

    det = swinkit.create_detector("retinanet", num_classes=2, embed_dim=16, depths=(1, 1, 2, 1),
                                  num_heads=(1, 2, 4, 8), window_size=4)
    swinkit.save_detector(det, tmp_path / "det.safetensors", ["a", "b"])
    assert main(["inspect", str(tmp_path / "det.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "format:   swinkit (retinanet detector)" in out and "classes:  a, b" in out
    assert main(["convert", str(tmp_path / "det.safetensors"), str(tmp_path / "mm.pth"), "--to", "mmdet"]) == 0
    mm = torch.load(tmp_path / "mm.pth", weights_only=True)
    assert mm["meta"]["CLASSES"] == ["a", "b"]
    assert {k.split(".")[0] for k in mm["state_dict"]} == {"backbone", "neck"}
    assert "neck.fpn_convs.3.conv.weight" in mm["state_dict"]  # P6 after the 3 lateral levels
    _, back, _ = detection_to_swinkit(mm["state_dict"])
    own = det.state_dict()
    assert back and all(torch.equal(v, own[k]) for k, v in back.items())


def test_repeat_passes_over_the_training_images_per_epoch(tmp_path):
    import pickle

    from swinkit.tasks.base import Env, TrainSettings

    data = yolo_folder(tmp_path / "d", n_train=3)
    flat = {"task": "detect", "data": str(data), "repeat": 4, "img_size": 64}
    task = D.DetectTask(TrainSettings.from_flat(flat, D.DetectSettings), Env(torch.device("cpu")))
    train, _ = task.build_datasets()
    assert len(train) == 12 and train.classes == ["bright", "dark"]
    torch.manual_seed(0)
    a = train[1][1]["boxes"]
    torch.manual_seed(0)
    assert torch.equal(a, train[7][1]["boxes"])  # the same image, the same draw
    assert len(pickle.loads(pickle.dumps(train))) == 12  # data-loading workers get a copy
    assert "x 4 per epoch" in task.describe_data(train, train.ds)
    with pytest.raises(ValueError, match="--repeat must be >= 1"):
        D.DetectTask(TrainSettings.from_flat({**flat, "repeat": 0}, D.DetectSettings),
                     Env(torch.device("cpu"))).build_datasets()
