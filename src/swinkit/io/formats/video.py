"""Video Swin checkpoints: the official layout (SwinTransformer/Video-Swin-Transformer, mmaction2 0.x and 1.x)
and torchvision's swin3d_t / s / b <-> swinkit's VideoSwinTransformer, both ways; the config the weights imply;
and the inflation of a 2-D Swin into a 3-D one, as the official `inflate_weights` does.

All of them keep `relative_position_index` buffers ((N, N) for the full window) and attend padded tokens as
zeros, with a clamped window's bias taken from the first N rows / columns of that index: what they read comes back
with mask_padding=False and clamped_bias="prefix", so that the model computes what the source model computed.
The tables use the key templates of io/convert.py (`{i}` stage, `{j}` block, `{p}` weight|bias, `{P}` the
recognizers' "backbone." prefix, `{L}` the last stage, `{2i-1}` index arithmetic), applied by its one `apply_key_map`."""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ...config import VIDEO_VARIANTS, SwinConfig, VideoSwinConfig
from ...models.video import VideoSwinTransformer
from ...nn.windows import relative_position_index
from ..files import CheckpointError, save_state_dict, write_converted
from ..keymap import Layout, apply_key_map, expand_rules, listing, report_unknown
from ..raw import RawCheckpoint, read_raw
from ..hub import download_pretrained
from .segmentation import is_segmentation_state_dict
from .swin import (B, BUFFERS, Checkpoint, build_model, check_architecture, check_overrides, check_shapes, consistent,
                   last_stage, read_checkpoint, side_info)
from .unet import is_unet

Triple = tuple[int, int, int]

# every tensor a VideoSwinTransformer holds, plus the buffers the other formats persist
VIDEO_TEMPLATES = [
    "patch_embed.proj.{p}", "patch_embed.norm.{p}",
    B + "norm1.{p}", B + "attn.qkv.{p}", B + "attn.relative_position_bias_table", B + "attn.proj.{p}",
    B + "norm2.{p}", B + "mlp.fc1.{p}", B + "mlp.fc2.{p}",
    "layers.{i}.downsample.reduction.weight", "layers.{i}.downsample.norm.{p}", "norm.{p}", "head.fc.{p}",
    B + "attn.relative_position_index", B + "attn_mask"]

_OFFICIAL = {
    "patch_embed.": "{P}patch_embed.",
    "layers.{i}.blocks.": "{P}layers.{i}.blocks.",
    "layers.{i}.downsample.": "{P}layers.{i-1}.downsample.",
    "norm.": "{P}norm.",
    "head.fc.": "cls_head.fc_cls.",
}
VIDEO_FORMATS = {
    "swinkit": Layout((1,), {}),
    # SwinTransformer3D, bare or as the Recognizer3D of the official repository (an mmaction2 0.x fork): backbone
    # under "backbone.", the I3D head's classifier cls_head.fc_cls; patch merging at the END of each stage
    "official": Layout((1,), _OFFICIAL),
    # mmaction2 1.x's port: the same, with the last stage's norm named after its out_indices entry
    "mmaction2": Layout((1,), {**_OFFICIAL, "norm.": "{P}norm{L}."}),
    # torchvision.models.video.SwinTransformer3d: features = [stage 0, merge, stage 1, merge, ...]
    "torchvision": Layout((1,), {
        B: "features.{2i}.{j}.",
        B + "mlp.fc1.": "features.{2i}.{j}.mlp.0.",
        B + "mlp.fc2.": "features.{2i}.{j}.mlp.3.",
        B + "attn_mask": None,
        "layers.{i}.downsample.": "features.{2i-1}.",
        "head.fc.": "head.",
    }),
}
DETECT_ORDER = ("swinkit", "official", "mmaction2", "torchvision")  # ties (a one-stage model) go to the first
PREFIXES = ("backbone.",)  # the recognizers'; written on export to "official" and "mmaction2"
INFLATE_MODES = ("average", "center")


def is_video_state_dict(sd: dict) -> bool:
    """Whether a state dict (any wrapper prefix) is a 3-D Swin: its patch embedding is a Conv3d."""
    w = next((v for k, v in sd.items() if k.endswith("patch_embed.proj.weight")), None)
    return w is not None and w.ndim == 5


# ----------------------------------------------------------------------------------------------------------
# the two directions


@dataclass
class VideoImported:
    format: str
    state_dict: dict  # VideoSwinTransformer parameters
    buffers: dict  # the format's persisted buffers, under swinkit names (they tell the window)
    unknown: list[str]  # keys no rule explains


def import_video(sd: dict, fmt: str) -> VideoImported:
    """Read `sd` through format `fmt`'s key map. Never raises on keys."""
    rules = expand_rules(VIDEO_FORMATS[fmt], VIDEO_TEMPLATES)
    ctx_in, ctx_out = {"P": (*PREFIXES, "")}, {"P": ("",)}
    ours, left = apply_key_map(sd, rules, "theirs", ctx_in, ctx_out)
    if any("{L}" in t for r in rules for t in r.theirs if t):  # second pass once the stages are known
        more, left = apply_key_map(left, rules, "theirs", {**ctx_in, "L": last_stage(ours)}, ctx_out)
        ours.update(more)
    buffers = {k: ours.pop(k) for k in list(ours) if k.rsplit(".", 1)[-1] in BUFFERS}
    return VideoImported(fmt, ours, buffers, sorted(left))


def detect_video_format(sd: dict) -> str:
    """The format whose key map explains every key of `sd` and yields a consistent Video Swin structure."""
    scored = []
    for fmt in DETECT_ORDER:
        imp = import_video(sd, fmt)
        scored.append((len(imp.unknown) + (0 if consistent(imp.state_dict) else len(sd) + 1), fmt))
    bad, fmt = min(scored, key=lambda s: s[0])
    if bad > len(sd):
        raise ValueError(f"not a Video Swin state dict of a known format ({', '.join(DETECT_ORDER)}): expected "
                         "patch_embed.proj (a Conv3d) and stages of blocks; its first keys are: "
                         f"{listing(list(sd)[:5])}")
    return fmt


def video_to_swinkit(sd: dict, src: str | None = None, strict: bool = True) -> VideoImported:
    """Import a Video Swin state dict (format detected when `src` is None). Keys no map explains are an error
    listing them, or with strict=False a warning."""
    if not is_video_state_dict(sd):
        raise ValueError("not a Video Swin state dict: expected a 5-D patch_embed.proj.weight (a Conv3d over "
                         f"t x p x p patches); its first keys are: {listing(list(sd)[:5])}")
    imp = import_video(sd, src or detect_video_format(sd))
    report_unknown(imp.unknown, f"{imp.format} Video Swin", "Is it a Video Swin checkpoint of that format? ", strict)
    return imp


def video_from_swinkit(sd: dict, dst: str, cfg: VideoSwinConfig, prefix: str = "backbone.") -> dict:
    """Export a VideoSwinTransformer state dict (model config `cfg`) to `dst` ("official" | "mmaction2" |
    "torchvision" | "swinkit"), buffers included, so that it loads strict=True into that library's model:
    official / mmaction2 with the backbone under `prefix` (a Recognizer3D; "" for SwinTransformer3D alone)."""
    if dst not in VIDEO_FORMATS:
        raise ValueError(f"unknown Video Swin format {dst!r}; choose one of {', '.join(VIDEO_FORMATS)}")
    if dst == "swinkit":
        return dict(sd)
    if len(set(cfg.window_size)) > 1:
        raise ValueError(f"the {dst} Video Swin takes one window for every stage; this model has {cfg.window_size}. "
                         "Keep it in swinkit's format.")
    if cfg.mask_padding or cfg.clamped_bias != "prefix":
        warnings.warn(f"this model has mask_padding={cfg.mask_padding}, clamped_bias={cfg.clamped_bias!r}; the "
                      f"{dst} code attends padded tokens and takes the bias prefix (mask_padding=False, "
                      "clamped_bias='prefix'), so its outputs differ at clip sizes that pad or clamp a window",
                      stacklevel=3)
    sd = dict(sd)
    for k in list(sd):
        if m := re.fullmatch(r"(layers\.(\d+)\.blocks\.\d+\.attn\.)relative_position_bias_table", k):
            win = cfg.window_size[int(m[2])]
            sd[m[1] + "relative_position_index"] = relative_position_index(win, win, torch.device("cpu")).clone()
    rules = expand_rules(VIDEO_FORMATS[dst], VIDEO_TEMPLATES)
    out, left = apply_key_map(sd, rules, "ours", {"P": ("",)}, {"P": (prefix,), "L": len(cfg.depths) - 1})
    if left:
        raise ValueError(f"{len(left)} VideoSwinTransformer tensors have no equivalent in the {dst} format: "
                         f"{listing(sorted(left))}")
    return out


# ----------------------------------------------------------------------------------------------------------
# what the weights say about the configuration


def _odd_divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1, 2) if n % d == 0]


def _table_window(table: torch.Tensor, index: torch.Tensor | None) -> Triple | None:
    """The (t, h, w) window of a bias table ((2t-1)(2h-1)(2w-1), heads): square in space, with t*h*w = N of the
    (N, N) index when there is one; without it, the largest such spatial window. None when none fits."""
    size, n = table.shape[0], index.shape[-1] if index is not None else None
    fits = []
    for s in _odd_divisors(size):  # s = 2h-1
        if size % (s * s) == 0 and (size // (s * s)) % 2:
            t, h = (size // (s * s) + 1) // 2, (s + 1) // 2
            if n is None or t * h * h == n:
                fits.append((t, h, h))
    return max(fits, key=lambda w: w[1]) if fits else None


def match_video_variant(d: dict) -> str | None:
    """The named video variant with this structure (the one with as many classes, if several)."""
    keys = ("patch_size", "embed_dim", "depths", "num_heads", "window_size")
    same = [n for n in VIDEO_VARIANTS
            if all(listed(getattr(VideoSwinConfig.from_name(n), k)) == listed(d[k]) for k in keys if k in d)]
    return next((n for n in same if VIDEO_VARIANTS[n]["config"].get("num_classes", 400) == d.get("num_classes")),
                same[0] if same else None)


def listed(v):
    return [listed(x) for x in v] if isinstance(v, (list, tuple)) else v


def infer_video_config(sd: dict, buffers: dict | None = None, fmt: str = "swinkit"
                       ) -> tuple[VideoSwinConfig, list[str]]:
    """The config of a VideoSwinTransformer state dict from its tensors (and persisted index buffers), then the
    matching named variant, then defaults; official and torchvision weights get mask_padding=False and
    clamped_bias="prefix". Returns it and the fields that had to be guessed (window_size, num_heads)."""
    buffers = buffers or {}
    proj = sd["patch_embed.proj.weight"]  # (D, in_chans, pt, ph, pw)
    depth: dict[int, int] = {}
    for k in sd:
        if m := re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", k):
            depth[int(m[1])] = max(depth.get(int(m[1]), 0), int(m[2]) + 1)
    first = [B.format(i=i, j=0) for i in sorted(depth)]
    tables = [sd.get(p + "attn.relative_position_bias_table") for p in first]
    d = dict(patch_size=list(proj.shape[2:]), in_chans=proj.shape[1], embed_dim=proj.shape[0],
             depths=[depth[i] for i in sorted(depth)],
             mlp_ratio=sd[first[0] + "mlp.fc1.weight"].shape[0] / proj.shape[0],
             qkv_bias=first[0] + "attn.qkv.bias" in sd,
             num_classes=sd["head.fc.weight"].shape[0] if "head.fc.weight" in sd else 0,
             pos_embed="relative" if tables[0] is not None else "none")
    if fmt != "swinkit":
        d.update(mask_padding=False, clamped_bias="prefix")
    if all(t is not None for t in tables):
        d["num_heads"] = [t.shape[1] for t in tables]
        wins = [_table_window(t, buffers.get(p + "attn.relative_position_index")) for t, p in zip(tables, first)]
        if all(wins):
            d["window_size"] = [list(w) for w in wins]
    indexed = all(p + "attn.relative_position_index" in buffers for p in first)
    name = match_video_variant(d)
    base = VideoSwinConfig.from_name(name).to_dict() if name else {}
    guessed = [k for k in ("num_heads", "window_size") if k not in d or (k == "window_size" and not indexed)]
    if "num_heads" not in d:  # no position tables: the papers' 32 channels per head
        d["num_heads"] = [max(1, d["embed_dim"] * 2**i // 32) for i in range(len(d["depths"]))]
    return VideoSwinConfig.from_dict({**base, **d, "name": name or "custom"}), guessed


def convert_video_state_dict(sd: dict, src: str | None = None, dst: str = "swinkit",
                             cfg: VideoSwinConfig | None = None, prefix: str = "backbone.") -> dict:
    """Convert a Video Swin state dict between swinkit, official, mmaction2 and torchvision (`src` detected when
    None; `cfg` inferred from the weights when None)."""
    imp = video_to_swinkit(sd, src)
    if cfg is None:
        cfg, _ = infer_video_config(imp.state_dict, imp.buffers, imp.format)
    return video_from_swinkit(imp.state_dict, dst, cfg, prefix)


# ----------------------------------------------------------------------------------------------------------
# inflating a 2-D Swin into a 3-D one


def _inflate_patch(w: torch.Tensor, t: int, mode: str) -> torch.Tensor:
    """(D, C, p, p) 2-D filters -> (D, C, t, p, p). average: repeated over time and divided by t (the official
    inflation); center: the 2-D filter in the centre frame (index t // 2), zeros elsewhere. Either way a clip of
    t equal frames gives the 2-D embedding of that frame."""
    if mode == "average":
        return w.unsqueeze(2).repeat(1, 1, t, 1, 1) / t
    out = torch.zeros(*w.shape[:2], t, *w.shape[2:], dtype=w.dtype)
    out[:, :, t // 2] = w
    return out


def _inflate_table(table: torch.Tensor, src: tuple[int, int], win: Triple) -> torch.Tensor:
    """((2h-1)(2w-1), heads) 2-D table -> ((2t-1)(2h'-1)(2w'-1), heads): resized bicubically to the new spatial
    window when it differs, then the same for every temporal offset (the index is offset-major over t)."""
    heads, size = table.shape[1], (2 * win[1] - 1, 2 * win[2] - 1)
    if (2 * src[0] - 1, 2 * src[1] - 1) != size:
        grid = table.T.reshape(1, heads, 2 * src[0] - 1, 2 * src[1] - 1)  # (1, heads, 2h-1, 2w-1)
        table = F.interpolate(grid, size=size, mode="bicubic", align_corners=False).reshape(heads, -1).T
    return table.repeat(2 * win[0] - 1, 1)


def inflate_state_dict(sd: dict, src: SwinConfig, cfg: VideoSwinConfig, mode: str = "average"
                       ) -> tuple[dict, list[str]]:
    """A 2-D Swin V1 state dict (swinkit layout, config `src`) as the weights of a VideoSwinTransformer of
    `cfg`, as the official inflate_weights does: the patch embedding inflated over time (`mode`: "average" |
    "center"), the bias tables resized to the spatial window and repeated over the temporal offsets, the rest
    as it is. Returns (state dict, 2-D keys dropped: the head, an absolute position embedding)."""
    if mode not in INFLATE_MODES:
        raise ValueError(f"inflate must be one of {INFLATE_MODES}, got {mode!r}")
    if src.version != 1:
        raise ValueError(f"a Swin V{src.version} checkpoint cannot be inflated: Video Swin is Swin V1 (a learned "
                         "bias table, pre-norm blocks). Inflate a V1 checkpoint.")
    fields = ("embed_dim", "depths", "num_heads", "mlp_ratio", "qkv_bias", "in_chans")
    wrong = [f"{k}={getattr(src, k)} (model: {getattr(cfg, k)})" for k in fields if getattr(src, k) != getattr(cfg, k)]
    if src.patch_size != cfg.patch[1] or cfg.patch[1] != cfg.patch[2]:
        wrong.append(f"patch_size={src.patch_size} (model: {cfg.patch})")
    if wrong:
        raise ValueError(f"the 2-D checkpoint does not fit this video model: {', '.join(wrong)}. Pick the video "
                         "variant of the same size (swin_t -> video_swin_t, swin_s -> video_swin_s, ...).")
    out, dropped = {}, []
    for k, v in sd.items():
        if k.startswith("head.") or k == "absolute_pos_embed":
            dropped.append(k)
        elif k == "patch_embed.proj.weight":
            out[k] = _inflate_patch(v, cfg.patch[0], mode)
        elif k.endswith("relative_position_bias_table"):
            i = int(k.split(".")[1])
            out[k] = _inflate_table(v, src.window_size[i], cfg.window_size[i])
        else:
            out[k] = v
    return out, dropped


# ----------------------------------------------------------------------------------------------------------
# video checkpoints, and 2-D checkpoints inflated into video models


VIDEO_ARCHITECTURE = ("patch_size", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio", "qkv_bias",
                      "pos_embed")  # what a video checkpoint's tensors fix (its bias tables are not resized)


def read_video_checkpoint(path, use_ema: bool = False, strict: bool = True,
                          raw: RawCheckpoint | None = None) -> Checkpoint:
    """Read a Video Swin checkpoint (official / mmaction2, torchvision, swinkit) into swinkit's layout, with the
    config saved beside a swinkit file or else inferred from the weights."""
    raw = raw or read_raw(path, use_ema)
    side, class_names, ours = side_info(raw.weights, raw.obj, raw.meta)
    ours = ours and VideoSwinConfig.is_video_dict(side)
    try:
        imp = video_to_swinkit(raw.state_dict, strict=strict)
        cfg, guessed = ((VideoSwinConfig.from_dict(side), []) if ours else
                        infer_video_config(imp.state_dict, imp.buffers, imp.format))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{raw.path}: {e}") from None
    return Checkpoint(raw.path, "swinkit" if ours else imp.format, imp.state_dict, cfg, guessed,
                      class_names if ours else None, imp.unknown, [])


def video_target_config(src: VideoSwinConfig, overrides: dict, base: VideoSwinConfig | None = None
                         ) -> VideoSwinConfig:
    """The video model to build: `base` (a named variant) or the checkpoint's config, with `overrides`. With a
    base, the checkpoint decides the head, input channels and how padding and clamped windows are handled
    (mask_padding, clamped_bias) unless asked otherwise."""
    d = (base or src).to_dict()
    if base is not None:
        d.update({k: getattr(src, k) for k in ("num_classes", "in_chans", "mask_padding", "clamped_bias")})
    cfg = VideoSwinConfig.from_dict({**d, **overrides})
    check_architecture(src, cfg, VIDEO_ARCHITECTURE, "video", named=base is not None)
    return cfg


def inflate_checkpoint(path, cfg: VideoSwinConfig, inflate: str = "average",
                       raw: RawCheckpoint | None = None) -> VideoSwinTransformer:
    """A VideoSwinTransformer of `cfg` from any 2-D Swin V1 classifier or backbone checkpoint load_model reads,
    inflated as the official Video Swin does (see io.convert_video.inflate_state_dict; inflate="center" puts the
    2-D patch filters in the centre frame). One warning lists the tensors that start from their initialisation
    (the head). Returns the model in eval mode."""
    raw = raw or read_raw(path)
    if is_unet(raw.state_dict) or is_segmentation_state_dict(raw.state_dict):
        raise CheckpointError(f"{path} is a segmentation checkpoint: inflate a classification or backbone "
                              "checkpoint of Swin V1 into a video model")
    ckpt = read_checkpoint(path, raw=raw)
    try:
        sd, dropped = inflate_state_dict(ckpt.state_dict, ckpt.config, cfg, inflate)
    except ValueError as e:
        raise CheckpointError(f"{ckpt.describe()}: {e}") from None
    model = VideoSwinTransformer(cfg)
    own = model.state_dict()
    check_shapes(ckpt, sd, own)
    unexpected = [k for k in sd if k not in own]
    if unexpected:
        raise CheckpointError(f"{ckpt.describe()}: tensors with no place in the video model: {unexpected[:12]}")
    model.load_state_dict(sd, strict=False)
    new = [k for k in own if k not in sd]
    if new:
        warnings.warn(f"inflated {ckpt.describe()} into {cfg.describe()} ({inflate}); new, freshly initialised "
                      f"tensors (train them before use): {', '.join(new)}"
                      + (f"; dropped from the 2-D model: {', '.join(dropped)}" if dropped else ""), stacklevel=3)
    return model.eval()


def load_video_into_named(name: str, checkpoint=None, pretrained: bool | str = False, inflate: str = "average",
                          **overrides) -> VideoSwinTransformer:
    """create_video_model(name, checkpoint=... | pretrained=True): the named video variant with the weights of a
    video checkpoint (torchvision's Kinetics-400 release for pretrained=True, or the URL given as
    pretrained='https://...'), or of a 2-D one, inflated."""
    base = VideoSwinConfig.from_name(name, **overrides)
    overrides = check_overrides(overrides, VideoSwinConfig)
    if checkpoint is None:
        checkpoint = download_pretrained(name, pretrained if isinstance(pretrained, str) else None)
    raw = read_raw(checkpoint)
    if not is_video_state_dict(raw.state_dict):
        return inflate_checkpoint(checkpoint, base, inflate, raw)
    ckpt = read_video_checkpoint(checkpoint, raw=raw)
    return build_model(ckpt, video_target_config(ckpt.config, overrides, base))


def write_video_checkpoint(sd: dict, cfg: VideoSwinConfig, path, fmt: str = "swinkit", class_names=None,
                           meta: dict | None = None) -> Path:
    """Write a VideoSwinTransformer's state dict as `fmt`: swinkit (save_state_dict), official / mmaction2
    ({"state_dict": {"backbone.*", "cls_head.*"}}) or torchvision (swin3d's state dict)."""
    path = Path(path)
    if fmt == "swinkit":
        save_state_dict(sd, cfg, path, class_names, meta)
        return path
    out = video_from_swinkit(sd, fmt, cfg)
    return write_converted(out, path, None, lambda sd: sd if fmt == "torchvision" else {"state_dict": sd})

