"""swinkit's Swin as a Hugging Face transformers backbone. SwinkitBackboneConfig and SwinkitBackbone are registered
with AutoConfig and AutoBackbone under model_type "swinkit" when this module is imported, so any transformers model
that takes a `backbone_config` (Mask2Former, UperNet, GroundingDINO, DETR, ...) runs on a swinkit Swin: any input
size with masked padding, the CPU fast path, V1 / V2 and the token mixers of swinkit.nn.mixers.

    import swinkit.interop.hf  # registers "swinkit"
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation
    bb = SwinkitBackboneConfig(swin="swin_t", out_features=["stage1", "stage2", "stage3", "stage4"])
    model = Mask2FormerForUniversalSegmentation(Mask2FormerConfig(backbone_config=bb))

Stage names follow transformers' Swin: "stem" (the patch embedding, stride patch_size) and "stage1".."stageN" (stage
outputs before patch merging, strides patch_size * 2**(i-1)); each map taken goes through its own LayerNorm unless
out_norms=False (transformers' Swinv2Backbone has none). transformers is the `hf` extra."""
from __future__ import annotations

import torch
import torch.nn as nn
from transformers import AutoBackbone, AutoConfig, PreTrainedConfig, PreTrainedModel
from transformers.backbone_utils import BackboneConfigMixin, BackboneMixin
from transformers.modeling_outputs import BackboneOutput

from ..config import VARIANTS, SwinConfig
from ..models.backbone import SwinBackbone


def swin_config(swin: dict | str | SwinConfig | None) -> SwinConfig:
    """A SwinConfig from a variant name, a SwinConfig dict or a SwinConfig; window_mode "pad" (the dense-prediction
    codebases' and transformers' backbones' behaviour) unless given."""
    if isinstance(swin, SwinConfig):
        return swin
    if swin is None or isinstance(swin, str):
        name = swin or "swin_t"
        if name not in VARIANTS:
            raise ValueError(f"unknown Swin variant {name!r}; choose one of swinkit.list_models() or pass a "
                             "SwinConfig dict")
        return SwinConfig.from_name(name, window_mode="pad")
    return SwinConfig.from_dict({"window_mode": "pad", **swin})


class SwinkitBackboneConfig(BackboneConfigMixin, PreTrainedConfig):
    """`swin`: a swinkit variant name ("swin_t", "swinv2_t", ...), a SwinConfig dict or a SwinConfig (default
    swin_t). `out_features` / `out_indices`: stages by name ("stem", "stage1".."stageN") or index (0 = stem);
    default the last stage. `out_norms`: a LayerNorm on every map taken."""
    model_type = "swinkit"

    swin: dict | str | None = None
    out_norms: bool = True
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        cfg = swin_config(self.swin)
        self.swin = cfg.to_dict()
        self.num_channels, self.embed_dim, self.depths = cfg.in_chans, cfg.stage_dims[0], list(cfg.depths)
        self.hidden_size = cfg.num_features
        self.stage_names = ["stem"] + [f"stage{i + 1}" for i in range(len(cfg.depths))]
        self.set_output_features_output_indices(out_indices=kwargs.pop("out_indices", None),
                                                out_features=kwargs.pop("out_features", None))
        super().__post_init__(**kwargs)

    @property
    def swin_config(self) -> SwinConfig:
        return SwinConfig.from_dict(self.swin)


class SwinkitBackbone(BackboneMixin, PreTrainedModel):
    """transformers' backbone API on a swinkit SwinBackbone (`self.swin`, its weights under swinkit's names):
    forward(pixel_values) -> BackboneOutput(feature_maps: NCHW maps of out_features, hidden_states: with
    output_hidden_states, the stem and every stage output before its norm, NCHW, as transformers' Swin gives)."""
    config_class = SwinkitBackboneConfig
    base_model_prefix = "swinkit"
    main_input_name = "pixel_values"
    has_attentions = False

    def __init__(self, config: SwinkitBackboneConfig):
        super().__init__(config)
        cfg = config.swin_config
        self.num_features = [cfg.stage_dims[0], *cfg.stage_dims]
        stages = [i - 1 for i in self.out_indices if i > 0]
        if not stages:
            raise ValueError(f"out_features {self.out_features} take no stage: swinkit's backbone outputs the stem "
                             "only together with at least one of " + ", ".join(config.stage_names[1:]))
        self.swin = SwinBackbone(cfg, out_indices=stages, out_norms=config.out_norms)
        self.stem_norm = nn.LayerNorm(cfg.stage_dims[0]) if 0 in self.out_indices and config.out_norms else None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """swinkit's SwinBackbone initialises itself (the official scheme): nothing to redo."""

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
                output_attentions: bool | None = None, return_dict: bool | None = None, **kwargs) -> BackboneOutput:
        if output_attentions:
            raise ValueError("swinkit's backbone returns no attention maps (its fused window attention never forms "
                             "them); call with output_attentions=False, or see `swinkit viz attention`")
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        body, take = self.swin, set(self.out_indices)
        last = len(body.layers) if output_hidden_states else max(take)
        x = body.embed(pixel_values)  # (B, H/p, W/p, C)
        states = [x]
        for stage in body.layers[:last]:
            x = stage(x)  # (B, H_i, W_i, C_i)
            states.append(x)
        maps = []
        for i in sorted(take):
            norm = (self.stem_norm if i == 0 else getattr(body, f"norm{i - 1}")) or nn.Identity()
            maps.append(norm(states[i]).permute(0, 3, 1, 2).contiguous())  # (B, C_i, H_i, W_i)
        hidden = tuple(s.permute(0, 3, 1, 2).contiguous() for s in states) if output_hidden_states else None
        if return_dict is False:
            return (tuple(maps),) + ((hidden,) if hidden is not None else ())
        return BackboneOutput(feature_maps=tuple(maps), hidden_states=hidden)


def backbone_config(swin: dict | str | SwinConfig | None = None, out_features: list[str] | None = None,
                    out_indices: list[int] | None = None, out_norms: bool = True, **kwargs) -> SwinkitBackboneConfig:
    """A SwinkitBackboneConfig; with neither out_features nor out_indices, every stage (stage1..stageN), as the
    dense heads want."""
    cfg = swin_config(swin)
    if out_features is None and out_indices is None:
        out_indices = list(range(1, len(cfg.depths) + 1))
    return SwinkitBackboneConfig(swin=cfg.to_dict(), out_features=out_features,
                                 out_indices=out_indices, out_norms=out_norms, **kwargs)


AutoConfig.register("swinkit", SwinkitBackboneConfig, exist_ok=True)
AutoBackbone.register(SwinkitBackboneConfig, SwinkitBackbone, exist_ok=True)
