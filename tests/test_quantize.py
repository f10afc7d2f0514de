"""swinkit quantize: static INT8 (onnxruntime, QDQ) of a classifier trained for a few seconds on the embedded digits:
QDQ pairs only in front of the weight MatMul / Gemm / Conv, the fp32 file's metadata kept, top-1 agreement with
fp32 on held-out digits, predict_onnx running the int8 file, the CLI, and the errors."""
import collections
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from swinkit import SegmentationConfig, SegmentationModel, SwinConfig, SwinTransformer, create_restoration_model
from swinkit.data import IMAGENET_MEAN, IMAGENET_STD, digits_folder, eval_transform, load_image
from swinkit.tools import export as E
from swinkit.tools import quantize as Q
from swinkit.tools.export import read_metadata

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytestmark = pytest.mark.usefixtures("keep_threads")

CLASSES = [str(i) for i in range(10)]
DATA = {"img_size": 32, "crop_pct": 1.0, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
# measured (12 epochs, seed 0): fp32 val top-1 88%; int8 top-1 agreement with fp32 on the 359 val digits 99.4%
AGREEMENT_MIN = 0.96


def digit_tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits of `split` as the classify task's eval transform makes them: (N, 3, 32, 32), (N,) labels."""
    tf = eval_transform(32, DATA["crop_pct"], DATA["mean"], DATA["std"])
    files = sorted((digits_folder() / split).rglob("*.png"))
    return torch.stack([tf(load_image(f)) for f in files]), torch.tensor([int(f.parent.name) for f in files])


def train_digits(epochs: int = 12) -> SwinTransformer:
    """A 0.02M-parameter Swin trained on the digits with AdamW (about 4 s on one thread)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = SwinTransformer(SwinConfig(embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4, patch_size=4,
                                       img_size=32, num_classes=10, drop_path_rate=0.0))
    x, y = digit_tensors("train")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    for _ in range(epochs):
        for b in torch.randperm(len(x)).split(32):
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def q(tmp_path_factory):
    """The trained model, its checkpoint, its fp32 export and the int8 file (64 calibration digits from train/)."""
    d = tmp_path_factory.mktemp("quant")
    model = train_digits()
    torch.save({"task": "classify", "model": model.state_dict(), "config": model.cfg.to_dict(),
                "class_names": CLASSES, "data": DATA}, d / "best.pt")
    meta = {"class_names": CLASSES, "data": DATA}
    E.export(model, d / "fp32.onnx", "onnx", (32, 32), meta=meta, log=lambda _: None)
    calib = Q.calibration_files(digits_folder() / "train", 64)
    info = Q.quantize_onnx(d / "fp32.onnx", d / "int8.onnx", calib)
    return SimpleNamespace(dir=d, model=model, fp32=d / "fp32.onnx", int8=d / "int8.onnx", info=info, calib=calib)


def graph_links(path: Path):
    """(nodes, producer of each tensor, consumers of each tensor, constant tensor names) of an ONNX file."""
    g = onnx.load(str(path)).graph
    producer = {o: n for n in g.node for o in n.output}
    consumers = collections.defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    consts = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    return g.node, producer, consumers, consts


def test_calibration_files_spread_over_every_class_folder():
    files = Q.calibration_files(digits_folder() / "train", 64)
    assert len(files) == 64 and len(set(files)) == 64
    assert {f.parent.name for f in files} == set(CLASSES)  # sorted by class folder, sampled evenly: all ten


def test_qdq_only_in_front_of_weight_matmul_gemm_conv(q):
    nodes, producer, consumers, consts = graph_links(q.int8)
    dq = [n for n in nodes if n.op_type == "DequantizeLinear"]
    fed = collections.Counter(c.op_type for n in dq for c in consumers[n.output[0]])
    assert set(fed) <= {"MatMul", "Gemm", "Conv"} and fed["Conv"] == fed["Gemm"] == 3  # x, w, int32 bias
    for n in nodes:
        if n.op_type in ("Softmax", "LayerNormalization"):  # float in, and softmax probabilities never re-quantized
            assert all(producer[i].op_type != "DequantizeLinear" for i in n.input if i in producer), n.name
            if n.op_type == "Softmax":
                assert all(c.op_type != "QuantizeLinear" for c in consumers[n.output[0]]), n.name
    # every quantized node has a dequantized weight; attention's q @ k^T and attn @ v (no weight) stay float
    quantized = [n for n in nodes if n.op_type in Q.QUANT_OPS and any(
        i in producer and producer[i].op_type == "DequantizeLinear" for i in n.input)]
    assert len(quantized) == q.info["quantized_nodes"] > 0
    for n in quantized:
        w = producer[n.input[1]]
        assert w.op_type == "DequantizeLinear" and w.input[0] in consts, n.name  # an int8 initializer
    attention = [n for n in nodes if n.op_type == "MatMul" and n not in quantized]
    assert len(attention) == 2 * 2  # two per block, one block in each of two stages
    g = onnx.load(str(q.int8)).graph
    assert {i.data_type for i in g.initializer if i.name in {producer[n.input[1]].input[0] for n in quantized}} == {
        onnx.TensorProto.INT8}
    softmax = [n for n in onnx.load(str(q.fp32)).graph.node if n.op_type == "Softmax"]
    assert sum(n.op_type == "Softmax" for n in nodes) == len(softmax) == 2


def test_int8_metadata_is_fp32_metadata_plus_quantized(q):
    assert E.read_metadata(q.int8) == {**E.read_metadata(q.fp32), "quantized": Q.QUANTIZED}
    assert E.OnnxModel(q.int8).meta["quantized"] == "int8 static (onnxruntime)"


def test_int8_agrees_with_fp32_on_held_out_digits_and_is_smaller(q):
    val = Q.calibration_files(digits_folder() / "val", None)  # the 359 held-out digits, none used to calibrate
    assert not set(val) & set(q.calib)
    assert Q.agreement(q.fp32, q.int8, val) >= AGREEMENT_MIN
    assert q.info["agreement"] == Q.agreement(q.fp32, q.int8, q.calib) >= AGREEMENT_MIN
    # measured: 0.25 MB fp32, 0.05 MB int8 (the weights a quarter, plus scales, zero points and the graph)
    assert q.info["int8_mb"] < 0.35 * q.info["fp32_mb"]
    assert q.info["int8_mb"] == q.int8.stat().st_size / 1e6 and q.info["calib_images"] == 64


def test_predict_onnx_runs_the_int8_file_close_to_fp32(q, capsys):
    files = Q.calibration_files(digits_folder() / "val", 20)
    got = {}
    for name, path in (("fp32", q.fp32), ("int8", q.int8)):
        capsys.readouterr()
        assert E.predict_onnx(files, path, topk=10, json=True) == 0
        got[name] = [{p["index"]: p["prob"] for p in json.loads(line)["predictions"]}
                     for line in capsys.readouterr().out.splitlines()]
    assert len(got["int8"]) == len(files)
    # measured: at most 0.02 apart per class probability on these 20 digits
    diff = max(abs(a[i] - b[i]) for a, b in zip(got["fp32"], got["int8"]) for i in a)
    assert diff <= 0.05


def test_cli_quantize_writes_the_same_int8_file_as_python(q, capsys):
    out = q.dir / "cli.onnx"
    capsys.readouterr()
    assert Q.main_args(["--checkpoint", str(q.dir / "best.pt"), "--calib", str(digits_folder() / "train"),
                        "--out", str(out), "--img-size", "32", "32", "--json"]) == 0
    info = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert info["calib_images"] == 64 and info["quantized_nodes"] == q.info["quantized_nodes"]
    assert E.read_metadata(out) == E.read_metadata(q.int8)
    x = np.stack(Q._inputs(Q.calibration_files(digits_folder() / "val", 32), E.read_metadata(out)))[:, 0]
    a, b = E.OnnxModel(out)(x), E.OnnxModel(q.int8)(x)
    assert np.abs(a - b).max() <= 1e-5  # same checkpoint, same calibration images: the same quantization


def test_per_tensor_quantization_has_one_scale_per_weight(q, tmp_path):
    info = Q.quantize_onnx(q.fp32, tmp_path / "pt.onnx", q.calib[:16], per_channel=False)
    nodes, producer, _, consts = graph_links(tmp_path / "pt.onnx")
    inits = {i.name: i for i in onnx.load(str(tmp_path / "pt.onnx")).graph.initializer}
    scales = [inits[producer[n.input[1]].input[1]] for n in nodes if n.op_type in Q.QUANT_OPS
              and n.input[1] in producer and producer[n.input[1]].op_type == "DequantizeLinear"]
    assert len(scales) == info["quantized_nodes"] and all(np.prod(s.dims) == 1 for s in scales)
    per_channel = graph_links(q.int8)
    inits8 = {i.name: i for i in onnx.load(str(q.int8)).graph.initializer}
    assert any(np.prod(inits8[per_channel[1][n.input[1]].input[1]].dims) > 1 for n in per_channel[0]
               if n.op_type in Q.QUANT_OPS and n.input[1] in per_channel[1]
               and per_channel[1][n.input[1]].op_type == "DequantizeLinear")


def test_empty_calibration_folder_is_a_clear_error(q, tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("not an image")
    with pytest.raises(Q.QuantizeError) as e:
        Q.calibration_files(tmp_path / "empty")
    assert str(e.value) == (f"no images in {tmp_path / 'empty'} (searched recursively for "
                            f"{', '.join(Q.IMAGE_SUFFIXES)}): calibration needs a few dozen images like those the model will see; point --calib at "
                            "such a folder")
    assert Q.main_args(["--checkpoint", str(q.dir / "best.pt"), "--calib", str(tmp_path / "empty"),
                        "--out", str(tmp_path / "x.onnx")]) == 1
    assert capsys.readouterr().err == f"error: {e.value}\n"
    assert not (tmp_path / "x.onnx").exists()


def test_segmenters_are_quantized_and_other_models_refused(q, tmp_path):
    backbone = SwinConfig(embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4, drop_path_rate=0.0)
    torch.manual_seed(0)
    seg = SegmentationModel(SegmentationConfig(backbone=backbone, num_classes=3, channels=16, aux_head=False,
                                               aux_in_index=1, pool_scales=(1, 2)))
    info = Q.quantize(seg, tmp_path / "s.int8.onnx", digits_folder() / "train", img_size=(32, 48), calib_images=8,
                      log=lambda _: None)
    meta = read_metadata(tmp_path / "s.int8.onnx")
    assert (meta["task"], meta["quantized"], meta["input_shape"][2:]) == ("segment", Q.QUANTIZED, [32, 48])
    assert info["task"] == "segment" and info["quantized_nodes"] > 0
    assert info["agreement"] >= 0.95  # share of pixels with the same class; measured 0.99+ with random weights
    restorer = create_restoration_model("swinir_lightweight_x2")
    with pytest.raises(Q.QuantizeError) as e:
        Q.quantize(restorer, tmp_path / "r.onnx", digits_folder() / "train")
    assert str(e.value) == ("cannot quantize a SwinIR: swinkit quantize takes classifiers (SwinTransformer) and "
                            "segmenters (UPerNet, FPN, Swin-UNet)")
    m = onnx.load(str(q.fp32))  # an exported file whose metadata says restore
    onnx.helper.set_model_props(m, {**{p.key: p.value for p in m.metadata_props}, "task": json.dumps("restore")})
    onnx.save(m, str(tmp_path / "restore.onnx"))
    with pytest.raises(Q.QuantizeError) as e:
        Q.quantize_onnx(tmp_path / "restore.onnx", tmp_path / "r8.onnx", q.calib)
    assert str(e.value) == (f"{tmp_path / 'restore.onnx'} is a restore model: swinkit quantize takes classifiers and "
                            "segmenters (it checks the int8 file by the agreement of their class predictions); "
                            "quantize other models with onnxruntime's quantize_static directly")
