"""Swin-UNet checkpoints: the official layout (HuCaoFighting/Swin-Unet) <-> swinkit's SwinUNet, both ways, and
the config the weights imply.

The official SwinTransformerSys keeps the classification Swin's keys for its encoder, which io/convert.py's
"official" map reads (patch merging at the END of each stage there, at the start here). Its decoder is
`layers_up.{k}` (k = 0: the bottleneck's patch expanding; k >= 1: blocks, then patch expanding except in the
last), `concat_back_dim.{k}` (the skip fusion before layers_up.{k}'s blocks), `norm_up`, `up` (the final 4x
expanding) and `output` (1x1 conv). The published SwinUnet wraps it as `swin_unet.` (`module.swin_unet.` under
DataParallel); training scripts save it bare or under "model" / "state_dict".

A decoder stage's blocks are laid out exactly like the encoder stage of the same level, so they go through the
encoder's "official" map too, renamed to that stage (which also rebuilds their buffers on export)."""
from __future__ import annotations

import dataclasses
import os
import re
import warnings
from pathlib import Path
from typing import Callable

import torch

from ...config import UNET_VARIANTS, SwinConfig, SwinUNetConfig
from ...models.unet import SwinUNet
from ..files import write_converted
from ..keymap import Rule, apply_key_map, listing, report_unknown
from .swin import (GEOMETRY, STRUCTURE, effective_windows, from_swinkit, from_weights, import_state_dict, listed)

WRAPPERS = ("model", "state_dict")  # dict keys a training script saves the state dict under
PREFIXES = ("module.", "swin_unet.")  # DataParallel, then the published SwinUnet wrapper, stripped in this order

# swinkit -> official template, for all but the encoder (convert.OFFICIAL) and the decoder's blocks (as stages)
DECODER_KEYS = {
    # the first decoder stage's patch expanding is a layer of its own there; listed before the general rule,
    # which would otherwise also take decoder.layers.0
    "decoder.layers.0.upsample.expand.weight": "layers_up.0.expand.weight",
    "decoder.layers.0.upsample.norm.{p}": "layers_up.0.norm.{p}",
    "decoder.layers.{i}.upsample.expand.weight": "layers_up.{i}.upsample.expand.weight",
    "decoder.layers.{i}.upsample.norm.{p}": "layers_up.{i}.upsample.norm.{p}",
    "decoder.layers.{i}.fuse.{p}": "concat_back_dim.{i+1}.{p}",
    "decoder.norm.{p}": "norm_up.{p}",
    "head.up.expand.weight": "up.expand.weight",
    "head.up.norm.{p}": "up.norm.{p}",
    "head.conv.weight": "output.weight",
}
_RULES = [Rule((ours,), (theirs,)) for ours, theirs in DECODER_KEYS.items()]
_CTX = {"P": ("",)}

_STAGE_BLOCK = re.compile(r"layers\.(\d+)\.(blocks\.\d+\..+)")  # an encoder block, stage in group 1
_OFFICIAL_BLOCK = re.compile(r"layers_up\.(\d+)\.(blocks\.\d+\..+)")  # k = 1..n-1 at level n-1-k
_OUR_BLOCK = re.compile(r"decoder\.layers\.(\d+)\.(blocks\.\d+\..+)")  # k = 0..n-2 at level n-2-k


def _rename(sd: dict, pattern: re.Pattern, template: str, index: Callable[[int], int]) -> tuple[dict, dict]:
    """(keys matching `pattern`, renamed to template.format(index(group 1), group 2), the other keys)."""
    renamed, rest = {}, {}
    for k, v in sd.items():
        m = pattern.fullmatch(k)
        if m:
            renamed[template.format(index(int(m[1])), m[2])] = v
        else:
            rest[k] = v
    return renamed, rest


# ----------------------------------------------------------------------------------------------------------
# reading, detection


def unwrap_unet(obj) -> dict:
    """The tensors of a Swin-UNet checkpoint object: under "model" / "state_dict" if so, wrapper prefixes
    (`module.`, `swin_unet.`) stripped."""
    while isinstance(obj, dict) and (inner := next((k for k in WRAPPERS if isinstance(obj.get(k), dict)), None)):
        obj = obj[inner]
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    for prefix in PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def detect_unet_format(sd: dict) -> str:
    """"official" | "swinkit", or a ValueError for a state dict that is neither."""
    if any(k.startswith("layers_up.") for k in sd):
        return "official"
    if any(k.startswith("decoder.layers.") for k in sd) and any(k.startswith("encoder.") for k in sd):
        return "swinkit"
    raise ValueError("not a Swin-UNet state dict: expected the official layout (layers.*, layers_up.*, "
                     "concat_back_dim.*, up.*, output.*) or swinkit's (encoder.*, decoder.*, head.*); its first "
                     f"keys are: {listing(list(sd))}")


def is_unet(sd: dict) -> bool:
    """Whether a state dict (wrapper prefixes allowed) is a Swin-UNet, in either layout."""
    try:
        detect_unet_format(unwrap_unet(sd))
    except ValueError:
        return False
    return True


def _read(path: str | os.PathLike) -> object:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------------------------------------
# the two directions


@dataclasses.dataclass
class ImportedUNet:
    state_dict: dict  # swinkit SwinUNet parameters
    buffers: dict  # the encoder's persisted official buffers, under swinkit names (they tell the image size)
    unknown: list[str]  # official keys no rule explains


def official_to_swinkit(sd: dict) -> ImportedUNet:
    """Read an official SwinTransformerSys state dict (wrappers already stripped). Never raises on keys."""
    n = 1 + max(int(m[1]) for k in sd if (m := re.match(r"layers_up\.(\d+)\.", k)))
    blocks, rest = _rename(sd, _OFFICIAL_BLOCK, "layers.{}.{}", lambda k: n - 1 - k)
    decoder, rest = apply_key_map(rest, _RULES, "theirs", _CTX, _CTX)
    enc, dec = import_state_dict(rest, "official"), import_state_dict(blocks, "official")
    dec_blocks, _ = _rename(dec.state_dict, _STAGE_BLOCK, "decoder.layers.{}.{}", lambda s: n - 2 - s)
    unknown_blocks, _ = _rename(dict.fromkeys(dec.unknown), _STAGE_BLOCK, "layers_up.{}.{}", lambda s: n - 1 - s)
    ours = {**{"encoder." + k: v for k, v in enc.state_dict.items()}, **dec_blocks, **decoder}
    return ImportedUNet(ours, {"encoder." + k: v for k, v in enc.buffers.items()},
                        sorted(enc.unknown + list(unknown_blocks)))


def _decoder_as_encoder(cfg: SwinUNetConfig) -> SwinConfig:
    """A headless encoder config whose stages 0..n-2 have the decoder's blocks at each level."""
    enc, n = cfg.encoder_config(), len(cfg.depths)
    return dataclasses.replace(enc, depths=cfg.depths_decoder[::-1], num_heads=enc.num_heads[:n - 1],
                               window_size=enc.window_size[:n - 1],
                               pretrained_window_sizes=enc.pretrained_window_sizes[:n - 1])


def swinkit_to_official(sd: dict, cfg: SwinUNetConfig, prefix: str = "") -> dict:
    """Export a SwinUNet state dict of a model with config `cfg` to the official layout, buffers included, so
    that it loads strict=True into SwinTransformerSys(img_size=cfg.img_size, ...) (prefix="swin_unet.": into the
    published SwinUnet wrapper)."""
    if cfg.version != 1:
        raise ValueError(f"the official Swin-UNet is Swin V1 only; this model is V{cfg.version}: keep it in "
                         "swinkit's format")
    n = len(cfg.depths)
    encoder = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    blocks, rest = _rename({k: v for k, v in sd.items() if not k.startswith("encoder.")}, _OUR_BLOCK,
                           "layers.{}.{}", lambda k: n - 2 - k)
    out = from_swinkit(encoder, "official", cfg.encoder_config())
    out.update(_rename(from_swinkit(blocks, "official", _decoder_as_encoder(cfg)), _STAGE_BLOCK,
                       "layers_up.{}.{}", lambda s: n - 1 - s)[0])
    decoder, left = apply_key_map(rest, _RULES, "ours", _CTX, _CTX)
    if left:
        raise ValueError(f"{len(left)} SwinUNet tensors have no equivalent in the official layout: "
                         f"{listing(sorted(left))}")
    return {prefix + k: v for k, v in {**out, **decoder}.items()}


# ----------------------------------------------------------------------------------------------------------
# what the weights say about the configuration


def match_unet_variant(d: dict) -> str | None:
    """The first named Swin-UNet with this structure (and the same effective windows, when they are known)."""
    for name in UNET_VARIANTS:
        cfg = SwinUNetConfig.from_name(name)
        if any(listed(getattr(cfg, k)) != listed(d[k]) for k in (*STRUCTURE, "depths_decoder") if k in d):
            continue
        mine = SwinUNetConfig.from_dict({**cfg.to_dict(), **{k: d[k] for k in GEOMETRY if k in d}})
        if effective_windows(mine) == effective_windows(cfg):
            return name
    return None


def infer_unet_config(sd: dict, buffers: dict | None = None) -> tuple[SwinUNetConfig, list[str]]:
    """The config of a swinkit SwinUNet state dict from its tensors (and the encoder's persisted official
    buffers), then the matching named variant, then defaults. Returns it and the fields that had to be guessed
    (window_size, img_size, num_heads)."""
    required = ("encoder.patch_embed.proj.weight", "head.up.expand.weight", "head.conv.weight")
    missing = [k for k in required if k not in sd]
    if missing:
        raise ValueError(f"not a complete SwinUNet state dict: {', '.join(missing)} missing")
    strip = lambda d: {k[len("encoder."):]: v for k, v in d.items() if k.startswith("encoder.")}  # noqa: E731
    derived = from_weights(strip(sd), strip(buffers or {}))
    n = len(derived["depths"])
    depth: dict[int, int] = {}
    for k in sd:
        if m := re.match(r"decoder\.layers\.(\d+)\.blocks\.(\d+)\.", k):
            depth[int(m[1])] = max(depth.get(int(m[1]), 0), int(m[2]) + 1)
    if sorted(depth) != list(range(n - 1)):
        raise ValueError(f"the decoder has blocks in stages {sorted(depth)}; a SwinUNet with {n} encoder stages "
                         f"has one decoder stage per skip connection, 0..{n - 2}")
    c, p, rows = derived["embed_dim"], derived["patch_size"], sd["head.up.expand.weight"].shape[0]
    if rows != p * p * c:
        raise ValueError(f"the final patch expanding makes {rows // c} tokens of each one, but the patches are "
                         f"{p}x{p}: this SwinUNet expands back by patch_size and cannot rebuild it")
    derived.update(depths_decoder=[depth[k] for k in range(n - 1)], num_classes=sd["head.conv.weight"].shape[0])
    name = match_unet_variant(derived)
    d = {**(UNET_VARIANTS[name]["config"] if name else {}), **derived, "name": name or "custom"}
    if "num_heads" not in d:  # V1 without position tables: the papers' 32 channels per head
        d["num_heads"] = [max(1, c * 2**i // 32) for i in range(n)]
    guessed = [k for k in ("window_size", "img_size", "num_heads") if k not in derived]
    return SwinUNetConfig.from_dict(d), guessed


# ----------------------------------------------------------------------------------------------------------
# public entry points


def _to_swinkit(sd: dict, strict: bool) -> ImportedUNet:
    if detect_unet_format(sd) == "swinkit":
        return ImportedUNet(sd, {}, [])
    imp = official_to_swinkit(sd)
    report_unknown(imp.unknown, "official Swin-UNet", "", strict)
    return imp


def convert_unet_state_dict(sd: dict, dst: str = "swinkit", cfg: SwinUNetConfig | None = None,
                            prefix: str = "") -> dict:
    """Convert a Swin-UNet state dict (official or swinkit, any wrapper) to `dst` ("swinkit" | "official").
    The official layout stores buffers built for one image size: pass `cfg`, otherwise it is inferred from the
    weights (a warning names what had to be guessed). `prefix` is written before official keys ("swin_unet.")."""
    if dst not in ("swinkit", "official"):
        raise ValueError(f"unknown Swin-UNet format {dst!r}; choose 'swinkit' or 'official'")
    imp = _to_swinkit(unwrap_unet(sd), strict=True)
    if dst == "swinkit":
        return imp.state_dict
    if cfg is None:
        cfg, guessed = infer_unet_config(imp.state_dict, imp.buffers)
        if guessed:
            assumed = ", ".join(f"{f}={getattr(cfg, f)}" for f in guessed)
            warnings.warn(f"{', '.join(guessed)} not recorded in the weights; assumed {assumed} "
                          "(pass cfg=SwinUNetConfig(...) to convert_unet_state_dict)", stacklevel=2)
    return swinkit_to_official(imp.state_dict, cfg, prefix)


def load_unet(source, strict: bool = True, **overrides) -> SwinUNet:
    """A SwinUNet from a Swin-UNet checkpoint: a path (.pth / .pt / .safetensors, read with weights_only) or an
    already loaded object, official or swinkit layout, any wrapper. The config is inferred from the weights;
    `overrides` are config fields that keep the shapes (drop_path_rate=0.1, window_mode="pad", img_size=...)."""
    obj = _read(source) if isinstance(source, (str, os.PathLike)) else source
    imp = _to_swinkit(unwrap_unet(obj), strict)
    cfg, _ = infer_unet_config(imp.state_dict, imp.buffers)
    valid = {f.name for f in dataclasses.fields(SwinUNetConfig)}
    if set(overrides) - valid:
        raise TypeError(f"unknown config fields {sorted(set(overrides) - valid)}; valid: {sorted(valid)}")
    model = SwinUNet(SwinUNetConfig.from_dict({**cfg.to_dict(), **overrides}))
    result = model.load_state_dict(imp.state_dict, strict=False)
    if result.missing_keys or (strict and result.unexpected_keys):
        raise ValueError(f"the checkpoint does not fit the SwinUNet its weights describe: missing "
                         f"{listing(result.missing_keys) or 'none'}; unexpected "
                         f"{listing(result.unexpected_keys) or 'none'}")
    return model


def inspect_unet(path, sd: dict) -> str:
    """`swinkit inspect` of a Swin-UNet file: format, parameters and the configuration its weights imply."""
    imp = _to_swinkit(unwrap_unet(sd), strict=False)
    cfg, guessed = infer_unet_config(imp.state_dict, imp.buffers)
    lines = [f"file:     {path}", f"format:   {detect_unet_format(unwrap_unet(sd))} (Swin-UNet, Swin V{cfg.version})",
             f"params:   {sum(v.numel() for v in imp.state_dict.values()):,}", "config:"]
    lines += [f"  {k}: {getattr(cfg, k)}" for k in ("name", "img_size", "patch_size", "in_chans", "num_classes",
                                                     "embed_dim", "depths", "depths_decoder", "num_heads", "window_size")]
    if guessed:
        lines.append(f"guessed:  {', '.join(guessed)} (not recorded in the checkpoint)")
    lines.append(f"unknown:  {', '.join(imp.unknown) if imp.unknown else 'none'}")
    return "\n".join(lines)


def write_official(model: SwinUNet, path) -> Path:
    """A SwinUNet as the official code saves it ({"model": state dict} in .pth / .pt, or safetensors)."""
    out = swinkit_to_official(model.state_dict(), model.cfg)
    return write_converted(out, Path(path), None, lambda sd: {"model": sd})
