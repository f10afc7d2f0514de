"""transformers models with a Swin backbone (Mask2Former, GroundingDINO, UperNet): their backbone converted between
transformers' SwinBackbone / Swinv2Backbone and swinkit's SwinkitBackbone (swinkit.interop.hf), config and weights,
the rest of the model kept as it is. transformers is imported only by the functions that build models."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ...config import SwinConfig
from ...utils.logs import quiet_logger
from ..files import CheckpointError
from ..keymap import report_unknown
from .segmentation import BACKBONE_TEMPLATES, SEG_BACKBONES
from .swin import (Checkpoint, fit_weights, from_swinkit, hf_backbone_config, hf_v2_stages, import_state_dict,
                   infer_config, known_from_hf, uniform)

# where each transformers model keeps its backbone (model_type -> state dict prefix)
BACKBONE_PREFIX = {
    "mask2former": "model.pixel_level_module.encoder.",
    "grounding-dino": "model.backbone.conv_encoder.model.",
    "upernet": "backbone.",
}
SWIN_TYPES = ("swin", "swinv2")
_STEM = "hidden_states_norms.stem."


@dataclass
class HFBackbone:
    """A backbone read from a transformers model: its SwinConfig, the stages it outputs (transformers' indices,
    0 = stem), whether each output has a LayerNorm, and its weights under SwinkitBackbone's names."""
    config: SwinConfig
    out_indices: list[int]
    out_norms: bool
    state_dict: dict
    guessed: list[str]

    def backbone_config(self) -> dict:
        """The SwinkitBackboneConfig dict (model_type "swinkit") that holds this backbone."""
        return dict(model_type="swinkit", swin=self.config.to_dict(), out_indices=list(self.out_indices),
                    out_norms=self.out_norms)


def _out_indices(c: dict, n: int) -> list[int]:
    names = ["stem"] + [f"stage{i + 1}" for i in range(n)]
    if c.get("out_indices") is not None:
        return [i % len(names) for i in c["out_indices"]]
    if c.get("out_features") is not None:
        return [names.index(f) for f in c["out_features"]]
    return [n]


def import_hf_backbone(sd: dict, c: dict, where: str, strict: bool = True) -> HFBackbone:
    """The backbone tensors `sd` (the model's prefix removed) of a backbone_config `c` (transformers' swin / swinv2,
    or swinkit's own) -> HFBackbone. Keys that no rule explains are an error naming them (strict) or a warning."""
    if c.get("model_type") == "swinkit":
        cfg = SwinConfig.from_dict(c["swin"])
        return HFBackbone(cfg, _out_indices(c, len(cfg.depths)), c.get("out_norms", True), dict(sd), [])
    if c.get("model_type") not in SWIN_TYPES:
        raise CheckpointError(f"{where}: the backbone is {c.get('model_type')!r}; swinkit reads Swin backbones "
                              f"({', '.join(SWIN_TYPES)}, swinkit)")
    stem = {"stem_norm." + k[len(_STEM):]: v for k, v in sd.items() if k.startswith(_STEM)}
    imp = import_state_dict({k: v for k, v in sd.items() if not k.startswith(_STEM)}, "hf", SEG_BACKBONES,
                            BACKBONE_TEMPLATES)
    known = {k: uniform(v) for k, v in known_from_hf(c)[0].items() if v is not None}
    try:
        report_unknown(imp.unknown, "transformers Swin backbone", "", strict)
        cfg, guessed = infer_config(imp.state_dict, imp.buffers, {**known, "window_mode": "pad", "num_classes": 0})
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{where}: {e}") from None
    if imp.version == 2:  # the windows and shifts Swinv2 fixed when it was built
        wins, mixers = hf_v2_stages(cfg, c.get("window_size", 7))
        cfg = dataclasses.replace(cfg, window_size=wins, mixer=mixers)
    weights, _ = fit_weights(Checkpoint(Path(where), "hf", imp.state_dict, cfg, guessed, None, [], []), cfg, None)
    return HFBackbone(cfg, _out_indices(c, len(cfg.depths)), imp.version == 1,
                      {**{"swin." + k: v for k, v in weights.items()}, **stem}, guessed)


def export_hf_backbone(bb: HFBackbone) -> tuple[dict, dict]:
    """HFBackbone -> (transformers' SwinBackbone / Swinv2Backbone backbone_config, its state dict)."""
    cfg = bb.config
    names = ["stem"] + [f"stage{i + 1}" for i in range(len(cfg.depths))]
    kind = f"Swin{'v2' if cfg.version == 2 else ''}Backbone"
    if not cfg.swin_skeleton:
        raise CheckpointError(f"this backbone has token mixers {'-'.join(cfg.mixer)} (or another stem, merging or "
                              f"norm than Swin's): transformers' {kind} cannot hold it; keep swinkit's layout")
    try:
        backbone = hf_backbone_config(cfg, [names[i] for i in bb.out_indices])
    except ValueError as e:
        raise CheckpointError(f"{e}: keep swinkit's layout") from None
    if bb.out_norms != (cfg.version == 1):
        raise CheckpointError(f"transformers' {kind} has {'a' if cfg.version == 1 else 'no'} LayerNorm per output; "
                              f"this backbone has out_norms={bb.out_norms}: keep swinkit's layout")
    inner = {k[len("swin."):]: v for k, v in bb.state_dict.items() if k.startswith("swin.")}
    out = from_swinkit(inner, "hf", cfg, SEG_BACKBONES, BACKBONE_TEMPLATES)
    out.update({_STEM + k[len("stem_norm."):]: v for k, v in bb.state_dict.items() if k.startswith("stem_norm.")})
    if cfg.version == 1:  # SwinModel's final norm: unused by SwinBackbone, but stored
        import torch

        c = cfg.num_features
        out.update({"swin.layernorm.weight": torch.ones(c), "swin.layernorm.bias": torch.zeros(c)})
    return backbone, out


def backbone_prefix(config: dict, where: str) -> str:
    model_type = config.get("model_type")
    if model_type not in BACKBONE_PREFIX:
        raise CheckpointError(f"{where}: a transformers {model_type!r} model; swinkit reads the Swin backbone of "
                              f"{', '.join(BACKBONE_PREFIX)}")
    return BACKBONE_PREFIX[model_type]


def import_hf_model(sd: dict, config: dict, where: str, strict: bool = True) -> tuple[dict, dict, HFBackbone]:
    """A transformers model's state dict and config.json dict whose backbone is transformers' Swin (or swinkit's)
    -> (the config with a SwinkitBackboneConfig backbone, the state dict with the backbone under its names, the
    backbone read)."""
    prefix = backbone_prefix(config, where)
    inner = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not inner:
        raise CheckpointError(f"{where}: no backbone tensors under {prefix!r}; is it a {config.get('model_type')} "
                              "model's state dict?")
    bb = import_hf_backbone(inner, config.get("backbone_config") or {}, where, strict)
    out = {k: v for k, v in sd.items() if not k.startswith(prefix)}
    out.update({prefix + k: v for k, v in bb.state_dict.items()})
    config = copy.deepcopy(config)
    config["backbone_config"] = bb.backbone_config()
    return config, out, bb


def export_hf_model(sd: dict, config: dict) -> tuple[dict, dict]:
    """The inverse of import_hf_model: the backbone back in transformers' Swin layout (config and weights)."""
    prefix = backbone_prefix(config, "this model")
    c = config["backbone_config"]
    inner = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    bb = import_hf_backbone(inner, c, "this model")
    backbone, weights = export_hf_backbone(bb)
    out = {k: v for k, v in sd.items() if not k.startswith(prefix)}
    out.update({prefix + k: v for k, v in weights.items()})
    config = copy.deepcopy(config)
    config["backbone_config"] = backbone
    return config, out


def build_hf_model(model_cls: type, config: dict, sd: dict, where: str, strict: bool = True):
    """A transformers model of `model_cls` from a config dict with a swinkit backbone and its state dict (as
    import_hf_model returns them), in eval mode; missing or unexpected keys are an error (strict) naming them."""
    import warnings

    from ...interop import hf  # noqa: F401  registers "swinkit" with AutoConfig / AutoBackbone

    # transformers' heads warn that any backbone but their own Swin "is not a supported model": swinkit's is
    with quiet_logger("transformers"):
        model = model_cls(model_cls.config_class.from_dict(config))
    own = model.state_dict()
    bad = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})" for k, v in sd.items()
           if k in own and own[k].shape != v.shape]
    missing, unexpected = [k for k in own if k not in sd], [k for k in sd if k not in own]
    if bad or missing or unexpected:
        msg = (f"{where}: does not fit {model_cls.__name__}: missing keys {missing[:8]}, unexpected keys "
               f"{unexpected[:8]}, wrong shapes {bad[:8]}")
        if strict or bad:
            raise CheckpointError(msg + ("" if bad else " (load with strict=False to accept this)"))
        warnings.warn(msg, stacklevel=3)
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items() if k in own}, strict=False)
    return model.eval()


def hf_backbone_from_checkpoint(path, out_features: list[str] | None = None, out_norms: bool = True, **overrides):
    """A SwinkitBackbone holding the Swin of any checkpoint load_model reads (a classifier, backbone or segmentation
    model, of any format; a classifier's output norms start fresh), in eval mode. Overrides are SwinConfig fields
    (window_size=... transfers the bias tables); window_mode "pad" unless given."""
    from ...interop.hf import SwinkitBackbone, backbone_config
    from .segmentation import load_backbone_weights, read_backbone

    cfg, sd = read_backbone(path, **{"window_mode": "pad", **overrides})
    model = SwinkitBackbone(backbone_config(cfg, out_features, out_norms=out_norms))
    load_backbone_weights(model.swin, sd, str(path))
    return model.eval()
