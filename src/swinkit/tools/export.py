"""`swinkit export`: a model as ONNX, a torch.export program (.pt2) or TorchScript, with its preprocessing stored
beside it, verified against the eager model; and `predict_onnx`, predictions from an exported ONNX file with
numpy, PIL and onnxruntime only.

    swinkit export --checkpoint run/best.pt --format onnx --out model.onnx [--img-size 224 224] [--opset 18]
    swinkit export --checkpoint run/best.pt --out model.224.onnx --static 224 224   # a fixed-size file
    swinkit predict --onnx model.onnx cat.jpg street.png                        # any image size (predict.py)

Sizes: the batch is always dynamic, and so are height and width (and frames for video): under torch.export the
window code sees symbolic sizes and computes its window counts, padding, gather indices, shift-region and padding
masks and position-bias indices in the graph (nn.windows.graph_windows), so one file takes any size. A dynamic file is
verified against eager at five sizes (`verify_sizes`: square, non-square, not window multiples, a last stage smaller
than a window) and batches 1 and 3. `--static H W` writes a file fixed at one size. Where a dynamic export fails, the
file is fixed at the export size and the metadata says why (`input_shape` holds an axis name for a dynamic axis, the
number for a fixed one; `fixed_reason`). TorchScript traces, which records sizes as constants: it is always fixed.

Metadata (ONNX metadata_props; FILE.json beside a .pt2 or TorchScript file, and inside TorchScript's extra files):
every value JSON-encoded - task, layout, input_shape, ranges, export_size, value_range, mean, std, resize,
class_names (palette for segmentation, upscale for restoration), output, swinkit_version, format.

The part above `# ---- export` imports no torch (only swinkit.io.files and swinkit.io.images, which import none
either; swinkit/__init__.py is lazy): a deployment needs numpy, pillow and onnxruntime.

While exporting, blocks attend all windows in one call (their memory chunks are sized from the batch), and the
window caches are cleared after each export (they would keep torch.export's fake tensors).
"""
from __future__ import annotations

import argparse
import contextlib
import json as json_module
import logging
import os
import sys
import warnings
import types
from pathlib import Path

import numpy as np

from ..io.files import atomic_write, dumps, first_line, plan_outputs
from ..io.images import load_image

FORMATS = ("onnx", "pt2", "torchscript")
STATIC_REASON = "exported with --static, for runtimes that want a fixed size"
TOLERANCE = 1e-4  # max |exported - eager| / max(1, max |eager|)
METADATA_FILE = "swinkit.json"  # TorchScript's extra file
AXES = {"NCHW": ("batch", "channels", "height", "width"), "NCTHW": ("batch", "channels", "frames", "height", "width")}


class ExportError(ValueError):
    """An export that cannot be made or does not match the eager model; the message says what to do."""


# ----------------------------------------------------------------------------------------------------------
# deployment: read the metadata, check and prepare inputs, run onnxruntime (no torch)


def decode_metadata(props: dict[str, str]) -> dict:
    """ONNX metadata_props (string -> JSON string) -> dict; keys that are not JSON stay strings."""
    out = {}
    for k, v in props.items():
        try:
            out[k] = json_module.loads(v)
        except ValueError:
            out[k] = v
    return out


def check_input_shape(meta: dict, shape: tuple[int, ...], source: str = "the model") -> None:
    """Raise ExportError unless `shape` fits meta["input_shape"] (names: dynamic axes, within meta["ranges"])."""
    expected, names = meta["input_shape"], AXES[meta["layout"]]
    if len(shape) != len(expected):
        raise ExportError(f"{source} takes {len(expected)}-D {meta['layout']} inputs {expected}; got shape "
                          f"{list(shape)}")
    if isinstance(expected[1], int) and shape[1] != expected[1]:
        raise ExportError(f"{source} takes {expected[1]} channels; got {shape[1]} in shape {list(shape)}")
    if any(isinstance(e, int) and s != e for s, e in zip(shape[2:], expected[2:])):
        size, got = "x".join(map(str, expected[2:])), "x".join(map(str, shape[2:]))
        raise ExportError(f"{source} takes {size} inputs only ({meta.get('fixed_reason') or 'a fixed size'}); got "
                          f"{got}. Resize the input to {size}, or re-export with --img-size "
                          f"{' '.join(map(str, shape[2:]))}.")
    for axis, (got, want) in enumerate(zip(shape, expected)):
        lo, hi = (meta.get("ranges") or {}).get(names[axis], [None, None])
        if isinstance(want, str) and ((lo is not None and got < lo) or (hi is not None and got > hi)):
            raise ExportError(f"{source} takes {names[axis]} in [{lo}, {hi if hi is not None else 'inf'}]; got {got} "
                              f"in shape {list(shape)}")


class OnnxModel:
    """An exported ONNX file on onnxruntime's CPU provider, with its swinkit metadata: `model(x)` checks x's shape
    against the metadata (a clear error instead of onnxruntime's) and returns the first output."""

    def __init__(self, path: str | Path, optimized: bool = True):
        """optimized=False runs the graph as written, with no fusion: a QDQ file's int8 layers then run as
        DequantizeLinear + float MatMul, the exact arithmetic of its scales without the CPU's int8 kernels."""
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"ONNX file {path} does not exist: expected a file written by `swinkit export`")
        options = ort.SessionOptions()
        if not optimized:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own classes for every unreadable file
            raise ExportError(f"{path} is not a readable ONNX file ({first_line(e)}): expected a file written by "
                              "`swinkit export`; export it again") from None
        self.meta = decode_metadata(self.session.get_modelmeta().custom_metadata_map)
        if "input_shape" not in self.meta:
            raise ExportError(f"{path} has no swinkit metadata (input_shape, mean, std, ...): expected a file written "
                              "by `swinkit export --format onnx`")
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        check_input_shape(self.meta, tuple(x.shape), str(self.path))
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def _fixed_size(meta: dict) -> tuple[int, int] | None:
    hw = meta["input_shape"][-2:]
    return tuple(hw) if all(isinstance(s, int) for s in hw) else None


def _resize_short_side(img, size: int, resample):
    """torchvision's Resize(int): the shorter side to `size`, the longer one scaled and truncated."""
    w, h = img.size
    if min(w, h) == size:
        return img
    if w <= h:
        return img.resize((size, int(size * h / w)), resample)
    return img.resize((int(size * w / h), size), resample)


def _center_crop(img, size: tuple[int, int]):
    """torchvision's CenterCrop for a crop no larger than the image: offsets rounded half to even."""
    w, h = img.size
    top, left = int(round((h - size[0]) / 2.0)), int(round((w - size[1]) / 2.0))
    return img.crop((left, top, left + size[1], top + size[0]))


def preprocess(img, meta: dict) -> np.ndarray:
    """A PIL image -> (C, H, W) float32 as the exported model takes it: resized as meta["resize"] says, scaled to
    meta["value_range"] ([0, 1]), then (x - mean) / std."""
    from PIL import Image

    resize = meta.get("resize") or {"mode": "none"}
    if resize["mode"] == "short_side_then_center_crop":
        size = meta["export_size"][-2:]
        crop = resize["crop_pct"]
        if size[0] == size[1]:
            img = _resize_short_side(img, int(size[0] / crop), Image.BICUBIC)
        else:
            img = img.resize((int(size[1] / crop), int(size[0] / crop)), Image.BICUBIC)
        img = _center_crop(img, tuple(size))
    elif resize["mode"] == "to_fixed_size" and _fixed_size(meta) and img.size[::-1] != _fixed_size(meta):
        h, w = _fixed_size(meta)
        img = img.resize((w, h), Image.BILINEAR)
    a = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, C) in [0, 1]
    a = a[..., None] if a.ndim == 2 else a
    mean, std = np.asarray(meta["mean"], np.float32), np.asarray(meta["std"], np.float32)
    return np.ascontiguousarray(((a - mean) / std).transpose(2, 0, 1))  # (C, H, W)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _mask_png(mask: np.ndarray, palette: list | None):
    """(H, W) class indices -> a palette PNG whose pixel values are the indices (16-bit beyond 256 classes)."""
    from PIL import Image

    if palette is None or len(palette) > 256:
        return Image.fromarray(mask.astype(np.uint16 if mask.max(initial=0) > 255 else np.uint8))
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette([v for c in palette for v in c])
    return img


def predict_onnx(files: list[str | Path], onnx_path: str | Path, topk: int = 5, json: bool = False,
                 out: str | Path = "predictions", overwrite: bool = False) -> int:
    """`swinkit predict --onnx FILE IMAGE...` without PyTorch: the top-k classes of a classifier (one line or one
    JSON line per image), or for a segmenter a class-index PNG per image in `out` (at the image's size; existing
    files only with `overwrite`, never an input). Returns the exit status: 1 when a file could not be read or
    predicted."""
    model = OnnxModel(onnx_path)
    meta = model.meta
    task = meta["task"]
    if task not in ("classify", "segment"):
        raise ExportError(f"{onnx_path} is a {task} model: predict --onnx takes classification and segmentation "
                          "models; run other exports with onnxruntime directly (metadata_props say how to prepare "
                          "the input)")
    if topk < 1:
        raise ExportError(f"topk must be >= 1, got {topk}")
    channels = meta["input_shape"][1]
    plan = plan_outputs(files, out, ("{stem}.png",), overwrite) if task == "segment" else [()] * len(files)
    failed = 0
    for path, outs in zip(files, plan):
        try:
            img = load_image(path, channels)
            x = preprocess(img, meta)[None]  # (1, C, H, W)
            y = model(x)[0]
            if not np.isfinite(y).all():
                raise ValueError(f"the model's output holds NaN or infinite values: the weights in {onnx_path} "
                                 "are broken; export a working checkpoint")
        except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: onnxruntime's
            failed += 1
            print(f"error: cannot predict {path}: {e}", file=sys.stderr)
            continue
        if task == "classify":
            prob = _softmax(y.astype(np.float64))
            top = np.argsort(-prob, kind="stable")[:topk]
            names = meta["class_names"]
            preds = [{"class": names[i], "index": int(i), "prob": float(prob[i])} for i in top]
            print(dumps({"image": str(path), "predictions": preds}) if json else
                  f"{path}: " + ", ".join(f"{p['class']} {100 * p['prob']:.1f}%" for p in preds))
            continue
        from PIL import Image

        mask = y.argmax(0)  # (h, w) at the size the model ran at
        png = _mask_png(mask, meta.get("palette"))
        if png.size != img.size:
            png = png.resize(img.size, Image.NEAREST)
        mask_path = outs[0]
        atomic_write(mask_path, lambda p: png.save(p, format="PNG"))
        counts = np.bincount(np.asarray(png).ravel(), minlength=len(meta["class_names"]))
        share = {meta["class_names"][i]: float(counts[i] / counts.sum()) for i in np.argsort(-counts) if counts[i]}
        print(dumps({"image": str(path), "mask": str(mask_path), "classes": share}) if json else
              f"{path}: {mask_path} " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in share.items()))
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------------------
# export (torch from here on)


DETECTION_UNSUPPORTED = (
    "cannot export a {name}: swinkit export does not support detectors (torchvision's MaskRCNN / FasterRCNN / "
    "RetinaNet / FCOS take a list of images of any sizes and return a list of dicts with a data-dependent number of "
    "boxes; exporting and verifying that is not implemented). Supported: classification (SwinTransformer), "
    "segmentation (SegmentationModel, SwinUNet), restoration (SwinIR) and video (VideoSwinTransformer); run "
    "detectors in PyTorch")


def family(model) -> tuple[str, str]:
    """(task, layout) of a model's exports, from its family (swinkit.families): classify / segment / restore /
    video; ExportError for detectors and others."""
    from ..families import FAMILIES, family_of_model

    fam = family_of_model(model)
    if fam is not None and fam.export is not None:
        return fam.export
    if fam is not None or type(model).__module__.startswith("torchvision.models.detection"):
        raise ExportError(DETECTION_UNSUPPORTED.format(name=type(model).__name__))
    classes = ", ".join(c.__name__ for f in FAMILIES if f.export for c in f.models())
    raise ExportError(f"cannot export a {type(model).__name__}: expected a model of a swinkit family ({classes})")


def _in_chans(model) -> int:
    cfg = model.cfg
    return cfg.in_chans if hasattr(cfg, "in_chans") else cfg.backbone.in_chans


def default_size(model) -> tuple[int, ...]:
    """The model's own input size: (H, W), or (T, H, W) for video."""
    cfg = model.cfg
    size = getattr(cfg, "img_size", None) or cfg.backbone.img_size
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)


def export_metadata(model, meta: dict | None = None) -> dict:
    """What a deployment needs to prepare inputs and read outputs, from the model and its checkpoint's task meta
    (swinkit.tasks: class_names, data mean / std / crop_pct, labels); sizes are added by `export`."""
    import swinkit

    from ..data import IMAGENET_MEAN, IMAGENET_STD

    task, layout = family(model)
    meta = meta or {}
    data = meta.get("data") or {}
    c = _in_chans(model)
    mean, std = list(data.get("mean", IMAGENET_MEAN)), list(data.get("std", IMAGENET_STD))
    if len(mean) != c:  # e.g. a grayscale model: the channel average
        mean, std = [sum(mean) / len(mean)] * c, [sum(std) / len(std)] * c
    out = {"task": task, "layout": layout, "value_range": [0.0, 1.0], "mean": mean, "std": std,
           "swinkit_version": swinkit.__version__, "model": type(model).__name__}
    n = getattr(model, "num_classes", 0)
    if task == "classify":
        out["class_names"] = list(meta.get("class_names") or [str(i) for i in range(n)])
        out["resize"] = {"mode": "short_side_then_center_crop", "crop_pct": data.get("crop_pct", 0.875),
                         "interpolation": "bicubic"}
        out["output"] = "(batch, classes) logits"
    elif task == "video":
        out["class_names"] = list(meta.get("class_names") or [str(i) for i in range(n)])
        out["resize"] = {"mode": "short_side_then_center_crop", "crop_pct": data.get("crop_pct", 0.875),
                         "interpolation": "bicubic", "frames": data.get("frames"),
                         "frame_stride": data.get("frame_stride")}
        out["output"] = "(batch, classes) logits"
    elif task == "segment":
        labels = meta.get("labels") or {}
        out["class_names"] = list(labels.get("names") or [str(i) for i in range(n)])
        if labels.get("palette"):
            out["palette"] = [list(p) for p in labels["palette"]]
        out["resize"] = {"mode": "to_fixed_size", "interpolation": "bilinear", "note": "whole image at its own size "
                         "when height and width are dynamic; else resized to the fixed size, mask resized back"}
        out["output"] = "(batch, classes, height, width) logits"
    else:  # restore: SwinIR subtracts its own mean; the input is [0, 1] as it is
        out["mean"], out["std"] = [0.0] * c, [1.0] * c
        out["upscale"] = model.cfg.upscale
        out["resize"] = {"mode": "none"}
        out["output"] = f"(batch, channels, {model.cfg.upscale}*height, {model.cfg.upscale}*width) in [0, 1]"
    return out


def _example(model, task: str, batch: int, size: tuple[int, ...], seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    shape = (batch, _in_chans(model), *size)
    return torch.rand(shape, generator=g) if task == "restore" else torch.randn(shape, generator=g)


def _dynamic_shapes(ndim: int, spatial: bool) -> tuple[dict]:
    from torch.export import Dim

    return ({0: Dim.AUTO, **({a: Dim.AUTO for a in range(2, ndim)} if spatial else {})},)


def _shape_from_program(ep, layout: str) -> tuple[list, dict]:
    """(input_shape with axis names for symbolic dims, {axis name: [lo, hi]}) of an ExportedProgram's input."""
    node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name in ep.graph_signature.user_inputs)
    names, shape, ranges = AXES[layout], [], {}
    for axis, d in enumerate(node.meta["val"].shape):
        if isinstance(d, int):
            shape.append(d)
            continue
        shape.append(names[axis])
        r = ep.range_constraints.get(d.node.expr)
        lo = _finite(r.lower) if r else None
        # torch.export's bounds start at 0 (size-oblivious) or 2 (its 0/1 specialisation); the graph takes 1
        ranges[names[axis]] = [1 if lo is not None and lo <= 2 else lo, _finite(r.upper) if r else None]
    return shape, ranges


def _finite(v) -> int | None:
    try:
        v = int(v)
    except Exception:  # noqa: BLE001 - sympy / torch infinities raise several kinds
        return None
    return v if abs(v) < 2**62 else None  # torch's stand-in for "no bound"


def _shape_from_onnx(path: Path, layout: str) -> list:
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else AXES[layout][i] for i, d in enumerate(dims)]


def _torch_export(model, x, spatial: bool):
    """torch.export of model(x) with a dynamic batch (and dynamic sizes with `spatial`); the window caches, which
    now hold the export's fake tensors, are cleared."""
    import torch
    import torch.fx.experimental._config  # noqa: F401 - torch.fx.experimental._config.patch below

    from ..nn.windows import clear_caches

    try:  # size-oblivious, as torch.onnx's own capture: no guard may tie a size to 1 (a one-window stage) or not
        with torch.fx.experimental._config.patch(backed_size_oblivious=True):
            return torch.export.export(model, (x,), dynamic_shapes=_dynamic_shapes(x.ndim, spatial))
    finally:
        clear_caches()


def _onnx_by_tracing(model, x, out: Path, layout: str, opset: int) -> tuple[list, dict, str]:
    """The TorchScript-based exporter (any opset): a dynamic batch, the traced height and width."""
    import torch

    torch.onnx.export(model, (x,), str(out), dynamo=False, input_names=["pixels"], output_names=["output"],
                      dynamic_axes={"pixels": {0: "batch"}, "output": {0: "batch"}}, opset_version=opset)
    return _shape_from_onnx(out, layout), {}, "torch.onnx (TorchScript-based)"


def _save(fmt: str, ep, model, x, out: Path, layout: str, opset: int) -> tuple[list, dict, str]:
    """Write an ExportedProgram as pt2, or as ONNX through the dynamo exporter (opset >= 18, its minimum); ONNX
    falls back to the TorchScript-based exporter when there is no program or the dynamo exporter fails."""
    import torch

    if fmt == "pt2":
        torch.export.save(ep, str(out))
        return (*_shape_from_program(ep, layout), "torch.export")
    if ep is not None and opset >= 18:
        try:
            program = torch.onnx.export(ep, (x,), dynamo=True, input_names=["pixels"], output_names=["output"],
                                        opset_version=opset, verbose=False)
            program.save(str(out))
            return _shape_from_onnx(out, layout), _shape_from_program(ep, layout)[1], "torch.onnx (dynamo)"
        except Exception:  # noqa: BLE001 - any exporter failure: the tracing exporter still gives a file (the
            pass           # metadata's "exporter" says which one wrote it)
    return _onnx_by_tracing(model, x, out, layout, opset)


def _export_torchscript(model, x, out: Path, layout: str) -> tuple[list, dict, str]:
    import torch

    traced = torch.jit.trace(model, (x,), check_trace=False)
    traced.save(str(out))
    return ["batch", *x.shape[1:]], {}, "torch.jit.trace"


def _load_runner(fmt: str, out: Path, checked: bool = True):
    """A numpy -> numpy callable running the exported file (ONNX: through OnnxModel's shape check when `checked`)."""
    if fmt == "onnx" and checked:
        return OnnxModel(out)
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {session.get_inputs()[0].name: x})[0]
    import torch

    module = torch.export.load(str(out)).module() if fmt == "pt2" else torch.jit.load(str(out))

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()
    return run


def verify_sizes(model, size: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Sizes a dynamic file is verified at: the export size, and four more that move every stage's map (see
    _other_size), make it non-square and not a multiple of the window, and shrink it so that the last stage's map is
    smaller than a window (for video, frames change too)."""
    step = _size_step(model)
    *t, h, w = size
    small = [max(1, v // 2) for v in t] + [max(step // 2 + 1, 5), max(step // 2 + 3, 7)]
    return [tuple(size), _other_size(size, step), (*t, h + step // 2 + 1, w + 3), (*t, h + 5, max(w - step, 5)),
            tuple(small)]


def _other_size(size: tuple[int, ...], step: int) -> tuple[int, ...]:
    """A second size to verify at: each spatial axis grown by `step` (frames by 2), so windows and padding change."""
    return (*(s + 2 for s in size[:-2]), *(s + step for s in size[-2:]))


def verify(model, fmt: str, out: Path, task: str, sizes: list[tuple[int, ...]], batches: tuple[int, ...] = (1, 3),
           tolerance: float = TOLERANCE, log=print, checked: bool = True) -> list[dict]:
    """Exported vs eager at every size and batch: rows {"batch", "size", "max_abs_diff", "relative"}, printed; an
    ExportError naming the worst when any relative diff (max |a - b| / max(1, max |eager|)) exceeds `tolerance`."""
    import torch

    runner, rows = _load_runner(fmt, out, checked), []
    for size in sizes:
        for b in batches:
            x = _example(model, task, b, size, seed=len(rows) + 1)
            with torch.no_grad():
                ref = model(x).numpy()
            got = runner(x.numpy())
            if got.shape != ref.shape:
                raise ExportError(f"{out} at batch {b}, size {'x'.join(map(str, size))}: output shape "
                                  f"{list(got.shape)}, eager {list(ref.shape)}")
            if not np.isfinite(ref).all():
                raise ExportError(f"the model's own output at batch {b}, size {'x'.join(map(str, size))} holds NaN "
                                  "or infinite values, so no export of it can be checked: its weights are broken "
                                  "(retrain, or export an earlier checkpoint)")
            diff = float(np.abs(got - ref).max())  # NaN when the export computes NaN: a failure below
            rows.append({"batch": b, "size": list(size), "max_abs_diff": diff,
                         "relative": diff / max(1.0, float(np.abs(ref).max()))})
            log(f"verify {fmt}: batch {b} size {'x'.join(map(str, size))}: max |diff| {diff:.2e} "
                f"(relative {rows[-1]['relative']:.2e}, tolerance {tolerance:.0e})")
    worst = max(rows, key=lambda r: (not r["relative"] <= tolerance, r["relative"]))  # NaN compares false
    if not worst["relative"] <= tolerance:
        raise ExportError(f"{out} does not match the eager model: relative max |diff| {worst['relative']:.2e} > "
                          f"{tolerance:.0e} at batch {worst['batch']}, size {'x'.join(map(str, worst['size']))}. "
                          "Re-export with a fixed size (--img-size of your inputs) or report it as a bug")
    return rows


def _write_metadata(fmt: str, out: Path, meta: dict) -> None:
    if fmt == "onnx":
        import onnx

        m = onnx.load(str(out))
        props = {p.key: p.value for p in m.metadata_props}
        props.update({k: json_module.dumps(v) for k, v in meta.items()})
        onnx.helper.set_model_props(m, props)
        onnx.save(m, str(out))
        return
    if fmt == "torchscript":  # also inside the file, read back with torch.jit.load(path, _extra_files=...)
        import torch

        m = torch.jit.load(str(out))
        torch.jit.save(m, str(out), _extra_files={METADATA_FILE: json_module.dumps(meta)})
    Path(f"{out}.json").write_text(json_module.dumps(meta, indent=1) + "\n")


def read_metadata(path: str | Path) -> dict:
    """The swinkit metadata of an exported file: ONNX metadata_props, else FILE.json beside it."""
    path = Path(path)
    if path.suffix == ".onnx" or not Path(f"{path}.json").exists():
        import onnx

        return decode_metadata({p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props})
    return json_module.loads(Path(f"{path}.json").read_text())


def _size_step(model) -> int:
    """A size change that moves every stage's map: the total stride (patch x 2^(stages - 1)), or a window for SwinIR."""
    cfg = model.cfg
    if hasattr(cfg, "upscale"):
        return cfg.window_size
    cfg = getattr(cfg, "backbone", cfg)
    return tuple(cfg.patch)[-1] * 2 ** (len(cfg.depths) - 1)


def _export_checked(model, x, out: Path, fmt: str, layout: str, task: str, second: tuple[int, ...], opset: int,
                    static: bool = False):
    """(input_shape, ranges, exporter, fixed_reason): torch.export with dynamic sizes first, kept only when the file
    is right at `second`; else (or with `static`) with height and width (and frames) fixed. TorchScript always
    traces fixed sizes."""
    if fmt == "torchscript":
        return (*_export_torchscript(model, x, out, layout), "torch.jit.trace records the window indices and masks "
                "of the traced size as constants")
    reason = STATIC_REASON if static else None
    try:
        if static:
            raise ExportError(STATIC_REASON)
        ep = _torch_export(model, x, True)
    except Exception as e:  # noqa: BLE001 - a model whose code cannot take symbolic sizes
        reason = reason or f"torch.export could not make the sizes symbolic: {_first_line(e)}"
    else:
        shape, ranges, how = _save(fmt, ep, model, x, out, layout, opset)
        fixed = [AXES[layout][i] for i in range(2, x.ndim) if isinstance(shape[i], int)]
        if fixed:
            return shape, ranges, how, f"the {how} exporter fixed {', '.join(fixed)}"
        try:
            verify(model, fmt, out, task, [second], (2,), log=lambda _: None, checked=False)
            return shape, ranges, how, None
        except Exception as e:  # noqa: BLE001 - wrong or failing at another size
            reason = f"exported with dynamic sizes, it fails at {'x'.join(map(str, second))} ({_first_line(e)})"
    try:
        ep = _torch_export(model, x, False)
    except Exception as e:  # noqa: BLE001 - ONNX can still trace; pt2 cannot be written
        if fmt == "pt2":
            raise ExportError(f"torch.export cannot export this {type(model).__name__} even at a fixed size "
                              f"({_first_line(e)}); use --format onnx or torchscript") from e
        ep = None
    return (*_save(fmt, ep, model, x, out, layout, opset), reason)


@contextlib.contextmanager
def _exportable(model):
    """Two work-arounds while exporting (see "Limits" in the module docstring):
    - WindowMixer.window_attention sizes its memory chunks with int(budget // (.. * batch)), which torch.export
      specialises to the example batch; chunking only bounds eager memory, so blocks attend all windows at once;
    - the window caches (nn/windows.py, lru_cache) keep the fake tensors that torch.export traced with, and eager
      calls would then get them: the caches are cleared before and after."""
    from ..nn.mixers.window import WindowMixer
    from ..nn.windows import attention_mask, clear_caches

    def whole(mixer, windows, feat, win, shift):  # (B, nW, N, C) -> (B, nW, N, C), one call
        return mixer.attend_windows(windows, win, attention_mask(feat, win, shift, windows.device,
                                                                 mixer.mask_padding))

    mixers = [m for m in model.modules() if isinstance(m, WindowMixer)]
    clear_caches()
    for mixer in mixers:
        mixer.window_attention = types.MethodType(whole, mixer)
    try:
        yield
    finally:
        for mixer in mixers:
            del mixer.window_attention
        clear_caches()


@contextlib.contextmanager
def quiet_exporters():
    """The exporters' and the quantizer's own warnings and log lines (torch.onnx, onnxscript, onnx_ir, onnxruntime):
    nothing a user of swinkit export / quantize can act on; failures still raise and are reported."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript",
                                                "onnx_ir", "onnxruntime", "root")]
    levels = [log.level for log in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for log in loggers:
            log.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for log, level in zip(loggers, levels):
                log.setLevel(level)


def _first_line(e: Exception) -> str:
    return f"{type(e).__name__}: " + (str(e).strip().splitlines() or [""])[0][:200]


def export(model, out: str | Path, fmt: str = "onnx", img_size: tuple[int, ...] | None = None, opset: int = 18,
           do_verify: bool = True, meta: dict | None = None, log=print, static: bool = False) -> dict:
    """Export `model` (put in eval mode on the CPU in float32, in place) to `out` as `fmt` and write its metadata;
    returns the metadata with the verification rows under "verified". img_size: (H, W), or (T, H, W) for video (default: the model's).

    Height and width (and frames) are exported dynamic (ONNX through the dynamo exporter, pt2) and verified at
    several sizes; `static` fixes them at img_size (the batch stays dynamic). When a dynamic export or its check at a
    second size fails, the file is exported again with them fixed, and `fixed_reason` says why."""
    import torch

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    task, layout = family(model)
    size = tuple(img_size) if img_size is not None else default_size(model)
    if len(size) != len(AXES[layout]) - 2:
        want = "T H W (frames, height, width)" if layout == "NCTHW" else "H W (height, width)"
        raise ExportError(f"--img-size takes {want} for a {task} model; got {list(size)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().float().cpu()
    info = export_metadata(model, meta)
    x = _example(model, task, 2, size)  # batch 2: torch.export specialises an example batch of 1
    second = _other_size(size, _size_step(model))
    # everything is written to and checked on a staged file, moved to `out` only once verified: a failed or
    # interrupted export never leaves a file (or replaces one) under the name the user gave
    stage = out.with_name(f".{out.stem}.partial{out.suffix}")
    try:
        with torch.no_grad():
            model(x)  # an input the model refuses fails here, with the model's own message
            with _exportable(model), quiet_exporters():
                shape, ranges, how, fixed_reason = _export_checked(model, x, stage, fmt, layout, task, second, opset,
                                                                   static)
        if not isinstance(shape[0], str):
            raise ExportError(f"the {how} exporter fixed the batch at {shape[0]}: expected a dynamic batch")
        dynamic = all(isinstance(s, str) for s in shape[2:])
        info.update({"format": fmt, "exporter": how, "input_shape": shape, "ranges": ranges,
                     "export_size": list(size), "fixed_reason": None if dynamic else fixed_reason,
                     "opset": opset if fmt == "onnx" else None, "torch_version": torch.__version__})
        if not dynamic and not static:  # the reason, with the exporter's own words, is in the metadata's fixed_reason
            log(f"note: {out} takes {'x'.join(map(str, size))} inputs only (the batch is dynamic); export again "
                "with --img-size H W for inputs of another size")
        _write_metadata(fmt, stage, info)
        if do_verify:
            info["verified"] = verify(model, fmt, stage, task, verify_sizes(model, size) if dynamic else [size], log=log)
        if Path(f"{stage}.json").exists():
            os.replace(f"{stage}.json", f"{out}.json")
        os.replace(stage, out)
    except ExportError as e:
        raise ExportError(str(e).replace(str(stage), str(out))) from None  # name the file the user asked for
    finally:
        stage.unlink(missing_ok=True)
        Path(f"{stage}.json").unlink(missing_ok=True)
    return info


def load_for_export(checkpoint: str | None = None, name: str | None = None):
    """(model, task meta) from a checkpoint or run directory (as `swinkit predict` reads it), or a named variant of
    any family with random weights."""
    if checkpoint is not None:
        from ..inference.load import load_trained

        loaded = load_trained(checkpoint)
        return loaded.model, loaded.meta
    from ..families import family_of_variant

    fam = family_of_variant(name)
    if fam is None:
        raise ExportError(f"unknown model {name!r}: expected a variant of any family (swinkit models lists them), "
                          "or --checkpoint")
    if fam.export is None:
        raise ExportError(DETECTION_UNSUPPORTED.format(name=f"detector ({name})"))
    return fam.create(name), {}


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="run directory (its best.pt) or any checkpoint swinkit reads")
    src.add_argument("--model", help="a named variant with random weights (to try a deployment pipeline)")
    parser.add_argument("--format", choices=FORMATS, default="onnx",
                        help="onnx; pt2: torch.export program (torch.export.load); torchscript: torch.jit.trace")
    parser.add_argument("--out", required=True, type=Path, help="file to write (pt2 / torchscript: also FILE.json)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (18 and above: the dynamo exporter; below: "
                                                                "the TorchScript-based one)")
    parser.add_argument("--img-size", type=int, nargs="+", metavar="H W",
                        help="example size the export traces with, checked first: H W (video: T H W); default the "
                             "model's. The file takes any size")
    parser.add_argument("--static", type=int, nargs="+", metavar="H W",
                        help="a file fixed at this size (video: T H W), for runtimes that want one; the batch stays "
                             "dynamic")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                        help=f"compare with the eager model at two batch sizes and sizes (tolerance {TOLERANCE})")


def run(args: argparse.Namespace) -> int:
    from ..io.files import OutputError, check_outputs

    try:
        sidecar = [Path(f"{args.out}.json")] if args.format != "onnx" else []
        check_outputs([args.out, *sidecar], [args.checkpoint] if args.checkpoint else [], args.overwrite)
        model, meta = load_for_export(args.checkpoint, args.model)
        if args.static and args.img_size and list(args.static) != list(args.img_size):
            raise ExportError(f"--static {' '.join(map(str, args.static))} and --img-size "
                              f"{' '.join(map(str, args.img_size))} differ: give one (--static H W is the fixed size)")
        info = export(model, args.out, args.format, args.static or args.img_size, args.opset, args.verify, meta,
                      static=bool(args.static))
    except (ExportError, OutputError, ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    shape = " x ".join(map(str, info["input_shape"]))
    print(f"wrote {args.out} ({args.format}, {info['task']}, input {info['layout']} {shape})")
    return 0


def main_args(argv: list[str]) -> int:
    """`swinkit export ARGS` without the top-level CLI (for tests and scripts)."""
    parser = argparse.ArgumentParser(prog="swinkit export")
    add_arguments(parser, "export")
    return run(parser.parse_args(argv))
