"""Reading and writing files: weights read safely (`weights_only`, or safetensors) with one clear error for a file
that is empty, truncated or not a checkpoint and a warning that names non-finite tensors; atomic writes; JSON that is
always valid (no NaN / Infinity); and the rule every command follows before it writes: never over one of its inputs,
never over an existing file without --overwrite, and never two outputs to one name. Imports no model code, and torch
only inside the functions that read weights (so the torch-free `predict --onnx` path can use the rest)."""
from __future__ import annotations

import json
import math
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt")  # inside a model directory


def cache_dir() -> Path:
    """$SWINKIT_CACHE, else $XDG_CACHE_HOME/swinkit, else ~/.cache/swinkit."""
    if os.environ.get("SWINKIT_CACHE"):
        return Path(os.environ["SWINKIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "swinkit"


def source_digest(*extra: str) -> str:
    """16 hex digits that change with any of swinkit's source files (and with `extra`): the key of what swinkit
    caches about itself (the `models` table, --help texts)."""
    import hashlib

    digest = hashlib.sha256("\0".join(extra).encode())
    for f in sorted(Path(__file__).resolve().parents[1].rglob("*.py")):
        digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the requested model; the message says what to do."""


class OutputError(ValueError):
    """An output that would destroy a file the user owns; the message names both and says what to do."""


class NonFiniteWarning(UserWarning):
    """A checkpoint holds NaN or infinite values: whatever it predicts is meaningless."""


# ----------------------------------------------------------------------------------------------------------
# reading weights safely


def first_line(e: BaseException) -> str:
    """An exception's first line (at most 200 characters), for one-line error messages."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def sniff(path: Path) -> str:
    """'zip' | 'pickle' | 'safetensors' from the first bytes, or a CheckpointError."""
    with open(path, "rb") as f:
        head = f.read(9)
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes): expected a checkpoint. Re-download or re-save it.")
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[0] == 0x80:
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    raise CheckpointError(f"{path} is not a checkpoint: expected a PyTorch file (.pth/.pt/.bin) or a "
                          f".safetensors file, but it starts with {head[:8]!r}")


def torch_load(path: Path):
    """torch.load with weights_only=True on the CPU; CheckpointError for a corrupt file or one that needs pickle."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise CheckpointError(f"{path} is truncated or corrupt ({first_line(e)}). Re-download or re-save it.") \
                from None
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        detail = [line.strip() for line in str(e).split("error:")[-1].splitlines() if line.strip()]
        what = (f"needs arbitrary Python objects to unpickle ({found[1]})" if found else
                f"uses pickle features the safe loader refuses ({detail[0] if detail else 'unsupported'})")
        raise CheckpointError(
            f"{path} {what}; unpickling it could run code, so it was not loaded. Ask for a safetensors version "
            "of it, or, if you trust its source, re-save its tensors once with "
            "safetensors.torch.save_file(state_dict, 'weights.safetensors').") from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, TypeError, IndexError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({first_line(e)}). Re-download or re-save it.") \
            from None


def safetensors_load(path: Path) -> tuple[dict, dict]:
    """(tensors, metadata) of a .safetensors file; CheckpointError for a corrupt one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is a truncated or corrupt safetensors file ({first_line(e)}). "
                              "Re-download or re-save it.") from None


def read_weights(path: Path) -> tuple[object, dict]:
    """(loaded object, safetensors metadata) of a weights file; warns (NonFiniteWarning) naming the tensors that
    hold NaN or infinite values."""
    obj, meta = safetensors_load(path) if sniff(path) == "safetensors" else (torch_load(path), {})
    bad = non_finite(obj)
    if bad:
        shown = ", ".join(f"{k} ({n} of {size})" for k, n, size in bad[:5]) + (f" and {len(bad) - 5} more"
                                                                                    if len(bad) > 5 else "")
        warnings.warn(f"{path} holds NaN or infinite values in {len(bad)} tensor(s): {shown}; what it computes "
                      "is meaningless: retrain, or load an earlier checkpoint", NonFiniteWarning, stacklevel=2)
    return obj, meta


def non_finite(obj, prefix: str = "") -> list[tuple[str, int, int]]:
    """(name, non-finite count, size) of every floating tensor nested in `obj` (dicts, lists) that holds NaN or
    infinity, except masks (an additive attention mask may hold -inf on purpose)."""
    import torch

    if isinstance(obj, torch.Tensor):
        if not obj.is_floating_point() or prefix.endswith("mask"):
            return []
        n = int((~torch.isfinite(obj)).sum())
        return [(prefix, n, obj.numel())] if n else []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return [bad for k, v in items for bad in non_finite(v, f"{prefix}.{k}" if prefix else str(k))]



# ----------------------------------------------------------------------------------------------------------
# writing



def atomic_write(path: str | Path, write) -> Path:
    """write(tmp) on a temporary file beside `path`, then rename it over `path`, so an interrupted save never
    leaves a partial file under its name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def finite(obj):
    """`obj` with every NaN or infinite float (nested in dicts, lists, tuples) replaced by None: JSON has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj, **kwargs) -> str:
    """json.dumps of `finite(obj)`: valid JSON, with null where a number is not finite."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)


def write_json(path: str | Path, obj, indent: int | None = 2) -> Path:
    """`obj` as valid JSON (see dumps) at `path`, atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(dumps(obj, indent=indent) + "\n"))


def _is_input(out: Path, given: Path) -> bool:
    """Whether writing `out` would replace the input `given`: the same file, or an existing file inside the input
    folder `given` (a run directory's best.pt, an image of a folder)."""
    try:
        if out.resolve() == given.resolve() or (out.exists() and given.exists() and os.path.samefile(out, given)):
            return True
        return given.is_dir() and out.is_file() and out.resolve().is_relative_to(given.resolve())
    except OSError:
        return False


def check_outputs(outputs: Iterable[str | Path], inputs: Iterable[str | Path] = (), overwrite: bool = False,
                  flag: str = "--out") -> None:
    """Before any work: refuse an output that is one of the inputs or a file inside an input folder (always), one
    that exists (unless `overwrite`), and two outputs with one name. OutputError names the files and says what to
    do (`flag`: the argument that names the output)."""
    inputs = [Path(i) for i in inputs]
    seen: dict[Path, Path] = {}
    for out in map(Path, outputs):
        hit = next((i for i in inputs if _is_input(out, i)), None)
        if hit is not None:
            what = f"a file of the input folder {hit}" if hit.is_dir() else f"the input {hit}"
            raise OutputError(f"the output {out} would overwrite {what}: choose another {flag}")
        key = out.resolve()
        if key in seen:
            raise OutputError(f"two inputs would both write {out} (inputs with the same name in different folders): "
                              f"run them with separate {flag} folders")
        seen[key] = out
        if out.exists() and not overwrite:
            raise OutputError(f"{out} exists: pass --overwrite to replace it, or choose another {flag}")


def plan_outputs(inputs: Iterable[str | Path], folder: str | Path, names: tuple[str, ...],
                 overwrite: bool = False) -> list[tuple[Path, ...]]:
    """The output files of each input in `folder`: `names` formatted with the input's stem ("{stem}.png",
    "{stem}_overlay.jpg"), a stem that two inputs share made unique by appending "_"; all of them checked with
    check_outputs against the inputs before any work."""
    inputs, used, plan = [Path(i) for i in inputs], set(), []
    for path in inputs:
        stem = path.stem
        while stem in used:  # two inputs of the same name from different folders
            stem += "_"
        used.add(stem)
        plan.append(tuple(Path(folder) / n.format(stem=stem) for n in names))
    check_outputs([p for outs in plan for p in outs], inputs, overwrite)
    return plan


# ----------------------------------------------------------------------------------------------------------
# safetensors: swinkit's own checkpoint files, and other formats' tensors


def plain(sd: dict) -> dict:
    """Detached, contiguous CPU copies of a state dict's tensors (what safetensors and torch.save should get)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}


def write_safetensors(sd: dict, path: Path, metadata: dict | None = None) -> None:
    """`sd` as a .safetensors file at `path`, atomically, with string `metadata`."""
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file(plain(sd), str(tmp), metadata={"format": "pt", **(metadata or {})}))


def save_state_dict(sd: dict, cfg, path, class_names: list[str] | None = None, meta: dict | None = None) -> None:
    """swinkit's checkpoint of a model whose config is `cfg` (any swinkit config dataclass): `path` (.safetensors,
    config in its metadata) and `<stem>.json` (config) beside it. `meta`: a training checkpoint's task meta
    (io.load.task_meta), kept in the metadata as "swinkit_task" so that eval and predict use the file as they use the
    run (same preprocessing, class names, task)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"swinkit checkpoints are .safetensors files; got {path.name!r} "
                         f"(use {path.with_suffix('.safetensors').name!r})")
    meta = {"swinkit_config": cfg.to_json(), "class_names": json.dumps(class_names),
            **({"swinkit_task": dumps(meta)} if meta else {})}
    write_safetensors(sd, path, meta)
    write_json(path.with_suffix(".json"), {**cfg.to_dict(), **({"class_names": class_names} if class_names else {})})


def write_converted(out: dict, path: Path, hf_config: dict | None, wrap) -> Path:
    """Another format's tensors to disk, atomically: with `hf_config` a directory (model.safetensors +
    config.json); else .pth/.pt/.bin (torch.save of wrap(tensors)) or safetensors."""
    if hf_config is not None:
        write_safetensors(out, path / "model.safetensors")
        write_json(path / "config.json", hf_config)
    elif path.suffix in (".pth", ".pt", ".bin"):
        import torch

        obj = wrap(plain(out))
        atomic_write(path, lambda tmp: torch.save(obj, tmp))
    else:
        write_safetensors(out, path)
    return path


def side_configs(weights: Path):
    """The JSON objects beside a weights file, in the order they speak for it: `<stem>.json` (swinkit's), then
    `config.json` (a model directory's); files that do not read as a JSON object are passed over."""
    import json

    for side in (weights.with_suffix(".json"), weights.parent / "config.json"):
        try:
            c = json.loads(side.read_text()) if side.exists() and side != weights else None
        except (OSError, ValueError):
            continue
        if isinstance(c, dict):
            yield c
