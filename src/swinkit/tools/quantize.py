"""`swinkit quantize`: post-training static INT8 quantization of a classifier or segmenter with ONNX Runtime.

    swinkit quantize --checkpoint run/best.pt --calib images/ --out model.int8.onnx [--img-size 224 224]
                     [--calib-images 64] [--per-channel | --no-per-channel] [--reduce-range]
    swinkit predict --onnx model.int8.onnx cat.jpg                                # runs it unchanged

The model is exported to ONNX by `swinkit.tools.export.export` (height and width fixed at the export size, batch
dynamic) into a temporary fp32 file, calibrated on images of a folder (recursively; prepared exactly as
`predict_onnx` prepares them, with export.py's own `_read_image` / `preprocess`), and quantized with
`onnxruntime.quantization.quantize_static` in QDQ format: QInt8 weights, QUInt8 activations, MinMax calibration
(onnxruntime's advice for x86 CPUs with VNNI; `--reduce-range` for CPUs without it).

What is quantized: the MatMul / Gemm / Conv nodes that multiply by a weight (qkv, proj, the MLP, patch embedding and
merging, the head). Softmax, LayerNormalization, GELU, the position-bias and mask adds, and the two
activation-by-activation MatMuls of attention (q @ k^T, attn @ v) stay float: quantizing attn @ v would put the
softmax probabilities through 8 bits (a QuantizeLinear right after every Softmax).

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

from .export import ExportError, OnnxModel, _read_image, decode_metadata, preprocess

QUANTIZED = "int8 static (onnxruntime)"  # the value of the "quantized" metadata key
QUANT_OPS = ("MatMul", "Gemm", "Conv")
TASKS = ("classify", "segment")  # what quantize takes: models whose predictions are classes
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


class QuantizeError(ValueError):
    """A quantization that cannot be made; the message says what to do."""


def calibration_files(folder: str | Path, limit: int | None = 64) -> list[Path]:
    """Up to `limit` image files under `folder` (recursively), spread evenly over the sorted list so that every class
    folder contributes; QuantizeError when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise QuantizeError(f"calibration folder {folder} does not exist: expected a folder of images "
                            "(searched recursively)")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise QuantizeError(f"no images in {folder} (searched recursively for {', '.join(IMAGE_SUFFIXES)}): "
                            "calibration needs a few dozen images like those the model will see; point --calib at "
                            "such a folder")
    if limit is not None and len(files) > limit:
        files = [files[i * len(files) // limit] for i in range(limit)]
    return files


def _inputs(files: list[Path], meta: dict) -> list[np.ndarray]:
    """Each file as predict_onnx prepares it: (1, C, H, W) float32."""
    return [preprocess(_read_image(f, meta["input_shape"][1]), meta)[None] for f in files]


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


def _weight_nodes(model) -> list[str]:
    """Names of the MatMul / Gemm / Conv nodes with a weight (an initializer or Constant input); the
    activation-by-activation MatMuls of attention are left out."""
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type in QUANT_OPS and any(i in consts for i in n.input[1:2])]


def _props(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def agreement(fp32_path: str | Path, int8_path: str | Path, files: list[Path]) -> float:
    """Share of predictions that are the same under both files (images prepared as predict_onnx does): the top-1
    class of each image for a classifier, the class of each pixel for a segmenter."""
    a, b = OnnxModel(fp32_path), OnnxModel(int8_path)
    return float(np.mean([np.mean(a(x).argmax(1) == b(x).argmax(1)) for x in _inputs(files, a.meta)]))


def quantize_onnx(fp32_path: str | Path, out: str | Path, calib_files: list[str | Path], per_channel: bool = True,
                  reduce_range: bool = False) -> dict:
    """Quantize a classifier or segmenter written by `swinkit export --format onnx` to static INT8 at `out` and copy
    its metadata; returns {"out", "fp32_mb", "int8_mb", "calib_images", "agreement" (fp32 vs int8 on the calibration
    images: top-1 per image, or class per pixel), "quantized_nodes"}."""
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
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))  # shape inference + graph optimisation, as ORT advises
        nodes = _weight_nodes(onnx.load(str(prepared)))
        quantize_static(str(prepared), str(out), _reader(OnnxModel(fp32_path).input_name, batches),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANT_OPS), nodes_to_quantize=nodes,
                        per_channel=per_channel, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        # outputs stay float (MatMulIntegerToFloat): no DequantizeLinear in front of the bias adds,
                        # LayerNorm or Softmax, and closer logits (digits: max |diff| 0.08 instead of 0.17)
                        extra_options={"OpTypesToExcludeOutputQuantization": list(QUANT_OPS)})
    m = onnx.load(str(out))
    onnx.helper.set_model_props(m, {**props, "quantized": json.dumps(QUANTIZED)})
    onnx.save(m, str(out))
    return {"out": str(out), "fp32_mb": fp32_path.stat().st_size / 1e6, "int8_mb": out.stat().st_size / 1e6,
            "calib_images": len(calib_files), "quantized_nodes": len(nodes),
            "agreement": agreement(fp32_path, out, calib_files), "task": meta["task"]}


def quantize(model, out: str | Path, calib: str | Path, img_size: tuple[int, int] | None = None,
             calib_images: int = 64, per_channel: bool = True, reduce_range: bool = False, meta: dict | None = None,
             log=print) -> dict:
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
    parser.add_argument("--reduce-range", action="store_true",
                        help="7-bit weights, for x86 CPUs without VNNI (avoids saturation in their int8 kernels)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of text")


def run(args: argparse.Namespace) -> int:
    from .export import load_for_export

    try:
        if args.calib_images < 1:
            raise QuantizeError(f"--calib-images must be >= 1, got {args.calib_images}")
        model, meta = load_for_export(args.checkpoint)
        info = quantize(model, args.out, args.calib, args.img_size, args.calib_images, args.per_channel,
                        args.reduce_range, meta, log=lambda _: None)
    except (QuantizeError, ExportError, ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info))
    else:
        print(f"wrote {info['out']}: {info['int8_mb']:.2f} MB int8 (fp32 {info['fp32_mb']:.2f} MB, "
              f"{info['quantized_nodes']} MatMul/Gemm/Conv quantized); "
              f"{'top-1' if info['task'] == 'classify' else 'pixel'} agreement with fp32 "
              f"{100 * info['agreement']:.1f}% on {info['calib_images']} calibration images")
    return 0


def main_args(argv: list[str]) -> int:
    """`swinkit quantize ARGS` without the top-level CLI (for tests and scripts)."""
    parser = argparse.ArgumentParser(prog="swinkit quantize")
    add_arguments(parser, "quantize")
    return run(parser.parse_args(argv))
