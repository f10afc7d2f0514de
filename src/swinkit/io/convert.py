"""State-dict key maps between swinkit and the other Swin implementations, and what the weights say about
the configuration.

Every format is one explicit table from swinkit key templates to the format's key templates, applied in both
directions by `_apply`. Template fields: `{i}` stage, `{j}` block, `{p}` weight|bias, `{2i+1}` / `{i-1}` index
arithmetic, `{P}` the format's model prefix ("swin.", "backbone."), `{L}` the last stage. A table entry whose
key ends with "." maps every swinkit key under that prefix; keys not listed keep their swinkit name; `None`
means the format has no such tensor; a tuple is one tensor split along dim 0 (None: a part fixed at zero).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import re
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import torch

from ..config import SEG_VARIANTS, VARIANTS, SegmentationConfig, SwinConfig
from ..nn.windows import attention_mask, log_spaced_coords, relative_position_index, window_and_shift

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


@dataclass(frozen=True)
class T:
    """A format key whose tensor is transformed on the way in (to_ours) and out (to_theirs)."""
    key: str
    to_ours: Callable
    to_theirs: Callable


# ----------------------------------------------------------------------------------------------------------
# the formats


@dataclass(frozen=True)
class Layout:
    versions: tuple[int, ...]
    keys: dict
    export: bool = True  # False: an older layout, read but never written


@dataclass(frozen=True)
class Format:
    layouts: tuple[Layout, ...]
    prefixes: dict = field(default_factory=dict)  # version -> model prefix written on export ({P})
    buffers: tuple[str, ...] = ()  # buffers the format keeps in its state dict (recreated on export)
    clamp: bool = False  # builds bias tables with the window clamped to stage maps no larger than it
    ignored: str | None = None  # keys of the format's larger models that have no place in swinkit


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


# ----------------------------------------------------------------------------------------------------------
# templates and the one function that applies a key map


_FIELD = re.compile(r"\{(\d*)([a-zA-Z])([+-]\d+)?\}")


@lru_cache(maxsize=4096)
def _compile(template: str, prefixes: tuple[str, ...], last: int | None):
    """Template -> (regex, [(a, name, b)] per group). None when it needs {L} and the last stage is unknown."""
    parts, fields, pos = [], [], 0
    for m in _FIELD.finditer(template):
        a, name, b = int(m[1] or 1), m[2], int(m[3] or 0)
        parts.append(re.escape(template[pos:m.start()]))
        pos = m.end()
        if name == "L":
            if last is None:
                return None
            parts.append(str(last))
            continue
        parts.append({"p": "(weight|bias)", "P": "(" + "|".join(map(re.escape, prefixes)) + ")"}.get(name, r"(\d+)"))
        fields.append((a, name, b))
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts)), fields


def _match(template: str, key: str, ctx: dict) -> dict | None:
    """The field values that make `template` produce `key` (index arithmetic solved), or None."""
    compiled = _compile(template, ctx["P"], ctx.get("L"))
    m = compiled and compiled[0].fullmatch(key)
    if not m:
        return None
    values = {}
    for (a, name, b), g in zip(compiled[1], m.groups()):
        v = g
        if name not in "pP":
            v, rest = divmod(int(g) - b, a)
            if rest or v < 0:
                return None
        if values.setdefault(name, v) != v:
            return None
    return values


def _fill(template: str, values: dict, ctx: dict) -> str:
    def field_(m):
        a, name, b = int(m[1] or 1), m[2], int(m[3] or 0)
        if name == "L":
            return str(ctx["L"])
        if name == "P":
            return values.get("P", ctx["P"][0])  # the prefix the key came with, or the one to write
        return values[name] if name == "p" else str(a * values[name] + b)
    return _FIELD.sub(field_, template)


@dataclass(frozen=True)
class Rule:
    ours: tuple  # swinkit templates (None: a part fixed at zero)
    theirs: tuple
    to_ours: Callable | None = None
    to_theirs: Callable | None = None


def _rules(layout: Layout, version: int, templates: list[str] | None = None) -> list[Rule]:
    """Expand a layout's table into one rule per swinkit template of `version` (or of `templates`)."""
    templates = templates or TEMPLATES[version]
    rules, covered = [], set()
    for ours, theirs in layout.keys.items():
        if isinstance(ours, tuple) and all(t in templates for t in ours if t):
            rules.append(Rule(ours, (theirs,)))
            covered.update(ours)
    prefixes = sorted((k for k in layout.keys if isinstance(k, str) and k.endswith(".")), key=len, reverse=True)
    for t in templates:
        if t in covered:
            continue
        if t in layout.keys:
            spec = layout.keys[t]
        else:
            k = next((k for k in prefixes if t.startswith(k)), None)
            spec = t if k is None else layout.keys[k] and layout.keys[k] + t[len(k):]
        if isinstance(spec, T):
            rules.append(Rule((t,), (spec.key,), spec.to_ours, spec.to_theirs))
        elif spec is not None:
            rules.append(Rule((t,), spec if isinstance(spec, tuple) else (spec,)))
    return rules


def _apply(sd: dict, rules: list[Rule], src: str, ctx_src: dict, ctx_dst: dict) -> tuple[dict, dict]:
    """Rename (and split / join / transform) the tensors of `sd` from the `src` side of `rules` ("ours" or
    "theirs") to the other side. Returns (converted, leftover keys no rule took)."""
    dst = "theirs" if src == "ours" else "ours"
    out, used = {}, set()
    for rule in rules:
        s_parts, d_parts = getattr(rule, src), getattr(rule, dst)
        fn = rule.to_theirs if src == "ours" else rule.to_ours
        lead = next(t for t in s_parts if t)
        for key in sd:
            values = None if key in used else _match(lead, key, ctx_src)
            if values is None:
                continue
            names = [t and _fill(t, values, ctx_src) for t in s_parts]
            if any(n and n not in sd for n in names):
                continue  # an incomplete group stays behind and is reported
            ref = sd[key]
            x = torch.cat([sd[n] if n else torch.zeros_like(ref) for n in names]) if len(names) > 1 else ref
            x = fn(x) if fn else x
            for t, part in zip(d_parts, x.chunk(len(d_parts)) if len(d_parts) > 1 else [x]):
                if t:
                    out[_fill(t, values, ctx_dst)] = part.clone() if len(d_parts) > 1 else part
            used.update(n for n in names if n)
    return out, {k: v for k, v in sd.items() if k not in used}


def _last_stage(sd: dict) -> int:
    return max((int(m[1]) for k in sd if (m := re.match(r"layers\.(\d+)\.", k))), default=0)


def _version(keys) -> int:
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
    version = _version(sd)
    ctx_in, ctx_out = {"P": (*f.prefixes.values(), "")}, {"P": ("",)}
    best = None
    for layout in (lay for lay in f.layouts if version in lay.versions):
        rules = _rules(layout, version, templates and templates[version])
        ours, left = _apply(sd, rules, "theirs", ctx_in, ctx_out)
        if any("{L}" in t for r in rules for t in r.theirs if t):  # second pass once the stages are known
            more, left = _apply(left, rules, "theirs", {**ctx_in, "L": _last_stage(ours)}, ctx_out)
            ours.update(more)
        ignored = sorted(k for k in left if f.ignored and re.search(f.ignored, k))
        unknown = sorted(set(left) - set(ignored))
        if best is None or len(unknown) < len(best.unknown):
            buffers = {k: ours.pop(k) for k in list(ours) if k.rsplit(".", 1)[-1] in BUFFERS}
            best = Imported(fmt, version, ours, buffers, unknown, ignored)
    if best is None:
        raise ValueError(f"the {fmt} format has no Swin V{version} layout")
    return best


def _consistent(sd: dict) -> bool:
    """Stages 0..n-1 with blocks, patch merging exactly at stages 1..n-1, and a patch embedding."""
    stages = {int(m[1]) for k in sd if (m := re.match(r"layers\.(\d+)\.blocks\.", k))}
    merges = {int(m[1]) for k in sd if (m := re.match(r"layers\.(\d+)\.downsample\.", k))}
    n = len(stages)
    return "patch_embed.proj.weight" in sd and stages == set(range(n)) and merges == set(range(1, n))


def detect_format(sd: dict) -> str:
    """The format whose key map explains every key of `sd` and yields a consistent Swin structure."""
    scored, version = [], _version(sd)
    for fmt in (f for f in DETECT_ORDER if any(version in lay.versions for lay in FORMATS[f].layouts)):
        imp = import_state_dict(sd, fmt)
        scored.append((len(imp.unknown) + (0 if _consistent(imp.state_dict) else len(sd) + 1), fmt))
    bad, fmt = min(scored, key=lambda s: s[0])
    if bad > len(sd):
        sample = ", ".join(list(sd)[:5])
        raise ValueError(f"not a Swin Transformer state dict of a known format ({', '.join(DETECT_ORDER)}); "
                         f"its first keys are: {sample}")
    return fmt


def _listing(keys: list[str]) -> str:
    return ", ".join(keys[:12]) + (f" ... (+{len(keys) - 12} more)" if len(keys) > 12 else "")


def to_swinkit(sd: dict, src: str | None = None, strict: bool = True) -> Imported:
    """Import a state dict (format detected when `src` is None). Keys no rule explains are an error listing
    them, or with strict=False a warning."""
    imp = import_state_dict(sd, src or detect_format(sd))
    if imp.unknown:
        msg = (f"{len(imp.unknown)} keys of this {imp.format} checkpoint have no place in swinkit: "
               f"{_listing(imp.unknown)}")
        if strict:
            raise ValueError(msg + ". Is it a Swin checkpoint of that format? To skip them, load with strict=False.")
        warnings.warn(msg + " (skipped)", stacklevel=3)
    if imp.ignored:
        warnings.warn(f"dropped {len(imp.ignored)} {imp.format} keys outside the Swin backbone or without a "
                      f"swinkit equivalent: {_listing(imp.ignored)}", stacklevel=3)
    return imp


def from_swinkit(sd: dict, dst: str, cfg: SwinConfig, formats: dict | None = None,
                 templates: dict | None = None) -> dict:
    """Export a swinkit state dict of a model with config `cfg` to format `dst`, buffers included, so it
    loads strict=True into that library's model. `formats` / `templates`: as for import_state_dict."""
    f = (formats or FORMATS)[dst]
    version = _version(sd)
    layout = next((lay for lay in f.layouts if lay.export and version in lay.versions), None)
    if layout is None:
        raise ValueError(f"the {dst} format has no Swin V{version}")
    if _last_stage(sd) + 1 != len(cfg.depths):
        raise ValueError(f"cfg has {len(cfg.depths)} stages, the state dict {_last_stage(sd) + 1}: pass the config "
                         "of the model these weights belong to")
    sd = dict(sd)
    windows = _stage_windows(sd, cfg, f.clamp)
    if f.clamp and version == 1:
        for k, v in sd.items():
            if k.endswith("relative_position_bias_table"):
                sd[k] = _crop_table(v, windows[int(k.split(".")[1])])
    sd.update(_buffers(sd, cfg, windows, f.buffers))
    ctx_out = {"P": (f.prefixes.get(version, ""),), "L": _last_stage(sd)}
    rules = _rules(layout, version, templates and templates[version])
    out, left = _apply(sd, rules, "ours", {"P": ("",)}, ctx_out)
    if left:
        raise ValueError(f"{len(left)} swinkit tensors have no equivalent in the {dst} format: "
                         f"{_listing(sorted(left))}")
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
    out, cpu, v2 = {}, torch.device("cpu"), _version(sd) == 2
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


def _from_weights(sd: dict, buffers: dict) -> dict:
    """Config fields the tensors determine (and, through _geometry, the persisted buffers)."""
    version = _version(sd)
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
        if any(_listed(getattr(cfg, k)) != _listed(d[k]) for k in STRUCTURE if k in d):
            continue
        mine = SwinConfig.from_dict({**cfg.to_dict(), **{k: d[k] for k in GEOMETRY if k in d}})
        if effective_windows(mine) == effective_windows(cfg) and \
                mine.pretrained_window_sizes == cfg.pretrained_window_sizes:
            return name
    return None


def _listed(v):
    return [_listed(x) for x in v] if isinstance(v, (list, tuple)) else v


def infer_config(sd: dict, buffers: dict | None = None, known: dict | None = None
                 ) -> tuple[SwinConfig, list[str]]:
    """The config of a swinkit state dict: what the tensors (and persisted buffers) say, then `known` fields
    (a config file beside the weights, the file name), then the matching named variant, then defaults.
    Returns the config and the fields that had to be guessed (window_size, img_size, num_heads)."""
    derived = _from_weights(sd, buffers or {})
    known = {k: v for k, v in (known or {}).items() if v is not None}
    name = match_variant({**known, **derived})
    base = SwinConfig.from_name(name).to_dict() if name else {}
    d = {**base, **known, **derived, "name": name or "custom"}
    guessed = [k for k in ("window_size", "img_size", "num_heads") if k not in derived and k not in known]
    if "num_heads" not in d:  # V1 without position tables: the papers' 32 channels per head
        d["num_heads"] = [max(1, d["embed_dim"] * 2**i // 32) for i in range(len(d["depths"]))]
    return SwinConfig.from_dict(d), guessed



# ==========================================================================================================
# segmentation models (UPerNet / semantic FPN on a Swin backbone): backbone.*, decode_head.*, auxiliary_head.*
# and, for mmseg's semantic FPN, neck.*. The backbone goes through a backbone table of SEG_BACKBONES with its
# "backbone." prefix taken off; the heads through one table of SEG_HEADS per format.

BACKBONE_TEMPLATES = {v: [t for t in ts if t not in ("norm.{p}", "head.fc.{p}")] + ["norm{i}.{p}"]
                      for v, ts in TEMPLATES.items()}  # a SwinBackbone: no classifier, a norm per output stage


def _conv_bn(prefix: str) -> list[str]:
    """The tensors of a ConvBNReLU unit under `prefix`."""
    return [prefix + "conv.weight", prefix + "bn.{p}", prefix + "bn.running_mean", prefix + "bn.running_var",
            prefix + "bn.num_batches_tracked"]


_D, _A = "decode_head.", "auxiliary_head."
HEAD_TEMPLATES = [  # UPerNet; semantic FPN (neck convs without norm, scale heads); the auxiliary FCN head
    *_conv_bn(_D + "ppm.convs.{k}."), *_conv_bn(_D + "ppm_bottleneck."), *_conv_bn(_D + "lateral_convs.{i}."),
    *_conv_bn(_D + "fpn_convs.{i}."), *_conv_bn(_D + "fpn_bottleneck."),
    _D + "lateral_convs.{i}.{p}", _D + "fpn_convs.{i}.{p}", *_conv_bn(_D + "scale_heads.{i}.{k}."),
    _D + "classifier.{p}", *_conv_bn(_A + "convs.{k}."), _A + "classifier.{p}"]
_FPN = (_D + "lateral_convs.{i}.{p}", _D + "fpn_convs.{i}.{p}", _D + "scale_heads.{i}.{k}.")

_HF_NORMS = {"norm{i}.": "hidden_states_norms.stage{i+1}."}
SEG_BACKBONES = {
    "swinkit": SWINKIT,
    # microsoft/Swin-Transformer-Semantic-Segmentation: the official layout (patch merging at the end of a
    # stage), the absolute position embedding as a (1, C, h, w) grid, the bias-table index buffers kept
    "official": Format((Layout((1,), {"layers.{i}.downsample.": "layers.{i-1}.downsample."}),),
                       buffers=("relative_position_index",)),
    "mmseg": Format(MMDET.layouts, buffers=MMDET.buffers),  # mmseg's own Swin: the mmdet table (nn.Unfold order)
    # transformers' SwinBackbone in UperNetForSemanticSegmentation: v5 under "swin.", v4 at the top level.
    # SwinModel's final norm is in its state dict but unused by the backbone. Swinv2Backbone: no output norms.
    "hf": Format((Layout((1,), {**HF.layouts[0].keys, **_HF_NORMS}), Layout((2,), HF.layouts[1].keys),
                  Layout((1,), {**HF.layouts[2].keys, **_HF_NORMS}, export=False)),
                 prefixes={1: "swin.", 2: ""}, ignored=r"^swin\.layernorm\."),
}


def _hf_conv_bn(table: dict) -> dict:
    """ConvBNReLU prefixes -> transformers' UperNetConvModule prefixes, whose BatchNorm is `batch_norm`."""
    return {k: v for ours, theirs in table.items()
            for k, v in ((ours + "conv.", theirs + "conv."), (ours + "bn.", theirs + "batch_norm."))}


_MMSEG_HEADS = {
    _D + "ppm.convs.{k}.": _D + "psp_modules.{k}.1.",  # each branch: Sequential(AdaptiveAvgPool2d, ConvModule)
    _D + "ppm_bottleneck.": _D + "bottleneck.",
    _D + "classifier.": _D + "conv_seg.",
    _D + "lateral_convs.{i}.{p}": "neck.lateral_convs.{i}.conv.{p}",  # semantic FPN: mmdet's FPN neck
    _D + "fpn_convs.{i}.{p}": "neck.fpn_convs.{i}.conv.{p}",
    _D + "scale_heads.{i}.{k}.": _D + "scale_heads.{i}.{2k}.",  # an Upsample after every ConvModule
    _A + "classifier.": _A + "conv_seg.",
}
SEG_HEADS = {
    "swinkit": {},
    "official": _MMSEG_HEADS,
    "mmseg": _MMSEG_HEADS,
    "hf": {**_hf_conv_bn({_D + "ppm.convs.{k}.": _D + "psp_modules.{k}.1.",
                          _D + "ppm_bottleneck.": _D + "bottleneck.",
                          **{p: p for p in (_D + "lateral_convs.{i}.", _D + "fpn_convs.{i}.", _D + "fpn_bottleneck.",
                                            _A + "convs.{k}.")}}),
           **dict.fromkeys(_FPN)},  # transformers has no semantic FPN
}
SEG_DETECT_ORDER = ("swinkit", "official", "mmseg", "hf")


@dataclass
class SegImported:
    """A segmentation state dict read through one format's key maps."""
    format: str
    backbone: Imported  # swinkit backbone names, without "backbone."
    heads: dict  # decode_head.* / auxiliary_head.* under swinkit names
    unknown: list[str]
    ignored: list[str]

    @property
    def state_dict(self) -> dict:
        return {**{"backbone." + k: v for k, v in self.backbone.state_dict.items()}, **self.heads}


def is_segmentation_state_dict(sd: dict) -> bool:
    """Whether a state dict holds a decode head (a segmentation model rather than a classifier or backbone)."""
    return any(k.startswith(("decode_head.", "auxiliary_head.")) for k in sd)


def _split_backbone(sd: dict) -> tuple[dict, dict]:
    """(tensors under "backbone." with the prefix removed, the rest)."""
    inner = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    return inner, {k: v for k, v in sd.items() if not k.startswith("backbone.")}


def import_segmentation(sd: dict, fmt: str) -> SegImported:
    """Read a segmentation state dict through format `fmt`'s key maps. Raises only for a Swin version the format
    lacks."""
    inner, rest = _split_backbone(sd)
    bb = import_state_dict(inner, fmt, SEG_BACKBONES, BACKBONE_TEMPLATES)
    ctx = {"P": ("",)}
    heads, left = _apply(rest, _rules(Layout((1,), SEG_HEADS[fmt]), 1, HEAD_TEMPLATES), "theirs", ctx, ctx)
    return SegImported(fmt, bb, heads, ["backbone." + k for k in bb.unknown] + sorted(left),
                       ["backbone." + k for k in bb.ignored])


def detect_segmentation_format(sd: dict) -> str:
    """The format whose key maps explain every key of a segmentation state dict with a consistent backbone."""
    scored = []
    for fmt in SEG_DETECT_ORDER:
        try:
            imp = import_segmentation(sd, fmt)
        except ValueError:  # no layout for this Swin version
            continue
        scored.append((len(imp.unknown) + (0 if _consistent(imp.backbone.state_dict) else len(sd) + 1), fmt))
    bad, fmt = min(scored, key=lambda s: s[0])
    if bad > len(sd):
        raise ValueError(f"not a Swin segmentation state dict of a known format ({', '.join(SEG_DETECT_ORDER)}); "
                         f"its first keys are: {', '.join(list(sd)[:5])}")
    return fmt


def segmentation_to_swinkit(sd: dict, src: str | None = None, strict: bool = True) -> SegImported:
    """Import a segmentation state dict (format detected when `src` is None). Keys no map explains are an error
    listing them, or with strict=False a warning."""
    imp = import_segmentation(sd, src or detect_segmentation_format(sd))
    if imp.unknown:
        msg = (f"{len(imp.unknown)} keys of this {imp.format} segmentation checkpoint have no place in swinkit: "
               f"{_listing(imp.unknown)}")
        if strict:
            raise ValueError(msg + ". Is it a UPerNet / semantic FPN Swin checkpoint of that format? To skip them, "
                                   "load with strict=False.")
        warnings.warn(msg + " (skipped)", stacklevel=3)
    return imp


def segmentation_from_swinkit(sd: dict, dst: str, cfg: SegmentationConfig) -> dict:
    """Export a swinkit segmentation state dict (model config `cfg`) to format `dst`: official, mmseg or hf."""
    if dst not in SEG_BACKBONES:
        raise ValueError(f"segmentation models convert to {', '.join(SEG_BACKBONES)}; got {dst!r}")
    if dst == "hf" and (cfg.head != "upernet" or (cfg.aux_head and (cfg.aux_in_index, cfg.aux_num_convs) != (2, 1))):
        raise ValueError("transformers' UperNetForSemanticSegmentation has a UPerNet head and an auxiliary head of "
                         f"one conv on stage 2 only; this model has head={cfg.head!r}, aux_in_index="
                         f"{cfg.aux_in_index}, aux_num_convs={cfg.aux_num_convs}. Convert it to swinkit or mmseg.")
    if dst == "hf" and cfg.out_norms != (cfg.backbone.version == 1):
        raise ValueError(f"transformers' Swin{'v2' if cfg.backbone.version == 2 else ''}Backbone has "
                         f"{'no' if cfg.backbone.version == 2 else 'a'} LayerNorm per output; this model has "
                         f"out_norms={cfg.out_norms}. Convert it to swinkit.")
    inner, rest = _split_backbone(sd)
    out = {"backbone." + k: v for k, v in
           from_swinkit(inner, dst, cfg.backbone, SEG_BACKBONES, BACKBONE_TEMPLATES).items()}
    ctx = {"P": ("",)}
    heads, left = _apply(rest, _rules(Layout((1,), SEG_HEADS[dst]), 1, HEAD_TEMPLATES), "ours", ctx, ctx)
    if left:
        raise ValueError(f"{len(left)} swinkit tensors have no equivalent in the {dst} format: "
                         f"{_listing(sorted(left))}")
    out.update(heads)
    if dst == "hf" and cfg.backbone.version == 1:  # SwinModel's final norm: unused by SwinBackbone, but stored
        c = cfg.backbone.num_features
        out.update({"backbone.swin.layernorm.weight": torch.ones(c), "backbone.swin.layernorm.bias": torch.zeros(c)})
    return out


def convert_segmentation_state_dict(sd: dict, src: str | None = None, dst: str = "swinkit",
                                    cfg: SegmentationConfig | None = None) -> dict:
    """Convert a segmentation state dict between swinkit, official (Swin-Transformer-Semantic-Segmentation),
    mmseg and hf (transformers' UperNetForSemanticSegmentation). `cfg` is inferred from the weights when None."""
    imp = segmentation_to_swinkit(sd, src)
    if dst == "swinkit":
        return imp.state_dict
    if cfg is None:
        cfg, _ = infer_segmentation_config(imp)
    return segmentation_from_swinkit(imp.state_dict, dst, cfg)


def _count(heads: dict, template: str) -> int:
    """How many modules a ModuleList holds: the first k for which `template` (with "{k}") is not a key."""
    return next(k for k in itertools.count() if template.format(k=k) not in heads)


def infer_segmentation_config(imp: SegImported, known: dict | None = None) -> tuple[SegmentationConfig, list[str]]:
    """The config of an imported segmentation state dict: the heads' shapes, the backbone's config as
    infer_config finds it (window_mode "pad" unless `known` says otherwise), then `known` fields (a config file
    beside the weights) for what the weights cannot tell. Returns the config and the fields that were guessed."""
    known = dict(known or {})
    bb_known = known.pop("backbone", None) or {}
    if isinstance(bb_known, str):
        bb_known = SwinConfig.from_name(bb_known, window_mode="pad").to_dict()
    backbone, guessed = infer_config(imp.backbone.state_dict, imp.backbone.buffers,
                                     {"window_mode": "pad", **bb_known, "num_classes": 0})
    h = imp.heads
    if _D + "classifier.weight" not in h:
        raise ValueError("no decode head classifier (decode_head.classifier.weight in swinkit's names) in the weights")
    d = dict(head="upernet" if _D + "ppm_bottleneck.conv.weight" in h else "fpn",
             out_norms=any(re.match(r"norm\d+\.", k) for k in imp.backbone.state_dict))
    d["num_classes"], d["channels"] = h[_D + "classifier.weight"].shape[:2]
    if d["head"] == "upernet":
        n = _count(h, _D + "ppm.convs.{k}.conv.weight")
        if "pool_scales" not in known:
            d["pool_scales"] = (1, 2, 3, 6) if n == 4 else tuple(range(1, n + 1))
            guessed += [] if n == 4 else ["pool_scales"]
    else:
        d["fpn_channels"] = h[_D + "lateral_convs.0.weight"].shape[0]
    d["aux_head"] = _A + "classifier.weight" in h
    if d["aux_head"]:
        d["aux_channels"] = h[_A + "classifier.weight"].shape[1]
        d["aux_num_convs"] = _count(h, _A + "convs.{k}.conv.weight")
        dims = [backbone.embed_dim * 2**i for i in range(len(backbone.depths))]
        d["aux_in_index"] = dims.index(h[_A + "convs.0.conv.weight"].shape[1])
    cfg = SegmentationConfig.from_dict({**known, **d, "backbone": backbone})
    return dataclasses.replace(cfg, name=known.get("name") or _match_segmentation_variant(cfg) or "custom"), guessed


def _match_segmentation_variant(cfg: SegmentationConfig) -> str | None:
    """The first named segmentation variant with this head and backbone structure."""
    for name in SEG_VARIANTS:
        v = SegmentationConfig.from_name(name)
        same = [getattr(v.backbone, k) == getattr(cfg.backbone, k) for k in STRUCTURE + ("window_size",)]
        if all(same) and (v.head, v.channels) == (cfg.head, cfg.channels):
            return name
    return None
