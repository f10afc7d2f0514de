"""Checkpoints of the families that keep Swin's skeleton with another token mixer, stem, merging and norm and have one
foreign layout each, the official code's (CSWin: formats/cswin.py, PoolFormer: formats/poolformer.py): the family's
key map applied both ways (swinkit.io.keymap), the two layouts told apart, the config the weights imply (the family's
`infer`), reading with every missing, unexpected or misshapen tensor named as the file names it, and writing either
layout. A `MappedFormat` provides the callables of its swinkit.families.Family: detect, load, inspect and convert."""
from __future__ import annotations

import dataclasses
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..files import CheckpointError, save_state_dict, write_converted
from ..keymap import Rule, T, apply_key_map, listing, report_unknown
from ..raw import RawCheckpoint
from .swin import check_overrides, class_rows, side_info, with_class_names

CTX = {"P": ("",)}  # no model prefix in either layout
FORMATS = ("swinkit", "official")


def blocks_per_stage(sd: dict) -> list[int]:
    """The number of blocks of each stage of a swinkit state dict (layers.{i}.blocks.{j}.*)."""
    depth: dict[int, int] = {}
    for k in sd:
        if m := re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", k):
            depth[int(m[1])] = max(depth.get(int(m[1]), 0), int(m[2]) + 1)
    if not depth or sorted(depth) != list(range(len(depth))):
        raise ValueError(f"expected blocks in stages 0..n-1, found them in stages {sorted(depth)}")
    return [depth[i] for i in range(len(depth))]


def conv_merging(sd: dict) -> bool:
    """Whether a swinkit state dict down-samples by strided convolutions (layers.{i}.downsample.proj) before every
    stage but the first, never by patch merging."""
    n = max((int(m[1]) for k in sd if (m := re.match(r"layers\.(\d+)\.blocks\.", k))), default=-1) + 1
    return n > 0 and not any(".downsample.reduction." in k for k in sd) and \
        all(f"layers.{i}.downsample.proj.weight" in sd for i in range(1, n))


@dataclass
class Read:
    """A checkpoint read into swinkit's layout."""
    path: Path
    layout: str  # "official" | "swinkit"
    state_dict: dict  # swinkit's layout
    config: object
    guessed: list[str]  # config fields the file does not record (their values assumed)
    unknown: list[str]  # keys with no place in the model (skipped with strict=False)
    class_names: list | None


@dataclass(frozen=True)
class MappedFormat:
    """A family's official layout as one key map, and what reads and writes it."""
    title: str  # "CSWin"
    config: type  # its config dataclass
    model: type  # its model class
    keys: dict  # swinkit key template -> official template, or T(official template, to_ours, to_theirs)
    is_official: Callable[[dict], bool]  # a state dict in the official layout
    is_swinkit: Callable[[dict], bool]  # ... in swinkit's layout of this family
    # (swinkit state dict, known config fields, file stem) -> (config dict, fields assumed); KeyError names a
    # swinkit key the config needs and the file lacks
    infer: Callable[[dict, dict, str], tuple[dict, list[str]]]
    official_problem: Callable[[object], str | None]  # why a config has no official layout, or None
    wrap: Callable[[dict], object]  # what the official code saves around its state dict (.pth)
    shown: tuple[str, ...]  # the config fields `inspect` lists
    defaults: str  # what is assumed for the fields the weights do not record
    hint: str = ""  # asked about a file with keys that have no place in the model

    formats = FORMATS  # what `convert --to` writes

    @property
    def rules(self) -> list[Rule]:
        return [Rule((ours,), (t.key,), t.to_ours, t.to_theirs) if isinstance(t, T) else Rule((ours,), (t,))
                for ours, t in self.keys.items()]

    # ---- the two layouts

    def layout(self, sd: dict) -> str | None:
        return "official" if self.is_official(sd) else "swinkit" if self.is_swinkit(sd) else None

    def detect(self, sd: dict) -> bool:
        return self.layout(sd) is not None

    def to_swinkit(self, sd: dict) -> tuple[dict, list[str]]:
        """An official state dict in swinkit's layout, and the keys no rule takes."""
        ours, left = apply_key_map(sd, self.rules, "theirs", CTX, CTX)
        return ours, sorted(left)

    def to_official(self, sd: dict) -> dict:
        """A swinkit state dict in the official layout, in the official order (the model's, each block's tensors in
        the order of `keys`); a ValueError lists what has no place there."""
        placed, left, groups = [], [], {}
        for k, v in sd.items():
            group = groups.setdefault(re.match(r"(layers\.\d+\.blocks\.\d+\.)?", k)[0] or k, len(groups))
            for rank, rule in enumerate(self.rules):
                part, _ = apply_key_map({k: v}, [rule], "ours", CTX, CTX)
                if part:
                    placed.append(((group, rank), part))
                    break
            else:
                left.append(k)
        if left:
            raise ValueError(f"{len(left)} tensors have no place in the official {self.title} layout: {listing(left)}")
        return {k: v for _, part in sorted(placed, key=lambda p: p[0]) for k, v in part.items()}

    def official_name(self, key: str) -> str:
        """A swinkit key as the official layout names it (the key itself where it has no place there)."""
        names = [Rule(r.ours, r.theirs) for r in self.rules]  # names only: no tensor transforms
        out, _ = apply_key_map({key: torch.empty(0)}, names, "ours", CTX, CTX)
        return next(iter(out), key)

    def _names(self, r: Read, keys) -> list[str]:
        return [self.official_name(k) for k in keys] if r.layout == "official" else list(keys)

    # ---- reading

    def read(self, raw: RawCheckpoint, strict: bool = True, overrides: dict | None = None) -> Read:
        """The file's tensors in swinkit's layout and the config they imply: swinkit's own file keeps its config;
        otherwise the family's `infer` (the weights, then a named variant they match, then defaults); `overrides`
        (config fields) win over both."""
        sd = raw.state_dict
        layout = self.layout(sd)
        if layout is None:
            raise CheckpointError(f"{raw.path}: not a {self.title} state dict; its first keys are: {listing(list(sd))}")
        ours, unknown = self.to_swinkit(sd) if layout == "official" else (dict(sd), [])
        try:
            report_unknown(unknown, f"official {self.title}", self.hint, strict, stacklevel=5)
        except ValueError as e:
            raise CheckpointError(f"{raw.path}: {e}") from None
        overrides = check_overrides(overrides or {}, self.config)
        side, class_names, saved = side_info(raw.weights, raw.obj, raw.meta)
        probe = Read(raw.path, layout, ours, None, [], unknown, class_names)
        try:
            d, guessed = (side, []) if saved else self.infer(ours, overrides, raw.weights.name.split(".")[0])
            cfg = self.config.from_dict({**d, **overrides})
        except KeyError as e:
            raise CheckpointError(f"{raw.path}: {self._names(probe, [e.args[0]])[0]} is missing: it holds no complete "
                                  f"{self.title} model") from None
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{raw.path}: could not infer a {self.title} configuration from its weights "
                                  f"({e})") from None
        return dataclasses.replace(probe, config=cfg, guessed=[g for g in guessed if g not in overrides])

    def check(self, r: Read, strict: bool = True, head_out: bool = False) -> nn.Module:
        """The model of r.config on the meta device, after checking that r's tensors fill it: misshapen tensors are an
        error; missing (except a head left out) and unexpected ones too, or with strict=False a warning."""
        try:
            with torch.device("meta"):
                model = self.model(r.config)
        except ValueError as e:  # a config the weights allow and the model does not (e.g. odd heads given as hints)
            raise CheckpointError(f"{r.path}: {e}") from None
        own = model.state_dict()
        bad = [k for k, v in r.state_dict.items() if k in own and own[k].shape != v.shape]
        if bad:
            shapes = [f"{n} {tuple(r.state_dict[k].shape)} (model {tuple(own[k].shape)})"
                      for n, k in zip(self._names(r, bad), bad)]
            raise CheckpointError(f"{r.path}: tensors do not fit the {r.config.describe()} model its weights "
                                  f"describe: {listing(shapes)}")
        missing = [k for k in own if k not in r.state_dict and not (head_out and k.startswith("head."))]
        unexpected = [k for k in r.state_dict if k not in own and not (head_out and k.startswith("head."))]
        if missing or unexpected:
            msg = (f"{r.path} ({r.layout} {self.title}) does not fill the {r.config.describe()} model its weights "
                   f"describe: missing {listing(self._names(r, missing)) or 'none'}; unexpected "
                   f"{listing(self._names(r, unexpected)) or 'none'}")
            if strict:
                raise CheckpointError(msg + " (load with strict=False to accept this)")
            warnings.warn(msg, stacklevel=4)
        return model

    def build(self, r: Read, strict: bool = True, class_map=None) -> nn.Module:
        """The model holding r's weights, in eval mode. `class_map` selects head rows; a config with another number
        of classes than the file's head gets a fresh head."""
        sd, cfg = dict(r.state_dict), r.config
        classes = sd["head.fc.weight"].shape[0] if "head.fc.weight" in sd else 0
        if class_map is not None:
            idx = class_rows(class_map)
            if not idx or not classes or max(idx) >= classes or min(idx) < 0:
                raise CheckpointError(f"class map has {len(idx)} indices; expected indices below the checkpoint's "
                                      f"{classes} classes")
            sd["head.fc.weight"], sd["head.fc.bias"] = sd["head.fc.weight"][idx], sd["head.fc.bias"][idx]
            cfg = dataclasses.replace(cfg, num_classes=len(idx))
            classes = len(idx)
        head_out = cfg.num_classes != classes
        if head_out:
            sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
            if cfg.num_classes:
                warnings.warn(f"{r.path} has a {classes}-class head, the model {cfg.num_classes} classes: the head is "
                              "freshly initialised (train it before use)", stacklevel=3)
        r = dataclasses.replace(r, state_dict=sd, config=cfg)
        model = self.check(r, strict, head_out)
        own = model.state_dict()
        if all(k in sd for k in own):
            model.load_state_dict({k: sd[k].to(v.dtype) for k, v in own.items()}, assign=True)
        else:  # some weights start from their initialisation
            model = self.model(cfg)
            model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
        return with_class_names(model, r.class_names, class_map)

    # ---- the family's callables

    def load(self, raw: RawCheckpoint, strict: bool = True, use_ema: bool = False, class_map=None,
             **overrides) -> nn.Module:
        """load_model of a file of this family: overrides are config fields (num_heads=..., img_size=...)."""
        return self.build(self.read(raw, strict, overrides), strict, class_map)

    def inspect(self, raw: RawCheckpoint) -> str:
        r = self.read(raw, strict=False)
        lines = [f"file:     {r.path}", f"format:   {r.layout} ({self.title})",
                 f"params:   {sum(v.numel() for v in r.state_dict.values()):,}", "config:"]
        lines += [f"  {k}: {v}" for k, v in r.config.to_dict().items() if k in self.shown]
        if r.guessed:
            lines.append(f"guessed:  {', '.join(r.guessed)} (not recorded in the checkpoint: {self.defaults})")
        if r.class_names:
            lines.append(f"classes:  {len(r.class_names)}: {', '.join(map(str, r.class_names[:8]))}"
                         + (" ..." if len(r.class_names) > 8 else ""))
        lines.append(f"unknown:  {', '.join(r.unknown) if r.unknown else 'none'}")
        return "\n".join(lines)

    def convert(self, raw: RawCheckpoint, dst, fmt: str, meta: dict | None = None, hints: dict | None = None) -> str:
        """Write raw's model as `fmt`: swinkit (safetensors with its config) or official (.pth as the official code
        saves it, or safetensors). Of the CLI's hints only img_size concerns these families."""
        if fmt not in FORMATS:
            raise CheckpointError(f"--to {fmt}: {raw.path} holds a {self.title} model; choose one of "
                                  f"{', '.join(FORMATS)}")
        r = self.read(raw, overrides={k: v for k, v in (hints or {}).items() if k == "img_size"})
        r.state_dict = {k: r.state_dict[k] for k in self.check(r).state_dict()}  # the model's order (safetensors sorts)
        if fmt == "official":
            problem = self.official_problem(r.config)
            if problem:
                raise CheckpointError(f"{raw.path} holds a {r.config.describe()} model that the official {self.title} "
                                      f"code does not build ({problem}): only swinkit's own layout holds it")
            write_converted(self.to_official(r.state_dict), Path(dst), None, self.wrap)
        else:
            if r.guessed:
                values = ", ".join(f"{f}={getattr(r.config, f)}" for f in r.guessed)
                print(f"note: {raw.path} does not record {', '.join(r.guessed)}; assumed {values} ({self.defaults})",
                      file=sys.stderr)
            save_state_dict(r.state_dict, r.config, dst, r.class_names, meta)
        return f"{fmt}, {self.title}, {r.config.name}"
