"""SwinConfig: one validated dataclass for Swin V1 and V2, and the table of named variants."""
from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from typing import Any, ClassVar

POS_EMBED_CHOICES = ("none", "absolute", "relative", "absolute+relative")
# the fields that make a variant what it is (a config keeps its variant's name while they match)
IDENTITY_FIELDS = ("version", "patch_size", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio",
                   "qkv_bias", "shift", "pos_embed", "pretrained_window_sizes", "in_chans", "mixer", "dims", "stem",
                   "patch_norm", "merge", "norm", "layer_scale", "split_size", "pool_size", "conv_kernel", "hub_tokens",
                   "block_heads", "block_mlp")
# the mixers whose attention heads a pruned config may narrow per block (block_heads): window attention
HEAD_PRUNABLE_MIXERS = ("shifted_window", "window", "global")
WINDOW_MODES = ("clamp", "pad")
STEMS = ("patch", "overlap")  # patch: p x p patches (Swin); overlap: a (2p-1) x (2p-1) conv, stride p (CSWin, PoolFormer)
MERGES = ("patch", "conv")  # patch: 2x2 patch merging (Swin); conv: 3x3 stride-2 conv (CSWin, PoolFormer)
NORMS = ("layernorm", "groupnorm")  # groupnorm: one group over the whole map (PoolFormer)
INFERENCE_PATHS = ("auto", "windows", "plain")
CLAMPED_BIAS = ("offsets", "prefix")


def _pair(v, nd: int = 2) -> tuple[int, ...]:
    """int | nd ints -> nd ints: (h, w), or (t, h, w) for nd=3."""
    if isinstance(v, int):
        return (v,) * nd
    v = tuple(int(x) for x in v)
    if len(v) != nd:
        raise ValueError(f"expected an int or {'an (h, w) pair' if nd == 2 else 'a (t, h, w) triple'}, got {v!r}")
    return v


def _per_block(v, depths: tuple[int, ...], what: str) -> tuple[tuple[int, ...], ...] | None:
    """None | one list per stage of one int >= 1 per block -> tuples of ints (a pruned model's per-block sizes)."""
    if v is None:
        return None
    try:
        sizes = tuple(tuple(int(x) for x in stage) for stage in v)
    except (TypeError, ValueError):
        sizes = None
    if sizes is None or len(sizes) != len(depths) or any(len(s) != d for s, d in zip(sizes, depths)) or \
            min(min(s) for s in sizes) < 1:
        raise ValueError(f"{what}: expected one list per stage with one int >= 1 per block (depths {list(depths)}), "
                         f"e.g. {[[1] * d for d in depths]}, got {v!r}; or None for the unpruned sizes")
    return sizes


def _per_stage(v, n: int, what: str, nd: int = 2) -> tuple[tuple[int, ...], ...]:
    """int | nd ints | [one int or nd ints per stage] -> n tuples of nd ints. nd ints always mean one size
    ((h, w) or (t, h, w)), never one int per stage."""
    if isinstance(v, int) or (len(v) == nd and all(isinstance(x, int) for x in v)):
        return (_pair(v, nd),) * n
    v = list(v)
    if len(v) != n:
        raise ValueError(f"{what}: expected one entry per stage ({n}), got {len(v)}: {v!r}")
    return tuple(_pair(x, nd) for x in v)


@dataclass
class SwinConfig:
    """Everything needed to build a Swin V1 or V2 model. Sizes are (h, w) where a pair is allowed."""

    name: str = "custom"
    version: int = 1                      # 1: pre-norm + bias table; 2: res-post-norm + cosine attn + CPB
    img_size: int | tuple[int, int] = 224  # default resolution (FLOPs, absolute pos-embed grid); any size runs
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: Any = 7                  # int, (h, w), or one per stage
    pretrained_window_sizes: Any = 0      # V2: window of the pre-training run, per stage (0 = same as window)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    shift: bool = True                    # ablation: False disables shifted windows
    pos_embed: str = "relative"           # ablation: none | absolute | relative | absolute+relative
    fused_attn: bool = True               # scaled_dot_product_attention instead of explicit softmax
    chunk_mb: float = 256            # memory budget of one attention / MLP call; larger inputs run in chunks
    # clamp: a map no larger than the window is one unshifted window, padded keys masked (classification, timm);
    # pad: every block pads to a window multiple and keeps its shift, padded zeros attended (official detection /
    # segmentation code, mmseg, transformers' backbones)
    window_mode: str = "clamp"
    mask_padding: bool = True  # clamp mode: False attends padded tokens as zeros (official Video Swin, swin3d)
    # a clamped window's position bias: "offsets" takes the table entries of its own offsets; "prefix" the first
    # N rows / columns of the full window's index, as the official Video Swin and torchvision's swin3d do
    clamped_bias: str = "offsets"
    # eval without grad: windows = whole blocks on chunks of windows, plain = one pass per block like training;
    # auto = windows on CPU for blocks of >= WINDOWS_MIN_TOKENS tokens, plain elsewhere. Training, torch.compile,
    # tracing and export always take the plain path.
    inference_path: str = "auto"
    # the token mixer, one name or one per stage (swinkit.nn.mixers lists them): shifted_window (Swin), window (no
    # shift), global, cswin, axial, neighborhood, hub, cluster, pool, dwconv, identity
    mixer: Any = "shifted_window"
    dims: Any = None  # per-stage widths; None: embed_dim * 2**i
    stem: str = "patch"
    patch_norm: bool = True  # a LayerNorm after the stem (and after conv merging)
    merge: str = "patch"
    norm: str = "layernorm"  # the blocks' and the final norm
    layer_scale: float | None = None  # per-channel residual scales, initialised to this (PoolFormer: 1e-5)
    split_size: Any = 7  # cswin: stripe width, int or one per stage (0: half the stage's map at run time)
    pool_size: int = 3  # pool: average-pool kernel
    conv_kernel: int = 7  # dwconv: depthwise kernel
    hub_tokens: int = 4  # hub: global tokens every window reads and writes
    # a pruned model (swinkit prune), per stage one entry per block: attention heads (1..num_heads[i]; a head keeps the
    # width stage_dims[i] // num_heads[i]) and MLP hidden widths. None: num_heads[i] and int(width * mlp_ratio)
    block_heads: Any = None
    block_mlp: Any = None

    ndim: ClassVar[int] = 2  # axes of the input and of every window: 2 (H, W) here, 3 (T, H, W) for video

    def __post_init__(self):
        self.img_size = _pair(self.img_size, self.ndim)
        self.depths = tuple(int(d) for d in self.depths)
        self.num_heads = tuple(int(h) for h in self.num_heads)
        n = len(self.depths)
        if n == 0 or len(self.num_heads) != n:
            raise ValueError(
                f"depths and num_heads need one entry per stage and equal length, "
                f"got depths={self.depths} num_heads={self.num_heads}")
        self.window_size = _per_stage(self.window_size, n, "window_size", self.ndim)
        if not isinstance(self.mixer, str) and len(set(self.mixer)) == 1:  # one name (kept when depths change)
            self.mixer = self.mixer[0]
        self.mixer = (self.mixer,) * n if isinstance(self.mixer, str) else tuple(self.mixer)
        if len(self.mixer) != n:
            raise ValueError(f"mixer: expected one name or one per stage ({n}), got {len(self.mixer)}: {self.mixer!r}")
        if not isinstance(self.split_size, int) and len(set(self.split_size)) == 1:
            self.split_size = self.split_size[0]
        self.split_size = (int(self.split_size),) * n if isinstance(self.split_size, int) else \
            tuple(int(s) for s in self.split_size)
        if len(self.split_size) != n or min(self.split_size) < 0:
            raise ValueError(f"split_size: expected one int >= 0 (0: half the map) or one per stage ({n}), got "
                             f"{self.split_size!r}")
        if self.dims is not None:
            self.dims = tuple(int(d) for d in self.dims)
            if len(self.dims) != n:
                raise ValueError(f"dims: expected one width per stage ({n}), got {self.dims!r}")
        for field_, value, choices in (("stem", self.stem, STEMS), ("merge", self.merge, MERGES),
                                       ("norm", self.norm, NORMS)):
            if value not in choices:
                raise ValueError(f"{field_} must be one of {choices}, got {value!r}")
        self.pretrained_window_sizes = _per_stage(self.pretrained_window_sizes, n, "pretrained_window_sizes",
                                                  self.ndim)
        if self.version not in (1, 2):
            raise ValueError(f"version must be 1 or 2, got {self.version}")
        if self.window_mode not in WINDOW_MODES:
            raise ValueError(f"window_mode must be one of {WINDOW_MODES}, got {self.window_mode!r}")
        if self.inference_path not in INFERENCE_PATHS:
            raise ValueError(f"inference_path must be one of {INFERENCE_PATHS}, got {self.inference_path!r}")
        if self.clamped_bias not in CLAMPED_BIAS:
            raise ValueError(f"clamped_bias must be one of {CLAMPED_BIAS}, got {self.clamped_bias!r}")
        if self.pos_embed not in POS_EMBED_CHOICES:
            raise ValueError(f"pos_embed must be one of {POS_EMBED_CHOICES}, got {self.pos_embed!r}")
        for i, (d, h, dim) in enumerate(zip(self.depths, self.num_heads, self.stage_dims)):
            if d < 1 or h < 1 or dim % h:
                raise ValueError(
                    f"stage {i}: width {dim} must be divisible by num_heads[{i}]={h} "
                    f"and depth must be >= 1 (got depth {d})")
        if min(min(w) for w in self.window_size) < 1 or min(self.patch) < 1 or self.in_chans < 1:
            raise ValueError("window_size, patch_size and in_chans must be >= 1")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        self._check_block_sizes()

    def _check_block_sizes(self) -> None:
        """Validate block_heads and block_mlp; either becomes None when every block has the unpruned size."""
        self.block_heads = _per_block(self.block_heads, self.depths, "block_heads")
        self.block_mlp = _per_block(self.block_mlp, self.depths, "block_mlp")
        full = [[self.block_size(i, j, pruned=False) for j in range(d)] for i, d in enumerate(self.depths)]
        if self.block_heads is not None:
            for i, (heads, mixer) in enumerate(zip(self.block_heads, self.mixer)):
                if max(heads) > self.num_heads[i]:
                    raise ValueError(f"block_heads: stage {i} has num_heads[{i}]={self.num_heads[i]}, a block cannot "
                                     f"keep more, got {list(heads)}")
                if min(heads) < self.num_heads[i] and mixer not in HEAD_PRUNABLE_MIXERS:
                    raise ValueError(f"block_heads: stage {i} uses the mixer {mixer!r}, whose heads cannot be pruned; "
                                     f"per-block heads apply to {', '.join(HEAD_PRUNABLE_MIXERS)}")
            if all(h == f[0] for stage, fs in zip(self.block_heads, full) for h, f in zip(stage, fs)):
                self.block_heads = None
        if self.block_mlp is not None and \
                all(m == f[1] for stage, fs in zip(self.block_mlp, full) for m, f in zip(stage, fs)):
            self.block_mlp = None

    def block_size(self, stage: int, block: int, pruned: bool = True) -> tuple[int, int]:
        """(attention heads, MLP hidden width) of one block: block_heads and block_mlp where set (unless `pruned` is
        False), else num_heads[stage] and int(width * mlp_ratio)."""
        heads, hidden = self.num_heads[stage], int(self.stage_dims[stage] * self.mlp_ratio)
        if pruned and self.block_heads is not None:
            heads = self.block_heads[stage][block]
        if pruned and self.block_mlp is not None:
            hidden = self.block_mlp[stage][block]
        return heads, hidden

    @property
    def pruned(self) -> bool:
        """Whether some block has fewer heads or another MLP width than the stage's (swinkit prune)."""
        return self.block_heads is not None or self.block_mlp is not None

    def describe(self, with_size: bool = True) -> str:
        """What the config is: its variant name while the architecture is the variant's ("swin_t", "swin_t at
        32x32"), else its shape ("custom Swin V1: patch 4, window 4, C 32, depths 2-2, heads 2-4, 32x32")."""
        size = "x".join(map(str, self.img_size))
        if self.name in VARIANTS:
            ref = SwinConfig.from_name(self.name)
            if all(getattr(self, f) == getattr(ref, f) for f in IDENTITY_FIELDS):
                return self.name if self.img_size == ref.img_size or not with_size else f"{self.name} at {size}"
        windows = {w for w in self.window_size}
        window = "-".join(str(w[0]) if w[0] == w[1] else f"{w[0]}x{w[1]}" for w in
                          (self.window_size if len(windows) > 1 else self.window_size[:1]))
        mixers = "" if set(self.mixer) == {"shifted_window"} else \
            f", mixer {'-'.join(self.mixer) if len(set(self.mixer)) > 1 else self.mixer[0]}"
        pruned = ""
        if self.pruned:
            heads, hidden = zip(*(self.block_size(i, j) for i, d in enumerate(self.depths) for j in range(d)))
            pruned = f", pruned to {sum(heads)} heads and {sum(hidden)} MLP units"
        return (f"custom Swin V{self.version}: patch {self.patch_size}, window {window}, C {self.embed_dim}, depths "
                f"{'-'.join(map(str, self.depths))}, heads {'-'.join(map(str, self.num_heads))}{mixers}{pruned}"
                + (f", {size}" if with_size else ""))

    @property
    def patch(self) -> tuple[int, ...]:
        """patch_size as one int per axis."""
        return _pair(self.patch_size, self.ndim)

    @property
    def swin_skeleton(self) -> bool:
        """Whether this is a Swin (window mixers, patch stem and merging, LayerNorm, no layer scale): the models
        whose checkpoints the peers' layouts (official, timm, torchvision, transformers) can hold; not a pruned one,
        whose per-block sizes only swinkit's config records."""
        return (not self.pruned and set(self.mixer) <= {"shifted_window", "window"} and self.stem == "patch"
                and self.merge == "patch" and self.norm == "layernorm" and self.layer_scale is None and self.patch_norm
                and self.stage_dims == tuple(self.embed_dim * 2**i for i in range(len(self.depths))))

    @property
    def stage_dims(self) -> tuple[int, ...]:
        """The width of each stage: `dims`, or embed_dim doubling per stage."""
        return self.dims or tuple(self.embed_dim * 2**i for i in range(len(self.depths)))

    @property
    def num_features(self) -> int:
        return self.stage_dims[-1]

    @classmethod
    def from_name(cls, name: str, **overrides) -> "SwinConfig":
        if name not in VARIANTS:
            raise ValueError(f"unknown model {name!r}; choose one of swinkit.list_models(): {list_models()}")
        kwargs = {**VARIANTS[name]["config"], "name": name}
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            valid = [f.name for f in dataclasses.fields(cls)]
            raise TypeError(f"unknown config fields {sorted(unknown)}; valid: {valid}")
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples -> lists

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "SwinConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_json(cls, s: str) -> "SwinConfig":
        return cls.from_dict(json.loads(s))


def _variant(version, c, depths, window, img, params=None, gmacs=None, **kw):
    """A VARIANTS entry: heads C/32 x {1, 2, 4, 8}, with the published params (M) and FLOPs (GMACs)."""
    cfg = dict(version=version, embed_dim=c, depths=depths, num_heads=tuple(c // 32 * 2**i for i in range(4)),
               window_size=window, img_size=img, **kw)
    return dict(config=cfg, paper_params_m=params, paper_gmacs=gmacs)


_v1 = functools.partial(_variant, 1)
_v2 = functools.partial(_variant, 2)
_T, _L = (2, 2, 6, 2), (2, 2, 18, 2)
_22K = dict(num_classes=21841)
_DP = lambda r: dict(drop_path_rate=r)  # noqa: E731  (stochastic depth of the official recipes)

# name -> config, with the figures the papers / official model hub publish (params in M, FLOPs in GMACs).
VARIANTS: dict[str, dict] = {
    "swin_tiny_patch4_window7_224": _v1(96, _T, 7, 224, 28.3, 4.5, **_DP(0.2)),
    "swin_small_patch4_window7_224": _v1(96, _L, 7, 224, 49.6, 8.7, **_DP(0.3)),
    "swin_base_patch4_window7_224": _v1(128, _L, 7, 224, 87.8, 15.4, **_DP(0.5)),
    "swin_large_patch4_window7_224": _v1(192, _L, 7, 224, 196.5, 34.5, **_DP(0.2)),
    "swin_base_patch4_window12_384": _v1(128, _L, 12, 384, 87.9, 47.1, **_DP(0.5)),
    "swin_large_patch4_window12_384": _v1(192, _L, 12, 384, 196.7, 103.9, **_DP(0.2)),
    "swinv2_tiny_window8_256": _v2(96, _T, 8, 256, 28.3, 5.9, **_DP(0.2)),
    "swinv2_small_window8_256": _v2(96, _L, 8, 256, 49.7, 11.5, **_DP(0.3)),
    "swinv2_base_window8_256": _v2(128, _L, 8, 256, 87.9, 20.3, **_DP(0.5)),
    "swinv2_tiny_window16_256": _v2(96, _T, 16, 256, 28.3, 6.6, **_DP(0.2)),
    "swinv2_small_window16_256": _v2(96, _L, 16, 256, 49.7, 12.6, **_DP(0.3)),
    "swinv2_base_window16_256": _v2(128, _L, 16, 256, 87.9, 21.8, **_DP(0.5)),
    "swinv2_base_window12_192": _v2(128, _L, 12, 192, **_22K, **_DP(0.2)),
    "swinv2_large_window12_192": _v2(192, _L, 12, 192, **_22K, **_DP(0.2)),
    "swinv2_base_window12to16_192to256": _v2(
        128, _L, 16, 256, 87.9, 21.8, pretrained_window_sizes=(12, 12, 12, 6), **_DP(0.2)),
    "swinv2_base_window12to24_192to384": _v2(
        128, _L, 24, 384, 87.9, 54.7, pretrained_window_sizes=(12, 12, 12, 6), **_DP(0.2)),
    "swinv2_large_window12to16_192to256": _v2(
        192, _L, 16, 256, 196.7, 47.5, pretrained_window_sizes=(12, 12, 12, 6), **_DP(0.2)),
    "swinv2_large_window12to24_192to384": _v2(
        192, _L, 24, 384, 196.7, 115.4, pretrained_window_sizes=(12, 12, 12, 6), **_DP(0.2)),
    # SwinV2-H / -G (V2 paper, Table 1): configurations only, no public weights.
    "swinv2_huge_window12_192": _v2(352, _L, 12, 192, 658.0, **_DP(0.2)),
    "swinv2_giant_window12_192": _v2(512, (2, 2, 42, 4), 12, 192, 3000.0, **_DP(0.2)),
}

ALIASES = {
    "swin_t": "swin_tiny_patch4_window7_224", "swin_s": "swin_small_patch4_window7_224",
    "swin_b": "swin_base_patch4_window7_224", "swin_l": "swin_large_patch4_window7_224",
    "swinv2_t": "swinv2_tiny_window8_256", "swinv2_s": "swinv2_small_window8_256",
    "swinv2_b": "swinv2_base_window8_256", "swinv2_l": "swinv2_large_window12to16_192to256",
}
for _alias, _target in ALIASES.items():
    VARIANTS[_alias] = VARIANTS[_target]


def list_models() -> list[str]:
    """Every variant name (the timm names of the published checkpoints, then the short aliases)."""
    return list(VARIANTS)


# ==========================================================================================================
# Segmentation models: a Swin backbone with a UPerNet or semantic-FPN decode head (models/segmentation.py)

SEG_HEADS = ("upernet", "fpn")


class DenseConfig:
    """What the configs of a Swin backbone with heads share (segmentation, detection): the backbone as a variant
    name, a SwinConfig dict (both get window_mode="pad", the dense-prediction codebases' behaviour, unless the dict
    says otherwise) or a SwinConfig used as it is, never with a classifier; named variants in `variants()`, whose
    entries hold the config and the backbone's overrides; JSON round trips."""

    backbone: Any

    @classmethod
    def variants(cls) -> dict[str, dict]:
        raise NotImplementedError

    def _coerce_backbone(self) -> None:
        if isinstance(self.backbone, str):
            self.backbone = SwinConfig.from_name(self.backbone, window_mode="pad")
        elif isinstance(self.backbone, dict):
            self.backbone = SwinConfig.from_dict({"window_mode": "pad", **self.backbone})
        elif not isinstance(self.backbone, SwinConfig):
            raise ValueError(f"backbone must be a variant name, a SwinConfig or its dict, got "
                             f"{type(self.backbone).__name__}")
        if self.backbone.num_classes:
            self.backbone = dataclasses.replace(self.backbone, num_classes=0)

    @property
    def in_chans(self) -> int:
        return self.backbone.in_chans

    @classmethod
    def from_name(cls, name: str, **overrides):
        """A named variant. Keyword overrides are fields of this config (num_classes=11) or, for the rest,
        SwinConfig fields of the backbone (drop_path_rate=0.2, window_mode="clamp")."""
        table = cls.variants()
        if name not in table:
            raise ValueError(f"unknown {cls.__name__[:-6].lower()} model {name!r}; choose one of {list(table)}")
        own = {f.name for f in dataclasses.fields(cls)}
        swin = {f.name for f in dataclasses.fields(SwinConfig)}
        unknown = set(overrides) - own - swin
        if unknown:
            raise TypeError(f"unknown config fields {sorted(unknown)}; valid: {cls.__name__} fields "
                            f"{sorted(own)} or backbone (SwinConfig) fields {sorted(swin - own)}")
        entry = table[name]["config"]
        mine = {k: v for k, v in overrides.items() if k not in own and v is not None}  # backbone fields
        backbone = overrides.get("backbone") or entry["backbone"]
        if isinstance(backbone, str):
            backbone = SwinConfig.from_name(backbone, **{"window_mode": "pad", **entry["backbone_overrides"], **mine})
        elif mine:
            raise TypeError(f"backbone fields {sorted(mine)} can only override a backbone given by name; set them "
                            "in the SwinConfig passed as backbone=")
        kwargs = {k: v for k, v in entry.items() if k != "backbone_overrides"}
        kwargs.update({k: v for k, v in overrides.items() if k in own and v is not None})
        return cls(**{**kwargs, "name": name, "backbone": backbone})

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_json(cls, s: str):
        return cls.from_dict(json.loads(s))


@dataclass
class SegmentationConfig(DenseConfig):
    """A Swin backbone (all stages, each normalised) and a decode head, plus an auxiliary FCN head that only
    training uses. Saved beside every segmentation checkpoint, like SwinConfig."""

    name: str = "custom"
    # a variant name or a SwinConfig dict get window_mode="pad" (the dense-prediction codebases' behaviour) unless
    # the dict says otherwise; a SwinConfig instance is used as it is. The backbone never has a classifier.
    backbone: Any = "swin_t"
    head: str = "upernet"                 # upernet (PPM + FPN fusion, Xiao et al. 2018) | fpn (semantic FPN)
    num_classes: int = 150
    channels: int = 512                   # decode head width (mmseg: 512 for UPerNet, 128 for semantic FPN)
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)  # UPerNet: pyramid pooling on the last stage
    fpn_channels: int = 256               # semantic FPN: width of its FPN neck
    dropout: float = 0.1                  # Dropout2d before the 1x1 classifier
    aux_head: bool = True                 # FCN head on one backbone stage, for an auxiliary loss in training
    aux_in_index: int = 2
    aux_channels: int = 256
    aux_num_convs: int = 1
    aux_loss_weight: float = 0.4
    frozen_stages: int = -1               # mmseg semantics: -1 none, 0 patch embedding, k > 0 also stages < k
    out_norms: bool = True                # a LayerNorm per backbone output (transformers' Swinv2Backbone: none)

    def __post_init__(self):
        self._coerce_backbone()
        self.pool_scales = tuple(int(s) for s in self.pool_scales)
        n = len(self.backbone.depths)
        if self.head not in SEG_HEADS:
            raise ValueError(f"head must be one of {SEG_HEADS}, got {self.head!r}")
        for field_, v in (("num_classes", self.num_classes), ("channels", self.channels),
                          ("fpn_channels", self.fpn_channels), ("aux_channels", self.aux_channels),
                          ("aux_num_convs", self.aux_num_convs)):
            if v < 1:
                raise ValueError(f"{field_} must be >= 1, got {v}")
        if not self.pool_scales or min(self.pool_scales) < 1:
            raise ValueError(f"pool_scales must be positive output sizes, e.g. (1, 2, 3, 6); got {self.pool_scales}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.aux_in_index < n:
            raise ValueError(f"aux_in_index must be a backbone stage in [0, {n}), got {self.aux_in_index}")
        if not -1 <= self.frozen_stages <= n:
            raise ValueError(f"frozen_stages must be in [-1, {n}] (-1: nothing frozen), got {self.frozen_stages}")

    @classmethod
    def variants(cls) -> dict[str, dict]:
        return SEG_VARIANTS

    @staticmethod
    def is_segmentation_dict(d: dict) -> bool:
        """Whether a config dict (a JSON beside the weights, a checkpoint's "config") is a SegmentationConfig."""
        return isinstance(d, dict) and "head" in d and isinstance(d.get("backbone"), (dict, str))


def _seg(backbone: str, head: str, params=None, gmacs=None, size=(512, 2048), **kw):
    """A SEG_VARIANTS entry with the published params (M) and FLOPs (GMACs, at `size`, the papers' 512 x 2048)."""
    channels = 512 if head == "upernet" else 128
    cfg = dict(backbone=backbone, head=head, channels=channels, backbone_overrides=dict(drop_path_rate=0.3), **kw)
    return dict(config=cfg, paper_params_m=params, paper_gmacs=gmacs, flops_size=size)


# name -> config. Figures: Swin paper, Table 3 (ADE20K, UPerNet, 150 classes, with the auxiliary head).
SEG_VARIANTS: dict[str, dict] = {
    "upernet_swin_t": _seg("swin_t", "upernet", 60.0, 945.0),
    "upernet_swin_s": _seg("swin_s", "upernet", 81.0, 1038.0),
    "upernet_swin_b": _seg("swin_b", "upernet", 121.0, 1188.0),
    "upernet_swin_b_window12_640": _seg("swin_base_patch4_window12_384", "upernet", 121.0, 1841.0, (640, 2560)),
    "upernet_swin_l_window12_640": _seg("swin_large_patch4_window12_384", "upernet", 234.0, 3230.0, (640, 2560)),
    "upernet_swinv2_t": _seg("swinv2_t", "upernet"),
    # semantic FPN (Kirillov et al. 2019) on Swin: no published Swin figures; light (128-channel head)
    "fpn_swin_t": _seg("swin_t", "fpn"),
    "fpn_swin_s": _seg("swin_s", "fpn"),
    "fpn_swin_b": _seg("swin_b", "fpn"),
}


def list_segmentation_models() -> list[str]:
    return list(SEG_VARIANTS)


# ==========================================================================================================
# Detection: torchvision's detectors on a Swin backbone with torchvision's FPN (models/detection.py)

DETECTORS = ("maskrcnn", "fasterrcnn", "retinanet", "fcos")


@dataclass
class DetectionConfig(DenseConfig):
    """A torchvision detector (Mask R-CNN, Faster R-CNN, RetinaNet, FCOS) on a Swin backbone and torchvision's
    FeaturePyramidNetwork. Two-stage detectors take all 4 stages (P2-P5) plus a max-pooled P6; RetinaNet and FCOS
    stages 1-3 (P3-P5) plus P6 / P7 from the last stage's output (mmdet's add_extra_convs="on_input"). Anchors,
    RoI pooling and level mapping are torchvision's defaults for these levels."""

    name: str = "custom"
    detector: str = "maskrcnn"
    backbone: Any = "swin_t"
    num_classes: int = 80                 # object classes; torchvision's label 0 is the background, so 1..num_classes
    fpn_channels: int = 256
    min_size: int = 800                   # GeneralizedRCNNTransform: evaluation shorter side ...
    max_size: int = 1333                  # ... and longer-side cap
    image_mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # GeneralizedRCNNTransform normalises [0, 1] RGB inputs
    image_std: tuple[float, ...] = (0.229, 0.224, 0.225)   # with these (ImageNet's, as the backbones were trained)
    frozen_stages: int = -1               # mmdet semantics: -1 none, 0 patch embedding, k > 0 also stages < k
    frozen_norms: bool = False            # the backbone's LayerNorms take no gradient (affine parameters fixed)
    score_thresh: float = 0.05            # detections kept at inference (torchvision's defaults)
    detections_per_img: int = 100
    rpn_proposals: tuple[int, int] = (2000, 1000)  # R-CNN: proposals kept after the RPN's NMS (training, inference)
    roi_batch: int = 512                  # R-CNN: RoIs sampled per training image for the box (and mask) head

    def __post_init__(self):
        self._coerce_backbone()
        self.image_mean, self.image_std = tuple(map(float, self.image_mean)), tuple(map(float, self.image_std))
        self.rpn_proposals = tuple(int(v) for v in self.rpn_proposals)
        n = len(self.backbone.depths)
        if self.detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {self.detector!r}")
        if n < 4:
            raise ValueError(f"a detector needs a 4-stage backbone (P2-P5 / P3-P5), got {n} stages")
        for field_, v in (("num_classes", self.num_classes), ("fpn_channels", self.fpn_channels),
                          ("min_size", self.min_size), ("max_size", self.max_size),
                          ("detections_per_img", self.detections_per_img), ("roi_batch", self.roi_batch),
                          ("rpn_proposals", min(self.rpn_proposals))):
            if v < 1:
                raise ValueError(f"{field_} must be >= 1, got {v}")
        if not -1 <= self.frozen_stages <= n:
            raise ValueError(f"frozen_stages must be in [-1, {n}] (-1: nothing frozen), got {self.frozen_stages}")

    @classmethod
    def variants(cls) -> dict[str, dict]:
        return DET_VARIANTS

    @property
    def out_indices(self) -> tuple[int, ...]:
        return (0, 1, 2, 3) if self.detector in ("maskrcnn", "fasterrcnn") else (1, 2, 3)

    @staticmethod
    def is_detection_dict(d: dict) -> bool:
        """Whether a config dict (a checkpoint's "config", a JSON beside the weights) is a DetectionConfig."""
        return isinstance(d, dict) and "detector" in d and isinstance(d.get("backbone"), (dict, str))


def _det(detector: str, backbone: str, drop_path: float, params=None, gmacs=None, size=(800, 1333)):
    """A DET_VARIANTS entry with the published params (M) and FLOPs (GMACs at `size`; the official repo measures
    at 1280 x 800)."""
    cfg = dict(detector=detector, backbone=backbone, backbone_overrides=dict(drop_path_rate=drop_path))
    return dict(config=cfg, paper_params_m=params, paper_gmacs=gmacs, flops_size=size)


# name -> config. Figures: microsoft/Swin-Transformer-Object-Detection README (COCO, 80 classes); drop path of its
# 3x configs.
DET_VARIANTS: dict[str, dict] = {
    "maskrcnn_swin_t": _det("maskrcnn", "swin_t", 0.2, 48.0, 267.0),
    "maskrcnn_swin_s": _det("maskrcnn", "swin_s", 0.2, 69.0, 359.0),
    "maskrcnn_swin_b": _det("maskrcnn", "swin_b", 0.3),
    "fasterrcnn_swin_t": _det("fasterrcnn", "swin_t", 0.2),
    "retinanet_swin_t": _det("retinanet", "swin_t", 0.2),
    "fcos_swin_t": _det("fcos", "swin_t", 0.2),
}


def list_detection_models() -> list[str]:
    return list(DET_VARIANTS)


# ==========================================================================================================
# Panoptic / universal segmentation: transformers' Mask2Former on a Swin backbone (models/panoptic.py)

# the PanopticConfig fields that are Mask2FormerConfig fields of the same name and meaning
MASK2FORMER_FIELDS = ("num_queries", "hidden_dim", "feature_size", "mask_feature_size", "encoder_layers",
                      "decoder_layers", "num_attention_heads", "dim_feedforward", "encoder_feedforward_dim", "dropout",
                      "activation_function", "pre_norm", "enforce_input_projection", "common_stride", "ignore_value",
                      "no_object_weight", "class_weight", "mask_weight", "dice_weight", "train_num_points",
                      "oversample_ratio", "importance_sample_ratio", "use_auxiliary_loss")


@dataclass
class PanopticConfig(DenseConfig):
    """transformers' Mask2FormerForUniversalSegmentation (pixel decoder, masked-attention decoder, Hungarian-matched
    loss) on a Swin backbone (all stages, each normalised unless out_norms=False). The head fields are
    Mask2FormerConfig's, with its defaults (those of facebook/mask2former-swin-*-coco-panoptic). Saved beside every
    panoptic checkpoint, like SwinConfig."""

    name: str = "custom"
    backbone: Any = "swin_t"              # a variant name or SwinConfig dict (window_mode "pad"), or a SwinConfig
    num_classes: int = 133                # COCO panoptic: 80 things + 53 stuff
    thing_classes: tuple[int, ...] | None = None  # countable classes; the others (stuff) fuse into one segment each
    num_queries: int = 100
    hidden_dim: int = 256                 # the masked-attention decoder's width
    feature_size: int = 256               # the pixel decoder's width (GroupNorm of 32 groups)
    mask_feature_size: int = 256
    encoder_layers: int = 6               # pixel decoder: multi-scale deformable attention layers
    decoder_layers: int = 10              # transformers builds decoder_layers - 1 masked-attention layers
    num_attention_heads: int = 8
    dim_feedforward: int = 2048
    encoder_feedforward_dim: int = 1024
    dropout: float = 0.0
    activation_function: str = "relu"
    pre_norm: bool = False
    enforce_input_projection: bool = False
    common_stride: int = 4                # the mask features' stride
    ignore_value: int = 255
    no_object_weight: float = 0.1         # loss: the "no object" class's weight ...
    class_weight: float = 2.0             # ... and the matching costs / loss weights
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    train_num_points: int = 12544         # points sampled per mask for the mask losses (112 x 112)
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    use_auxiliary_loss: bool = True       # a loss on every decoder layer's predictions
    out_norms: bool = True                # a LayerNorm per backbone output (transformers' Swinv2Backbone: none)

    def __post_init__(self):
        self._coerce_backbone()
        if self.thing_classes is not None:
            self.thing_classes = tuple(int(c) for c in self.thing_classes)
        n = len(self.backbone.depths)
        if n != 4:
            raise ValueError(f"Mask2Former's pixel decoder takes a 4-stage backbone (strides 4-32), got {n} stages")
        for field_, v in (("num_classes", self.num_classes), ("num_queries", self.num_queries),
                          ("hidden_dim", self.hidden_dim), ("mask_feature_size", self.mask_feature_size),
                          ("encoder_layers", self.encoder_layers), ("num_attention_heads", self.num_attention_heads),
                          ("dim_feedforward", self.dim_feedforward),
                          ("encoder_feedforward_dim", self.encoder_feedforward_dim),
                          ("train_num_points", self.train_num_points)):
            if v < 1:
                raise ValueError(f"{field_} must be >= 1, got {v}")
        if self.decoder_layers < 2:
            raise ValueError(f"decoder_layers must be >= 2 (transformers builds decoder_layers - 1 masked-attention "
                             f"layers), got {self.decoder_layers}")
        if self.feature_size < 32 or self.feature_size % 32:
            raise ValueError(f"feature_size must be a multiple of 32 (the pixel decoder's GroupNorm has 32 groups), "
                             f"got {self.feature_size}")
        for field_, v in (("hidden_dim", self.hidden_dim), ("feature_size", self.feature_size)):
            if v % self.num_attention_heads:
                raise ValueError(f"{field_} ({v}) must be a multiple of num_attention_heads "
                                 f"({self.num_attention_heads})")
        bad = [c for c in self.thing_classes or () if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(f"thing_classes must be class indices in [0, {self.num_classes}), got {bad}")

    @classmethod
    def variants(cls) -> dict[str, dict]:
        return PANOPTIC_VARIANTS

    @classmethod
    def from_name(cls, name: str, **overrides) -> "PanopticConfig":
        """As DenseConfig.from_name; a num_classes other than the variant's also drops its (COCO) thing classes unless
        thing_classes names them for the new classes."""
        n, things = overrides.pop("num_classes", None), overrides.pop("thing_classes", None)
        cfg = super().from_name(name, **overrides)
        if n is not None and n != cfg.num_classes:
            return dataclasses.replace(cfg, num_classes=n, thing_classes=things)
        return cfg if things is None else dataclasses.replace(cfg, thing_classes=things)

    @property
    def stuff_classes(self) -> set[int]:
        """The classes whose segments fuse into one per image (transformers' label_ids_to_fuse): all but the things;
        none when thing_classes is not known."""
        return set() if self.thing_classes is None else set(range(self.num_classes)) - set(self.thing_classes)

    @staticmethod
    def is_panoptic_dict(d: dict) -> bool:
        """Whether a config dict (a checkpoint's "config", a JSON beside the weights) is a PanopticConfig."""
        return isinstance(d, dict) and "num_queries" in d and isinstance(d.get("backbone"), (dict, str))

    def hf_config(self, class_names: list[str] | None = None) -> dict:
        """transformers' Mask2FormerConfig as a config.json dict whose backbone_config is swinkit's
        (SwinkitBackboneConfig, model_type "swinkit": Mask2FormerConfig.from_dict reads it once swinkit.interop.hf
        is imported). `class_names` become id2label (default LABEL_0, LABEL_1, ...)."""
        names = list(class_names) if class_names else [f"LABEL_{i}" for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        n, p = len(self.backbone.depths), self.backbone.patch_size
        backbone = dict(model_type="swinkit", swin=self.backbone.to_dict(), out_indices=list(range(1, n + 1)),
                        out_norms=self.out_norms)
        return dict(model_type="mask2former", architectures=["Mask2FormerForUniversalSegmentation"],
                    backbone_config=backbone, feature_strides=[p * 2**i for i in range(n)],
                    id2label={str(i): c for i, c in enumerate(names)}, label2id={c: i for i, c in enumerate(names)},
                    **{f: getattr(self, f) for f in MASK2FORMER_FIELDS})


_COCO_THINGS = tuple(range(80))  # COCO panoptic's contiguous ids: the 80 thing classes first, then 53 stuff


def _m2f(backbone: str, params=None, gmacs=None, pq=None, size=(800, 1200), **kw):
    """A PANOPTIC_VARIANTS entry with the published params (M), FLOPs (GMACs) and COCO panoptic PQ; `size`: the image
    `swinkit models` measures (a COCO val image at the test size, short side 800)."""
    cfg = dict(backbone=backbone, thing_classes=_COCO_THINGS, backbone_overrides=dict(drop_path_rate=0.3), **kw)
    return dict(config=cfg, paper_params_m=params, paper_gmacs=gmacs, paper_pq=pq, flops_size=size)


# name -> config. Figures: Mask2Former paper (Cheng et al., CVPR 2022), Table 1 (COCO panoptic: params, FLOPs averaged
# over COCO val images); PQ: facebookresearch/Mask2Former MODEL_ZOO.md (Swin-B: ImageNet-1k 384 pre-training, 55.1;
# ImageNet-22k gives 56.4; Swin-L: ImageNet-22k, 200 queries, 100 epochs). Drop path 0.3, as its Swin configs.
PANOPTIC_VARIANTS: dict[str, dict] = {
    "mask2former_swin_t": _m2f("swin_t", 47.0, 232.0, 53.2),
    "mask2former_swin_s": _m2f("swin_s", 69.0, 313.0, 54.6),
    "mask2former_swin_b": _m2f("swin_base_patch4_window12_384", 107.0, 466.0, 55.1),
    "mask2former_swin_l": _m2f("swin_large_patch4_window12_384", 216.0, 868.0, 57.8, num_queries=200),
}


def list_panoptic_models() -> list[str]:
    return list(PANOPTIC_VARIANTS)


# ==========================================================================================================
# Swin-UNet (Cao et al. 2021): the Swin encoder above, a symmetric Swin decoder, skip connections


@dataclass
class SwinUNetConfig(SwinConfig):
    """A Swin-UNet. The SwinConfig fields describe the encoder (num_classes: the segmentation classes); the
    decoder mirrors it, one stage per skip connection from the deepest up, at that skip's width, heads and
    window."""

    # Swin blocks per decoder stage, deepest first (n_stages - 1 entries). None: the encoder's, mirrored, which is
    # what the official code builds (it ignores its own depths_decoder argument).
    depths_decoder: tuple[int, ...] | None = None

    def __post_init__(self):
        super().__post_init__()
        n = len(self.depths)
        if n < 2:
            raise ValueError(f"a Swin-UNet needs at least 2 stages (a skip connection), got depths={self.depths}")
        if self.depths_decoder is None:
            self.depths_decoder = self.depths[-2::-1]
        self.depths_decoder = tuple(int(d) for d in self.depths_decoder)
        if len(self.depths_decoder) != n - 1 or min(self.depths_decoder) < 1:
            raise ValueError(f"depths_decoder needs {n - 1} entries >= 1 (one per decoder stage, deepest first) for "
                             f"{n} encoder stages, got {self.depths_decoder}; None mirrors the encoder's depths")

    def encoder_config(self) -> SwinConfig:
        """The encoder alone, as a headless SwinConfig."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(SwinConfig)}
        return SwinConfig(**{**fields, "num_classes": 0})

    @classmethod
    def from_name(cls, name: str, **overrides) -> "SwinUNetConfig":
        if name not in UNET_VARIANTS:
            raise ValueError(f"unknown Swin-UNet {name!r}; choose one of {list(UNET_VARIANTS)}")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = set(overrides) - set(valid)
        if unknown:
            raise TypeError(f"unknown config fields {sorted(unknown)}; valid: {valid}")
        return cls(**{**UNET_VARIANTS[name]["config"], "name": name,
                      **{k: v for k, v in overrides.items() if v is not None}})


# name -> config. swin_unet_tiny: configs/swin_tiny_patch4_window7_224_lite.yaml of HuCaoFighting/Swin-Unet, 9
# classes as its Synapse recipe. The paper publishes no parameter / FLOP figures for it.
UNET_VARIANTS: dict[str, dict] = {
    "swin_unet_tiny": dict(config=dict(embed_dim=96, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), window_size=7,
                                       img_size=224, num_classes=9, drop_path_rate=0.2),
                           paper_params_m=None, paper_gmacs=None),
}


# ==========================================================================================================
# Video Swin (Liu et al., CVPR 2022): the same blocks on (T, H, W) with 3-D windows


@dataclass
class VideoSwinConfig(SwinConfig):
    """A Video Swin Transformer: SwinConfig with every size (input, patch, windows) as (t, h, w). Patch merging is
    spatial only; the head (global average pool over T, H, W + linear) drops out head_drop_rate first, as the
    official I3D head. img_size is the (T, H, W) of one view (FLOPs); any clip size runs."""

    ndim: ClassVar[int] = 3
    img_size: Any = (32, 224, 224)
    patch_size: Any = (2, 4, 4)
    window_size: Any = (8, 7, 7)
    num_classes: int = 400
    head_drop_rate: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        self.patch_size = self.patch
        if self.version != 1 or self.pos_embed not in ("relative", "none"):
            raise ValueError(f"Video Swin supports version 1 with pos_embed 'relative' or 'none', got version "
                             f"{self.version}, pos_embed {self.pos_embed!r}")

    @property
    def clip_size(self) -> tuple[int, int, int]:
        return self.img_size

    def describe(self, with_size: bool = True) -> str:
        size = "x".join(map(str, self.img_size))
        if self.name in VIDEO_VARIANTS:
            ref = VideoSwinConfig.from_name(self.name)
            if all(getattr(self, f) == getattr(ref, f) for f in IDENTITY_FIELDS):
                return self.name if self.img_size == ref.img_size or not with_size else f"{self.name} at {size}"
        window = "-".join("x".join(map(str, w)) for w in dict.fromkeys(self.window_size))
        return (f"custom Video Swin: patch {'x'.join(map(str, self.patch))}, window {window}, C {self.embed_dim}, "
                f"depths {'-'.join(map(str, self.depths))}, heads {'-'.join(map(str, self.num_heads))}"
                + (f", {size}" if with_size else ""))

    @classmethod
    def from_name(cls, name: str, **overrides) -> "VideoSwinConfig":
        if name not in VIDEO_VARIANTS:
            raise ValueError(f"unknown video model {name!r}; choose one of swinkit.list_video_models(): "
                             f"{list_video_models()}")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = set(overrides) - set(valid)
        if unknown:
            raise TypeError(f"unknown config fields {sorted(unknown)}; valid: {valid}")
        return cls(**{**VIDEO_VARIANTS[name]["config"], "name": name,
                      **{k: v for k, v in overrides.items() if v is not None}})

    @staticmethod
    def is_video_dict(d: dict) -> bool:
        """Whether a config dict (config.json, a checkpoint's "config") describes a video model."""
        patch = d.get("patch_size")
        return isinstance(patch, (list, tuple)) and len(patch) == 3


def _video(c, depths, window=(8, 7, 7), classes=400, params=None, gmacs=None, **kw):
    """A VIDEO_VARIANTS entry: heads C/32 x {1, 2, 4, 8}, with the published params (M) and FLOPs (GMACs, one
    32x224x224 view)."""
    cfg = dict(embed_dim=c, depths=depths, num_heads=tuple(c // 32 * 2**i for i in range(4)), window_size=window,
               num_classes=classes, **kw)
    return dict(config=cfg, paper_params_m=params, paper_gmacs=gmacs)


# name -> config: the official Video-Swin-Transformer configs (patch 2x4x4, window 8x7x7 on Kinetics, 16x7x7 on
# Something-Something v2) with the figures of its README (K400 rows; SSv2: Swin-B). torchvision's swin3d_t / s / b
# are video_swin_t / s / b.
VIDEO_VARIANTS: dict[str, dict] = {
    "video_swin_t": _video(96, _T, params=28.2, gmacs=87.9, **_DP(0.1)),
    "video_swin_s": _video(96, _L, params=49.8, gmacs=165.9, **_DP(0.2)),
    "video_swin_b": _video(128, _L, params=88.0, gmacs=281.6, **_DP(0.3)),
    "video_swin_l": _video(192, _L, **_DP(0.2)),
    "video_swin_b_k600": _video(128, _L, classes=600, params=88.0, gmacs=281.6, **_DP(0.2)),
    "video_swin_b_ssv2": _video(128, _L, window=(16, 7, 7), classes=174, params=89.0, gmacs=321.0, **_DP(0.4)),
}


def list_video_models() -> list[str]:
    return list(VIDEO_VARIANTS)


# ==========================================================================================================
# Image restoration (models/swinir.py): SwinIR (Liang et al. 2021) and Swin2SR (Conde et al. 2022)

UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "nearest+conv", "none")
RESI_CONNECTIONS = ("1conv", "3conv")
RGB_MEAN = (0.4488, 0.4371, 0.4040)  # the DIV2K mean the official code subtracts from 3-channel inputs


@dataclass
class SwinIRConfig:
    """A SwinIR (version 1: Swin V1 blocks) or Swin2SR (version 2: res-post-norm, cosine attention, CPB) model:
    a 3x3 conv, residual Swin transformer blocks (RSTB) at full resolution, and a reconstruction head (`upsampler`).
    Every RSTB has the width `embed_dim`; `depths` and `num_heads` give one entry per RSTB. Any input size runs:
    it is padded by reflection to a window multiple and the output cropped, as the official code does."""

    name: str = "custom"
    version: int = 1
    upscale: int = 2                      # 1 for denoising / JPEG artifact reduction, 2, 3, 4, 8 for SR
    in_chans: int = 3                     # the output has as many channels
    img_size: int = 64                    # training patch (the official buffers' size); any size runs
    window_size: int = 8
    embed_dim: int = 180
    depths: tuple[int, ...] = (6, 6, 6, 6, 6, 6)
    num_heads: tuple[int, ...] = (6, 6, 6, 6, 6, 6)
    mlp_ratio: float = 2.0
    qkv_bias: bool = True
    # pixelshuffle (classical SR), pixelshuffledirect (lightweight SR), nearest+conv (real-world SR, x4),
    # none (denoising / JPEG: the body predicts a residual added to the input)
    upsampler: str = "pixelshuffle"
    resi_connection: str = "1conv"        # the conv closing each RSTB: 1conv (3x3) | 3conv (3x3 -> 1x1 -> 3x3, C/4)
    img_range: float = 1.0                # inputs in [0, 1] are scaled by this after the mean shift (JPEG: 255)
    num_feat: int = 64                    # width of the pixelshuffle / nearest+conv heads
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    fused_attn: bool = True
    chunk_mb: float = 256                 # attention / MLP chunks and conv row strips stay under this budget
    inference_path: str = "auto"

    def __post_init__(self):
        self.depths = tuple(int(d) for d in self.depths)
        self.num_heads = tuple(int(h) for h in self.num_heads)
        if self.upsampler in ("", None):
            self.upsampler = "none"
        if self.version not in (1, 2):
            raise ValueError(f"version must be 1 (SwinIR) or 2 (Swin2SR), got {self.version}")
        if self.upsampler not in UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {self.upsampler!r}")
        if self.resi_connection not in RESI_CONNECTIONS:
            raise ValueError(f"resi_connection must be one of {RESI_CONNECTIONS}, got {self.resi_connection!r}")
        if self.inference_path not in INFERENCE_PATHS:
            raise ValueError(f"inference_path must be one of {INFERENCE_PATHS}, got {self.inference_path!r}")
        if not self.depths or len(self.num_heads) != len(self.depths) or min(self.depths) < 1:
            raise ValueError(f"depths and num_heads need one entry >= 1 per RSTB and equal length, got "
                             f"depths={self.depths} num_heads={self.num_heads}")
        bad = [h for h in self.num_heads if h < 1 or self.embed_dim % h]
        if bad:
            raise ValueError(f"embed_dim={self.embed_dim} must be divisible by every num_heads entry; {bad} are not")
        if self.window_size < 1 or self.in_chans < 1 or self.img_size < 1:
            raise ValueError("window_size, in_chans and img_size must be >= 1")
        wanted = {"none": (1,), "pixelshuffle": "2^n or 3", "pixelshuffledirect": "any >= 2", "nearest+conv": (4,)}
        ok = {"none": self.upscale == 1, "nearest+conv": self.upscale == 4,
              "pixelshuffledirect": self.upscale >= 2,
              "pixelshuffle": self.upscale == 3 or (self.upscale >= 2 and self.upscale & (self.upscale - 1) == 0)}
        if not ok[self.upsampler]:
            raise ValueError(f"upsampler {self.upsampler!r} takes upscale {wanted[self.upsampler]}, got "
                             f"{self.upscale}" + (" (use upsampler='none' for upscale 1)" if self.upscale == 1 else ""))
        if self.resi_connection == "3conv" and self.embed_dim % 4:
            raise ValueError(f"3conv narrows to embed_dim / 4: embed_dim={self.embed_dim} must be divisible by 4")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.img_range <= 0:
            raise ValueError(f"img_range must be > 0, got {self.img_range}")

    @property
    def mean(self) -> tuple[float, ...]:
        """The per-channel mean subtracted before img_range: the DIV2K RGB mean for 3 channels, else 0."""
        return RGB_MEAN if self.in_chans == 3 else (0.0,) * self.in_chans

    def block_config(self) -> SwinConfig:
        """The SwinConfig the blocks read their options from: window_mode="pad" (window and shift never clamped,
        as the official calculate_mask), this config's version, MLP ratio, dropout and inference settings."""
        return SwinConfig(version=self.version, embed_dim=self.embed_dim, depths=(1,), num_heads=self.num_heads[:1],
                          window_size=self.window_size, mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias,
                          drop_rate=self.drop_rate, attn_drop_rate=self.attn_drop_rate, drop_path_rate=0.0,
                          fused_attn=self.fused_attn, chunk_mb=self.chunk_mb, window_mode="pad",
                          inference_path=self.inference_path, num_classes=0, in_chans=self.in_chans)

    def describe(self) -> str:
        if self.name in SWINIR_VARIANTS:
            ref = SwinIRConfig.from_name(self.name)
            if all(getattr(self, f) == getattr(ref, f) for f in SWINIR_IDENTITY_FIELDS):
                return self.name
        return (f"custom {'SwinIR' if self.version == 1 else 'Swin2SR'}: x{self.upscale} {self.upsampler}, "
                f"window {self.window_size}, C {self.embed_dim}, depths {'-'.join(map(str, self.depths))}, "
                f"heads {'-'.join(map(str, self.num_heads))}, {self.in_chans} channels")

    @classmethod
    def from_name(cls, name: str, **overrides) -> "SwinIRConfig":
        if name not in SWINIR_VARIANTS:
            raise ValueError(f"unknown restoration model {name!r}; choose one of swinkit.list_restoration_models(): "
                             f"{list_restoration_models()}")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = set(overrides) - set(valid)
        if unknown:
            raise TypeError(f"unknown config fields {sorted(unknown)}; valid: {valid}")
        return cls(**{**SWINIR_VARIANTS[name]["config"], "name": name,
                      **{k: v for k, v in overrides.items() if v is not None}})

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "SwinIRConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_json(cls, s: str) -> "SwinIRConfig":
        return cls.from_dict(json.loads(s))

    @staticmethod
    def is_restoration_dict(d) -> bool:
        """Whether a config dict (a JSON beside the weights, safetensors metadata) describes a SwinIR / Swin2SR."""
        return isinstance(d, dict) and "upsampler" in d and "upscale" in d and "model_type" not in d


SWINIR_IDENTITY_FIELDS = ("version", "upscale", "in_chans", "window_size", "embed_dim", "depths", "num_heads",
                          "mlp_ratio", "upsampler", "resi_connection", "img_range")
_M = dict(embed_dim=180, depths=(6,) * 6, num_heads=(6,) * 6)  # SwinIR-M / Swin2SR
_S = dict(embed_dim=60, depths=(6,) * 4, num_heads=(6,) * 4)   # SwinIR-S (lightweight)
_L = dict(embed_dim=240, depths=(6,) * 9, num_heads=(8,) * 9, resi_connection="3conv")  # SwinIR-L
_DN = dict(upscale=1, upsampler="none", img_size=128)
_CAR = dict(upscale=1, upsampler="none", img_size=126, window_size=7, img_range=255.0)


def _sr(arch: dict, params=None, file=None, **kw) -> dict:
    """A SWINIR_VARIANTS entry: config, the published params (M) and the official release file (or the
    transformers model id of a Swin2SR)."""
    return dict(config={**arch, **kw}, paper_params_m=params, file=file)


# name -> config: the official SwinIR model zoo (main_test_swinir.py's define_model; files of
# github.com/JingyunLiang/SwinIR/releases/tag/v0.0) and the Swin2SR models of transformers (caidas/swin2SR-*).
# Published params: SwinIR paper, Table 3 (lightweight SR; it counts no relative position bias tables: 0.032M here)
# and Table 2 / Fig. 1 (SwinIR-M, 11.8M at x4).
SWINIR_VARIANTS: dict[str, dict] = {
    **{f"swinir_classical_x{s}": _sr(_M, 11.8 if s == 4 else None, f"001_classicalSR_DF2K_s64w8_SwinIR-M_x{s}.pth",
                                     upscale=s) for s in (2, 3, 4, 8)},
    **{f"swinir_classical_x{s}_s48": _sr(_M, 11.8 if s == 4 else None,
                                         f"001_classicalSR_DIV2K_s48w8_SwinIR-M_x{s}.pth", upscale=s, img_size=48)
       for s in (2, 3, 4, 8)},
    **{f"swinir_lightweight_x{s}": _sr(_S, p, f"002_lightweightSR_DIV2K_s64w8_SwinIR-S_x{s}.pth", upscale=s,
                                       upsampler="pixelshuffledirect")
       for s, p in ((2, 0.878), (3, 0.886), (4, 0.897))},
    "swinir_real_x4": _sr(_M, None, "003_realSR_BSRGAN_DFO_s64w8_SwinIR-M_x4_GAN.pth", upscale=4,
                          upsampler="nearest+conv"),
    "swinir_real_x4_large": _sr(_L, None, "003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.pth", upscale=4,
                                upsampler="nearest+conv"),
    **{f"swinir_gray_dn_{n}": _sr(_M, None, f"004_grayDN_DFWB_s128w8_SwinIR-M_noise{n}.pth", in_chans=1, **_DN)
       for n in (15, 25, 50)},
    **{f"swinir_color_dn_{n}": _sr(_M, None, f"005_colorDN_DFWB_s128w8_SwinIR-M_noise{n}.pth", **_DN)
       for n in (15, 25, 50)},
    **{f"swinir_gray_jpeg_{q}": _sr(_M, None, f"006_CAR_DFWB_s126w7_SwinIR-M_jpeg{q}.pth", in_chans=1, **_CAR)
       for q in (10, 20, 30, 40)},
    **{f"swinir_color_jpeg_{q}": _sr(_M, None, f"006_colorCAR_DFWB_s126w7_SwinIR-M_jpeg{q}.pth", **_CAR)
       for q in (10, 20, 30, 40)},
    # Swin2SR (transformers' Swin2SRForImageSuperResolution configs; caidas/swin2SR-compressed-sr-x4-48 uses the
    # pixelshuffle_aux head, not built here)
    "swin2sr_classical_x2": _sr(_M, None, "caidas/swin2SR-classical-sr-x2-64", version=2, upscale=2),
    "swin2sr_classical_x4": _sr(_M, None, "caidas/swin2SR-classical-sr-x4-64", version=2, upscale=4),
    "swin2sr_lightweight_x2": _sr(_S, None, "caidas/swin2SR-lightweight-x2-64", version=2, upscale=2,
                                  upsampler="pixelshuffledirect"),
    "swin2sr_real_x4": _sr(_M, None, "caidas/swin2SR-realworld-sr-x4-64-bsrgan-psnr", version=2, upscale=4,
                           upsampler="nearest+conv"),
}


def list_restoration_models() -> list[str]:
    return list(SWINIR_VARIANTS)


# ==========================================================================================================
# CSWin Transformer (Dong et al., CVPR 2022) and PoolFormer (Yu et al., CVPR 2022): SwinConfig's skeleton with another
# token mixer, stem, merging and norm (models/cswin.py, models/poolformer.py)


def _from_table(cls, table: dict, name: str, overrides: dict):
    """cls with table[name]'s config and `overrides`; an unknown name or field is an error listing the valid ones."""
    if name not in table:
        raise ValueError(f"unknown {cls.family} model {name!r}; choose one of {list(table)}")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = set(overrides) - set(valid)
    if unknown:
        raise TypeError(f"unknown config fields {sorted(unknown)}; valid: {valid}")
    return cls(**{**table[name]["config"], "name": name, **{k: v for k, v in overrides.items() if v is not None}})


def _variant_name(cfg: SwinConfig, table: dict, with_size: bool) -> str | None:
    """cfg's variant name ("cswin_tiny_224", "cswin_tiny_224 at 64x64") while its architecture is the variant's."""
    if cfg.name not in table:
        return None
    ref = type(cfg).from_name(cfg.name)
    if any(getattr(cfg, f) != getattr(ref, f) for f in IDENTITY_FIELDS):
        return None
    size = "x".join(map(str, cfg.img_size))
    return cfg.name if cfg.img_size == ref.img_size or not with_size else f"{cfg.name} at {size}"


def _dashed(values) -> str:
    return "-".join(map(str, values))


@dataclass
class CSWinConfig(SwinConfig):
    """A CSWin Transformer: a 7x7 stride-4 conv stem and 3x3 stride-2 conv merging, each followed by a LayerNorm, and
    cross-shaped window attention with LePE in every block (the "cswin" mixer: half of the heads in vertical stripes
    `split_size` wide, half in horizontal ones; one branch over the whole map in the last stage). Widths double per
    stage from embed_dim. A split_size of 0 is half the stage's map at run time, the rule by which the official
    configurations scale it (stage 3: 7 of 14 at 224, 12 of 24 at 384); swinkit uses it for a checkpoint whose split
    sizes are not known (swinkit.io.formats.cswin)."""

    family: ClassVar[str] = "CSWin"
    embed_dim: int = 64
    depths: tuple[int, ...] = (1, 2, 21, 1)
    num_heads: tuple[int, ...] = (2, 4, 8, 16)
    split_size: Any = (1, 2, 7, 7)
    mixer: Any = "cswin"
    stem: str = "overlap"
    merge: str = "conv"
    pos_embed: str = "none"
    drop_path_rate: float = 0.2

    @classmethod
    def from_name(cls, name: str, **overrides) -> "CSWinConfig":
        return _from_table(cls, CSWIN_VARIANTS, name, overrides)

    def describe(self, with_size: bool = True) -> str:
        split = _dashed(s or "half" for s in self.split_size)
        return _variant_name(self, CSWIN_VARIANTS, with_size) or (
            f"custom CSWin: C {self.embed_dim}, depths {_dashed(self.depths)}, heads {_dashed(self.num_heads)}, split "
            f"{split}" + (f", {'x'.join(map(str, self.img_size))}" if with_size else ""))


def _cswin(c, depths, heads, split=(1, 2, 7, 7), img=224, params=None, gmacs=None, top1=None, **kw) -> dict:
    """A CSWIN_VARIANTS entry with the published params (M), FLOPs (GMACs) and ImageNet top-1 (%)."""
    cfg = dict(embed_dim=c, depths=depths, num_heads=heads, split_size=split, img_size=img, **kw)
    return dict(config=cfg, paper_params_m=params, paper_gmacs=gmacs, paper_top1=top1)


_CSWIN_DEEP = (2, 4, 32, 2)
# name -> config: the official models (microsoft/CSWin-Transformer models/cswin.py: CSWin_64_12211_tiny_224, ...;
# names of its released files) with the figures of its README (Main Results on ImageNet; drop path of its train and
# finetune commands). CSWin-L is pre-trained on ImageNet-22K.
CSWIN_VARIANTS: dict[str, dict] = {
    "cswin_tiny_224": _cswin(64, (1, 2, 21, 1), (2, 4, 8, 16), params=23, gmacs=4.3, top1=82.8, **_DP(0.2)),
    "cswin_small_224": _cswin(64, _CSWIN_DEEP, (2, 4, 8, 16), params=35, gmacs=6.9, top1=83.6, **_DP(0.4)),
    "cswin_base_224": _cswin(96, _CSWIN_DEEP, (4, 8, 16, 32), params=78, gmacs=15.0, top1=84.2, **_DP(0.5)),
    "cswin_base_384": _cswin(96, _CSWIN_DEEP, (4, 8, 16, 32), (1, 2, 12, 12), 384, 78, 47.0, 85.5, **_DP(0.7)),
    "cswin_large_224": _cswin(144, _CSWIN_DEEP, (6, 12, 24, 24), params=173, gmacs=31.5, top1=86.5, **_DP(0.2)),
    "cswin_large_384": _cswin(144, _CSWIN_DEEP, (6, 12, 24, 24), (1, 2, 12, 12), 384, 173, 96.8, 87.5, **_DP(0.2)),
}


@dataclass
class PoolFormerConfig(SwinConfig):
    """A PoolFormer (MetaFormer with pooling): a 7x7 stride-4 conv stem and 3x3 stride-2 conv merging without norms,
    blocks whose token mixer is AvgPool(pool_size)(x) - x ("pool"), GroupNorm with one group over the whole map
    before the mixer, the MLP and the head, and per-channel layer scales on both residual branches. `dims` gives the
    width of each stage (embed_dim follows dims[0]); pooling has no heads (num_heads: one per stage, unused)."""

    family: ClassVar[str] = "PoolFormer"
    embed_dim: int = 64
    dims: Any = (64, 128, 320, 512)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (1, 1, 1, 1)
    mixer: Any = "pool"
    stem: str = "overlap"
    patch_norm: bool = False
    merge: str = "conv"
    norm: str = "groupnorm"
    layer_scale: float | None = 1e-5
    pos_embed: str = "none"

    def __post_init__(self):
        if self.dims is not None:
            self.embed_dim = int(self.dims[0])
        if len(self.num_heads) != len(self.depths):
            self.num_heads = (1,) * len(self.depths)
        super().__post_init__()

    @classmethod
    def from_name(cls, name: str, **overrides) -> "PoolFormerConfig":
        return _from_table(cls, POOLFORMER_VARIANTS, name, overrides)

    def describe(self, with_size: bool = True) -> str:
        return _variant_name(self, POOLFORMER_VARIANTS, with_size) or (
            f"custom PoolFormer: dims {_dashed(self.stage_dims)}, depths {_dashed(self.depths)}, pool "
            f"{self.pool_size}" + (f", {'x'.join(map(str, self.img_size))}" if with_size else ""))


def _poolformer(dims, depths, params, gmacs, top1, **kw) -> dict:
    """A POOLFORMER_VARIANTS entry with the published params (M), MACs (G) and ImageNet top-1 (%)."""
    return dict(config=dict(dims=dims, depths=depths, **kw), paper_params_m=params, paper_gmacs=gmacs,
                paper_top1=top1)


_POOL_S, _POOL_M = (64, 128, 320, 512), (96, 192, 384, 768)
# name -> config: the official models (sail-sg/poolformer models/poolformer.py; its released poolformer_*.pth.tar) with
# the figures of its README (#Params, #MACs counted by fvcore, Top1 Acc; drop path of its training recipe). S36, M36
# and M48 initialise their layer scales to 1e-6, the others to 1e-5.
POOLFORMER_VARIANTS: dict[str, dict] = {
    "poolformer_s12": _poolformer(_POOL_S, (2, 2, 6, 2), 12, 1.8, 77.2, **_DP(0.1)),
    "poolformer_s24": _poolformer(_POOL_S, (4, 4, 12, 4), 21, 3.4, 80.3, **_DP(0.1)),
    "poolformer_s36": _poolformer(_POOL_S, (6, 6, 18, 6), 31, 5.0, 81.4, layer_scale=1e-6, **_DP(0.2)),
    "poolformer_m36": _poolformer(_POOL_M, (6, 6, 18, 6), 56, 8.8, 82.1, layer_scale=1e-6, **_DP(0.3)),
    "poolformer_m48": _poolformer(_POOL_M, (8, 8, 24, 8), 73, 11.6, 82.5, layer_scale=1e-6, **_DP(0.4)),
}


# ==========================================================================================================
# Open-vocabulary detection: transformers' GroundingDINO on a swinkit Swin (models/grounding.py)


@dataclass
class GroundingConfig(DenseConfig):
    """GroundingDINO (Liu et al. 2023): a Swin whose stages `out_indices` (transformers' numbering, 1 = the first
    stage) and a BERT text backbone (`text`: BertConfig fields over bert-base-uncased's) feed a deformable encoder and
    decoder of `d_model` channels with `num_feature_levels` levels (the levels beyond the stages: strided 3x3 convs)
    and `num_queries` queries. What is not here keeps transformers' GroundingDinoConfig defaults, which are
    IDEA-Research/grounding-dino-tiny's."""

    name: str = "custom"
    backbone: Any = "swin_t"
    out_indices: tuple[int, ...] = (2, 3, 4)
    text: dict = dataclasses.field(default_factory=dict)
    d_model: int = 256
    num_queries: int = 900
    encoder_layers: int = 6
    decoder_layers: int = 6
    ffn_dim: int = 2048                   # encoder and decoder feed-forward width
    heads: int = 8                        # encoder and decoder attention heads
    n_points: int = 4                     # deformable attention: sampled points per head and level
    num_feature_levels: int = 4
    max_text_len: int = 256               # tokens of the prompt the model reads (the logits' last axis)

    def __post_init__(self):
        self._coerce_backbone()
        self.out_indices = tuple(int(i) for i in self.out_indices)
        n = len(self.backbone.depths)
        if not self.out_indices or not all(1 <= i <= n for i in self.out_indices):
            raise ValueError(f"out_indices must be backbone stages in 1..{n} (transformers' numbering), got "
                             f"{self.out_indices}")
        if self.num_feature_levels < len(self.out_indices):
            raise ValueError(f"num_feature_levels ({self.num_feature_levels}) must be at least the number of stages "
                             f"taken, out_indices {self.out_indices}")
        for field_, v in (("d_model", self.d_model), ("num_queries", self.num_queries), ("ffn_dim", self.ffn_dim),
                          ("encoder_layers", self.encoder_layers), ("decoder_layers", self.decoder_layers),
                          ("heads", self.heads), ("n_points", self.n_points), ("max_text_len", self.max_text_len)):
            if v < 1:
                raise ValueError(f"{field_} must be >= 1, got {v}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of heads ({self.heads})")

    @classmethod
    def variants(cls) -> dict[str, dict]:
        return GROUNDING_VARIANTS


def _grounding(backbone: str, coco_ap: float, coco_ap_finetuned: float | None, zero_shot: bool) -> dict:
    """A GROUNDING_VARIANTS entry with the published COCO val2017 box AP (%): as released and after fine-tuning on
    COCO; zero_shot: no COCO images in its training data."""
    return dict(config=dict(backbone=backbone, backbone_overrides={}), paper_params_m=None, paper_gmacs=None,
                paper_coco_ap=coco_ap, paper_coco_ap_finetuned=coco_ap_finetuned, zero_shot=zero_shot)


# name -> config: the released models (IDEA-Research/GroundingDINO README, its checkpoints table; on the Hugging Face
# hub IDEA-Research/grounding-dino-tiny and -base). GroundingDINO-T (Swin-T; O365, GoldG, Cap4M): 48.4 zero-shot, 57.2
# fine-tuned (the README's COCO evaluation script gives 48.5 with the released weights). GroundingDINO-B (Swin-B at
# window 12 / 384; its data include COCO, so its 56.7 is not zero-shot).
GROUNDING_VARIANTS: dict[str, dict] = {
    "grounding_dino_swin_t": _grounding("swin_t", 48.4, 57.2, True),
    "grounding_dino_swin_b": _grounding("swin_base_patch4_window12_384", 56.7, None, False),
}
