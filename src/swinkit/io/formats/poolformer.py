"""PoolFormer checkpoints: the official layout (sail-sg/poolformer models/poolformer.py; its released .pth.tar files
hold a bare state dict) <-> swinkit's PoolFormer, both ways, and the config the weights imply.

The official model keeps its stages and the down-sampling between them in one list, `network`: stage i's blocks at
network.{2i}.{j}, the strided conv before stage i at network.{2i-1}.proj (every official model down-samples between
all its stages); its MLP is two 1x1 convolutions (linear layers here, the same weights). The weights say everything
but the pooling size (3 in every official model) and the layer scales' initial value (1e-5, 1e-6 for S36, M36, M48),
which a matching named variant supplies.
"""
from __future__ import annotations

import re

from ...config import POOLFORMER_VARIANTS, PoolFormerConfig
from ...models.poolformer import PoolFormer
from ..keymap import T
from .mapped import MappedFormat, blocks_per_stage, conv_merging

B, O = "layers.{i}.blocks.{j}.", "network.{2i}.{j}."  # a block: swinkit, official


def _from_1x1(w):
    return w.flatten(1)  # (out, in, 1, 1) -> (out, in)


def _to_1x1(w):
    return w[:, :, None, None]


OFFICIAL = {  # swinkit -> official
    "patch_embed.proj.{p}": "patch_embed.proj.{p}",
    B + "layer_scale1": O + "layer_scale_1",  # a block's tensors in the official order
    B + "layer_scale2": O + "layer_scale_2",
    B + "norm1.{p}": O + "norm1.{p}",
    B + "norm2.{p}": O + "norm2.{p}",
    B + "mlp.fc1.weight": T(O + "mlp.fc1.weight", _from_1x1, _to_1x1),
    B + "mlp.fc1.bias": O + "mlp.fc1.bias",
    B + "mlp.fc2.weight": T(O + "mlp.fc2.weight", _from_1x1, _to_1x1),
    B + "mlp.fc2.bias": O + "mlp.fc2.bias",
    "layers.{i}.downsample.proj.{p}": "network.{2i-1}.proj.{p}",
    "norm.{p}": "norm.{p}",
    "head.fc.{p}": "head.{p}",
}

DEFAULTS = "pool_size 3, as every official model; pass pool_size= to load_model to change it"


def is_official(sd: dict) -> bool:
    return any(re.match(r"network\.\d+\.\d+\.(norm1|mlp\.fc1|layer_scale_1)", k) for k in sd)


def is_swinkit(sd: dict) -> bool:
    """PoolFormer's skeleton in swinkit's layout: blocks without mixer parameters, conv merging, no stem norm."""
    return any(re.match(r"layers\.\d+\.blocks\.\d+\.norm1\.", k) for k in sd) and conv_merging(sd) and \
        "patch_embed.norm.weight" not in sd and not any(re.match(r"layers\.\d+\.blocks\.\d+\.attn\.", k) for k in sd)


def _matches(ref: PoolFormerConfig, d: dict) -> bool:
    return ref.stage_dims == tuple(d["dims"]) and ref.depths == tuple(d["depths"]) and \
        all(getattr(ref, k) == d[k] for k in ("in_chans", "patch_size", "mlp_ratio"))


def infer(sd: dict, known: dict, stem: str) -> tuple[dict, list[str]]:
    """The config of a swinkit PoolFormer state dict: its shapes, then a named variant they match (for the layer
    scales' initial value), then the defaults above; fields in `known` win. Returns it and the fields assumed."""
    proj, depths = sd["patch_embed.proj.weight"], blocks_per_stage(sd)  # (C, in_chans, 2p-1, 2p-1)
    n = len(depths)
    dims = [sd[f"layers.{i}.blocks.0.norm1.weight"].shape[0] for i in range(n)]
    ratios = {sd[f"layers.{i}.blocks.0.mlp.fc1.weight"].shape[0] / dims[i] for i in range(n)}
    if len(ratios) > 1:
        raise ValueError(f"its stages have MLP ratios {sorted(ratios)}; swinkit's PoolFormer has one for all stages")
    merge = [sd[f"layers.{i}.downsample.proj.weight"].shape[-1] for i in range(1, n)]
    if any(k != 3 for k in merge):
        raise ValueError(f"it down-samples with {merge[0]}x{merge[0]} convolutions; swinkit's merging is 3x3, stride 2")
    scaled = "layers.0.blocks.0.layer_scale1" in sd
    d = dict(dims=dims, depths=depths, in_chans=proj.shape[1], patch_size=(proj.shape[-1] + 1) // 2,
             mlp_ratio=ratios.pop(), layer_scale=1e-5 if scaled else None,
             num_classes=sd["head.fc.weight"].shape[0] if "head.fc.weight" in sd else 0)
    name = next((v for v in POOLFORMER_VARIANTS if scaled and _matches(PoolFormerConfig.from_name(v), d)), None)
    if name:
        ref = PoolFormerConfig.from_name(name).to_dict()
        d = {**ref, **d, "layer_scale": ref["layer_scale"], "name": name}
    d.update(known)
    return d, [] if name or "pool_size" in known else ["pool_size"]


def official_problem(cfg: PoolFormerConfig) -> str | None:
    """Why the official PoolFormer cannot hold a model of `cfg` (None: it can)."""
    wanted = dict(mixer=("pool",) * len(cfg.depths), stem="overlap", merge="conv", patch_norm=False,
                  norm="groupnorm")
    wrong = [f"{k}={getattr(cfg, k)!r}" for k, v in wanted.items() if getattr(cfg, k) != v]
    return ", ".join(wrong) or None


FORMAT = MappedFormat(
    "PoolFormer", PoolFormerConfig, PoolFormer, OFFICIAL, is_official, is_swinkit, infer, official_problem,
    lambda sd: sd, ("name", "img_size", "patch_size", "in_chans", "num_classes", "dims", "depths", "mlp_ratio",
                    "pool_size", "layer_scale"), DEFAULTS,
    "Is it a PoolFormer that down-samples between all its stages (downsamples all True)? ")
