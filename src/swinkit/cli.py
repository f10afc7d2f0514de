"""`swinkit` command line: one sub-command per job, each defined next to the code it runs.

Each module named below provides `add_arguments(parser, command)` and `run(args) -> int | None`; it is imported only
when its command runs, so `swinkit models` needs nothing beyond torch. An `add_arguments` with an `argv` parameter
also gets the command's arguments, so its flags can depend on them (`train --task`, the task of `eval --checkpoint`).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import inspect
import os
import shutil
import sys
import warnings
from pathlib import Path

from .utils.allocator import tune_unless_disabled

COMMANDS = {  # name -> (module, help)
    "models": ("swinkit.tools.measure", "list every variant with measured parameters and FLOPs"),
    "train": ("swinkit.train.loop", "train or fine-tune a model for a task (--task classify|segment|detect|video|restore; "
                               "classify and video with no --data train on the embedded digits)"),
    "eval": ("swinkit.evaluate", "evaluate a checkpoint or run directory on a dataset (its task from the checkpoint)"),
    "restore": ("swinkit.tools.restore", "super-resolve, denoise or de-JPEG images with a SwinIR / Swin2SR model"),
    "predict": ("swinkit.predict", "predict for image files or clips with a checkpoint (class probabilities, masks, "
                                   "detections)"),
    "export": ("swinkit.tools.export", "export a model to ONNX / torch.export (pt2) / TorchScript, verified against "
                                       "onnxruntime, preprocessing in the metadata"),
    "quantize": ("swinkit.tools.quantize", "post-training static INT8 of a classifier or segmenter with onnxruntime "
                                           "(QDQ), "
                                           "calibrated on a folder of images; runs with predict --onnx"),
    "prune": ("swinkit.tools.prune", "remove the least important attention heads and MLP units of every block "
                                     "(structured pruning): a smaller checkpoint every command reads"),
    "inspect": ("swinkit.io.load", "show a checkpoint's format, inferred config and unknown keys"),
    "convert": ("swinkit.io.load", "convert a checkpoint between formats"),
    "bench": ("swinkit.tools.bench", "measure throughput, memory and FLOPs against timm/torchvision/transformers"),
    "viz": ("swinkit.tools.viz", "draw windows, masks, position bias, attention, receptive field, complexity"),
    "ablate": ("swinkit.tools.ablate", "train a grid of configurations with the same recipe, seeds and budget: table"),
    "search": ("swinkit.tools.search", "successive halving over per-stage window sizes under a FLOPs budget"),
    "data": ("swinkit.tools.data", "convert datasets: coco128-panoptic (COCO128 -> COCO panoptic PNG + JSON)"),
}


_SHOW_WARNING = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """swinkit's own warnings as one plain line ("warning: ..."), without Python's source path; others unchanged."""
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent):
        print(f"warning: {message}", file=file or sys.stderr)
    else:
        _SHOW_WARNING(message, category, filename, lineno, file, line)


def _cached_help(argv: list[str]) -> None:
    """A sub-command's --help, then SystemExit(0) as argparse does: its flags depend on heavy modules (a task's flags
    need torch and torchvision, seconds to import), so the text is kept in swinkit's cache, keyed by the arguments,
    the files they name (a checkpoint's task brings its flags), the terminal width and swinkit's sources."""
    from .io.files import atomic_write, cache_dir, source_digest

    width = str(shutil.get_terminal_size().columns)  # argparse wraps to it
    stamps = [f"{os.stat(a).st_mtime_ns}:{os.stat(a).st_size}" for a in argv if os.path.exists(a)]
    file = cache_dir() / "help" / f"{source_digest(width, *argv, *stamps)}.txt"
    try:
        print(file.read_text(), end="")
        raise SystemExit(0)
    except OSError:
        pass
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            _run(argv)
        except SystemExit:
            pass
    try:
        atomic_write(file, lambda p: p.write_text(out.getvalue()))
    except OSError:  # a read-only home: no cache
        pass
    print(out.getvalue(), end="")
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # run as the `swinkit` program (not called from Python): plain warning lines
        warnings.showwarning = _show_warning
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in COMMANDS and ("-h" in argv[1:] or "--help" in argv[1:]):
            _cached_help(argv)
        return _run(argv)
    except BrokenPipeError:  # the reader went away (`swinkit models | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="swinkit", description="Swin Transformer V1/V2 toolkit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help or the usage error
        return 0
    try:
        tune_unless_disabled()  # before the command allocates its model and data; see swinkit.utils.allocator
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
