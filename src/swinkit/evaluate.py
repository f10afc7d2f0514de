"""`swinkit eval`: a trained checkpoint's metrics on a dataset, with a confusion-matrix PNG.

The checkpoint names its task (a foreign file: its family's, swinkit.families); the task reads the data, computes
the metrics and writes the report. The checkpoint is read by swinkit.inference.load, as predict, export and viz read
it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .inference.load import DTYPES, cast_for_inference, checkpoint_file, checkpoint_flag, load_trained, task_of
from .io.files import check_outputs, dumps
from .tasks import DEFAULT_TASK, get_task
from .tasks.base import AMP_DTYPES

def add_arguments(parser: argparse.ArgumentParser, command: str, argv: list[str] | None = None) -> None:
    """The common flags and those of the checkpoint's task (classify when --checkpoint is not given yet)."""
    path = checkpoint_flag(argv)
    task = task_of(path) if path else get_task(DEFAULT_TASK)
    parser.add_argument("--checkpoint", required=True, help="run directory (uses its best.pt) or checkpoint file; "
                                                            "its task decides the other flags")
    parser.add_argument("--data", required=True, type=Path,
                        help="the dataset; a training tree's val/ is used when present")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=list(AMP_DTYPES), default="none", help="autocast dtype")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="weights and inputs in this dtype (bfloat16: for CPUs with AVX-512 BF16 / AMX, and GPUs)")
    parser.add_argument("--confusion", type=Path,
                        help="confusion-matrix PNG (default: confusion_matrix.png beside the checkpoint)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    task.add_eval_arguments(parser.add_argument_group(f"{task.name} task (from the checkpoint)"))


def run(args: argparse.Namespace) -> int:
    try:
        loaded = load_trained(args.checkpoint)
        cast_for_inference(loaded, args.dtype, args.device)
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        ck = Path(args.checkpoint)
        args.confusion = args.confusion or (ck if ck.is_dir() else ck.parent) / "confusion_matrix.png"
        check_outputs([args.confusion], [checkpoint_file(ck), args.data], overwrite=True, flag="--confusion")
        result, text = loaded.task.run_eval(loaded, args)
    except (FileNotFoundError, ValueError, ImportError) as e:  # ImportError: a missing optional extra
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(dumps(result) if args.json else text)
    return 0
