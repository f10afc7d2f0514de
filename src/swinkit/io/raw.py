"""A checkpoint file read into a state dict: wrappers ({"model": ...}, {"state_dict": ...}, EMA copies), DDP and
torch.compile prefixes, a SimMIM run's encoder and a hard-distillation head folded into one linear head, and model
directories (Hugging Face / timm, sharded or not, or a `swinkit train` run's best.pt)."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.simmim import simmim_encoder_state_dict
from .files import WEIGHT_FILES, CheckpointError, read_weights


# ----------------------------------------------------------------------------------------------------------
# reading files safely


MAIN_KEYS = ("model", "state_dict", "model_state_dict", "module", "net", "params")  # params: the SwinIR zoo's


EMA_KEYS = ("model_ema", "state_dict_ema", "ema", "model_ema_state_dict", "ema_state_dict", "params_ema")


WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def _read_dir(path: Path) -> tuple[object, dict, Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():  # sharded Hugging Face checkpoint
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        merged = {}
        for shard in shards:
            merged.update(read_weights(path / shard)[0])
        return merged, {}, index
    file = next((path / n for n in (*WEIGHT_FILES, "best.pt") if (path / n).exists()), None)  # best.pt: a run's
    if file is None:
        raise CheckpointError(f"{path} is a directory without weights: expected one of {', '.join(WEIGHT_FILES)} "
                              "(a model directory) or best.pt (a `swinkit train` run)")
    return *read_weights(file), file


def _unwrap(obj, use_ema: bool, path: Path) -> dict:
    """The state dict inside a training checkpoint or wrapper dict, wrapper prefixes stripped."""
    keys = EMA_KEYS + MAIN_KEYS if use_ema else MAIN_KEYS + EMA_KEYS
    if use_ema and not (isinstance(obj, dict) and any(isinstance(obj.get(k), dict) for k in EMA_KEYS)):
        top = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} holds no EMA weights (looked for {', '.join(EMA_KEYS)}; found {top})")
    while isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((k for k in keys if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = obj[inner]
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not sd:
        what = f"a dict with keys {list(obj)[:10]}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise CheckpointError(f"{path} holds {what}, not a state dict: expected a dict of tensors, possibly under "
                              f"one of {', '.join(MAIN_KEYS)}")
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


@dataclass
class RawCheckpoint:
    """A checkpoint as read from disk and what sits around its state dict."""
    path: Path
    obj: object  # what the file holds
    meta: dict  # safetensors metadata
    weights: Path  # the weights file (inside a directory: the file chosen)
    use_ema: bool = False

    @functools.cached_property
    def state_dict(self) -> dict:
        """The tensors, wrappers and wrapper prefixes removed (a SimMIM run: its encoder; a hard-distillation head
        folded); a CheckpointError when the file holds no state dict."""
        return simmim_encoder_state_dict(_fold_distillation_head(_unwrap(self.obj, self.use_ema, self.path)))


_LAST: dict = {}  # the last checkpoint read, so that a command reads its file once (its flags, then its work)


def _stamp(path: Path) -> tuple:
    """What changes when a file or a model directory's files change."""
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file())


def read_raw(path, use_ema: bool = False) -> RawCheckpoint:
    """A checkpoint file or model directory read into a state dict (see the module docstring). The last one read is
    kept and returned again while its files are unchanged: callers must not modify what it holds."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    key = (str(path.resolve()), use_ema, _stamp(path))
    if _LAST.get("key") == key:
        return _LAST["raw"]
    obj, meta, weights = _read_dir(path) if path.is_dir() else (*read_weights(path), path)
    raw = RawCheckpoint(path, obj, meta, weights, use_ema)
    _LAST.update(key=key, raw=raw)
    return raw


def _fold_distillation_head(sd: dict) -> dict:
    """A classifier trained with `--distill hard` (head.fc + head.dist, logits averaged at inference) as the one
    linear head it is equivalent to: the averaged weights and biases."""
    if "head.dist.weight" not in sd or "head.fc.weight" not in sd:
        return sd
    sd = dict(sd)
    for p in ("weight", "bias"):
        sd[f"head.fc.{p}"] = (sd[f"head.fc.{p}"] + sd.pop(f"head.dist.{p}")) / 2
    return sd


def forget() -> None:
    """Drop the checkpoint read_raw keeps (once a model holds its weights)."""
    _LAST.clear()
