"""Quantization-aware training (swinkit/qat.py and the classify task's --qat): which Linear layers get torchao's fake
quantization, its numerics against a hand computation, the float state dict kept, the settings errors, and a short
QAT fine-tune on the digits whose checkpoint evaluates, resumes with fake quantization and quantizes to int8 ONNX."""
import argparse
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from swinkit import SwinConfig, SwinTransformer
from swinkit import train as train_mod
from swinkit.cli import main
from swinkit.data import digits_folder
from swinkit.io.load import load_model
from swinkit.train.qat import count_fake_quantized, prepare_qat, strip_qat

from conftest import randomize_

pytest.importorskip("torchao")
from torchao.quantization.qat import FakeQuantizedLinear  # noqa: E402

pytestmark = pytest.mark.usefixtures("keep_threads")

PER_BLOCK = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def small_swin(version: int, depths=(2, 1)) -> SwinTransformer:
    return SwinTransformer(SwinConfig(version=version, embed_dim=16, depths=depths, num_heads=(1, 2), window_size=4,
                                      patch_size=4, img_size=32, num_classes=10, drop_path_rate=0.0))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# ---- which layers


@pytest.mark.parametrize("version", [1, 2])
def test_prepare_qat_fake_quantizes_attention_mlp_merging_and_head_only(version):
    model = randomize_(small_swin(version)).eval()  # V2's zero-initialised post-norms would stop the gradients
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
    keys, params = list(model.state_dict()), {n: p for n, p in model.named_parameters()}
    assert prepare_qat(model) == 2 * 4 + 4 + 1 + 1
    expected = {f"layers.0.blocks.{i}.{n}" for i in (0, 1) for n in PER_BLOCK}
    expected |= {f"layers.1.blocks.0.{n}" for n in PER_BLOCK} | {"layers.1.downsample.reduction", "head.fc"}
    assert {n for n, m in model.named_modules() if isinstance(m, FakeQuantizedLinear)} == expected
    plain = {n for n, m in model.named_modules() if type(m) is nn.Linear}  # what stays float
    assert plain == ({f"layers.{s}.blocks.{b}.attn.cpb_mlp.{i}" for s, b in ((0, 0), (0, 1), (1, 0)) for i in (0, 2)}
                     if version == 2 else set())
    assert type(model.patch_embed.proj) is nn.Conv2d
    # the same parameter tensors under the same names, and no new state-dict entries
    assert list(model.state_dict()) == keys
    assert all(p is params[n] for n, p in model.named_parameters())

    with torch.no_grad():
        got = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the loop's autocast on GPU
            got_bf16 = model(x)
    # one fake-quantized layer's rms rounding error: 8-bit tokens (a step of about 5 sigma / 255) and 7-bit weight
    # rows (about 6 sigma / 127), each step / sqrt(12): sqrt(0.57^2 + 1.36^2) = 1.5% of the layer's output; the
    # residual stream dilutes it, so the logits must stay within twice that (bf16 autocast adds 2^-8 per op: 4%)
    assert 0 < relative_error(got, want) < 0.03 and relative_error(got_bf16, want) < 0.04
    model.train()(x).logsumexp(-1).sum().backward()  # rounding passes gradients straight through
    for n, m in model.named_modules():
        if isinstance(m, FakeQuantizedLinear):
            assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0 and m.weight.grad.isfinite().all(), n


def test_strip_qat_gives_back_nn_linear_with_the_trained_weights():
    model = small_swin(2)
    prepare_qat(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()  # weights that differ from the initial ones
    assert strip_qat(model) == 14 and count_fake_quantized(model) == 0
    assert not any(isinstance(m, FakeQuantizedLinear) for m in model.modules())
    float_model = small_swin(2)
    float_model.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), float_model.eval()(x), atol=0, rtol=0)


# ---- numerics


def one_layer() -> FakeQuantizedLinear:
    """A Linear(24, 8) named `head`, prepared for QAT."""
    holder = nn.Module()
    holder.head = nn.Linear(24, 8)
    with torch.no_grad():
        holder.head.weight[0] *= 10  # rows of very different ranges: the scales must be per output channel
    assert prepare_qat(holder) == 1
    return holder.head


def test_weights_are_7_bit_symmetric_per_output_channel_as_quantize_writes_them():
    from swinkit.tools.quantize import REDUCE_RANGE

    assert REDUCE_RANGE  # swinkit quantize's default: 7-bit weights (no int16 saturation on x86 without VNNI)
    fq, x = one_layer(), torch.randn(5, 24)
    fq.activation_fake_quantizer.enabled = False
    w = fq.weight.detach()
    s = w.abs().amax(1, keepdim=True) / 63.5  # torchao's symmetric int7: (63 - -64) / 2 levels per side
    q = torch.round(w * (1.0 / s)).clamp(-64, 63)
    assert (q.abs().amax(1) >= 63).all()  # each row's largest weight at an end of the grid
    with torch.no_grad():
        torch.testing.assert_close(fq(x), x @ (q * s).T + fq.bias, atol=1e-6, rtol=0)
        # the fake-quantized weights are integers times each row's scale
        wq = fq.weight_fake_quantizer(fq.weight)
    k = wq / s
    torch.testing.assert_close(k, k.round(), atol=1e-4, rtol=0)
    assert k.round().min() >= -64 and k.round().max() <= 63


def test_activations_are_uint8_asymmetric_per_token():
    fq, x = one_layer(), torch.randn(2, 3, 24) * torch.tensor([1.0, 5.0, 0.1])[:, None]  # tokens of unequal ranges
    fq.weight_fake_quantizer.enabled = False
    lo, hi = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)  # (2, 3, 1) per token
    s = (hi - lo) / 255
    zp = (-torch.round(lo / s)).clamp(0, 255)
    xq = ((torch.round(x * (1.0 / s)) + zp).clamp(0, 255) - zp) * s
    with torch.no_grad():
        torch.testing.assert_close(fq(x), xq @ fq.weight.T + fq.bias, atol=1e-5, rtol=0)
        assert not torch.allclose(fq(x), x @ fq.weight.T + fq.bias, atol=1e-5, rtol=0)


# ---- settings


def test_qat_needs_a_pretrained_classifier_and_the_classify_task(tmp_path, capsys):
    assert main(["train", "--qat", "--out", str(tmp_path / "r"), "--threads", "1"]) == 1
    assert capsys.readouterr().err.strip() == ("error: --qat starts from a float checkpoint: pass --pretrained "
                                               "RUN/best.pt (a trained classifier)")
    assert not (tmp_path / "r").exists()  # refused before the run starts
    with pytest.raises(SystemExit):
        main(["train", "--task", "segment", "--qat", "--pretrained", "x.pt"])
    assert "unrecognized arguments: --qat" in capsys.readouterr().err


# ---- a QAT fine-tune on the digits


def parse(*argv: str):
    parser = argparse.ArgumentParser()
    train_mod.add_arguments(parser, "train", argv=list(argv))
    return train_mod.resolve_settings(parser.parse_args(list(argv)))


def eval_top1(checkpoint: Path, capsys) -> float:
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(digits_folder()), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])["top1"]


def test_qat_fine_tune_on_the_digits_saves_float_checkpoints_that_resume_evaluate_and_quantize(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from test_quantize import CLASSES, DATA, train_digits  # the quantize tests' 12-epoch float digits model

    from swinkit.tools import export as E
    from swinkit.tools import quantize as Q

    model = train_digits()
    float_ck = tmp_path / "float.pt"
    torch.save({"task": "classify", "model": model.state_dict(), "config": model.cfg.to_dict(),
                "class_names": CLASSES, "data": DATA}, float_ck)
    run = tmp_path / "qat"
    assert main(["train", "--qat", "--pretrained", str(float_ck), "--out", str(run), "--epochs", "2", "--lr", "3e-4",
                 "--warmup-epochs", "0", "--threads", "1", "--workers", "0"]) == 0
    assert json.loads((run / "config.json").read_text())["args"]["qat"] is True
    assert json.loads((run / "summary.json").read_text())["model"].endswith(
        " + int8 fake quantization (10 Linear layers)")

    # float checkpoints: the float model's keys, read back as a plain SwinTransformer
    for name in ("best.pt", "last.pt"):
        assert list(torch.load(run / name, weights_only=True)["model"]) == list(model.state_dict())
    loaded = load_model(run / "best.pt")
    assert type(loaded) is SwinTransformer and count_fake_quantized(loaded) == 0
    assert {type(m) for m in loaded.modules() if isinstance(m, nn.Linear)} == {nn.Linear}

    # two epochs at a tenth of the learning rate adapt the weights to the grid; they may cost a few of the 359 val
    # digits (3 points = 11 digits), not the model
    float_top1, qat_top1 = eval_top1(float_ck, capsys), eval_top1(run, capsys)
    assert qat_top1 >= float_top1 - 3.0

    # --resume builds the model with its fake quantizers again and loads the saved float weights into it
    trainer = train_mod.Trainer(parse("--resume", str(run)))
    assert count_fake_quantized(trainer.model) == 10
    last = torch.load(run / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(v, last[k]) for k, v in trainer.model.state_dict().items())

    # swinkit quantize on the run directory, unchanged
    out = tmp_path / "m.int8.onnx"
    capsys.readouterr()
    assert Q.main_args(["--checkpoint", str(run), "--calib", str(digits_folder() / "train"), "--out", str(out),
                        "--calib-images", "32", "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out.is_file() and info["quantized_nodes"] > 0 and E.read_metadata(out)["quantized"] == Q.QUANTIZED
    val = Q.calibration_files(digits_folder() / "val", None)
    int8 = E.OnnxModel(out)
    hits = [int8(x)[0].argmax() == int(f.parent.name) for f, x in zip(val, Q._inputs(val, int8.meta))]
    # the int8 file uses the grid QAT trained for (uint8 activations, 7-bit weights), so it keeps the QAT model's
    # accuracy within 2 points (7 digits); before the 7-bit default, int16 saturation on an AVX2-only CPU cost 3.1
    assert 100 * sum(hits) / len(hits) >= qat_top1 - 2.0
