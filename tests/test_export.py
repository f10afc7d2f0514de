"""swinkit export: ONNX / pt2 / TorchScript files equal to the eager model at several sizes and batch sizes, their
preprocessing metadata, and predict_onnx (numpy + PIL + onnxruntime, no torch) equal to the torch prediction."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import swinkit
from swinkit import SegmentationConfig, SegmentationModel, SwinConfig, SwinIR, SwinIRConfig, SwinTransformer
from swinkit import VideoSwinConfig, VideoSwinTransformer
from swinkit.config import SwinUNetConfig
from swinkit.models.unet import SwinUNet
from swinkit.tools import export as E

from conftest import randomize_

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
TOL = 1e-4


def classifier(version: int = 1) -> SwinTransformer:
    cfg = SwinConfig(embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4, num_classes=5, img_size=32,
                     drop_path_rate=0.0, version=version)
    return randomize_(SwinTransformer(cfg)).eval()


def segmenter() -> SegmentationModel:
    backbone = SwinConfig(embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4, window_mode="pad",
                          drop_path_rate=0.0)
    cfg = SegmentationConfig(backbone=backbone, num_classes=3, channels=16, aux_head=False, aux_in_index=1,
                             pool_scales=(1, 2))
    model = randomize_(SegmentationModel(cfg), std=0.2)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def restorer() -> SwinIR:
    cfg = SwinIRConfig(img_size=16, window_size=4, embed_dim=16, depths=(2,), num_heads=(2,), num_feat=8, upscale=2)
    return randomize_(SwinIR(cfg), std=0.05).eval()


def ort_diff(path: Path, model, x: torch.Tensor) -> float:
    """Relative max |onnxruntime - eager| (relative to max(1, max |eager|))."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert got.shape == ref.shape
    return float(np.abs(got - ref).max() / max(1.0, np.abs(ref).max()))


def check_sizes(path: Path, info: dict, model, other: tuple[int, int]) -> None:
    """onnxruntime equals eager at two batch sizes at the export size, and at `other` when H, W are dynamic;
    a fixed-size file names its size in the metadata and refuses `other` with the exact message."""
    size = tuple(info["export_size"])
    sizes = [size, other] if info["fixed_reason"] is None else [size]
    for s in sizes:
        for b in (1, 3):
            assert ort_diff(path, model, torch.randn(b, model_in_chans(model), *s)) <= TOL, (b, s)
    assert {r["batch"] for r in info["verified"]} >= {1, 3}
    if info["fixed_reason"] is None:
        assert info["input_shape"][0] == "batch" and info["input_shape"][2:] == ["height", "width"]
        assert len({tuple(r["size"]) for r in info["verified"]}) >= 2
    else:
        assert info["input_shape"][2:] == list(size)
        with pytest.raises(E.ExportError) as e:
            E.OnnxModel(path)(np.zeros((1, model_in_chans(model), *other), np.float32))
        s, o = "x".join(map(str, size)), "x".join(map(str, other))
        assert str(e.value) == (f"{path} takes {s} inputs only ({info['fixed_reason']}); got {o}. Resize the input "
                                f"to {s}, or re-export with --img-size {other[0]} {other[1]}.")


def model_in_chans(model) -> int:
    return E._in_chans(model)


META = {"class_names": ["cat", "dog", "emu", "fox", "gnu"],
        "data": {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.6, 0.7], "crop_pct": 0.9}}


@pytest.fixture(scope="module")
def exported_v1(tmp_path_factory):
    """A V1 classifier exported once (with a checkpoint's task meta): (model, path, info)."""
    model, path = classifier(1), tmp_path_factory.mktemp("v1") / "m.onnx"
    return model, path, E.export(model, path, "onnx", (32, 32), meta=META)


def test_onnx_classifier_v1_matches_eager_at_sizes_and_batches(exported_v1):
    check_sizes(exported_v1[1], exported_v1[2], exported_v1[0], (48, 40))


@pytest.fixture(scope="module")
def exported_segmenter(tmp_path_factory):
    """The UPerNet segmenter exported once with a checkpoint's labels: (model, path, info)."""
    model, path = segmenter(), tmp_path_factory.mktemp("seg") / "s.onnx"
    labels = {"names": ["bg", "road", "car"], "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0]], "ignore_index": 255}
    return model, path, E.export(model, path, "onnx", (32, 32), meta={"labels": labels})


def test_onnx_segmentation_matches_eager_at_sizes_and_batches(exported_segmenter):
    model, path, info = exported_segmenter
    assert info["task"] == "segment"
    check_sizes(path, info, model, (48, 40))


def test_onnx_restoration_matches_eager_at_sizes_and_batches(tmp_path):
    model = restorer()
    info = E.export(model, tmp_path / "r.onnx", "onnx", (16, 16))
    assert info["upscale"] == 2 and info["mean"] == [0.0] * 3 and info["std"] == [1.0] * 3
    check_sizes(tmp_path / "r.onnx", info, model, (20, 24))


def test_onnx_video_matches_eager(tmp_path):
    cfg = VideoSwinConfig(embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=(2, 3, 3), num_classes=4,
                          drop_path_rate=0.0, head_drop_rate=0.0)
    model = randomize_(VideoSwinTransformer(cfg)).eval()
    info = E.export(model, tmp_path / "v.onnx", "onnx", (4, 24, 24))
    assert info["layout"] == "NCTHW" and info["input_shape"][:2] == ["batch", 3]
    for b in (1, 3):
        assert ort_diff(tmp_path / "v.onnx", model, torch.randn(b, 3, 4, 24, 24)) <= TOL


@pytest.mark.parametrize("fmt", ["pt2", "torchscript"])
def test_pt2_and_torchscript_reload_match_eager(fmt, tmp_path):
    model, path = classifier(2), tmp_path / f"m.{fmt}"
    info = E.export(model, path, fmt, (32, 32))
    module = torch.export.load(str(path)).module() if fmt == "pt2" else torch.jit.load(str(path))
    sizes = [(32, 32)] + ([(48, 40)] if info["fixed_reason"] is None else [])
    for size in sizes:
        for b in (1, 3):
            x = torch.randn(b, 3, *size)
            with torch.no_grad():
                assert (module(x) - model(x)).abs().max().item() <= TOL, (b, size)
    beside = json.loads(Path(f"{path}.json").read_text())
    assert beside == {k: v for k, v in info.items() if k != "verified"}
    if fmt == "torchscript":  # the metadata also travels inside the file
        extra = {E.METADATA_FILE: ""}
        torch.jit.load(str(path), _extra_files=extra)
        assert json.loads(extra[E.METADATA_FILE]) == beside
        assert info["fixed_reason"].startswith("torch.jit.trace records the window indices")


def test_onnx_metadata_carries_the_preprocessing(exported_v1):
    path = exported_v1[1]
    props = ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map
    got = E.decode_metadata(props)
    assert got["task"] == "classify" and got["layout"] == "NCHW" and got["value_range"] == [0.0, 1.0]
    assert got["mean"] == [0.1, 0.2, 0.3] and got["std"] == [0.5, 0.6, 0.7]
    assert got["class_names"] == ["cat", "dog", "emu", "fox", "gnu"]
    assert got["resize"] == {"mode": "short_side_then_center_crop", "crop_pct": 0.9, "interpolation": "bicubic"}
    assert got["swinkit_version"] == swinkit.__version__ and got["export_size"] == [32, 32]
    assert got["input_shape"][:2] == ["batch", 3] and got["ranges"]["batch"][0] == 1
    assert got == E.read_metadata(path) == {k: v for k, v in exported_v1[2].items() if k != "verified"}


def _run_without_torch(code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter where importing torch fails, with swinkit.tools.export imported as E (it
    imports only swinkit's torch-free io.files and io.images, the one image reader every path shares)."""
    prelude = (
        "import sys, importlib.abc\n"
        "class NoTorch(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision'):\n"
        "            raise ImportError(f'{name} is blocked in this test')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from swinkit.tools import export as E\n")
    epilogue = "\nassert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(rc)\n"
    return subprocess.run([sys.executable, "-c", prelude + code + epilogue], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def checkpoint_export(tmp_path_factory):
    """`swinkit export --checkpoint` of a saved classifier with class names: (checkpoint, onnx path)."""
    d = tmp_path_factory.mktemp("ckpt")
    swinkit.save_model(classifier(1), d / "c.safetensors", class_names=META["class_names"])
    assert E.main_args(["--checkpoint", str(d / "c.safetensors"), "--out", str(d / "c.onnx"),
                        "--img-size", "32", "32"]) == 0
    return d / "c.safetensors", d / "c.onnx"


@pytest.mark.parametrize("image_size", [(36, 36), (50, 41)])  # 36 = int(32 / 0.875): no resize
def test_predict_onnx_equals_torch_prediction_without_torch(image_size, checkpoint_export, tmp_path):
    from swinkit.data import eval_transform, load_image
    from swinkit.tasks.classify import ClassifyTask

    ckpt, onnx_path = checkpoint_export
    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (*image_size, 3), dtype=np.uint8)).save(img)
    loaded = ClassifyTask.load(ckpt, None)  # what `swinkit predict --checkpoint` runs
    data = loaded.meta["data"]
    x = eval_transform(32, data["crop_pct"], data["mean"], data["std"])(load_image(img))
    with torch.no_grad():
        prob = loaded.model(x[None]).softmax(-1)[0]

    r = _run_without_torch(f"rc = (E.predict_onnx([{str(img)!r}], {str(onnx_path)!r}, topk=5, json=True))")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.splitlines()[0])["predictions"]
    tol = 1e-5 if image_size == (36, 36) else 5e-3  # PIL's bicubic vs torchvision's on uint8: <= 1 grey level apart
    assert got[0]["index"] == prob.argmax().item() and len(got) == 5
    assert [p["class"] for p in got] == [META["class_names"][p["index"]] for p in got]
    for p in got:
        assert abs(p["prob"] - prob[p["index"]].item()) <= tol


def test_predict_onnx_segmentation_masks_equal_torch_at_any_image_size(exported_segmenter, tmp_path):
    """One dynamic file, images of three sizes (square, non-square, not multiples of anything): each mask is the
    torch model's own at that image's size, with no resizing."""
    model, path, info = exported_segmenter
    assert info["input_shape"] == ["batch", 3, "height", "width"]
    meta, expected, files = E.read_metadata(path), {}, []
    for i, (h, w) in enumerate([(32, 32), (45, 27), (70, 53)]):
        rgb = np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(tmp_path / f"a{i}.png")
        files.append(str(tmp_path / f"a{i}.png"))
        x = (torch.from_numpy(rgb).float().permute(2, 0, 1) / 255 - torch.tensor(meta["mean"])[:, None, None]) \
            / torch.tensor(meta["std"])[:, None, None]
        with torch.no_grad():
            expected[f"a{i}"] = model(x[None])[0].argmax(0).numpy()
    out = tmp_path / "masks"
    r = _run_without_torch(f"rc = (E.predict_onnx({files!r}, {str(path)!r}, json=True, out={str(out)!r}))")
    assert r.returncode == 0, r.stderr
    for name, mask in expected.items():
        png = Image.open(out / f"{name}.png")
        assert png.mode == "P" and png.getpalette()[:9] == [0, 0, 0, 255, 0, 0, 0, 255, 0]
        np.testing.assert_array_equal(np.asarray(png), mask)
    for line in map(json.loads, r.stdout.splitlines()):
        assert abs(sum(line["classes"].values()) - 1) < 1e-9 and set(line["classes"]) <= {"bg", "road", "car"}


def test_dynamic_file_is_verified_at_five_sizes(exported_v1):
    """export() checks a dynamic file at five sizes and batches 1 and 3: square and not, sizes that are not window
    multiples, and one whose last stage (window 4) is a map smaller than the window."""
    model, path, info = exported_v1
    assert info["input_shape"] == ["batch", 3, "height", "width"] and info["fixed_reason"] is None
    rows = info["verified"]
    sizes = {tuple(r["size"]) for r in rows}
    assert len(sizes) >= 5 and {r["batch"] for r in rows} == {1, 3} and len(rows) == 2 * len(sizes)
    assert any(h != w for h, w in sizes) and any(h % 32 and w % 32 for h, w in sizes)  # 32: patch 4 x window 4 x 2
    assert any(-(-h // 8) < 4 and -(-w // 8) < 4 for h, w in sizes)  # the last stage's map (stride 8) < the window
    assert all(r["relative"] <= TOL for r in rows)
    assert ort_diff(path, model, torch.randn(2, 3, 57, 19)) <= TOL  # and at a size export() did not try


def fpn_segmenter() -> SegmentationModel:
    backbone = SwinConfig(embed_dim=16, depths=(1, 1), num_heads=(2, 4), window_size=4, window_mode="pad",
                          drop_path_rate=0.0)
    cfg = SegmentationConfig(backbone=backbone, head="fpn", num_classes=3, channels=16, fpn_channels=8,
                             aux_head=False, aux_in_index=1)
    return randomize_(SegmentationModel(cfg), std=0.2).eval()


FAMILIES = {  # the families and mixers the tests above do not export, each tiny: (model, export size, extra size)
    "fpn": (fpn_segmenter, (32, 32), (27, 45)),
    "global_v2": (lambda: randomize_(SwinTransformer(SwinConfig(
        embed_dim=16, depths=(1, 1), num_heads=(2, 4), window_size=4, num_classes=5, img_size=32, version=2,
        drop_path_rate=0.0, mixer=("shifted_window", "global")))), (32, 32), (23, 41)),
    "unet": (lambda: randomize_(SwinUNet(SwinUNetConfig(embed_dim=8, depths=(1, 1), num_heads=(1, 2),
                                                        window_size=2, num_classes=3, img_size=32,
                                                        drop_path_rate=0.0)), std=0.2), (32, 32), (37, 22)),
    "poolformer": (lambda: randomize_(swinkit.PoolFormer(swinkit.PoolFormerConfig(
        dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_classes=5))), (32, 32), (29, 50)),
}


def test_cswin_falls_back_to_a_fixed_size_that_is_right(tmp_path):
    """CSWin's stripes span the whole map (their token count is the map's height or width): it is not exported with
    dynamic sizes yet, and says so at once; the fixed file is right at its size."""
    model = randomize_(swinkit.CSWinTransformer(swinkit.CSWinConfig(
        embed_dim=16, depths=(1, 1, 1, 1), num_heads=(2, 4, 8, 16), split_size=(1, 2, 0, 0), num_classes=5,
        img_size=32))).eval()
    info = E.export(model, tmp_path / "c.onnx", "onnx", (32, 32), log=lambda _: None)
    assert info["input_shape"] == ["batch", 3, 32, 32]
    assert "cswin's stripes span the whole map" in info["fixed_reason"]
    assert ort_diff(tmp_path / "c.onnx", model, torch.randn(3, 3, 32, 32)) <= TOL


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_exports_any_size(name, tmp_path):
    make, size, extra = FAMILIES[name]
    model = make().eval()
    info = E.export(model, tmp_path / "m.onnx", "onnx", size, log=lambda _: None)
    assert info["fixed_reason"] is None and all(isinstance(d, str) for d in info["input_shape"][2:])
    assert len({tuple(r["size"]) for r in info["verified"]}) >= 5
    assert all(r["relative"] <= TOL for r in info["verified"])
    assert ort_diff(tmp_path / "m.onnx", model, torch.rand(3, model_in_chans(model), *extra)) <= TOL


def test_openvino_runs_the_dynamic_file_at_any_size(exported_v1):
    """OpenVINO (CPU) reads the dynamic file and matches eager at sizes that change every stage's layout."""
    ov = pytest.importorskip("openvino")
    model, path, _ = exported_v1
    compiled = ov.Core().compile_model(str(path), "CPU")
    for b, size in [(1, (32, 32)), (3, (45, 27)), (2, (9, 13))]:
        x = torch.randn(b, 3, *size)
        with torch.no_grad():
            ref = model(x).numpy()
        got = compiled(x.numpy())[0]
        assert float(np.abs(got - ref).max() / max(1.0, np.abs(ref).max())) <= TOL, (b, size)


def test_unsupported_format_and_detector_errors(tmp_path):
    with pytest.raises(E.ExportError) as e:
        E.export(classifier(), tmp_path / "m.tflite", "tflite")
    assert str(e.value) == "unknown export format 'tflite': expected one of onnx, pt2, torchscript"
    with pytest.raises(E.ExportError) as e:
        E.load_for_export(name="maskrcnn_swin_t")
    assert str(e.value).startswith("cannot export a detector (maskrcnn_swin_t): swinkit export does not support "
                                   "detectors (torchvision's MaskRCNN")
    with pytest.raises(E.ExportError) as e:
        E.export(classifier(), tmp_path / "m.onnx", "onnx", (32,))
    assert str(e.value) == "--img-size takes H W (height, width) for a classify model; got [32]"


def test_cli_export_and_predict_onnx(checkpoint_export, tmp_path, capsys):
    """`swinkit export` is a command, and `swinkit predict --onnx FILE` gives what predict_onnx gives."""
    from swinkit.cli import main

    ckpt, onnx_path = checkpoint_export
    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(img)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "again.onnx"), "--static", "32",
                 "32"]) == 0
    assert "input NCHW batch x 3 x 32 x 32" in capsys.readouterr().out
    meta = E.read_metadata(tmp_path / "again.onnx")  # --static: a fixed file, which refuses other sizes
    assert meta["input_shape"] == ["batch", 3, 32, 32] and meta["fixed_reason"] == E.STATIC_REASON
    with pytest.raises(E.ExportError) as e:
        E.OnnxModel(tmp_path / "again.onnx")(np.zeros((1, 3, 40, 24), np.float32))
    assert str(e.value) == (f"{tmp_path / 'again.onnx'} takes 32x32 inputs only ({E.STATIC_REASON}); got 40x24. "
                            "Resize the input to 32x32, or re-export with --img-size 40 24.")
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "b.onnx"), "--static", "40", "24",
                 "--img-size", "32", "32"]) == 1
    assert "--static 40 24 and --img-size 32 32 differ" in capsys.readouterr().err
    assert main(["predict", "--onnx", str(tmp_path / "again.onnx"), str(img), "--json"]) == 0
    via_cli = json.loads(capsys.readouterr().out.splitlines()[0])["predictions"]
    assert E.predict_onnx([str(img)], onnx_path, topk=5, json=True) == 0
    direct = json.loads(capsys.readouterr().out.splitlines()[0])["predictions"]
    assert [p["index"] for p in via_cli] == [p["index"] for p in direct]
    assert main(["predict", str(img)]) == 2
    assert "give --checkpoint (a run directory or checkpoint file) or --onnx" in capsys.readouterr().err


def test_cli_predict_onnx_runs_without_torch(checkpoint_export, tmp_path):
    """`swinkit predict --onnx` through the real command line where torch and torchvision cannot be imported."""
    ckpt, onnx_path = checkpoint_export
    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(img)
    code = (
        "import sys, importlib.abc\n"
        "class NoTorch(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision'):\n"
        "            raise ImportError(f'{name} is blocked in this test')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from swinkit.cli import main\n"
        f"rc = main(['predict', '--onnx', {str(onnx_path)!r}, {str(img)!r}, '--json', '--topk', '2'])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(rc)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.splitlines()[0])
    assert got["image"] == str(img) and len(got["predictions"]) == 2
    assert E.predict_onnx([str(img)], onnx_path, topk=2, json=True) == 0  # the same as in-process
