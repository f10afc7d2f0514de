"""The key-map engine: how a checkpoint's keys map to swinkit's, one explicit table per format, applied in both
directions by one function.

A table maps swinkit key templates to a format's key templates. Template fields: `{i}` stage, `{j}` block, `{k}`
any index, `{p}` weight|bias, `{2i+1}` / `{i-1}` index arithmetic, `{P}` the format's model prefix ("swin.",
"backbone."), `{L}` the last stage. A table entry whose key ends with "." maps every swinkit key under that prefix;
keys not listed keep their swinkit name; `None` means the format has no such tensor; a tuple is one tensor split
along dim 0 (None: a part fixed at zero); a `T` transforms the tensor on the way in and out.

    rules = expand_rules(Layout((1, 2), {"head.fc.": "head."}), ["head.fc.{p}", "layers.{i}.blocks.{j}.norm1.{p}"])
    ours, left = apply_key_map(their_state_dict, rules, "theirs", {"P": ("",)}, {"P": ("",)})

`apply_key_map` returns the keys no rule took, so every format can report them (`listing`) instead of dropping
them. The families' tables live in swinkit/io/formats/.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import torch


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


def expand_rules(layout: Layout, templates: list[str]) -> list[Rule]:
    """Expand a layout's table into one rule per swinkit template of `templates`."""
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


def apply_key_map(sd: dict, rules: list[Rule], src: str, ctx_src: dict, ctx_dst: dict) -> tuple[dict, dict]:
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


def listing(keys: list[str]) -> str:
    return ", ".join(keys[:12]) + (f" ... (+{len(keys) - 12} more)" if len(keys) > 12 else "")


def report_unknown(unknown: list[str], what: str, hint: str, strict: bool, stacklevel: int = 4) -> None:
    """Keys of a `what` checkpoint that no rule explains: a ValueError listing them (after `hint`, a question about
    the file ending in a space, or ""), or with strict=False a warning that they were skipped."""
    if not unknown:
        return
    msg = f"{len(unknown)} keys of this {what} checkpoint have no place in swinkit: {listing(unknown)}"
    if strict:
        raise ValueError(f"{msg}. {hint}To skip them, load with strict=False.")
    warnings.warn(msg + " (skipped)", stacklevel=stacklevel)
