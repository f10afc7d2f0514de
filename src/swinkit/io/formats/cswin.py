"""CSWin Transformer checkpoints: the official layout (microsoft/CSWin-Transformer models/cswin.py; its released files
hold `{"state_dict_ema": ...}`, training runs also "state_dict" / "model" or a bare state dict) <-> swinkit's
CSWinTransformer, both ways, and the config the weights imply.

The official model keeps its stem as `stage1_conv_embed` (0: conv, 2: LayerNorm), its blocks as `stage{1..4}.{j}`
(qkv, proj and `attns.{k}.get_v`, the LePE convolution of each branch, at block level) and its merging as
`merge{1..3}` (conv, norm) between the stages.

What the weights do not say: the heads and the stripe widths (split_size), since no tensor depends on them, and the
image size. A file whose shapes are a named variant's takes that variant's (its file name decides between the 224
and 384 versions of CSWin-B and -L, whose shapes are the same); any other gets heads doubling from 2 per stage (CSWin-T
and -S's) and split sizes 1, 2, then half the stage's map (split_size 0, how the official configurations scale them:
7 of 14 at 224, 12 of 24 at 384), and `inspect` says so. load_model(path, num_heads=..., split_size=...,
img_size=...) sets them.
"""
from __future__ import annotations

import math
import re

from ...config import CSWIN_VARIANTS, CSWinConfig
from ...models.cswin import CSWinTransformer
from .mapped import MappedFormat, blocks_per_stage, conv_merging

B, O = "layers.{i}.blocks.{j}.", "stage{i+1}.{j}."  # a block: swinkit, official

OFFICIAL = {  # swinkit -> official
    "patch_embed.proj.{p}": "stage1_conv_embed.0.{p}",
    "patch_embed.norm.{p}": "stage1_conv_embed.2.{p}",
    B + "attn.qkv.{p}": O + "qkv.{p}",  # a block's tensors in the official order
    B + "norm1.{p}": O + "norm1.{p}",
    B + "attn.proj.{p}": O + "proj.{p}",
    B + "attn.lepe.{k}.{p}": O + "attns.{k}.get_v.{p}",
    B + "mlp.fc1.{p}": O + "mlp.fc1.{p}",
    B + "mlp.fc2.{p}": O + "mlp.fc2.{p}",
    B + "norm2.{p}": O + "norm2.{p}",
    "layers.{i}.downsample.proj.{p}": "merge{i}.conv.{p}",
    "layers.{i}.downsample.norm.{p}": "merge{i}.norm.{p}",
    "norm.{p}": "norm.{p}",
    "head.fc.{p}": "head.{p}",
}

DEFAULTS = ("a named variant's where the shapes are one's; else heads doubling from 2 per stage (CSWin-T/S's), split "
            "sizes 1, 2, then half the stage's map (0), img_size 224; pass num_heads=, split_size=, img_size= to "
            "load_model to set them")


def is_official(sd: dict) -> bool:
    return "stage1_conv_embed.0.weight" in sd or any(re.match(r"stage\d+\.\d+\.attns\.\d+\.get_v\.", k) for k in sd)


def is_swinkit(sd: dict) -> bool:
    """CSWin's skeleton in swinkit's layout: every block's mixer has LePE convolutions, conv merging, a stem norm."""
    blocks = {m[0] for k in sd if (m := re.match(r"layers\.\d+\.blocks\.\d+\.", k))}
    return bool(blocks) and "patch_embed.norm.weight" in sd and conv_merging(sd) and \
        all(b + "attn.lepe.0.weight" in sd for b in blocks)


def branches(sd: dict, stage: int) -> int:
    """The attention branches of a stage's blocks (its LePE convolutions): 2 (stripes), 1 (the whole map)."""
    return sum(1 for k in sd if re.fullmatch(rf"layers\.{stage}\.blocks\.0\.attn\.lepe\.\d+\.weight", k))


def default_heads(dims: list[int], two_branches: list[bool]) -> list[int]:
    """2, 4, 8, 16, ... heads (CSWin-T/S's), or the nearest fewer that divide the stage's width (an even number
    where the stage has two branches)."""
    heads = []
    for i, (dim, two) in enumerate(zip(dims, two_branches)):
        h = 2 * 2**i
        while h > 1 and (dim % h or (two and h % 2)):
            h -= 1
        heads.append(h)
    return heads


def matching_variants(d: dict) -> list[str]:
    """The named variants with the structure of config dict `d`."""
    if "dims" in d:  # widths that do not double
        return []
    keys = ("embed_dim", "depths", "mlp_ratio", "qkv_bias", "patch_size", "in_chans")
    return [name for name in CSWIN_VARIANTS
            if all(list(getattr(CSWinConfig.from_name(name), k)) == list(d[k]) if k == "depths" else
                   getattr(CSWinConfig.from_name(name), k) == d[k] for k in keys)]


def infer(sd: dict, known: dict, stem: str) -> tuple[dict, list[str]]:
    """The config of a swinkit CSWin state dict: its shapes, then a named variant they match (the file name `stem`
    choosing among several), then the defaults above; fields in `known` win. Returns it and the fields assumed."""
    proj, depths = sd["patch_embed.proj.weight"], blocks_per_stage(sd)  # (C, in_chans, 2p-1, 2p-1)
    n = len(depths)
    dims = [sd[f"layers.{i}.blocks.0.norm1.weight"].shape[0] for i in range(n)]
    two = [branches(sd, i) == 2 for i in range(n)]
    if two[-1]:
        raise ValueError("its last stage has two attention branches; CSWin attends over the whole map there")
    d = dict(embed_dim=dims[0], in_chans=proj.shape[1], patch_size=(proj.shape[-1] + 1) // 2, depths=depths,
             mlp_ratio=sd["layers.0.blocks.0.mlp.fc1.weight"].shape[0] / dims[0],
             qkv_bias="layers.0.blocks.0.attn.qkv.bias" in sd, patch_norm="patch_embed.norm.weight" in sd,
             num_classes=sd["head.fc.weight"].shape[0] if "head.fc.weight" in sd else 0)
    if dims != [dims[0] * 2**i for i in range(n)]:
        d["dims"] = dims
    names = matching_variants(d)
    name = stem if stem in names else names[0] if names else None
    guessed = []
    if name:
        d = {**CSWinConfig.from_name(name).to_dict(), **d, "name": name}
        if len(names) > 1 and stem not in names:  # e.g. cswin_base_224 / _384: the same shapes
            guessed = ["split_size", "img_size"]
    else:
        d.update(num_heads=default_heads(dims, two), split_size=[[1, 2][i] if i < 2 else 0 for i in range(n)])
        guessed = ["num_heads", "split_size", "img_size"]
    d.update(known)
    split, img = d["split_size"], d.get("img_size", 224)
    split, img = [split] * n if isinstance(split, int) else list(split), img if isinstance(img, int) else img[0]
    for i in range(n - 1):
        if not two[i]:  # one branch before the last stage: the official block's split equals its map at img_size
            split[i] = math.ceil(img / d["patch_size"] / 2**i)
    d["split_size"] = split
    return d, [g for g in guessed if g not in known]


def official_problem(cfg: CSWinConfig) -> str | None:
    """Why the official CSWinTransformer cannot hold a model of `cfg` (None: it can)."""
    wanted = dict(mixer=("cswin",) * len(cfg.depths), stem="overlap", merge="conv", patch_norm=True,
                  norm="layernorm", layer_scale=None, version=1, patch_size=4)
    wrong = [f"{k}={getattr(cfg, k)!r}" for k, v in wanted.items() if getattr(cfg, k) != v]
    if len(cfg.depths) != 4:
        wrong.append(f"{len(cfg.depths)} stages")
    if cfg.stage_dims != tuple(cfg.embed_dim * 2**i for i in range(len(cfg.depths))):
        wrong.append(f"dims={cfg.stage_dims}")
    return ", ".join(wrong) or None


FORMAT = MappedFormat(
    "CSWin", CSWinConfig, CSWinTransformer, OFFICIAL, is_official, is_swinkit, infer, official_problem,
    lambda sd: {"state_dict_ema": sd},
    ("name", "img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depths", "num_heads", "split_size",
     "mlp_ratio", "qkv_bias"), DEFAULTS)
