"""`swinkit predict`: a trained checkpoint's predictions for image files or clips (class probabilities for a
classifier or a video model, colour masks for a segmenter: whatever the checkpoint's task writes), or an exported
ONNX file's with onnxruntime (`--onnx FILE`: this path imports neither torch nor the models). Folders stand for the
images under them (a video model takes a folder of frames as one clip). No output replaces an input, and none
replaces an existing file without --overwrite."""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser, command: str, argv: list[str] | None = None) -> None:
    """The common flags and those of the checkpoint's task (classify when --checkpoint is not given yet); with
    --onnx, only the flags predict_onnx takes."""
    parser.add_argument("--checkpoint", help="run directory (uses its best.pt) or checkpoint file; its task decides "
                                             "the other flags")
    parser.add_argument("--onnx", metavar="FILE", help="instead of --checkpoint: a `swinkit export` ONNX file, run "
                                                       "with onnxruntime (classification: top-k; segmentation: masks)")
    parser.add_argument("images", nargs="+", metavar="INPUT", help="image files or folders of them (video task: "
                                                                   "video files or frame folders)")
    parser.add_argument("--json", action="store_true", help="one JSON line per image")
    parser.add_argument("--overwrite", action="store_true", help="replace output files that exist already")
    if "--onnx" in (argv or []) or any(a.startswith("--onnx=") for a in argv or []):
        parser.add_argument("--topk", type=int, default=5, help="classes shown per image (classifiers)")
        parser.add_argument("--out", default="predictions", help="folder for the masks of a segmenter "
                                                                 "(default predictions/)")
        return
    import torch

    from .inference.load import DTYPES, checkpoint_flag, task_of
    from .tasks import DEFAULT_TASK, get_task

    path = checkpoint_flag(argv)
    task = task_of(path) if path else get_task(DEFAULT_TASK)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="weights and inputs in this dtype (bfloat16: for CPUs with AVX-512 BF16 / AMX, and GPUs)")
    task.add_predict_arguments(parser.add_argument_group(f"{task.name} task (from the checkpoint)"))


def run(args: argparse.Namespace) -> int:
    if (args.checkpoint is None) == (args.onnx is None):
        print("error: give --checkpoint (a run directory or checkpoint file) or --onnx (an exported file)",
              file=sys.stderr)
        return 2
    from .io.images import expand_inputs

    if args.onnx:
        from .io.files import OutputError
        from .tools.export import ExportError, predict_onnx

        files, errors = expand_inputs(args.images)
        try:
            status = predict_onnx([str(f) for f in files], args.onnx, topk=args.topk, json=args.json, out=args.out,
                                  overwrite=args.overwrite)
        except (ExportError, OutputError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        return 1 if errors else status
    from .inference.load import cast_for_inference, load_trained

    try:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        loaded = load_trained(args.checkpoint)
        errors = []
        if loaded.task.name != "video":  # a video model's folder is one clip of frames
            files, errors = expand_inputs(args.images)
            args.images = [str(f) for f in files]
        cast_for_inference(loaded, args.dtype, args.device)
        status = loaded.task.run_predict(loaded, args)
    except (FileNotFoundError, ValueError, ImportError) as e:  # ImportError: a missing optional extra
        print(f"error: {e}", file=sys.stderr)
        return 1
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else status
