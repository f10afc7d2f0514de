"""A trained run or any checkpoint file / model directory load_model reads, ready for inference: its task (the
checkpoint's, or its family's for a foreign file: swinkit.families), model and meta; refused when its weights are not
finite; cast to bfloat16 on request."""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

from ..families import family_of_state_dict
from ..io.files import WEIGHT_FILES, CheckpointError, NonFiniteWarning, non_finite
from ..io.raw import RawCheckpoint, forget, read_raw
from ..tasks import DEFAULT_TASK, TASKS, get_task
from ..tasks.base import Loaded, Task
from ..utils.cpu import has_bf16

DTYPES = ("float32", "bfloat16")  # --dtype of eval and predict (swinkit bench offers the same two)


def checkpoint_file(path: str | Path) -> Path:
    """What --checkpoint names: a run directory's best.pt, a model directory (Hugging Face / timm: config.json beside
    model.safetensors or pytorch_model.bin), or the file itself."""
    path = Path(path)
    if path.is_dir():
        if (path / "best.pt").is_file():
            return path / "best.pt"
        if any((path / n).is_file() for n in WEIGHT_FILES) or (path / "model.safetensors.index.json").is_file():
            return path
        raise FileNotFoundError(f"{path} is a folder without best.pt: expected a run directory written by `swinkit "
                                "train` (or pass the checkpoint file itself), or a model directory holding one of "
                                f"{', '.join(WEIGHT_FILES)}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: pass a run directory or a checkpoint file")
    return path


def _swinkit_checkpoint(raw: RawCheckpoint) -> dict | None:
    """The content of a checkpoint written by `swinkit train` (a dict with "model" and "config"), or of a
    .safetensors file converted from one (`swinkit convert`, which keeps its task meta); else None."""
    if "swinkit_task" in raw.meta:
        return {"model": raw.obj, "config": json.loads(raw.meta["swinkit_config"]),
                **json.loads(raw.meta["swinkit_task"])}
    ck = raw.obj
    return ck if isinstance(ck, dict) and "model" in ck and isinstance(ck.get("config"), dict) else None


def _task_name(raw: RawCheckpoint) -> str:
    """A swinkit checkpoint's task, or the default task of the family a foreign file belongs to."""
    ck = _swinkit_checkpoint(raw)
    if ck:
        return ck.get("task", DEFAULT_TASK)
    return family_of_state_dict(raw.state_dict).task or DEFAULT_TASK


def task_of(path: str | Path) -> type[Task]:
    """The task a checkpoint or run directory was trained for (for a foreign format, from its weights' layout;
    the default task for anything that cannot be read: loading then says what is wrong)."""
    try:
        path = Path(path)
        config = path / "config.json"  # a run directory's; a model directory's has no task: read its weights
        name = json.loads(config.read_text()).get("task") if path.is_dir() and config.is_file() else None
        if name is None:
            with warnings.catch_warnings():  # load_trained reports what is wrong with the weights
                warnings.simplefilter("ignore")
                name = _task_name(read_raw(checkpoint_file(path)))  # the command's one read of the file
    except Exception:  # noqa: BLE001 - only a hint for the flags; load_trained reports the real problem
        name = None
    return get_task(name if name in TASKS else DEFAULT_TASK)


def load_trained(path: str | Path) -> Loaded:
    """The model (eval mode, CPU) and the task's meta from a run directory (its best.pt), a swinkit training
    checkpoint, or a file or model directory in another format (its task: its family's, swinkit.families)."""
    file = checkpoint_file(path)
    with warnings.catch_warnings():  # non-finite weights: refused below with their names
        warnings.simplefilter("ignore", NonFiniteWarning)
        raw = read_raw(file)
        ck = _swinkit_checkpoint(raw)
        loaded = get_task(_task_name(raw)).load(file, ck)
    forget()  # the model holds the weights now
    bad = non_finite(loaded.model.state_dict())
    if bad:
        names = ", ".join(k for k, _, _ in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CheckpointError(f"{file} holds NaN or infinite weights in {len(bad)} tensor(s) ({names}): every "
                              "prediction of it would be meaningless. Retrain, or use an earlier checkpoint")
    return loaded


def _cast(value, dtype: torch.dtype):
    """Floating tensors in `value` (nested tuples, lists, dicts) cast to `dtype`; everything else unchanged."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value


def cast_for_inference(loaded: Loaded, dtype: str, device: str = "cpu") -> None:
    """--dtype: the model's weights and buffers in `dtype`, with hooks that cast its floating inputs to it and its
    outputs back to float32, so each task's eval and predict code runs unchanged (in place)."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown --dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if dtype == "float32":
        return
    if loaded.task.name == "detect":
        raise ValueError("--dtype bfloat16 does not apply to detectors (torchvision's transforms, anchors and box "
                         "ops work in float32); use --amp bf16, which autocasts the backbone and heads")
    if str(device).startswith("cpu") and not has_bf16():
        print("note: this CPU has no AVX-512 BF16 or AMX, so bfloat16 matmuls are emulated and slower than float32",
              file=sys.stderr)
    dt = getattr(torch, dtype)
    model = loaded.model.to(dt)
    model.register_forward_pre_hook(lambda m, args, kwargs: (_cast(args, dt), _cast(kwargs, dt)), with_kwargs=True)
    model.register_forward_hook(lambda m, args, out: _cast(out, torch.float32))


def checkpoint_flag(argv: list[str] | None) -> str | None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--checkpoint")
    return pre.parse_known_args(argv or [])[0].checkpoint
