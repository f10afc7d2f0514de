"""Swin V1/V2 image models: the key maps between swinkit and the other Swin implementations (official, timm,
torchvision, transformers, mmdetection / mmsegmentation backbones), what the weights say about the configuration,
and reading, transferring (another window / resolution / head / input channels) and writing their checkpoints.

Pickle files are read with torch.load(weights_only=True) only (swinkit.io.files): a file that needs arbitrary Python
objects is refused, never executed.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ...config import VARIANTS, SwinConfig, SwinIRConfig, VideoSwinConfig
from ...models.swin import SwinTransformer
from ...models.video import VideoSwinTransformer
from ...nn.windows import attention_mask, log_spaced_coords, relative_position_index, window_and_shift
from ..files import CheckpointError, save_state_dict, side_configs, write_converted
from ..hub import download_pretrained
from ..keymap import Format, Layout, T, apply_key_map, expand_rules, listing, report_unknown
from ..raw import RawCheckpoint, read_raw


Pair = tuple[int, int]


B = "layers.{i}.blocks.{j}."  # a swinkit block


# every tensor a swinkit model of each version can hold, plus the buffers other formats persist
COMMON = ["patch_embed.proj.{p}", "patch_embed.norm.{p}", "absolute_pos_embed",
          B + "norm1.{p}", B + "attn.qkv.weight", B + "attn.proj.{p}", B + "norm2.{p}",
          B + "mlp.fc1.{p}", B + "mlp.fc2.{p}",
          "layers.{i}.downsample.reduction.weight", "layers.{i}.downsample.norm.{p}", "norm.{p}", "head.fc.{p}",
          B + "attn_mask", B + "attn.relative_position_index"]


TEMPLATES = {
    1: COMMON + [B + "attn.qkv.bias", B + "attn.relative_position_bias_table"],
    2: COMMON + [B + "attn.logit_scale", B + "attn.q_bias", B + "attn.v_bias", B + "attn.cpb_mlp.0.{p}",
                 B + "attn.cpb_mlp.2.weight", B + "attn.relative_coords_table"],
}


BUFFERS = ("attn_mask", "relative_position_index", "relative_coords_table")  # swinkit recomputes these


STRUCTURE = ("version", "patch_size", "embed_dim", "depths", "num_heads")  # what a named variant fixes


GEOMETRY = ("window_size", "img_size", "pretrained_window_sizes")  # ... and where the weights may differ


# ----------------------------------------------------------------------------------------------------------
# value transforms


def _tokens_to_grid(t: torch.Tensor) -> torch.Tensor:
    """(1, L, C) position embedding of a square grid -> (1, C, g, g)."""
    g = math.isqrt(t.shape[1])
    if g * g != t.shape[1]:
        raise ValueError(f"the absolute position embedding has {t.shape[1]} tokens, not a square grid: its "
                         "height and width cannot be told apart")
    return t.transpose(1, 2).reshape(1, -1, g, g)


def _grid_to_tokens(t: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) -> (1, H*W, C)."""
    return t.flatten(2).transpose(1, 2).contiguous()


def _square(t: torch.Tensor) -> torch.Tensor:
    """Flattened (N*N,) index -> (N, N)."""
    return t.view(math.isqrt(t.numel()), -1)


_UNFOLD = [0, 2, 1, 3]  # official concat order x0,x1,x2,x3 = (row, col) 00,10,01,11; nn.Unfold's is 00,01,10,11


def _to_unfold(t: torch.Tensor) -> torch.Tensor:
    """Patch-merging weights over the last dim: official [4 neighbours][C] -> nn.Unfold's [C][4 neighbours]."""
    return t.unflatten(-1, (4, -1))[..., _UNFOLD, :].transpose(-1, -2).flatten(-2)


def _from_unfold(t: torch.Tensor) -> torch.Tensor:
    """Inverse of _to_unfold."""
    return t.unflatten(-1, (-1, 4)).transpose(-1, -2)[..., _UNFOLD, :].flatten(-2)


_POS_TOKENS = T("absolute_pos_embed", _tokens_to_grid, _grid_to_tokens)


OFFICIAL = Format((Layout((1, 2), {  # microsoft/Swin-Transformer: patch merging at the END of each stage
    "layers.{i}.downsample.": "layers.{i-1}.downsample.",
    "absolute_pos_embed": _POS_TOKENS,
    "head.fc.": "head.",
}),), buffers=BUFFERS, clamp=True)


TIMM = Format((Layout((1, 2), {"absolute_pos_embed": None}),), clamp=True)  # swinkit follows timm's layout


SWINKIT = Format((Layout((1, 2), {}),))


_TV = "features.{2i+1}.{j}."  # torchvision: features = [embed, stage0, merge, stage1, merge, ...]


TORCHVISION = Format((Layout((1, 2), {
    "patch_embed.proj.": "features.0.0.",
    "patch_embed.norm.": "features.0.2.",
    "absolute_pos_embed": None,
    B: _TV,
    B + "mlp.fc1.": _TV + "mlp.0.",
    B + "mlp.fc2.": _TV + "mlp.3.",
    B + "attn.relative_position_index": T(_TV + "attn.relative_position_index", _square, torch.flatten),
    (B + "attn.q_bias", None, B + "attn.v_bias"): _TV + "attn.qkv.bias",  # V2: the k part is ignored (zero)
    "layers.{i}.downsample.": "features.{2i}.",
    "head.fc.": "head.",
}),), buffers=("relative_position_index", "relative_coords_table"))


_HB = "{P}encoder.layers.{i}.blocks.{j}."


_HF = {  # transformers Swin / Swinv2: SwinModel keys, under "swin." / "swinv2." in *ForImageClassification
    "patch_embed.proj.": "{P}embeddings.patch_embeddings.projection.",
    "patch_embed.norm.": "{P}embeddings.norm.",
    "absolute_pos_embed": T("{P}embeddings.position_embeddings", _tokens_to_grid, _grid_to_tokens),
    B + "norm1.": _HB + "layernorm_before.",
    B + "norm2.": _HB + "layernorm_after.",
    "layers.{i}.downsample.": "{P}encoder.layers.{i-1}.downsample.",
    "norm.": "{P}layernorm.",
    "head.fc.": "classifier.",
}


_HF_SELF = {  # the transformers 4 attention and MLP names (all of Swinv2 still uses them)
    B + "attn.qkv.weight": tuple(_HB + f"attention.self.{n}.weight" for n in ("query", "key", "value")),
    B + "attn.qkv.bias": tuple(_HB + f"attention.self.{n}.bias" for n in ("query", "key", "value")),
    B + "attn.q_bias": _HB + "attention.self.query.bias",
    B + "attn.v_bias": _HB + "attention.self.value.bias",
    B + "attn.": _HB + "attention.self.",
    B + "attn.cpb_mlp.": _HB + "attention.self.continuous_position_bias_mlp.",
    B + "attn.proj.": _HB + "attention.output.dense.",
    B + "mlp.fc1.": _HB + "intermediate.dense.",
    B + "mlp.fc2.": _HB + "output.dense.",
}


HF = Format((
    Layout((1,), {**_HF,  # transformers >= 5
                  B + "attn.qkv.weight": tuple(_HB + f"attention.{n}_proj.weight" for n in "qkv"),
                  B + "attn.qkv.bias": tuple(_HB + f"attention.{n}_proj.bias" for n in "qkv"),
                  B + "attn.proj.": _HB + "attention.o_proj.",
                  B + "attn.relative_position_bias_table":
                      _HB + "attention.relative_position_bias.relative_position_bias_table",
                  B + "mlp.": _HB + "mlp."}),
    Layout((2,), {**_HF, **_HF_SELF}),
    Layout((1,), {**_HF, **_HF_SELF}, export=False),  # transformers 4
), prefixes={1: "swin.", 2: "swinv2."}, clamp=True)


_MB = "{P}stages.{i}.blocks.{j}."


MMDET = Format((Layout((1,), {  # mmdetection / mmsegmentation backbone; patch merging by nn.Unfold
    "patch_embed.proj.": "{P}patch_embed.projection.",
    "patch_embed.norm.": "{P}patch_embed.norm.",
    "absolute_pos_embed": T("{P}absolute_pos_embed", _tokens_to_grid, _grid_to_tokens),
    B + "norm1.": _MB + "norm1.",
    B + "norm2.": _MB + "norm2.",
    B + "attn.": _MB + "attn.w_msa.",
    B + "mlp.fc1.": _MB + "ffn.layers.0.0.",
    B + "mlp.fc2.": _MB + "ffn.layers.1.",
    "layers.{i}.downsample.reduction.weight": T("{P}stages.{i-1}.downsample.reduction.weight",
                                                _from_unfold, _to_unfold),
    "layers.{i}.downsample.norm.{p}": T("{P}stages.{i-1}.downsample.norm.{p}", _from_unfold, _to_unfold),
    "norm.": "{P}norm{L}.",  # mmdet normalises every output stage; swinkit only the last
}),), prefixes={1: "backbone."}, buffers=("relative_position_index",),
    ignored=r"^(backbone\.)?norm\d+\.|^(neck|[a-z_]*head|data_preprocessor)\.")


FORMATS = {"swinkit": SWINKIT, "timm": TIMM, "official": OFFICIAL, "torchvision": TORCHVISION, "hf": HF,
           "mmdet": MMDET}


DETECT_ORDER = ("timm", "swinkit", "official", "torchvision", "hf", "mmdet")  # ties go to the first


def last_stage(sd: dict) -> int:
    return max((int(m[1]) for k in sd if (m := re.match(r"layers\.(\d+)\.", k))), default=0)


def swin_version(keys) -> int:
    return 2 if any(k.endswith("logit_scale") for k in keys) else 1


# ----------------------------------------------------------------------------------------------------------
# import, export, detection


@dataclass
class Imported:
    """A state dict read through one format's key map."""
    format: str
    version: int
    state_dict: dict  # swinkit parameters
    buffers: dict  # the format's persistent buffers, under swinkit-style names
    unknown: list[str]  # keys no rule explains
    ignored: list[str]  # keys of a larger model (detector neck, heads) that were dropped


def import_state_dict(sd: dict, fmt: str, formats: dict | None = None, templates: dict | None = None) -> Imported:
    """Read `sd` through format `fmt`'s key map (the layout that explains most keys). Never raises on keys.
    `formats` / `templates`: another family's tables (SEG_BACKBONES / BACKBONE_TEMPLATES: backbones)."""
    f = (formats or FORMATS)[fmt]
    version = swin_version(sd)
    ctx_in, ctx_out = {"P": (*f.prefixes.values(), "")}, {"P": ("",)}
    best = None
    for layout in (lay for lay in f.layouts if version in lay.versions):
        rules = expand_rules(layout, (templates or TEMPLATES)[version])
        ours, left = apply_key_map(sd, rules, "theirs", ctx_in, ctx_out)
        if any("{L}" in t for r in rules for t in r.theirs if t):  # second pass once the stages are known
            more, left = apply_key_map(left, rules, "theirs", {**ctx_in, "L": last_stage(ours)}, ctx_out)
            ours.update(more)
        ignored = sorted(k for k in left if f.ignored and re.search(f.ignored, k))
        unknown = sorted(set(left) - set(ignored))
        if best is None or len(unknown) < len(best.unknown):
            buffers = {k: ours.pop(k) for k in list(ours) if k.rsplit(".", 1)[-1] in BUFFERS}
            best = Imported(fmt, version, ours, buffers, unknown, ignored)
    if best is None:
        raise ValueError(f"the {fmt} format has no Swin V{version} layout")
    return best


def consistent(sd: dict) -> bool:
    """Stages 0..n-1 with blocks, patch merging exactly at stages 1..n-1, and a patch embedding."""
    stages = {int(m[1]) for k in sd if (m := re.match(r"layers\.(\d+)\.blocks\.", k))}
    merges = {int(m[1]) for k in sd if (m := re.match(r"layers\.(\d+)\.downsample\.", k))}
    n = len(stages)
    return "patch_embed.proj.weight" in sd and stages == set(range(n)) and merges == set(range(1, n))


def detect_format(sd: dict) -> str:
    """The format whose key map explains every key of `sd` and yields a consistent Swin structure."""
    scored, version = [], swin_version(sd)
    for fmt in (f for f in DETECT_ORDER if any(version in lay.versions for lay in FORMATS[f].layouts)):
        imp = import_state_dict(sd, fmt)
        scored.append((len(imp.unknown) + (0 if consistent(imp.state_dict) else len(sd) + 1), fmt))
    bad, fmt = min(scored, key=lambda s: s[0])
    if bad > len(sd):
        sample = ", ".join(list(sd)[:5])
        raise ValueError(f"not a Swin Transformer state dict of a known format ({', '.join(DETECT_ORDER)}); "
                         f"its first keys are: {sample}")
    return fmt


def to_swinkit(sd: dict, src: str | None = None, strict: bool = True) -> Imported:
    """Import a state dict (format detected when `src` is None). Keys no rule explains are an error listing
    them, or with strict=False a warning."""
    imp = import_state_dict(sd, src or detect_format(sd))
    report_unknown(imp.unknown, imp.format, "Is it a Swin checkpoint of that format? ", strict)
    if imp.ignored:
        warnings.warn(f"dropped {len(imp.ignored)} {imp.format} keys outside the Swin backbone or without a "
                      f"swinkit equivalent: {listing(imp.ignored)}", stacklevel=3)
    return imp


def from_swinkit(sd: dict, dst: str, cfg: SwinConfig, formats: dict | None = None,
                 templates: dict | None = None) -> dict:
    """Export a swinkit state dict of a model with config `cfg` to format `dst`, buffers included, so it
    loads strict=True into that library's model. `formats` / `templates`: as for import_state_dict."""
    f = (formats or FORMATS)[dst]
    version = swin_version(sd)
    layout = next((lay for lay in f.layouts if lay.export and version in lay.versions), None)
    if layout is None:
        raise ValueError(f"the {dst} format has no Swin V{version}")
    if last_stage(sd) + 1 != len(cfg.depths):
        raise ValueError(f"cfg has {len(cfg.depths)} stages, the state dict {last_stage(sd) + 1}: pass the config "
                         "of the model these weights belong to")
    sd = dict(sd)
    windows = _stage_windows(sd, cfg, f.clamp)
    if f.clamp and version == 1:
        for k, v in sd.items():
            if k.endswith("relative_position_bias_table"):
                sd[k] = _crop_table(v, windows[int(k.split(".")[1])])
    sd.update(_buffers(sd, cfg, windows, f.buffers))
    ctx_out = {"P": (f.prefixes.get(version, ""),), "L": last_stage(sd)}
    rules = expand_rules(layout, (templates or TEMPLATES)[version])
    out, left = apply_key_map(sd, rules, "ours", {"P": ("",)}, ctx_out)
    if left:
        raise ValueError(f"{len(left)} swinkit tensors have no equivalent in the {dst} format: "
                         f"{listing(sorted(left))}")
    return out


def convert_state_dict(sd: dict, src: str | None = None, dst: str = "swinkit",
                       cfg: SwinConfig | None = None) -> dict:
    """Convert a state dict between swinkit, official, timm, torchvision, hf (transformers) and mmdet.

    `src` is detected when None. Formats that store buffers or build tables for a fixed input size (official,
    torchvision) need the model's config: pass `cfg`, otherwise it is inferred from the weights (a warning
    names what had to be guessed)."""
    for name in (src, dst):
        if name is not None and name not in FORMATS:
            raise ValueError(f"unknown format {name!r}; choose one of {list(FORMATS)}")
    imp = to_swinkit(sd, src)
    if dst == "swinkit":
        return imp.state_dict
    if cfg is None:
        cfg, guessed = infer_config(imp.state_dict, imp.buffers)
        if guessed:
            assumed = ", ".join(f"{f}={getattr(cfg, f)}" for f in guessed)
            warnings.warn(f"{', '.join(guessed)} not recorded in the weights; assumed {assumed} "
                          f"(pass cfg=SwinConfig(...) to convert_state_dict)", stacklevel=2)
    return from_swinkit(imp.state_dict, dst, cfg)


# ----------------------------------------------------------------------------------------------------------
# buffers and bias tables of formats that build them for a fixed input size


def _stage_sizes(cfg: SwinConfig) -> list[Pair]:
    h, w = (math.ceil(s / cfg.patch_size) for s in cfg.img_size)
    sizes = []
    for _ in cfg.depths:
        sizes.append((h, w))
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return sizes


def _table_window(table: torch.Tensor) -> Pair | None:
    """Square window of a V1 bias table ((2w-1)^2, heads), or None when it is not square."""
    s = math.isqrt(table.shape[0])
    return ((s + 1) // 2,) * 2 if s * s == table.shape[0] and s % 2 else None


def _stage_windows(sd: dict, cfg: SwinConfig, clamp: bool) -> list[Pair]:
    """Window each stage's tables/buffers are built for: V1 from its table, V2 from `cfg`; clamped to stage
    maps no larger than the window where the format does so."""
    wins = []
    for i, size in enumerate(_stage_sizes(cfg)):
        table = sd.get(B.format(i=i, j=0) + "attn.relative_position_bias_table")
        win = (table is not None and _table_window(table)) or cfg.window_size[i]
        wins.append(window_and_shift(size, win, False)[0] if clamp else tuple(win))
    return wins


def _crop_table(table: torch.Tensor, win: Pair) -> torch.Tensor:
    """The entries of a larger window's table that a smaller window uses (exactly what swinkit indexes)."""
    big = _table_window(table)
    if big is None or tuple(big) == tuple(win):
        return table
    t = table.view(2 * big[0] - 1, 2 * big[1] - 1, -1)
    return t[big[0] - win[0]: big[0] + win[0] - 1, big[1] - win[1]: big[1] + win[1] - 1].reshape(-1, t.shape[-1])


def _buffers(sd: dict, cfg: SwinConfig, windows: list[Pair], kinds: tuple[str, ...]) -> dict:
    """The persistent buffers of formats that keep them, under swinkit-style names."""
    out, cpu, v2 = {}, torch.device("cpu"), swin_version(sd) == 2
    blocks = sorted({(int(m[1]), int(m[2])) for k in sd if (m := re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", k))})
    sizes = _stage_sizes(cfg)
    for i, j in blocks:
        pre, win = B.format(i=i, j=j), windows[i]
        if "relative_position_index" in kinds:
            out[pre + "attn.relative_position_index"] = relative_position_index(win, win, cpu).clone()
        if v2 and "relative_coords_table" in kinds:
            coords = log_spaced_coords(win, cfg.pretrained_window_sizes[i], cpu)
            out[pre + "attn.relative_coords_table"] = coords.reshape(1, 2 * win[0] - 1, 2 * win[1] - 1, 2).clone()
        shift = window_and_shift(sizes[i], cfg.window_size[i], cfg.shift and j % 2 == 1)[1]
        if "attn_mask" in kinds and any(shift):  # the official code keeps masks of shifted blocks only
            out[pre + "attn_mask"] = attention_mask(sizes[i], win, shift, cpu).clone()
    return out


# ----------------------------------------------------------------------------------------------------------
# what the weights say about the configuration


def _pretrained_window(coords: torch.Tensor, win: Pair) -> Pair:
    """Invert V2's log-spaced coordinates (1, 2h-1, 2w-1, 2) at the largest offset w-1, where
    t = log2(1 + 8 (w-1) / (p-1)) / 3: the window p they were normalised by ((0, 0): the window itself)."""
    out = []
    for t, w in zip(coords[0, -1, -1].abs().tolist(), win):
        x = 2 ** (3 * t) - 1
        out.append(round((w - 1) * 8 / x + 1) if w > 1 and x > 0 else w)
    return (0, 0) if tuple(out) == tuple(win) else tuple(out)


def from_weights(sd: dict, buffers: dict) -> dict:
    """Config fields the tensors determine (and, through _geometry, the persisted buffers)."""
    version = swin_version(sd)
    proj = sd["patch_embed.proj.weight"]  # (C, in_chans, p, p)
    depth = {}
    for k in sd:
        if m := re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", k):
            depth[int(m[1])] = max(depth.get(int(m[1]), 0), int(m[2]) + 1)
    first = [B.format(i=i, j=0) for i in sorted(depth)]
    tables = [sd.get(p + "attn.relative_position_bias_table") for p in first]
    d = dict(version=version, patch_size=proj.shape[-1], in_chans=proj.shape[1], embed_dim=proj.shape[0],
             depths=[depth[i] for i in sorted(depth)],
             mlp_ratio=sd[first[0] + "mlp.fc1.weight"].shape[0] / proj.shape[0],
             qkv_bias=(first[0] + ("attn.q_bias" if version == 2 else "attn.qkv.bias")) in sd,
             num_classes=sd["head.fc.weight"].shape[0] if "head.fc.weight" in sd else 0)
    if version == 2:
        d["num_heads"] = [sd[p + "attn.logit_scale"].shape[0] for p in first]
    elif all(t is not None for t in tables):
        d["num_heads"] = [t.shape[1] for t in tables]
    absolute = "absolute_pos_embed" in sd
    if version == 1 or absolute:  # V2 keeps its CPB MLP with the relative bias off: its weights cannot tell
        names = ["absolute"] * absolute + ["relative"] * (version == 2 or tables[0] is not None)
        d["pos_embed"] = "+".join(names) or "none"
    return {**d, **_geometry(sd, buffers, d, tables)}


def _geometry(sd: dict, buffers: dict, d: dict, tables: list) -> dict:
    """Windows (V1 tables, V2 coordinate buffers), V2 pre-training windows, and the image size (absolute
    position grid, or the official attention masks, whose nW windows of N tokens tile a stage map)."""
    g = {}
    if "absolute_pos_embed" in sd:
        g["img_size"] = [n * d["patch_size"] for n in sd["absolute_pos_embed"].shape[-2:]]
    wins = [_table_window(t) if t is not None else None for t in tables]
    coords = [buffers.get(B.format(i=i, j=0) + "attn.relative_coords_table") for i in range(len(d["depths"]))]
    if d["version"] == 2 and all(c is not None for c in coords):
        wins = [((c.shape[1] + 1) // 2, (c.shape[2] + 1) // 2) for c in coords]
        g["pretrained_window_sizes"] = [_pretrained_window(c, w) for c, w in zip(coords, wins)]
    if all(wins):
        g["window_size"] = wins
    masks = [(i, buffers.get(B.format(i=i, j=1) + "attn_mask")) for i in range(len(d["depths"]))]
    i, mask = next(((i, m) for i, m in masks if m is not None), (0, None))
    if mask is not None and "img_size" not in g:
        g["img_size"] = [math.isqrt(mask.shape[0] * mask.shape[1]) * 2**i * d["patch_size"]] * 2
    return g


def effective_windows(cfg: SwinConfig) -> list[Pair]:
    """Per stage, the window used at cfg.img_size (clamped where the stage map is no larger)."""
    return [window_and_shift(s, w, False)[0] for s, w in zip(_stage_sizes(cfg), cfg.window_size)]


def match_variant(d: dict) -> str | None:
    """The first named variant with this structure (and the same effective windows, when they are known)."""
    for name in VARIANTS:
        cfg = SwinConfig.from_name(name)
        if any(listed(getattr(cfg, k)) != listed(d[k]) for k in STRUCTURE if k in d):
            continue
        mine = SwinConfig.from_dict({**cfg.to_dict(), **{k: d[k] for k in GEOMETRY if k in d}})
        if effective_windows(mine) == effective_windows(cfg) and \
                mine.pretrained_window_sizes == cfg.pretrained_window_sizes:
            return name
    return None


def listed(v):
    return [listed(x) for x in v] if isinstance(v, (list, tuple)) else v


def infer_config(sd: dict, buffers: dict | None = None, known: dict | None = None
                 ) -> tuple[SwinConfig, list[str]]:
    """The config of a swinkit state dict: what the tensors (and persisted buffers) say, then `known` fields
    (a config file beside the weights, the file name), then the matching named variant, then defaults.
    Returns the config and the fields that had to be guessed (window_size, img_size, num_heads)."""
    derived = from_weights(sd, buffers or {})
    known = {k: v for k, v in (known or {}).items() if v is not None}
    name = match_variant({**known, **derived})
    base = SwinConfig.from_name(name).to_dict() if name else {}
    d = {**base, **known, **derived, "name": name or "custom"}
    guessed = [k for k in ("window_size", "img_size", "num_heads") if k not in derived and k not in known]
    if "num_heads" not in d:  # V1 without position tables: the papers' 32 channels per head
        d["num_heads"] = [max(1, d["embed_dim"] * 2**i // 32) for i in range(len(d["depths"]))]
    return SwinConfig.from_dict(d), guessed


# ----------------------------------------------------------------------------------------------------------
# what files beside the weights (and their names) say about the config


def uniform(v):
    """A per-stage list of equal entries -> the entry (so it fits any number of stages)."""
    return v[0] if isinstance(v, list) and v and all(x == v[0] for x in v) else v


def _known_from_name(name: str) -> dict:
    """Config fields from a file or architecture name: a variant name, or '..._window12to16_192to256...'."""
    name = name.split(".")[0]
    if name in VARIANTS:
        return SwinConfig.from_name(name).to_dict()
    m = re.search(r"window(\d+)(?:to(\d+))?_(\d+)(?:to(\d+))?", name)
    return {"window_size": int(m[2] or m[1]), "img_size": int(m[4] or m[3])} if m else {}


def known_from_hf(c: dict) -> tuple[dict, list | None]:
    known = dict(version=2 if c["model_type"] == "swinv2" else 1, img_size=c.get("image_size"),
                 patch_size=c.get("patch_size"), in_chans=c.get("num_channels"), embed_dim=c.get("embed_dim"),
                 depths=c.get("depths"), num_heads=c.get("num_heads"), window_size=c.get("window_size"),
                 mlp_ratio=c.get("mlp_ratio"), qkv_bias=c.get("qkv_bias"),
                 pretrained_window_sizes=c.get("pretrained_window_sizes"))
    labels = c.get("id2label") or {}
    names = [labels[k] for k in sorted(labels, key=int)]
    default = all(n == f"LABEL_{i}" for i, n in enumerate(names))
    return known, None if default or not names else names


def _known_from_timm(c: dict) -> tuple[dict, list | None]:
    known = _known_from_name(c["architecture"])
    args = c.get("model_args") or {}
    known.update({k: args[k] for k in ("embed_dim", "depths", "num_heads", "window_size", "img_size", "in_chans",
                                       "patch_size", "mlp_ratio", "qkv_bias", "pretrained_window_sizes") if k in args})
    names = c.get("label_names")
    return known, list(names) if isinstance(names, (list, tuple)) else None


def side_info(weights: Path, obj, meta: dict) -> tuple[dict, list | None, bool]:
    """(known config fields, class names, written by swinkit) from the checkpoint's own metadata, a config
    JSON beside it, or its file name."""
    if isinstance(obj, dict) and isinstance(obj.get("config"), dict) and "embed_dim" in obj["config"]:
        return obj["config"], obj.get("class_names"), True  # swinkit training checkpoint
    if "swinkit_config" in meta:
        return json.loads(meta["swinkit_config"]), json.loads(meta.get("class_names", "null")), True
    for c in side_configs(weights):
        if "embed_dim" in c and "depths" in c and "model_type" not in c:
            return c, c.get("class_names"), True  # swinkit's config beside its .safetensors
        if c.get("model_type") in ("swin", "swinv2"):
            return (*known_from_hf(c), False)
        if "swin" in str(c.get("architecture", "")):
            return (*_known_from_timm(c), False)
    return _known_from_name(weights.name), None, False


# ----------------------------------------------------------------------------------------------------------
# a checkpoint read into swinkit's layout


@dataclass
class Checkpoint:
    path: Path
    format: str
    state_dict: dict  # swinkit layout
    config: SwinConfig  # inferred
    guessed: list[str]  # config fields the checkpoint does not record
    class_names: list[str] | None
    unknown: list[str]  # keys with no place in swinkit
    ignored: list[str]  # keys of a larger model (detector heads) that were dropped

    def describe(self) -> str:
        return f"{self.path} ({self.format}, {kind_of(self.config)})"


def kind_of(cfg: SwinConfig) -> str:
    if isinstance(cfg, SwinIRConfig):
        return "SwinIR" if cfg.version == 1 else "Swin2SR"
    return "Video Swin" if isinstance(cfg, VideoSwinConfig) else f"Swin V{cfg.version}"


def read_checkpoint(path, use_ema: bool = False, strict: bool = True, known: dict | None = None,
                    raw: RawCheckpoint | None = None) -> Checkpoint:
    """Read any supported checkpoint into swinkit's layout and infer its config. `known`: config fields to
    assume where the checkpoint records nothing (e.g. the window of a bare timm V2 state dict). `raw`: the file
    already read by read_raw."""
    raw = raw or read_raw(path, use_ema)
    path, sd = raw.path, raw.state_dict
    side, class_names, ours = side_info(raw.weights, raw.obj, raw.meta)
    if ours and not SwinConfig.from_dict(side).swin_skeleton:  # other mixers / stem / merge / norm: no peer layout
        return Checkpoint(path, "swinkit", dict(sd), SwinConfig.from_dict(side), [], class_names, [], [])
    try:
        fmt = detect_format(sd)
        imp = to_swinkit(sd, fmt, strict)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    side = {k: uniform(v) for k, v in side.items()}
    try:
        cfg, guessed = infer_config(imp.state_dict, imp.buffers, {**(known or {}), **side})
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: could not infer a Swin configuration from its weights ({e})") from None
    return Checkpoint(path, "swinkit" if ours else fmt, imp.state_dict, cfg, guessed, class_names,
                      imp.unknown, imp.ignored)


# ----------------------------------------------------------------------------------------------------------
# transfer to a model of another window, resolution, head or input channels


ARCHITECTURE = STRUCTURE + ("mlp_ratio", "qkv_bias")  # what a checkpoint's tensors fix


def target_config(src: SwinConfig, overrides: dict, base: SwinConfig | None = None) -> SwinConfig:
    """The model to build: `base` (a named variant) or the checkpoint's config, with `overrides`; windows the
    checkpoint already clamped stay as they are, and V2 remembers the windows it was pre-trained with."""
    d = (base or src).to_dict()
    if base is not None:  # the checkpoint decides the head and input channels unless asked otherwise
        d.update(num_classes=src.num_classes, in_chans=src.in_chans)
    cfg = SwinConfig.from_dict({**d, **overrides})
    wrong = [k for k in ARCHITECTURE if getattr(cfg, k) != getattr(src, k)]
    if wrong:
        diff = ", ".join(f"{k}={getattr(src, k)} (model: {getattr(cfg, k)})" for k in wrong)
        raise CheckpointError(f"the checkpoint is a different architecture: {diff}. Load it without a model name, "
                              "with swinkit.load_model(path), or pick a matching variant.")
    wins = list(cfg.window_size)
    if "window_size" not in overrides:  # a stage the checkpoint clamped that this model clamps the same way
        eff = effective_windows(cfg)
        wins = [s if e == s else w for w, e, s in zip(wins, eff, src.window_size)]
    pre = list(cfg.pretrained_window_sizes)
    if cfg.version == 2 and "pretrained_window_sizes" not in overrides:
        pre = [p if w == s or any(p) else s  # a changed window keeps the checkpoint's pre-training window
               for w, s, p in zip(wins, src.window_size, src.pretrained_window_sizes)]
    return dataclasses.replace(cfg, window_size=wins, pretrained_window_sizes=pre)


def resize_table(table: torch.Tensor, src: tuple, dst: tuple) -> torch.Tensor:
    """V1 bias table ((2h-1)(2w-1), heads) resized bicubically to another window, as the official fine-tuning
    does."""
    heads = table.shape[1]
    grid = table.T.reshape(1, heads, 2 * src[0] - 1, 2 * src[1] - 1)
    grid = F.interpolate(grid, size=(2 * dst[0] - 1, 2 * dst[1] - 1), mode="bicubic", align_corners=False)
    return grid.reshape(heads, -1).T.contiguous()


def _adapt_in_chans(w: torch.Tensor, chans: int) -> torch.Tensor:
    """Patch-embedding filters (D, c, p, p) or (D, c, t, p, p) for another number of input channels: summed for
    one channel (a gray image then gives what its RGB copy gave), otherwise repeated cyclically and scaled by
    c/chans (timm's convention, keeping the activation scale)."""
    if chans == 1:
        return w.sum(1, keepdim=True)
    reps = (1, math.ceil(chans / w.shape[1])) + (1,) * (w.ndim - 2)
    return w.repeat(*reps)[:, :chans] * (w.shape[1] / chans)


def class_rows(class_map) -> list[int]:
    """Class indices from a file (one integer per line, e.g. the official map22kto1k.txt) or a sequence."""
    if isinstance(class_map, (str, os.PathLike)):
        text = Path(class_map).read_text()
        try:
            return [int(line) for line in text.split()]
        except ValueError:
            raise CheckpointError(f"{class_map}: expected one integer class index per line") from None
    return [int(i) for i in class_map]


def fit_weights(ckpt: Checkpoint, cfg: SwinConfig, class_map) -> tuple[dict, bool]:
    """The checkpoint's tensors shaped for a model of `cfg`. Returns (state dict, head left out)."""
    sd, src = dict(ckpt.state_dict), ckpt.config
    head_out = "head.fc.weight" in sd and (cfg.num_classes != src.num_classes or class_map is not None)
    if head_out and class_map is not None:
        idx = class_rows(class_map)
        if len(idx) != cfg.num_classes or max(idx) >= src.num_classes or min(idx) < 0:
            raise CheckpointError(f"class map has {len(idx)} indices in [{min(idx)}, {max(idx)}]; expected "
                                  f"{cfg.num_classes} indices below the checkpoint's {src.num_classes} classes")
        sd["head.fc.weight"], sd["head.fc.bias"] = sd["head.fc.weight"][idx], sd["head.fc.bias"][idx]
        head_out = False
    elif head_out:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
        if cfg.num_classes:
            warnings.warn(f"{ckpt.describe()} has a {src.num_classes}-class head, the model {cfg.num_classes} "
                          "classes: the head is freshly initialised (train it before use)", stacklevel=3)
    if src.in_chans != cfg.in_chans:
        sd["patch_embed.proj.weight"] = _adapt_in_chans(sd["patch_embed.proj.weight"], cfg.in_chans)
        warnings.warn(f"{ckpt.describe()} takes {src.in_chans} input channels, the model {cfg.in_chans}: the patch "
                      f"embedding filters were {'summed' if cfg.in_chans == 1 else 'repeated and rescaled'}",
                      stacklevel=3)
    for k, v in list(sd.items()):
        i = int(k.split(".")[1]) if k.startswith("layers.") else None
        if k.endswith("relative_position_bias_table") and src.window_size[i] != cfg.window_size[i]:
            sd[k] = resize_table(v, src.window_size[i], cfg.window_size[i])
    if "absolute_pos_embed" in sd:
        grid = [math.ceil(s / cfg.patch_size) for s in cfg.img_size]
        if list(sd["absolute_pos_embed"].shape[-2:]) != grid:
            sd["absolute_pos_embed"] = F.interpolate(sd["absolute_pos_embed"], size=grid, mode="bicubic",
                                                     align_corners=False)
    return sd, head_out


def check_shapes(ckpt, sd: dict, own: dict) -> None:
    """A CheckpointError listing the checkpoint tensors whose shape differs from the model's (`own`)."""
    bad = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})" for k, v in sd.items()
           if k in own and own[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{ckpt.describe()}: tensors do not fit the model: {', '.join(bad[:8])}")


def build_model(ckpt: Checkpoint, cfg: SwinConfig, strict: bool = True, class_map=None) -> SwinTransformer:
    """A model of `cfg` (a VideoSwinTransformer for a VideoSwinConfig) holding the checkpoint's weights
    (transferred where they differ), in eval mode."""
    sd, head_out = fit_weights(ckpt, cfg, class_map)
    model_cls = VideoSwinTransformer if isinstance(cfg, VideoSwinConfig) else SwinTransformer
    with torch.device("meta"):  # shapes only: initialising weights the checkpoint replaces is wasted work
        model = model_cls(cfg)
    own = model.state_dict()
    check_shapes(ckpt, sd, own)
    missing, unexpected = [k for k in own if k not in sd], [k for k in sd if k not in own]
    reported = [k for k in missing if not (head_out and k.startswith("head."))]
    if reported or unexpected:
        msg = f"{ckpt.describe()}: missing keys {reported[:12]}, unexpected keys {unexpected[:12]}"
        if strict:
            raise CheckpointError(msg + " (load with strict=False to accept this)")
        warnings.warn(msg, stacklevel=3)
    if missing:  # some weights start from their initialisation
        model = model_cls(cfg)
        model.load_state_dict(sd, strict=False)
    else:
        model.load_state_dict({k: sd[k].to(v.dtype) for k, v in own.items()}, assign=True)
    return with_class_names(model, ckpt.class_names, class_map)


def with_class_names(model: torch.nn.Module, names: list | None, class_map=None) -> torch.nn.Module:
    """The model in eval mode, with the checkpoint's class names (the rows `class_map` keeps) when they match its
    classes."""
    if names and class_map is not None:
        names = [names[i] for i in class_rows(class_map)]
    if names and len(names) == model.cfg.num_classes:
        model.class_names = list(names)
    return model.eval()


def check_overrides(overrides: dict, cls: type = SwinConfig) -> dict:
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"unknown config fields {sorted(unknown)}; valid: {sorted(fields)}")
    return {k: v for k, v in overrides.items() if v is not None}


def warn_guesses(ckpt: Checkpoint, overrides: dict) -> None:
    if ckpt.config.version == 2 and "window_size" in ckpt.guessed and "window_size" not in overrides:
        w = ckpt.config.window_size[0]
        warnings.warn(f"{ckpt.describe()} does not record its window size; assuming {w} (as "
                      f"{ckpt.config.name if ckpt.config.name != 'custom' else 'the default'}). Pass window_size=... "
                      "if it was trained with another.", stacklevel=3)


def load_into_named(name: str, checkpoint=None, pretrained: bool | str = False, **overrides) -> SwinTransformer:
    """create_model(name, checkpoint=... | pretrained=True): the named variant with a checkpoint's weights
    (the official release weights for pretrained=True, or the URL given as pretrained='https://...')."""
    strict, use_ema, class_map = (overrides.pop(k, d) for k, d in (("strict", True), ("use_ema", False),
                                                                  ("class_map", None)))
    base = SwinConfig.from_name(name, **overrides)
    overrides = check_overrides(overrides)
    if checkpoint is None:
        checkpoint = download_pretrained(name, pretrained if isinstance(pretrained, str) else None)
    if class_map is not None:
        overrides.setdefault("num_classes", len(class_rows(class_map)))
    hints = {k: uniform(base.to_dict()[k]) for k in ("window_size", "img_size")}
    ckpt = read_checkpoint(checkpoint, use_ema=use_ema, strict=strict, known=hints)
    return build_model(ckpt, target_config(ckpt.config, overrides, base), strict, class_map)


def check_architecture(src, cfg, fields: tuple[str, ...], kind: str, named: bool) -> None:
    """Raise when `cfg` (the model to build) differs from `src` (the checkpoint's config) in a field that fixes
    the shapes of its tensors."""
    wrong = [k for k in fields if getattr(cfg, k) != getattr(src, k)]
    if wrong:
        diff = ", ".join(f"{k}={getattr(src, k)} (model: {getattr(cfg, k)})" for k in wrong)
        todo = ("load it without a model name, with swinkit.load_model(path), or pick a matching variant"
                if named else "these fields fix the shapes of its tensors: keep the checkpoint's")
        raise CheckpointError(f"the {kind} checkpoint is a different architecture: {diff}; {todo}")


# ----------------------------------------------------------------------------------------------------------
# saving


def save_model(model: SwinTransformer, path, class_names: list[str] | None = None) -> None:
    """Write `path` (.safetensors) and its config as `<stem>.json` beside it, atomically; load_model reads
    them back."""
    save_state_dict(model.state_dict(), model.cfg, path, class_names or getattr(model, "class_names", None))


def hf_config(cfg: SwinConfig, class_names: list[str] | None) -> dict:
    """config.json for transformers' Swin / Swinv2 (one square window, clamped per stage as transformers does)."""
    win = cfg.window_size[0]
    same = dataclasses.replace(cfg, window_size=win)
    if win[0] != win[1] or effective_windows(same) != effective_windows(cfg):
        raise ValueError(f"transformers' Swin takes one square window size; this model has {cfg.window_size}")
    v2 = cfg.version == 2
    names = class_names or [f"LABEL_{i}" for i in range(cfg.num_classes)]
    c = dict(model_type="swinv2" if v2 else "swin",
             architectures=["Swinv2ForImageClassification" if v2 else "SwinForImageClassification"],
             image_size=list(cfg.img_size), patch_size=cfg.patch_size, num_channels=cfg.in_chans,
             embed_dim=cfg.embed_dim, depths=list(cfg.depths), num_heads=list(cfg.num_heads), window_size=win[0],
             mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, hidden_act="gelu", layer_norm_eps=1e-5,
             use_absolute_embeddings="absolute" in cfg.pos_embed, drop_path_rate=0.0,
             id2label={str(i): n for i, n in enumerate(names)}, label2id={n: i for i, n in enumerate(names)})
    if v2:
        c["pretrained_window_sizes"] = [p[0] for p in cfg.pretrained_window_sizes]
    return c


def hf_v2_stages(cfg: SwinConfig, window: int) -> tuple[list[Pair], tuple[str, ...]]:
    """The windows and mixers of transformers' Swinv2 with window `window` at cfg.img_size: it fixes them when built,
    per stage, from the map of image_size (height axis): window min(map, window), unshifted where map <= window."""
    wins, mixers = [], []
    for i in range(len(cfg.depths)):
        r = cfg.img_size[0] // cfg.patch_size // 2**i
        wins.append((min(r, window),) * 2)
        mixers.append("window" if r <= window else "shifted_window")
    return wins, tuple(mixers)


def hf_backbone_config(cfg: SwinConfig, out_features: list[str]) -> dict:
    """backbone_config for transformers' SwinBackbone / Swinv2Backbone inside a larger model (UperNet, Mask2Former,
    GroundingDINO): hf_config without the classifier's fields. Both always shift, except that Swinv2 fixes smaller,
    unshifted windows for stage maps of image_size no larger than the window (hf_v2_stages)."""
    win = max(max(w) for w in cfg.window_size)
    frozen = cfg.version == 2 and (list(map(tuple, cfg.window_size)), cfg.mixer) == hf_v2_stages(cfg, win)
    if set(cfg.mixer) != {"shifted_window"} and not frozen:
        raise ValueError(f"transformers' Swin{'v2' if cfg.version == 2 else ''}Backbone shifts the windows of every "
                         f"stage; this model's stages have mixers {'-'.join(cfg.mixer)}")
    backbone = hf_config(dataclasses.replace(cfg, num_classes=0, window_size=win if frozen else cfg.window_size),
                         None)
    for k in ("architectures", "id2label", "label2id"):
        backbone.pop(k)
    if cfg.version == 2 and not frozen:  # make image_size large enough that Swinv2 fixes no smaller window
        n, p = len(cfg.depths), cfg.patch_size
        backbone["image_size"] = [max(s, p * 2 ** (n - 1) * 2 * win) for s in cfg.img_size]
    backbone["out_features"] = list(out_features)
    return backbone


def write_swin_checkpoint(sd: dict, cfg: SwinConfig, path, fmt: str = "swinkit", class_names=None,
                          meta: dict | None = None) -> Path:
    """Write a swinkit state dict of an image Swin as format `fmt`: hf -> a directory (config.json +
    model.safetensors); others -> `path` as .pth/.pt/.bin (torch.save; official wrapped in {"model": ...}) or
    safetensors. `meta`: the task meta that swinkit files keep (save_state_dict); other formats have no place for it."""
    path = Path(path)
    if fmt == "swinkit":
        save_state_dict(sd, cfg, path, class_names, meta)
        return path
    out = from_swinkit(sd, fmt, cfg)
    hf = hf_config(cfg, class_names) if fmt == "hf" else None
    return write_converted(out, path, hf, lambda sd: {"model": sd} if fmt == "official" else sd)


def inspect_text(ckpt: Checkpoint) -> str:
    cfg = ckpt.config
    params = sum(v.numel() for v in ckpt.state_dict.values())
    lines = [f"file:     {ckpt.path}", f"format:   {ckpt.format} ({kind_of(cfg)})",
             f"params:   {params:,}", "config:"]
    video = ("mask_padding", "clamped_bias") if isinstance(cfg, VideoSwinConfig) else ()
    lines += [f"  {k}: {v}" for k, v in cfg.to_dict().items() if k in ("name", "version", "img_size", "patch_size",
              "in_chans", "num_classes", "embed_dim", "depths", "num_heads", "window_size", "pretrained_window_sizes",
              "mlp_ratio", "qkv_bias", "pos_embed", *video)]
    if ckpt.guessed:
        lines.append(f"guessed:  {', '.join(ckpt.guessed)} (not recorded in the checkpoint)")
    if ckpt.class_names:
        lines.append(f"classes:  {len(ckpt.class_names)}: {', '.join(map(str, ckpt.class_names[:8]))}"
                     + (" ..." if len(ckpt.class_names) > 8 else ""))
    lines.append(f"ignored:  {', '.join(ckpt.ignored) if ckpt.ignored else 'none'}")
    lines.append(f"unknown:  {', '.join(ckpt.unknown) if ckpt.unknown else 'none'}")
    return "\n".join(lines)


def note_guesses(ckpt: Checkpoint, hints: dict | None = None) -> None:
    """One `note:` line naming the config fields a checkpoint being converted does not record (and their values)."""
    guessed = [f for f in ckpt.guessed if f not in (hints or {})]
    if guessed:
        assumed = ", ".join(f"{f}={getattr(ckpt.config, f)}" for f in guessed)
        hint = "" if isinstance(ckpt.config, VideoSwinConfig) else " (pass --window-size / --img-size if it differs)"
        print(f"note: {ckpt.path} does not record {', '.join(guessed)}; assumed {assumed}{hint}", file=sys.stderr)
