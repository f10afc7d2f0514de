"""The panoptic task (Mask2Former on a swinkit Swin): transformers' post-processing and the PQ metric give exactly 1
for a prediction that is the ground truth and less for a wrong one; `swinkit train / eval / predict --task
panoptic` on a COCO panoptic folder and, with --semantic, on label maps, as a user runs them."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("transformers")
pytest.importorskip("torchmetrics")

from swinkit.cli import main  # noqa: E402
from swinkit.data.panoptic import PanopticDataset, rgb2id  # noqa: E402
from swinkit.tasks.panoptic import MaskTargets, collate, evaluate  # noqa: E402
from swinkit.data.segmentation import eval_transform  # noqa: E402

from test_panoptic_data import make_dataset  # noqa: E402

OPTS = {"threshold": 0.8, "mask_threshold": 0.5, "overlap": 0.8}
TINY = ["--embed-dim", "16", "--depths", "1", "1", "1", "1", "--num-heads", "1", "2", "4", "8", "--window-size", "4",
        "--hidden-dim", "32", "--num-queries", "6", "--encoder-layers", "1", "--decoder-layers", "2",
        "--train-num-points", "64", "--crop-size", "64", "--batch-size", "2", "--epochs", "1", "--repeat", "1",
        "--threads", "2"]


class Oracle(torch.nn.Module):
    """Mask2Former's outputs rebuilt from the labels it is given: one confident query per target segment (its class
    `relabel`ed), mask logits +-20 at the input's size, and the other queries (two at least) of no object."""

    def __init__(self, relabel=lambda c: c):
        super().__init__()
        self.relabel = relabel

    def forward(self, pixel_values, mask_labels, class_labels):
        c, q = 3, max(len(k) for k in class_labels) + 2
        logits = torch.full((len(class_labels), q, c + 1), -20.0)
        logits[..., c] = 20.0  # no object, unless a target segment takes the query
        mask_logits = torch.full((len(class_labels), q, *pixel_values.shape[-2:]), -20.0)
        for b, (masks, classes) in enumerate(zip(mask_labels, class_labels)):
            for k, (m, label) in enumerate(zip(masks, classes.tolist())):
                logits[b, k, c], logits[b, k, self.relabel(label)] = -20.0, 20.0
                mask_logits[b, k] = 20.0 * (2 * m - 1)
        return SimpleNamespace(loss=torch.tensor(0.0), class_queries_logits=logits, masks_queries_logits=mask_logits)


@pytest.mark.parametrize("relabel, expected", [(lambda c: c, 1.0), (lambda c: {0: 1, 1: 0}.get(c, c), 0.0)],
                         ids=["truth", "things-swapped"])
def test_pq_of_the_ground_truth_is_one(tmp_path, relabel, expected):
    """The chain a trained model's outputs go through (post-processing, stuff fusion, crowd pixels void, the metric)
    scores a prediction equal to the ground truth PQ = 1 in every group; person and car swapped score 0 on things and
    leave stuff at 1."""
    make_dataset(tmp_path)
    ds = MaskTargets(PanopticDataset(tmp_path, "val"), eval_transform())
    labels = {"names": ["person", "car", "sky"], "is_thing": [True, True, False]}
    loader = torch.utils.data.DataLoader(ds, 2, collate_fn=collate)
    m = evaluate(Oracle(relabel), loader, labels, False, torch.device("cpu"), OPTS)
    assert m["num_images"] == 2
    assert m["pq_th"] == expected and m["pq_st"] == 1.0
    assert m["pq"] == pytest.approx((2 * expected + 1) / 3, abs=1e-12)


def test_train_eval_predict_panoptic_from_the_command_line(tmp_path, capsys):
    data, run, out = tmp_path / "data", tmp_path / "run", tmp_path / "pred"
    make_dataset(data, "train2017")
    make_dataset(data, "val2017")
    assert main(["train", "--task", "panoptic", "--data", str(data), "--out", str(run), "--recipe", "cpu",
                 *TINY]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert "pq" in json.dumps(summary)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--data", str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"pq", "sq", "rq", "pq_th", "pq_st"} <= set(result) and result["num_images"] == 2
    images = [str(data / "val2017" / "0.png"), str(data / "val2017" / "1.png")]
    assert main(["predict", "--checkpoint", str(run), *images, "--out", str(out), "--threshold", "0"]) == 0
    for stem in ("0", "1"):
        record = json.loads((out / f"{stem}.json").read_text())
        ids = rgb2id(np.asarray(Image.open(out / f"{stem}.png").convert("RGB")))
        assert ids.shape == (24, 32) and (out / f"{stem}_overlay.jpg").is_file()
        listed = {s["id"]: s for s in record["segments_info"]}
        assert set(np.unique(ids).tolist()) - {0} == set(listed)  # every PNG id is a listed segment, and back
        for i, s in listed.items():
            assert s["area"] == int((ids == i).sum()) and s["category"] in ("person", "car", "sky")
    assert main(["predict", "--checkpoint", str(run), images[0], "--out", str(out)]) != 0  # outputs exist


def test_semantic_mode_reports_miou(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for d in ("images", "labels"):
            (tmp_path / split / d).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(tmp_path / split / "images" /
                                                                                  f"{i}.png")
            label = np.zeros((24, 32), np.uint8)
            label[:, 16:] = 1
            label[:4] = 2
            Image.fromarray(label).save(tmp_path / split / "labels" / f"{i}.png")
    run = tmp_path / "run"
    assert main(["train", "--task", "panoptic", "--semantic", "--data", str(tmp_path), "--out", str(run),
                 "--recipe", "cpu", *TINY]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--data", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= result["miou"] <= 1 and set(result["per_class_iou"]) == {"0", "1", "2"}


def test_bad_settings_say_what_to_do(tmp_path, capsys):
    assert main(["train", "--task", "panoptic"]) != 0
    assert "needs --data" in capsys.readouterr().err
    make_dataset(tmp_path, "val2017")
    assert main(["train", "--task", "panoptic", "--data", str(tmp_path), "--out", str(tmp_path / "r"), *TINY]) != 0
    assert "no train split" in capsys.readouterr().err
    assert main(["train", "--task", "panoptic", "--data", str(tmp_path), *TINY, "--crop-size", "32"]) != 0
    assert "at least 64 px" in capsys.readouterr().err
