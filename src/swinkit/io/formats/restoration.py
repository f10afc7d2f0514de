"""SwinIR / Swin2SR checkpoints: the official SwinIR layout (JingyunLiang/SwinIR, `{"params": ...}` or
`{"params_ema": ...}`) and transformers' Swin2SRForImageSuperResolution <-> swinkit's SwinIR, both ways; the config
the weights imply; transformers' Swin2SRConfig both ways.

The key maps use the templates of io/convert.py (`{i}` RSTB, `{j}` block, `{p}` weight|bias, `{2k}` an even index),
applied by its one `apply_key_map`. transformers names the reconstruction head after the upsampler, so its map has one
head table per upsampler (and for the x3 pixel shuffle, whose one conv has no index).

What the weights do not say: the official files keep `attn_mask` buffers only at the training size (img_size, read
back from them) and never store img_range. The official test script (main_test_swinir.py, define_model) uses
img_range=255 for its JPEG artifact-reduction models and 1 for every other; those models, and only those, are
upscale 1 with window 7 (JPEG's 8x8 blocks), so the rule is: upsampler none + window 7 -> 255, else 1.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ...config import SWINIR_VARIANTS, SwinIRConfig
from ...models.swinir import SwinIR
from ...nn.windows import attention_mask, relative_position_index
from ..files import CheckpointError, save_state_dict, side_configs, write_converted
from ..keymap import Layout, apply_key_map, expand_rules, listing, report_unknown
from ..hub import download_pretrained
from ..raw import RawCheckpoint, read_raw
from .swin import B, BUFFERS, Checkpoint, check_architecture, check_overrides, check_shapes

_HEAD = ["conv_before_upsample.0.{p}", "upsample.{2k}.{p}", "conv_up1.{p}", "conv_up2.{p}", "conv_hr.{p}",
         "conv_last.{p}"]
# every tensor a SwinIR of either version holds, plus the buffers the official files persist
SWINIR_TEMPLATES = [
    "conv_first.{p}", "patch_embed.proj.{p}", "patch_embed.norm.{p}",
    B + "norm1.{p}", B + "attn.qkv.weight", B + "attn.qkv.bias", B + "attn.relative_position_bias_table",
    B + "attn.logit_scale", B + "attn.q_bias", B + "attn.v_bias", B + "attn.cpb_mlp.0.{p}", B + "attn.cpb_mlp.2.weight",
    B + "attn.proj.{p}", B + "norm2.{p}", B + "mlp.fc1.{p}", B + "mlp.fc2.{p}",
    "layers.{i}.conv.{p}", "layers.{i}.conv.{2k}.{p}", "layers.{i}.proj.{p}",
    "norm.{p}", "conv_after_body.{p}", "conv_after_body.{2k}.{p}", *_HEAD,
    B + "attn_mask", B + "attn.relative_position_index"]

_HS = "swin2sr.encoder.stages.{i}.layers.{j}."
_HF_BODY = {
    "conv_first.": "swin2sr.first_convolution.",
    "patch_embed.proj.": "swin2sr.embeddings.patch_embeddings.projection.",
    "patch_embed.norm.": "swin2sr.embeddings.patch_embeddings.layernorm.",
    B + "norm1.": _HS + "layernorm_before.",
    B + "norm2.": _HS + "layernorm_after.",
    B + "attn.qkv.weight": tuple(_HS + f"attention.self.{n}.weight" for n in ("query", "key", "value")),
    B + "attn.q_bias": _HS + "attention.self.query.bias",
    B + "attn.v_bias": _HS + "attention.self.value.bias",
    B + "attn.logit_scale": _HS + "attention.self.logit_scale",
    B + "attn.cpb_mlp.": _HS + "attention.self.continuous_position_bias_mlp.",
    B + "attn.proj.": _HS + "attention.output.dense.",
    B + "mlp.fc1.": _HS + "intermediate.dense.",
    B + "mlp.fc2.": _HS + "output.dense.",
    "layers.{i}.conv.": "swin2sr.encoder.stages.{i}.conv.",
    "layers.{i}.proj.": "swin2sr.encoder.stages.{i}.patch_embed.projection.",
    "norm.": "swin2sr.layernorm.",
    "conv_after_body.": "swin2sr.conv_after_body.",
    **{B + k: None for k in ("attn.qkv.bias", "attn.relative_position_bias_table", "attn_mask",
                             "attn.relative_position_index")},  # V1 tensors and buffers: not in transformers
    **{t.split("{")[0]: None for t in _HEAD},  # head tensors the chosen head does not map are none of transformers'
}
_HF_PS = {"conv_before_upsample.0.": "upsample.conv_before_upsample.", "conv_last.": "upsample.final_convolution."}
# transformers' head per upsampler ("pixelshuffle_x3": its x3 Upsample, whose one conv has no index)
HF_HEADS = {
    "pixelshuffle": {**_HF_PS, "upsample.{2k}.": "upsample.upsample.convolution_{k}."},
    "pixelshuffle_x3": {**_HF_PS, "upsample.0.": "upsample.upsample.convolution."},
    "pixelshuffledirect": {"upsample.0.": "upsample.conv."},
    "nearest+conv": {**_HF_PS, **{f"{c}.": f"upsample.{c}." for c in ("conv_up1", "conv_up2", "conv_hr")}},
    "none": {"conv_last.": "final_convolution."},
}
FORMATS = ("swinkit", "official", "hf")
_LAYOUTS = {"swinkit": {}, "official": {B: "layers.{i}.residual_group.blocks.{j}."}}


def _format_rules(fmt: str, head: str | None = None) -> list:
    """The rules of format `fmt` (for "hf": with transformers' `head`)."""
    if fmt != "hf":
        return expand_rules(Layout((1, 2), _LAYOUTS[fmt]), SWINIR_TEMPLATES)
    templates = SWINIR_TEMPLATES
    if head in ("pixelshuffle_x3", "pixelshuffledirect"):  # one upsample conv, index 0
        templates = [t.replace("{2k}", "0") if t.startswith("upsample.") else t for t in templates]
    return expand_rules(Layout((2,), {**_HF_BODY, **HF_HEADS[head]}), templates)


def _candidates():
    return [("swinkit", None), ("official", None), *(("hf", h) for h in HF_HEADS)]


def hf_head(cfg: SwinIRConfig) -> str:
    if cfg.upsampler == "pixelshuffle" and cfg.upscale == 3:
        return "pixelshuffle_x3"
    return cfg.upsampler


def is_swinir_state_dict(sd: dict) -> bool:
    """Whether a state dict is a SwinIR / Swin2SR (swinkit, official or transformers): it has a shallow conv."""
    return "conv_first.weight" in sd or "swin2sr.first_convolution.weight" in sd


# ----------------------------------------------------------------------------------------------------------
# the two directions


@dataclass
class SwinIRImported:
    format: str
    state_dict: dict  # SwinIR parameters
    buffers: dict  # the format's persisted buffers, under swinkit names (attn_mask tells the training size)
    unknown: list[str]  # keys no rule explains


def _import(sd: dict, fmt: str, head: str | None) -> SwinIRImported:
    ours, left = apply_key_map(sd, _format_rules(fmt, head), "theirs", {"P": ("",)}, {"P": ("",)})
    buffers = {k: ours.pop(k) for k in list(ours) if k.rsplit(".", 1)[-1] in BUFFERS}
    return SwinIRImported(fmt, ours, buffers, sorted(left))


def swinir_to_swinkit(sd: dict, src: str | None = None, strict: bool = True) -> SwinIRImported:
    """Import a SwinIR / Swin2SR state dict: through format `src`, or the format whose key map explains the most
    keys. Keys no map explains are an error listing them, or with strict=False a warning."""
    if not is_swinir_state_dict(sd):
        raise ValueError("not a SwinIR / Swin2SR state dict: expected conv_first.weight (official, swinkit) or "
                         f"swin2sr.first_convolution.weight (transformers); its first keys are: {listing(list(sd)[:5])}")
    if src is not None and src not in FORMATS:
        raise ValueError(f"unknown SwinIR format {src!r}; choose one of {', '.join(FORMATS)}")
    tried = [_import(sd, f, h) for f, h in _candidates() if src in (None, f)]
    imp = min(tried, key=lambda i: len(i.unknown))  # ties go to the first (swinkit before official)
    report_unknown(imp.unknown, f"{imp.format} SwinIR", "Is it a SwinIR / Swin2SR checkpoint of that format? ",
                   strict)
    return imp


def swinir_from_swinkit(sd: dict, dst: str, cfg: SwinIRConfig) -> dict:
    """Export a SwinIR state dict (model config `cfg`) to `dst` ("official" | "hf" | "swinkit") so that it loads
    strict=True into that code's model: official with the relative_position_index and attn_mask buffers of a
    model built at cfg.img_size (as the official constructor registers them); hf for Swin2SRForImageSuperResolution
    (version 2 only)."""
    if dst not in FORMATS:
        raise ValueError(f"unknown SwinIR format {dst!r}; choose one of {', '.join(FORMATS)}")
    if dst == "swinkit":
        return dict(sd)
    if dst == "official" and cfg.version != 1:
        raise ValueError("the official SwinIR code builds version 1 (Swin V1 blocks); this is a Swin2SR (version 2). "
                         "Export it to 'hf' (transformers' Swin2SR) or keep it in swinkit's format.")
    if dst == "hf" and cfg.version != 2:
        raise ValueError("transformers' Swin2SR builds version 2 (Swin V2 blocks); this is a SwinIR (version 1). "
                         "Export it to 'official' (JingyunLiang/SwinIR) or keep it in swinkit's format.")
    sd = dict(sd)
    if dst == "official":
        w, cpu = (cfg.window_size,) * 2, torch.device("cpu")
        mask = attention_mask((cfg.img_size,) * 2, w, (w[0] // 2,) * 2, cpu, False)  # (nW, N, N), -100 / 0
        for k in list(sd):
            if m := re.fullmatch(r"(layers\.\d+\.blocks\.(\d+)\.)attn\.relative_position_bias_table", k):
                sd[m[1] + "attn.relative_position_index"] = relative_position_index(w, w, cpu).clone()
                if int(m[2]) % 2:
                    sd[m[1] + "attn_mask"] = mask.clone()
    out, left = apply_key_map(sd, _format_rules(dst, hf_head(cfg)), "ours", {"P": ("",)}, {"P": ("",)})
    if left:
        raise ValueError(f"{len(left)} SwinIR tensors have no equivalent in the {dst} format: {listing(sorted(left))}")
    return out


# ----------------------------------------------------------------------------------------------------------
# what the weights say about the configuration


def _depths(sd: dict) -> list[int]:
    depth: dict[int, int] = {}
    for k in sd:
        if m := re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", k):
            depth[int(m[1])] = max(depth.get(int(m[1]), 0), int(m[2]) + 1)
    return [depth[i] for i in sorted(depth)]


def _head(sd: dict, in_chans: int) -> dict:
    """upsampler, upscale and num_feat from the reconstruction tensors."""
    if "conv_up1.weight" in sd:
        return dict(upsampler="nearest+conv", upscale=4, num_feat=sd["conv_up1.weight"].shape[0])
    if "conv_before_upsample.0.weight" in sd:
        nf = sd["conv_before_upsample.0.weight"].shape[0]
        convs = [k for k in sd if re.fullmatch(r"upsample\.\d+\.weight", k)]
        three = len(convs) == 1 and sd["upsample.0.weight"].shape[0] == 9 * nf
        return dict(upsampler="pixelshuffle", upscale=3 if three else 2 ** len(convs), num_feat=nf)
    if "upsample.0.weight" in sd:
        return dict(upsampler="pixelshuffledirect", upscale=math.isqrt(sd["upsample.0.weight"].shape[0] // in_chans))
    return dict(upsampler="none", upscale=1)


def match_swinir_variant(cfg: SwinIRConfig, file_name: str | None = None) -> str | None:
    """The named variant this config is: the one whose official file is `file_name`, else the only variant with
    its architecture and training size (denoising and JPEG variants differ only in their weights: None)."""
    from ...config import SWINIR_IDENTITY_FIELDS

    if file_name and (name := next((n for n, v in SWINIR_VARIANTS.items() if v["file"] == file_name), None)):
        return name
    same = [n for n in SWINIR_VARIANTS if all(getattr(SwinIRConfig.from_name(n), f) == getattr(cfg, f)
                                              for f in (*SWINIR_IDENTITY_FIELDS, "img_size"))]
    return same[0] if len(same) == 1 else None


def infer_swinir_config(sd: dict, buffers: dict | None = None, known: dict | None = None,
                        file_name: str | None = None) -> tuple[SwinIRConfig, list[str]]:
    """The SwinIRConfig of a swinkit-layout state dict from its tensors (version, in_chans, width, depths, heads,
    window from the V1 bias tables, MLP ratio, residual conv, upsampler, upscale), the training size from official
    attn_mask buffers, img_range by the JPEG rule (module docstring); `known` fields (a config beside the weights)
    win. Returns it and the fields that had to be guessed."""
    buffers, known = buffers or {}, dict(known or {})
    first = sd["conv_first.weight"]  # (C, in_chans, 3, 3)
    blk = B.format(i=0, j=0)
    depths = _depths(sd)
    v2 = blk + "attn.logit_scale" in sd
    d = dict(version=2 if v2 else 1, in_chans=first.shape[1], embed_dim=first.shape[0], depths=depths,
             mlp_ratio=sd[blk + "mlp.fc1.weight"].shape[0] / first.shape[0],
             qkv_bias=(blk + "attn.q_bias") in sd if v2 else (blk + "attn.qkv.bias") in sd,
             resi_connection="1conv" if "layers.0.conv.weight" in sd else "3conv", **_head(sd, first.shape[1]))
    heads_key, guessed = "attn.logit_scale" if v2 else "attn.relative_position_bias_table", []
    axis = 0 if v2 else 1  # logit_scale (heads, 1, 1); bias table ((2w-1)^2, heads)
    d["num_heads"] = [sd[B.format(i=i, j=0) + heads_key].shape[axis] for i in range(len(depths))]
    if not v2:
        d["window_size"] = (math.isqrt(sd[blk + "attn.relative_position_bias_table"].shape[0]) + 1) // 2
    elif "window_size" not in known:  # V2 computes its bias from the window: nothing stored tells it
        guessed.append("window_size")
    masks = [v for k, v in buffers.items() if k.endswith("attn_mask")]
    if masks and "window_size" in d:
        d["img_size"] = math.isqrt(masks[0].shape[0]) * d["window_size"]  # (nW, N, N) of the training size
    elif "img_size" not in known:
        guessed.append("img_size")
    window = known.get("window_size", d.get("window_size"))
    if "img_range" not in known:
        d["img_range"] = 255.0 if d["upsampler"] == "none" and window == 7 else 1.0
    cfg = SwinIRConfig.from_dict({**d, **known})
    name = known.get("name") if known.get("name") in SWINIR_VARIANTS else match_swinir_variant(cfg, file_name)
    if name:
        base = SwinIRConfig.from_name(name).to_dict()
        cfg = SwinIRConfig.from_dict({**base, **{k: v for k, v in cfg.to_dict().items() if k not in guessed},
                                      "name": name})
        guessed = []
    return cfg, guessed


# ----------------------------------------------------------------------------------------------------------
# transformers' Swin2SRConfig


def swinir_fields_from_hf(c: dict) -> dict:
    """SwinIRConfig fields from transformers' Swin2SRConfig (its config.json)."""
    if c.get("upsampler") == "pixelshuffle_aux":
        raise ValueError("this Swin2SR uses the pixelshuffle_aux head (compressed-input SR), which swinkit does not "
                         "build; supported: pixelshuffle, pixelshuffledirect, nearest+conv, none")
    out = c.get("num_channels_out") or c.get("num_channels", 3)
    if out != c.get("num_channels", 3) or c.get("patch_size", 1) not in (1, [1, 1]):
        raise ValueError(f"swinkit's Swin2SR has as many output as input channels and patch size 1; this config has "
                         f"num_channels={c.get('num_channels')}, num_channels_out={out}, patch_size={c.get('patch_size')}")
    size = c.get("image_size", 64)
    known = dict(version=2, upscale=c.get("upscale"), in_chans=c.get("num_channels"),
                 img_size=size[0] if isinstance(size, (list, tuple)) else size, window_size=c.get("window_size"),
                 embed_dim=c.get("embed_dim"), depths=c.get("depths"), num_heads=c.get("num_heads"),
                 mlp_ratio=c.get("mlp_ratio"), qkv_bias=c.get("qkv_bias"), resi_connection=c.get("resi_connection"),
                 upsampler=c.get("upsampler") if c.get("upsampler") in HF_HEADS else "none",
                 img_range=c.get("img_range"), drop_path_rate=c.get("drop_path_rate"))
    return {k: v for k, v in known.items() if v is not None}


def hf_swin2sr_config(cfg: SwinIRConfig) -> dict:
    """config.json for transformers' Swin2SRForImageSuperResolution."""
    if cfg.version != 2:
        raise ValueError("transformers' Swin2SR builds version 2 (Swin V2 blocks); this is a SwinIR (version 1)")
    if cfg.num_feat != 64 and cfg.upsampler in ("pixelshuffle", "nearest+conv"):
        raise ValueError(f"transformers' Swin2SR heads are 64 channels wide; this model's num_feat is {cfg.num_feat}")
    return dict(model_type="swin2sr", architectures=["Swin2SRForImageSuperResolution"], image_size=cfg.img_size,
                patch_size=1, num_channels=cfg.in_chans, num_channels_out=cfg.in_chans, embed_dim=cfg.embed_dim,
                depths=list(cfg.depths), num_heads=list(cfg.num_heads), window_size=cfg.window_size,
                mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, hidden_dropout_prob=cfg.drop_rate,
                attention_probs_dropout_prob=cfg.attn_drop_rate, drop_path_rate=cfg.drop_path_rate, hidden_act="gelu",
                use_absolute_embeddings=False, layer_norm_eps=1e-5, upscale=cfg.upscale, img_range=cfg.img_range,
                resi_connection=cfg.resi_connection, upsampler="" if cfg.upsampler == "none" else cfg.upsampler)


def convert_swinir_state_dict(sd: dict, src: str | None = None, dst: str = "swinkit",
                              cfg: SwinIRConfig | None = None) -> dict:
    """Convert a SwinIR / Swin2SR state dict between swinkit, official and hf (`src` detected when None; `cfg`
    inferred from the weights when None)."""
    imp = swinir_to_swinkit(sd, src)
    if cfg is None:
        cfg, _ = infer_swinir_config(imp.state_dict, imp.buffers)
    return swinir_from_swinkit(imp.state_dict, dst, cfg)


# ----------------------------------------------------------------------------------------------------------
# restoration checkpoints (SwinIR / Swin2SR)


# what a restoration checkpoint's tensors fix (V2 computes its position bias from the window, so the window may change)
RESTORATION_ARCHITECTURE = ("version", "upscale", "in_chans", "embed_dim", "depths", "num_heads", "mlp_ratio",
                            "qkv_bias", "upsampler", "resi_connection", "num_feat")


def _restoration_side_info(raw: RawCheckpoint) -> tuple[dict, bool]:
    """(known SwinIRConfig fields, written by swinkit) from a training checkpoint's config, the safetensors metadata,
    a swinkit JSON or transformers' config.json beside the weights."""
    obj, meta = raw.obj, raw.meta
    if isinstance(obj, dict) and SwinIRConfig.is_restoration_dict(obj.get("config")):
        return obj["config"], True
    if "swinkit_config" in meta and SwinIRConfig.is_restoration_dict(c := json.loads(meta["swinkit_config"])):
        return c, True
    for c in side_configs(raw.weights):
        if SwinIRConfig.is_restoration_dict(c):
            return c, True
        if isinstance(c, dict) and c.get("model_type") == "swin2sr":
            return swinir_fields_from_hf(c), False
    return {}, False


def read_restoration_checkpoint(path, use_ema: bool = False, strict: bool = True,
                                raw: RawCheckpoint | None = None) -> Checkpoint:
    """Read a SwinIR / Swin2SR checkpoint (official, transformers, swinkit) into swinkit's layout, with its config
    from the file's side information where there is one, else inferred from the weights."""
    raw = raw or read_raw(path, use_ema)
    try:
        known, ours = _restoration_side_info(raw)
        imp = swinir_to_swinkit(raw.state_dict, strict=strict)
        cfg, guessed = infer_swinir_config(imp.state_dict, imp.buffers, known, raw.weights.name)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{raw.path}: {e}") from None
    return Checkpoint(raw.path, "swinkit" if ours else imp.format, imp.state_dict, cfg, guessed, None,
                      imp.unknown, [])


def _restoration_target_config(src: SwinIRConfig, overrides: dict, base: SwinIRConfig | None = None) -> SwinIRConfig:
    """The restoration model to build: `base` (a named variant) or the checkpoint's config, with `overrides`; the
    fields the tensors fix must stay the checkpoint's."""
    overrides = check_overrides(overrides, SwinIRConfig)
    cfg = SwinIRConfig.from_dict({**(base or src).to_dict(), **overrides})
    fixed = RESTORATION_ARCHITECTURE + (("window_size",) if src.version == 1 else ())
    check_architecture(src, cfg, fixed, "restoration", named=base is not None)
    return cfg


def build_restoration_model(ckpt: Checkpoint, strict: bool = True, base: SwinIRConfig | None = None,
                            **overrides) -> SwinIR:
    """A SwinIR holding the checkpoint's weights, in eval mode."""
    cfg = _restoration_target_config(ckpt.config, overrides, base)
    if "window_size" in ckpt.guessed and "window_size" not in overrides and base is None:
        warnings.warn(f"{ckpt.describe()} does not record its window size (Swin2SR stores no position table); "
                      f"assuming {cfg.window_size}. Pass window_size=... if it was trained with another.", stacklevel=3)
    with torch.device("meta"):
        model = SwinIR(cfg)
    own, sd = model.state_dict(), ckpt.state_dict
    check_shapes(ckpt, sd, own)
    missing, unexpected = [k for k in own if k not in sd], [k for k in sd if k not in own]
    if missing or unexpected:
        msg = f"{ckpt.describe()}: missing keys {missing[:12]}, unexpected keys {unexpected[:12]}"
        if strict:
            raise CheckpointError(msg + " (load with strict=False to accept this)")
        warnings.warn(msg, stacklevel=3)
        model = SwinIR(cfg)
        model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    else:
        model.load_state_dict({k: sd[k].to(v.dtype) for k, v in own.items()}, assign=True)
        model.mean = torch.tensor(cfg.mean).view(1, -1, 1, 1)  # a buffer the state dict does not hold
    return model.eval()


def load_restoration_into_named(name: str, checkpoint=None, pretrained: bool | str = False,
                                **overrides) -> SwinIR:
    """create_restoration_model(name, checkpoint=... | pretrained=True): the named variant with a checkpoint's
    weights (the official SwinIR release file for pretrained=True, or the URL given as pretrained='https://...').
    The real-world variants take the file's EMA weights (params_ema) where it has them, as the official test does."""
    strict = overrides.pop("strict", True)
    use_ema = overrides.pop("use_ema", None)
    base = SwinIRConfig.from_name(name, **overrides)
    if checkpoint is None:
        checkpoint = download_pretrained(name, pretrained if isinstance(pretrained, str) else None)
    raw = read_raw(checkpoint)
    if use_ema is None:
        use_ema = name.startswith("swinir_real") and isinstance(raw.obj, dict) and "params_ema" in raw.obj
    if use_ema:
        raw = read_raw(checkpoint, use_ema=True)
    if not is_swinir_state_dict(raw.state_dict):
        raise CheckpointError(f"{checkpoint} is not a SwinIR / Swin2SR checkpoint (no conv_first.weight or "
                              f"swin2sr.first_convolution.weight); {name} needs one")
    ckpt = read_restoration_checkpoint(checkpoint, strict=strict, raw=raw)
    if "window_size" in ckpt.guessed:  # Swin2SR: the variant's window, not a guess
        ckpt.config = dataclasses.replace(ckpt.config, window_size=base.window_size)
    return build_restoration_model(ckpt, strict, base, **overrides)


def write_restoration_checkpoint(sd: dict, cfg: SwinIRConfig, path, fmt: str = "swinkit", class_names=None,
                                 meta: dict | None = None) -> Path:
    """Write a SwinIR / Swin2SR state dict as `fmt`: swinkit (save_state_dict), official ({"params": ...}, as the
    SwinIR zoo) or hf (a transformers Swin2SR directory)."""
    path = Path(path)
    if fmt == "swinkit":
        save_state_dict(sd, cfg, path, class_names, meta)
        return path
    out = swinir_from_swinkit(sd, fmt, cfg)
    return write_converted(out, path, hf_swin2sr_config(cfg) if fmt == "hf" else None, lambda sd: {"params": sd})

