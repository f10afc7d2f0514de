"""`swinkit quantize`: post-training static INT8 quantization of a classifier or segmenter with ONNX Runtime.

    swinkit quantize --checkpoint run/best.pt --calib images/ --out model.int8.onnx [--img-size 224 224]
                     [--calib-images 64] [--per-channel | --no-per-channel] [--reduce-range]
    swinkit predict --onnx model.int8.onnx cat.jpg                                # runs it unchanged

The model is exported to ONNX by `swinkit.tools.export.export` (the batch dynamic, height and width as the export
makes them) into a temporary fp32 file, calibrated on images of a folder (recursively; prepared exactly as
`predict_onnx` prepares them: swinkit.io.images.load_image, export.py's `preprocess`), and quantized with
`onnxruntime.quantization.quantize_static` in QDQ format: uint8 activations, int8 weights with 7-bit range
(`reduce_range`), MinMax calibration.

Why 7-bit weights: on x86 CPUs without VNNI (AVX2 alone, or AVX-512 without VNNI) onnxruntime multiplies u8 x s8
with VPMADDUBSW, which adds each pair of products in int16 and saturates above 32767. Two 8-bit products reach
2 x 255 x 127 = 64770; with weights in [-64, 64] they reach 2 x 255 x 64 = 32640 and never saturate. S8S8 files do
not help: onnxruntime shifts int8 activations to uint8 for the same instruction. On an AMD EPYC (AVX2 only) the
digits test model's 8-bit file agreed with fp32 on 90.5% of held-out digits, its 7-bit file on 99.4%, the same as
its QDQ arithmetic computed in float. VNNI CPUs add the products in int32, so the 7-bit file runs on them unchanged
at the same speed; `--no-reduce-range` gives 8-bit weights for files that will only run on VNNI, AMX or ARM CPUs.

The report is a check: the top-1 (or per-pixel) agreement with fp32 on the calibration images, once through the
CPU's int8 kernels and once through the file's QDQ arithmetic in float (onnxruntime without graph optimisation).
Below `--min-agreement` it warns, and the two figures say whether the kernels (saturation) or the 8-bit grid is to
blame, and what to try.

What is quantized: the MatMul / Gemm / Conv nodes that multiply by a weight (qkv, proj, the MLP, patch embedding and
merging, the head). Softmax, LayerNormalization, GELU, the position-bias and mask adds, and the two
activation-by-activation MatMuls of attention (q @ k^T, attn @ v) stay float: quantizing attn @ v would put the
softmax probabilities through 8 bits (a QuantizeLinear right after every Softmax).

What the file holds: the fp32 file's initializers with each quantized weight in 8 bits beside its scales, nothing
more. Before quantizing, only the weights that the export computes from initializers (a BatchNorm's scale multiplied
into a convolution) are folded into initializers; onnxruntime's graph optimiser, which quant_pre_process runs by
default, folded every constant expression into the file instead: each block's (heads, N, N) position bias and, at a
fixed export size, its bias + shift mask, (windows, heads, N, N). The CamVid UPerNet at 720x960 went from 17.2 MB
fp32 to 27.2 MB int8 that way; 7.2 MB now. onnxruntime still folds them, in memory, when a session loads the file.

The quantized file keeps the fp32 file's swinkit metadata_props (preprocessing, class names, sizes) plus
"quantized": "int8 static (onnxruntime)". Python: `quantize_onnx(fp32_path, out, calib_files)`, or `quantize(model,
out, calib_dir)` from a torch model.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..utils.cpu import describe as describe_cpu
from ..io.files import OutputError, atomic_write, check_outputs, dumps
from ..io.images import IMG_EXTENSIONS, load_image
from .export import ExportError, OnnxModel, decode_metadata, preprocess, quiet_exporters

QUANTIZED = "int8 static (onnxruntime)"  # the value of the "quantized" metadata key
QUANT_OPS = ("MatMul", "Gemm", "Conv")
REDUCE_RANGE = True  # 7-bit weights by default: no int16 saturation on any x86 CPU (module docstring)
MIN_AGREEMENT = 0.95  # below this share of predictions equal to fp32's, quantize warns
TASKS = ("classify", "segment")  # what quantize takes: models whose predictions are classes


class QuantizeError(ValueError):
    """A quantization that cannot be made; the message says what to do."""


def calibration_files(folder: str | Path, limit: int | None = 64) -> list[Path]:
    """Up to `limit` image files under `folder` (recursively), spread evenly over the sorted list so that every class
    folder contributes; QuantizeError when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise QuantizeError(f"calibration folder {folder} does not exist: expected a folder of images "
                            "(searched recursively)")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
    if not files:
        raise QuantizeError(f"no images in {folder} (searched recursively for {', '.join(IMG_EXTENSIONS)}): "
                            "calibration needs a few dozen images like those the model will see; point --calib at "
                            "such a folder")
    if limit is not None and len(files) > limit:
        files = [files[i * len(files) // limit] for i in range(limit)]
    return files


def _inputs(files: list[Path], meta: dict) -> list[np.ndarray]:
    """Each file as predict_onnx prepares it: (1, C, H, W) float32."""
    return [preprocess(load_image(f, meta["input_shape"][1]), meta)[None] for f in files]


def _reader(name: str, batches: list[np.ndarray]):
    """An onnxruntime CalibrationDataReader over prepared inputs."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(batches)

        def get_next(self) -> dict | None:
            x = next(self.items, None)
            return None if x is None else {name: x}

        def rewind(self) -> None:
            self.items = iter(batches)

    return Reader()


def _fold_weights(model) -> None:
    """Store as an initializer each MatMul / Gemm / Conv weight or bias that the export computes from initializers
    alone (a BatchNorm's scale multiplied in, a Split of fused convolutions), so that quantize_static sees a weight.
    Every other constant expression stays a computation (module docstring: what the file holds)."""
    import onnx
    from onnx.reference import ReferenceEvaluator
    from onnxscript.optimizer import remove_unused_nodes

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    const = set(inits)  # tensors computed from initializers (and Constant nodes) alone
    for n in g.node:  # ONNX keeps nodes in topological order
        if all(i in const for i in n.input if i):
            const.update(n.output)
    targets = list(dict.fromkeys(i for n in g.node if n.op_type in QUANT_OPS for i in n.input[1:3]
                                 if i in const and i not in inits))
    if not targets:
        return
    producer = {o: n for n in g.node for o in n.output}
    needed, stack = set(), list(targets)
    while stack:  # the nodes that compute the targets
        n = producer.get(stack.pop())
        if n is not None and id(n) not in needed:
            needed.add(id(n))
            stack += [i for i in n.input if i]
    nodes = [n for n in g.node if id(n) in needed]
    used = {i for n in nodes for i in n.input}
    sub = onnx.helper.make_model(onnx.helper.make_graph(
        nodes, "weights", [], [onnx.helper.make_empty_tensor_value_info(t) for t in targets],
        [inits[i] for i in used if i in inits]), opset_imports=model.opset_import, ir_version=model.ir_version)
    for name, value in zip(targets, ReferenceEvaluator(sub).run(None, {})):
        g.initializer.append(onnx.numpy_helper.from_array(np.asarray(value), name))
    kept = [n for n in g.node if not set(n.output) & set(targets)]
    del g.node[:]
    g.node.extend(kept)
    remove_unused_nodes(model)  # the weights' float sources and the ops that combined them


def _weight_nodes(model) -> list[str]:
    """Names of the MatMul / Gemm / Conv nodes with a weight (an initializer or Constant input); the
    activation-by-activation MatMuls of attention are left out."""
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type in QUANT_OPS and any(i in consts for i in n.input[1:2])]


def _props(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _predictions(model: OnnxModel, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The class of each image (classifier) or of each pixel (segmenter)."""
    return [model(x).argmax(1) for x in inputs]


def agreement(fp32_path: str | Path, int8_path: str | Path, files: list[Path], optimized: bool = True) -> float:
    """Share of predictions that are the same under both files (images prepared as predict_onnx does): the top-1
    class of each image for a classifier, the class of each pixel for a segmenter. optimized=False runs the int8 file
    without onnxruntime's fusions, so its QDQ arithmetic in float instead of the CPU's int8 kernels."""
    a, b = OnnxModel(fp32_path), OnnxModel(int8_path, optimized)
    inputs = _inputs(files, a.meta)
    return float(np.mean([np.mean(p == q) for p, q in zip(_predictions(a, inputs), _predictions(b, inputs))]))


def advice(info: dict, min_agreement: float = MIN_AGREEMENT) -> str | None:
    """What to try when a quantize_onnx report agrees with fp32 below `min_agreement`; None when it does not."""
    kernels, math = info["agreement"], info["agreement_float_qdq"]
    if kernels >= min_agreement:
        return None
    head = (f"the int8 file agrees with fp32 on {100 * kernels:.1f}% of predictions, below "
            f"{100 * min_agreement:.1f}% (its QDQ arithmetic in float agrees on {100 * math:.1f}%): ")
    if math - kernels > 1 - min_agreement:
        fix = ("this CPU's int8 kernels lose what the quantization kept (int16 saturation on x86 without VNNI); "
               + ("quantize again with --reduce-range" if not info["reduce_range"] else
                  "report it with this CPU's name, and meanwhile run the fp32 file"))
    else:
        fix = ("the 8-bit grid itself costs accuracy; try more calibration images (--calib-images), "
               + ("per-channel weights (--per-channel), " if not info["per_channel"] else "")
               + "a fine-tune with `swinkit train --qat`, or keep this model in fp32")
    return head + fix


def quantize_onnx(fp32_path: str | Path, out: str | Path, calib_files: list[str | Path], per_channel: bool = True,
                  reduce_range: bool = REDUCE_RANGE, types: tuple[str, str] = ("QUInt8", "QInt8")) -> dict:
    """Quantize a classifier or segmenter written by `swinkit export --format onnx` to static INT8 at `out` and copy
    its metadata; returns {"out", "fp32_mb", "int8_mb", "calib_images", "quantized_nodes", "task", "per_channel",
    "reduce_range", "cpu" (this CPU and its features), "agreement" (fp32 vs int8 through this CPU's int8 kernels on
    the calibration images: top-1 per image, or class per pixel), "agreement_float_qdq" (the same with the int8
    file's QDQ arithmetic in float)}. types: onnxruntime's QuantType names of the activations and the weights (other
    pairs than U8S8 are for comparisons: benchmarks/int8_formats.py)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, out, calib_files = Path(fp32_path), Path(out), [Path(f) for f in calib_files]
    props = _props(fp32_path)
    meta = decode_metadata(props)
    if "input_shape" not in meta:
        raise QuantizeError(f"{fp32_path} has no swinkit metadata (input_shape, mean, std, ...): expected a file "
                            "written by `swinkit export --format onnx`")
    if meta["task"] not in TASKS:
        raise QuantizeError(f"{fp32_path} is a {meta['task']} model: swinkit quantize takes classifiers and "
                            "segmenters (it checks the int8 file by the agreement of their class predictions); "
                            "quantize other models with onnxruntime's quantize_static directly")
    if not calib_files:
        raise QuantizeError("no calibration images given: expected a few dozen images like those the model will see")
    batches = _inputs(calib_files, meta)
    with tempfile.TemporaryDirectory() as tmp, quiet_exporters():
        prepared, fp32 = Path(tmp) / "prepared.onnx", onnx.load(str(fp32_path))
        _fold_weights(fp32)
        # ONNX's shape inference alone: onnxruntime's graph optimisation would fold every constant into the file (it
        # runs when a session loads the file instead), and its symbolic shape inference stops short of the window
        # arithmetic of an export with dynamic height and width (and then writes a debugging file into the cwd)
        quant_pre_process(fp32, str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        nodes = _weight_nodes(onnx.load(str(prepared)))
        int8 = Path(tmp) / "int8.onnx"
        quantize_static(str(prepared), str(int8), _reader(OnnxModel(fp32_path).input_name, batches),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANT_OPS), nodes_to_quantize=nodes,
                        per_channel=per_channel, reduce_range=reduce_range, activation_type=QuantType[types[0]],
                        weight_type=QuantType[types[1]],
                        # outputs stay float (MatMulIntegerToFloat): no DequantizeLinear in front of the bias adds,
                        # LayerNorm or Softmax, and closer logits (digits: max |diff| 0.08 instead of 0.17)
                        extra_options={"OpTypesToExcludeOutputQuantization": list(QUANT_OPS)})
        m = onnx.load(str(int8))
    for n in m.graph.node:  # the exporter's per-node stack traces and module names, as large as the weights of a
        del n.metadata_props[:]  # small model: the fp32 file keeps them for debugging
    onnx.helper.set_model_props(m, {**props, "quantized": json.dumps(QUANTIZED)})
    atomic_write(out, lambda p: onnx.save(m, str(p)))
    return {"out": str(out), "fp32_mb": fp32_path.stat().st_size / 1e6, "int8_mb": out.stat().st_size / 1e6,
            "calib_images": len(calib_files), "quantized_nodes": len(nodes), "task": meta["task"],
            "per_channel": per_channel, "reduce_range": reduce_range, "cpu": describe_cpu(),
            "agreement": agreement(fp32_path, out, calib_files),
            "agreement_float_qdq": agreement(fp32_path, out, calib_files, optimized=False)}


def quantize(model, out: str | Path, calib: str | Path, img_size: tuple[int, int] | None = None,
             calib_images: int = 64, per_channel: bool = True, reduce_range: bool = REDUCE_RANGE,
             meta: dict | None = None, log=print) -> dict:
    """Export a classifier or segmenter (torch) to a temporary fp32 ONNX file, then `quantize_onnx` it to `out`."""
    from .export import export, family

    if family(model)[0] not in TASKS:
        raise QuantizeError(f"cannot quantize a {type(model).__name__}: swinkit quantize takes classifiers "
                            "(SwinTransformer) and segmenters (UPerNet, FPN, Swin-UNet)")
    files = calibration_files(calib, calib_images)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export(model, fp32, "onnx", img_size, meta=meta, log=log)
        return quantize_onnx(fp32, out, files, per_channel, reduce_range)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--checkpoint", required=True, help="run directory (its best.pt) or any classifier "
                                                            "or segmenter checkpoint swinkit reads")
    parser.add_argument("--calib", required=True, type=Path, help="folder of calibration images (recursively)")
    parser.add_argument("--out", required=True, type=Path, help="the int8 .onnx file to write")
    parser.add_argument("--img-size", type=int, nargs=2, metavar=("H", "W"), help="export size; default the model's")
    parser.add_argument("--calib-images", type=int, default=64, help="images used for calibration (spread evenly "
                                                                     "over the folder's sorted files)")
    parser.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True,
                        help="one weight scale per output channel (more accurate) or per tensor (a little faster)")
    parser.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=REDUCE_RANGE,
                        help="7-bit weights (default): right on every x86 CPU; --no-reduce-range gives 8-bit weights, "
                             "which saturate the int8 kernels of x86 CPUs without VNNI: only for files that run on "
                             "VNNI, AMX or ARM CPUs alone")
    parser.add_argument("--min-agreement", type=float, default=MIN_AGREEMENT,
                        help="warn when fewer predictions than this share agree with fp32 on the calibration images")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of text")


def run(args: argparse.Namespace) -> int:
    from .export import load_for_export

    try:
        check_outputs([args.out], [args.checkpoint, args.calib], args.overwrite)
        if args.calib_images < 1:
            raise QuantizeError(f"--calib-images must be >= 1, got {args.calib_images}")
        if not 0 <= args.min_agreement <= 1:
            raise QuantizeError(f"--min-agreement is a share of predictions between 0 and 1, got {args.min_agreement}")
        model, meta = load_for_export(args.checkpoint)
        info = quantize(model, args.out, args.calib, args.img_size, args.calib_images, args.per_channel,
                        args.reduce_range, meta, log=lambda _: None)
    except (QuantizeError, ExportError, OutputError, ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(dumps(info))
    else:
        print(f"wrote {info['out']}: {info['int8_mb']:.2f} MB int8 (fp32 {info['fp32_mb']:.2f} MB, "
              f"{info['quantized_nodes']} MatMul/Gemm/Conv quantized, uint8 activations x "
              f"{'7' if info['reduce_range'] else '8'}-bit weights)\n"
              f"calibrated on {info['cpu']}\n"
              f"{'top-1' if info['task'] == 'classify' else 'pixel'} agreement with fp32 on {info['calib_images']} "
              f"calibration images: {100 * info['agreement']:.1f}% (QDQ arithmetic in float: "
              f"{100 * info['agreement_float_qdq']:.1f}%)")
    warning = advice(info, args.min_agreement)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def main_args(argv: list[str]) -> int:
    """`swinkit quantize ARGS` without the top-level CLI (for tests and scripts)."""
    parser = argparse.ArgumentParser(prog="swinkit quantize")
    add_arguments(parser, "quantize")
    return run(parser.parse_args(argv))
