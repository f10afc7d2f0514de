"""swinkit: Swin Transformer V1 and V2 at any input size.

The names below are imported on first use (PEP 562), so that `swinkit predict --onnx` and
`swinkit.tools.export.predict_onnx` run where only numpy, pillow and onnxruntime are installed."""
from __future__ import annotations

import importlib

__version__ = "0.1.0"
_EXPORTS = {  # module (relative to swinkit) -> the names it provides here
    ".config": ["CSWinConfig", "DetectionConfig", "GroundingConfig", "PanopticConfig", "PoolFormerConfig",
                "SegmentationConfig", "SwinConfig", "SwinIRConfig", "SwinUNetConfig", "VideoSwinConfig",
                "list_detection_models", "list_models", "list_panoptic_models", "list_restoration_models",
                "list_segmentation_models", "list_video_models"],
    ".models.swin": ["SwinTransformer"],
    ".models.cswin": ["CSWinTransformer"],
    ".models.poolformer": ["PoolFormer"],
    ".models.backbone": ["SwinBackbone"],
    ".models.segmentation": ["SegmentationModel"],
    ".models.unet": ["SwinUNet"],
    ".models.video": ["VideoSwinTransformer"],
    ".models.swinir": ["SwinIR"],
    ".models.panoptic": ["PanopticModel"],  # transformers: the hf extra
    ".models.grounding": ["build_grounding_dino"],  # transformers: the hf extra
    ".io.formats.swin": ["convert_state_dict"],
    ".io.formats.segmentation": ["convert_segmentation_state_dict", "load_segmentation_model"],
    ".io.formats.restoration": ["convert_swinir_state_dict"],
    ".io.formats.unet": ["load_unet"],
    ".io.formats.detection": ["convert_detection_state_dict", "load_detector", "save_detector"],
    ".io.load": ["load_model", "save_model"],
    ".factory": ["create", "create_backbone", "create_detector", "create_model", "create_panoptic_model",
                 "create_restoration_model", "create_segmentation_model", "create_video_model"],
    ".utils.allocator": ["tune_cpu_allocator"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = ["__version__", *_MODULE_OF]


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'swinkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name], __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
