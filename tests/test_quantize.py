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
from swinkit.utils import cpu
from swinkit.data import IMAGENET_MEAN, IMAGENET_STD, digits_folder, eval_transform, load_image
from swinkit.tools import export as E
from swinkit.tools import quantize as Q
from swinkit.tools.export import read_metadata

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytestmark = pytest.mark.usefixtures("keep_threads")

CLASSES = [str(i) for i in range(10)]
DATA = {"img_size": 32, "crop_pct": 1.0, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
# issue 24's bar for the digits file on every CPU. The model is trained here, so its weights differ from CPU to CPU;
# its file's QDQ arithmetic in float (the CPU-free ideal) agreed on 99.4% on an AMD EPYC and on a Xeon, and the int8
# kernels must keep that (8-bit weights fell to 90.5% on the EPYC, AVX2 without VNNI: int16 saturation)
AGREEMENT_MIN = 0.96
# the largest logit change int8 may make, as a share of the logits' scale: each of the 11 quantized layers rounds
# its input to 1/255 of its range and its weights to 1/128 of each row's range (7-bit), an rms error of about
# (1/255 + 1/128) / sqrt(12) = 0.34% of the layer's scale per layer; summed over 11 layers 4%, and 10% leaves room
# for outliers. Saturated kernels moved the logits by 31% of their scale.
LOGIT_CHANGE_MAX = 0.10


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
    assert q.info["agreement_float_qdq"] == Q.agreement(q.fp32, q.int8, q.calib, optimized=False)
    # int8 weights are a quarter of fp32's; the scales, zero points and graph (0.03 MB here) come on top
    assert q.info["int8_mb"] < 0.35 * q.info["fp32_mb"]
    assert q.info["int8_mb"] == q.int8.stat().st_size / 1e6 and q.info["calib_images"] == 64
    assert (q.info["reduce_range"], q.info["per_channel"], q.info["cpu"]) == (True, True, cpu.describe())


def test_int8_file_holds_only_the_fp32_files_tensors_with_weights_in_8_bits(tmp_path):
    """onnxruntime's graph optimiser, run before quantizing, stored every constant expression the export computes: each
    block's (heads, N, N) position bias gathered from its table and, at a fixed size, the bias + shift mask, (windows,
    heads, N, N). The CamVid UPerNet's int8 file was 27.2 MB against 17.2 MB fp32 (at 720x960); this model's 6.7 MB
    against 0.7 MB at a fixed size (window 12, 16 heads: 1.3 MB of float per block). Now the int8 file holds the fp32
    file's initializers, each quantized weight in a quarter of its bytes, plus the scales, zero points and int32
    biases, and nothing else."""
    torch.manual_seed(0)
    model = SwinTransformer(SwinConfig(embed_dim=16, depths=(2,), num_heads=(16,), window_size=12, patch_size=4,
                                       img_size=96, num_classes=10, drop_path_rate=0.0)).eval()
    E.export(model, tmp_path / "fp32.onnx", "onnx", (96, 96), log=lambda _: None)
    Q.quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", Q.calibration_files(digits_folder() / "train", 8))
    fp32 = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "fp32.onnx")).graph.initializer}
    g = onnx.load(str(tmp_path / "int8.onnx")).graph
    int8 = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
    qdq = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    qparams = {i for n in qdq for i in n.input[1:]}  # scales and zero points
    weights = {n.input[0] for n in qdq if n.input[0] in int8 and int8[n.input[0]].dtype == np.int8}
    assert weights and {k for k, v in int8.items() if v.dtype == np.float32} - qparams <= set(fp32)
    nbytes = lambda names, d: sum(d[k].nbytes for k in names)  # noqa: E731
    extra = nbytes(qparams, int8) + nbytes([k for k, v in int8.items() if v.dtype == np.int32], int8)
    # each weight's float copy is gone: 4 bytes an element became 1
    assert nbytes(int8, int8) <= nbytes(fp32, fp32) - 3 * nbytes(weights, int8) + extra < nbytes(fp32, fp32)


def test_int8_kernels_compute_what_the_file_says_on_this_cpu(q):
    """The CPU's fused int8 kernels against the file's own QDQ arithmetic in float (no graph optimisation): the same
    integer products, so they part only where a re-quantized activation lands on the other side of a rounding
    boundary, one step (1/255 of its range) at a time. Saturating kernels (8-bit weights on x86 without VNNI) moved
    the logits by 31% of their scale and changed 9.5% of the top-1 predictions."""
    x = np.concatenate(Q._inputs(Q.calibration_files(digits_folder() / "val", None), E.read_metadata(q.int8)))
    kernels, math = E.OnnxModel(q.int8)(x), E.OnnxModel(q.int8, optimized=False)(x)
    assert np.abs(kernels - math).max() <= 5 / 255 * np.abs(math).max()  # a few steps at most, never a saturation
    assert np.mean(kernels.argmax(1) == math.argmax(1)) >= 0.99  # only near-ties may flip


def test_predict_onnx_runs_the_int8_file_close_to_fp32(q, capsys):
    files = Q.calibration_files(digits_folder() / "val", 20)
    got = {}
    for name, path in (("fp32", q.fp32), ("int8", q.int8)):
        capsys.readouterr()
        assert E.predict_onnx(files, path, topk=10, json=True) == 0
        got[name] = [{p["index"]: p["prob"] for p in json.loads(line)["predictions"]}
                     for line in capsys.readouterr().out.splitlines()]
    assert len(got["int8"]) == len(files)
    x = np.stack(Q._inputs(files, E.read_metadata(q.int8)))[:, 0]
    fp32, int8 = E.OnnxModel(q.fp32)(x), E.OnnxModel(q.int8)(x)
    logit_change = np.abs(int8 - fp32).max()
    assert logit_change <= LOGIT_CHANGE_MAX * np.abs(fp32).max()
    # softmax moves no probability by more than half the largest logit change (its Jacobian's rows have 1-norm
    # 2 p (1 - p) <= 1/2), so predict's probabilities stay that close
    diff = max(abs(a[i] - b[i]) for a, b in zip(got["fp32"], got["int8"]) for i in a)
    assert diff <= logit_change / 2 + 1e-6


def test_eight_bit_weights_are_diagnosed_where_the_kernels_saturate(q, tmp_path):
    """--no-reduce-range: on x86 without VNNI the kernels saturate, which the float QDQ arithmetic shows; on CPUs
    that add int8 products in int32 (VNNI, AMX, ARM) the two agree."""
    info = Q.quantize_onnx(q.fp32, tmp_path / "w8.onnx", q.calib, reduce_range=False)
    assert info["reduce_range"] is False and info["agreement_float_qdq"] >= AGREEMENT_MIN
    saturates = "avx2" in cpu.cpu_flags() and not cpu.has_int8_dot()
    if not saturates:
        assert info["agreement"] >= AGREEMENT_MIN and Q.advice(info) is None
    elif info["agreement"] < Q.MIN_AGREEMENT:
        assert Q.advice(info).endswith("(int16 saturation on x86 without VNNI); quantize again with --reduce-range")


def test_advice_names_the_kernels_or_the_grid():
    good = {"agreement": 0.97, "agreement_float_qdq": 0.97, "reduce_range": False, "per_channel": True}
    assert Q.advice(good) is None
    assert Q.advice({**good, "agreement": 0.80}) == (
        "the int8 file agrees with fp32 on 80.0% of predictions, below 95.0% (its QDQ arithmetic in float agrees on "
        "97.0%): this CPU's int8 kernels lose what the quantization kept (int16 saturation on x86 without VNNI); "
        "quantize again with --reduce-range")
    assert Q.advice({**good, "agreement": 0.90, "agreement_float_qdq": 0.91, "per_channel": False}) == (
        "the int8 file agrees with fp32 on 90.0% of predictions, below 95.0% (its QDQ arithmetic in float agrees on "
        "91.0%): the 8-bit grid itself costs accuracy; try more calibration images (--calib-images), per-channel "
        "weights (--per-channel), a fine-tune with `swinkit train --qat`, or keep this model in fp32")
    assert Q.advice({**good, "agreement": 0.97}, min_agreement=0.99).startswith(
        "the int8 file agrees with fp32 on 97.0% of predictions, below 99.0%")


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
    assert Q.main_args(["--checkpoint", str(q.dir / "best.pt"), "--calib", str(digits_folder() / "train"),
                        "--out", str(q.dir / "text.onnx"), "--calib-images", "8", "--min-agreement", "1"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith(f"wrote {q.dir / 'text.onnx'}: ") and lines[0].endswith(
        f"{q.info['quantized_nodes']} MatMul/Gemm/Conv quantized, uint8 activations x 7-bit weights)")
    assert lines[1] == f"calibrated on {cpu.describe()}"
    assert lines[2].startswith("top-1 agreement with fp32 on 8 calibration images: ")
    # --min-agreement 1: any disagreement is reported with what to try
    assert (err == "") == lines[2].startswith("top-1 agreement with fp32 on 8 calibration images: 100.0%")
    assert Q.main_args(["--checkpoint", "x", "--calib", "y", "--out", "z", "--min-agreement", "96"]) == 1
    assert capsys.readouterr().err == ("error: --min-agreement is a share of predictions between 0 and 1, got 96.0\n")


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
                            f"{', '.join(Q.IMG_EXTENSIONS)}): calibration needs a few dozen images like those the model will see; point --calib at "
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
    assert (meta["task"], meta["quantized"], meta["export_size"]) == ("segment", Q.QUANTIZED, [32, 48])
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
