"""`swinkit predict`: the task comes from the checkpoint (a training checkpoint, or a file in another format for
the default task), the task's own flags, and clear errors."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import swinkit
from swinkit.cli import main
from swinkit.inference.load import load_trained

CLASSES = ["ant", "bee", "cow"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return swinkit.create_model("swin_t", img_size=16, patch_size=2, window_size=4, embed_dim=16, depths=(2, 1),
                                num_heads=(1, 2), num_classes=3).eval()


@pytest.fixture(scope="module")
def run(model, tmp_path_factory):
    """A best.pt as `swinkit train` writes it (task, config, class names, eval transform)."""
    root = tmp_path_factory.mktemp("run")
    data = {"img_size": 16, "crop_pct": 0.875, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    torch.save({"task": "classify", "model": model.state_dict(), "config": model.cfg.to_dict(), "class_names": CLASSES,
                "data": data}, root / "best.pt")
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(root / f"{i}.png")
        paths.append(str(root / f"{i}.png"))
    return paths


def predictions(capsys, *argv) -> list[dict]:
    assert main(["predict", *argv, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_a_foreign_format_file_predicts_like_the_training_checkpoint(model, run, images, tmp_path, capsys):
    """The same weights saved by `save_model` (safetensors + config JSON, no task) go to the default task and give
    the same probabilities, to float precision."""
    swinkit.save_model(model, tmp_path / "m.safetensors", class_names=CLASSES)
    assert load_trained(tmp_path / "m.safetensors").task.name == load_trained(run).task.name == "classify"
    ours = predictions(capsys, "--checkpoint", str(run), *images, "--topk", "3")
    foreign = predictions(capsys, "--checkpoint", str(tmp_path / "m.safetensors"), *images, "--topk", "3")
    assert [r["image"] for r in ours] == images == [r["image"] for r in foreign]
    for a, b in zip(ours, foreign):
        assert [p["class"] for p in a["predictions"]] == [p["class"] for p in b["predictions"]]
        assert [p["prob"] for p in a["predictions"]] == pytest.approx([p["prob"] for p in b["predictions"]], abs=1e-6)


def test_the_checkpoints_task_brings_its_flags(run, capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--checkpoint", str(run), "--help"])
    out = capsys.readouterr().out
    assert "classify task (from the checkpoint):" in out and "--topk TOPK" in out


def test_bad_topk_and_missing_checkpoint_are_clear_errors(run, images, tmp_path, capsys):
    assert main(["predict", "--checkpoint", str(run), images[0], "--topk", "0"]) == 1
    assert "error: --topk must be >= 1, got 0" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(tmp_path / "nope.pt"), images[0]]) == 1
    assert (f"error: checkpoint {tmp_path / 'nope.pt'} does not exist: pass a run directory or a checkpoint file"
            in capsys.readouterr().err)
