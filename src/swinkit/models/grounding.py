"""GroundingDINO (Liu et al. 2023), open-vocabulary detection: transformers' GroundingDinoForObjectDetection (a BERT
text backbone, a feature enhancer, language-guided query selection and a cross-modality decoder) with swinkit's Swin as
its image backbone (swinkit.interop.hf). Nothing of it is rebuilt here: transformers holds the model, swinkit the
backbone. transformers is the `hf` extra; swinkit imports this module only when a GroundingDINO is built."""
from __future__ import annotations

from transformers import BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection

from ..config import GroundingConfig
from ..interop.hf import backbone_config


def hf_grounding_config(cfg: GroundingConfig) -> GroundingDinoConfig:
    """transformers' GroundingDinoConfig of `cfg`, its backbone_config swinkit's (model_type "swinkit")."""
    return GroundingDinoConfig(
        backbone_config=backbone_config(cfg.backbone, out_indices=list(cfg.out_indices)),
        text_config=BertConfig(**cfg.text), d_model=cfg.d_model, num_queries=cfg.num_queries,
        encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers, encoder_ffn_dim=cfg.ffn_dim,
        decoder_ffn_dim=cfg.ffn_dim, encoder_attention_heads=cfg.heads, decoder_attention_heads=cfg.heads,
        encoder_n_points=cfg.n_points, decoder_n_points=cfg.n_points, num_feature_levels=cfg.num_feature_levels,
        max_text_len=cfg.max_text_len)


def build_grounding_dino(cfg: GroundingConfig | str = "grounding_dino_swin_t",
                         **overrides) -> GroundingDinoForObjectDetection:
    """A GroundingDINO with random weights in eval mode, from a GroundingConfig or a variant name (keyword
    overrides: GroundingConfig fields, or SwinConfig fields of a backbone given by name)."""
    if isinstance(cfg, str):
        cfg = GroundingConfig.from_name(cfg, **overrides)
    elif overrides:
        raise TypeError(f"overrides {sorted(overrides)} apply to a variant name; set them in the GroundingConfig")
    return GroundingDinoForObjectDetection(hf_grounding_config(cfg)).eval()
