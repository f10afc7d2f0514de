"""`swinkit` command line: one sub-command per job, each defined next to the code it runs.

Each module named below provides `add_arguments(parser, command)` and `run(args) -> int | None`; it is imported only
when its command runs, so `swinkit models` needs nothing beyond torch. An `add_arguments` with an `argv` parameter
also gets the command's arguments, so its flags can depend on them (`train --task`, the task of `eval --checkpoint`).
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import sys

from .allocator import tune_unless_disabled

COMMANDS = {  # name -> (module, help)
    "models": ("swinkit.tools.measure", "list every variant with measured parameters and FLOPs"),
    "train": ("swinkit.train", "train or fine-tune a model for a task (--task classify|segment|detect|video|restore; "
                               "classify and video with no --data train on the embedded digits)"),
    "eval": ("swinkit.evaluate", "evaluate a checkpoint or run directory on a dataset (its task from the checkpoint)"),
    "restore": ("swinkit.restore", "super-resolve, denoise or de-JPEG images with a SwinIR / Swin2SR model"),
    "predict": ("swinkit.predict", "predict for image files or clips with a checkpoint (class probabilities, masks, "
                                   "detections)"),
    "export": ("swinkit.tools.export", "export a model to ONNX / torch.export (pt2) / TorchScript, verified against "
                                       "onnxruntime, preprocessing in the metadata"),
    "quantize": ("swinkit.tools.quantize", "post-training static INT8 of a classifier or segmenter with onnxruntime "
                                           "(QDQ), "
                                           "calibrated on a folder of images; runs with predict --onnx"),
    "inspect": ("swinkit.io.checkpoint", "show a checkpoint's format, inferred config and unknown keys"),
    "convert": ("swinkit.io.checkpoint", "convert a checkpoint between formats"),
    "bench": ("swinkit.tools.bench", "measure throughput, memory and FLOPs against timm/torchvision/transformers"),
    "viz": ("swinkit.tools.viz", "draw windows, masks, position bias, attention, receptive field, complexity"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="swinkit", description="Swin Transformer V1/V2 toolkit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help or the usage error
        return 0
    try:
        tune_unless_disabled()  # before the command allocates its model and data; see swinkit.allocator
    except ValueError as e:
        parser.error(str(e))
    module = importlib.import_module(COMMANDS[argv[0]][0])
    cmd = argparse.ArgumentParser(prog=f"swinkit {argv[0]}", description=COMMANDS[argv[0]][1])
    if "argv" in inspect.signature(module.add_arguments).parameters:
        module.add_arguments(cmd, argv[0], argv=argv[1:])
    else:
        module.add_arguments(cmd, argv[0])
    args = cmd.parse_args(argv[1:])
    args.command = argv[0]
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
