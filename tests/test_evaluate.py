"""`swinkit eval` and `swinkit predict` against a hand-made training checkpoint: metrics equal a direct
computation, the JSON has its fields, the confusion matrix adds up, errors are clear."""
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

import swinkit
from swinkit.cli import main
from swinkit.data import ImageFolderDataset, eval_transform, load_image
from swinkit.inference.load import load_trained
from swinkit.tasks.classify import evaluate

CLASSES = ["cat", "dog", "owl"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A run directory whose best.pt follows the training-checkpoint contract (random weights)."""
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = swinkit.create_model("swin_t", img_size=16, patch_size=2, window_size=4, embed_dim=16, depths=(2, 1),
                                 num_heads=(1, 2), num_classes=3)
    data = {"img_size": 16, "crop_pct": 1.0, "mean": [0.5] * 3, "std": [0.25] * 3}
    torch.save({"model": model.state_dict(), "config": model.cfg.to_dict(), "class_names": CLASSES, "data": data},
               run / "best.pt")
    return run


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """train/ and val/ trees; val holds 4 random 20x20 images per class."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def load_for_inference(run):
    """(model, class names, eval data config) of a run directory or checkpoint."""
    loaded = load_trained(run)
    assert loaded.task.name == "classify"
    return loaded.model, loaded.meta["class_names"], loaded.meta["data"]


def reference(run, folder):
    """Logits, labels computed directly: the checkpoint's model on the eval transform of every image."""
    model, names, cfg = load_for_inference(run)
    tf = eval_transform(cfg["img_size"], cfg["crop_pct"], cfg["mean"], cfg["std"])
    files = sorted(folder.glob("*/*.png"))
    x = torch.stack([tf(load_image(f)) for f in files])
    y = torch.tensor([names.index(f.parent.name) for f in files])
    with torch.no_grad():
        return model(x), y


def test_eval_json_matches_a_direct_computation(checkpoint, images, capsys):
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(images), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    logits, y = reference(checkpoint, images / "val")
    assert result["num_images"] == 12 and result["num_classes"] == 3 and result["data"] == str(images / "val")
    assert result["top1"] == pytest.approx(100 * (logits.argmax(1) == y).float().mean().item())
    assert result["top5"] == 100.0  # 3 classes: top-5 covers them all
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    png = checkpoint / "confusion_matrix.png"
    assert result["confusion_png"] == str(png) and png.read_bytes()[:4] == b"\x89PNG"


def test_eval_text_output_and_confusion_path(checkpoint, images, tmp_path, capsys):
    png = tmp_path / "cm.png"
    assert main(["eval", "--checkpoint", str(checkpoint / "best.pt"), "--data", str(images / "val"),
                 "--confusion", str(png)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"top-1 \d+\.\d\d%  top-5 100\.00%  loss \d+\.\d{4}", out)
    assert f"confusion matrix: {png}" in out and png.exists()


def test_confusion_matrix_adds_up(checkpoint, images):
    model, names, cfg = load_for_inference(checkpoint)
    ds = ImageFolderDataset(images / "val", eval_transform(16, 1.0, cfg["mean"], cfg["std"]), classes=names)
    m = evaluate(model, DataLoader(ds, batch_size=5), torch.device("cpu"), num_classes=3)
    cm = m["confusion"]
    assert cm.sum() == 12 and cm.sum(1).tolist() == [4, 4, 4]  # rows: true classes
    assert 100 * cm.trace().item() / 12 == pytest.approx(m["top1"])


def test_eval_errors_are_clear(checkpoint, images, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path), "--data", str(images)]) == 1
    assert (f"error: {tmp_path} is a folder without best.pt: expected a run directory written by `swinkit train` "
            "(or pass the checkpoint file itself)") in capsys.readouterr().err
    (tmp_path / "val" / "emu").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "emu" / "0.png")
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(tmp_path)]) == 1
    assert (f"has class folders that checkpoint {checkpoint} does not have: ['emu']; expected only its classes "
            "['cat', 'dog', 'owl']") in capsys.readouterr().err


def test_predict_gives_sorted_probabilities_of_the_checkpoint_classes(checkpoint, images, tmp_path, capsys):
    files = sorted((images / "val").glob("*/*.png"))[:3]
    assert main(["predict", "--checkpoint", str(checkpoint), *map(str, files), "--topk", "3", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    model, names, cfg = load_for_inference(checkpoint)
    tf = eval_transform(16, 1.0, cfg["mean"], cfg["std"])
    with torch.no_grad():
        probs = model(torch.stack([tf(load_image(f)) for f in files])).softmax(1)
    assert [r["image"] for r in rows] == list(map(str, files))
    for row, p in zip(rows, probs):
        preds = row["predictions"]
        assert [q["prob"] for q in preds] == sorted((q["prob"] for q in preds), reverse=True)
        assert sum(q["prob"] for q in preds) == pytest.approx(1.0, abs=1e-5)
        for q in preds:
            assert q["class"] == CLASSES[q["index"]] and q["prob"] == pytest.approx(p[q["index"]].item(), abs=1e-6)


def test_predict_text_top1_and_unreadable_files(checkpoint, images, tmp_path, capsys):
    good = sorted((images / "val").glob("*/*.png"))[0]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    assert main(["predict", "--checkpoint", str(checkpoint), str(bad), str(good), "--topk", "1"]) == 1
    out, err = capsys.readouterr()
    assert re.fullmatch(rf"{re.escape(str(good))}: (cat|dog|owl) \d+\.\d%\n", out)
    assert f"error: cannot read {bad}:" in err


def test_foreign_files_go_to_the_task_of_their_weights(tmp_path):
    """A checkpoint in another format (an official or torchvision state dict) reaches the task its layout belongs
    to: eval / predict of an official SwinIR or Video Swin file do not fall to the classifier."""
    from swinkit.inference.load import task_of

    video = swinkit.create_video_model("video_swin_t", embed_dim=16, depths=(1, 1), num_heads=(1, 2), num_classes=3)
    restore = swinkit.create_restoration_model("swinir_lightweight_x2", embed_dim=12, depths=(2,), num_heads=(2,))
    image = swinkit.create_model("swin_t", embed_dim=16, depths=(1, 1), num_heads=(1, 2), num_classes=3)
    for name, model, task in (("video", video, "video"), ("swinir", restore, "restore"), ("image", image, "classify")):
        torch.save({"params" if name == "swinir" else "model": model.state_dict()}, tmp_path / f"{name}.pth")
        assert task_of(tmp_path / f"{name}.pth").name == task
    loaded = load_trained(tmp_path / "swinir.pth")
    assert loaded.task.name == "restore" and loaded.model.cfg.upscale == 2


def test_dtype_bfloat16_runs_the_model_in_bf16_for_eval_and_predict(checkpoint, images, capsys):
    """--dtype bfloat16: bf16 weights and inputs (not autocast), outputs back in float32; eval's loss is the bf16
    model's, and predict's probabilities are within bf16's rounding of float32's."""
    from swinkit.inference.load import cast_for_inference

    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(images), "--json", "--dtype",
                 "bfloat16"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model, names, cfg = load_for_inference(checkpoint)
    tf = eval_transform(cfg["img_size"], cfg["crop_pct"], cfg["mean"], cfg["std"])
    files = sorted((images / "val").glob("*/*.png"))
    x = torch.stack([tf(load_image(f)) for f in files])
    y = torch.tensor([names.index(f.parent.name) for f in files])
    with torch.no_grad():
        fp32 = model(x)  # before the cast, which rounds the weights in place
        bf16 = model.to(torch.bfloat16)(x.to(torch.bfloat16)).float()
    # eval runs this bf16 model on the same 12 images in one batch (--batch-size 64), so its loss is this one up to
    # float32's rounding of the mean (measured 4e-8 of it); rel 1e-3 would even allow every logit one bf16 step
    # apart (2^-8 of their scale, 0.1; a cross-entropy moves by at most twice its largest logit change: 7e-4)
    assert result["loss"] == pytest.approx(F.cross_entropy(bf16, y).item(), rel=1e-3)
    # really bf16: bf16 moves this loss by 1.7e-5 of itself (measured; most of it the weights' rounding, which no
    # CPU changes), 17x the float32 rounding this tolerance stands for
    assert result["loss"] != pytest.approx(F.cross_entropy(fp32, y).item(), rel=1e-6)

    loaded = load_trained(checkpoint)
    cast_for_inference(loaded, "bfloat16")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        out = loaded.model(x)  # float32 in, float32 out: the hooks cast
    # bf16 keeps 8 significant bits: the weights, the input and every op's output are rounded by up to u = 2^-9 of
    # their scale. This model's 3 blocks, embedding, merging and head make ~40 such roundings, whose errors of either
    # sign add to about sqrt(40) u = 1.2% of the logits' scale; 5% allows 4x that on any CPU (accumulating in
    # float32, native bf16 or emulated; measured 0.46% on an AMD EPYC, emulated, vectorised kernels or not)
    scale = fp32.abs().max()
    assert out.dtype == torch.float32 and (out - fp32).abs().max() < 0.05 * scale

    assert main(["predict", "--checkpoint", str(checkpoint), str(files[0]), "--json", "--dtype", "bfloat16"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["predictions"]
    p32 = fp32[0].softmax(0)
    # softmax moves no probability by more than half the largest logit change (its Jacobian's rows have 1-norm
    # 2 p (1 - p) <= 1/2): the logits' 5% of their scale (0.1 here) becomes 2.5e-3 (measured 8e-5)
    assert all(abs(p["prob"] - p32[p["index"]].item()) <= 0.05 * scale / 2 for p in got)


def test_dtype_errors(checkpoint):
    from types import SimpleNamespace

    from swinkit.inference.load import cast_for_inference

    loaded = load_trained(checkpoint)
    with pytest.raises(ValueError, match=r"^unknown --dtype 'float16': expected one of float32, bfloat16$"):
        cast_for_inference(loaded, "float16")
    detector = SimpleNamespace(task=SimpleNamespace(name="detect"), model=loaded.model)
    with pytest.raises(ValueError, match=r"^--dtype bfloat16 does not apply to detectors .* use --amp bf16"):
        cast_for_inference(detector, "bfloat16")
