"""swinkit: Swin Transformer V1 and V2 at any input size."""
from .config import (DetectionConfig, SegmentationConfig, SwinConfig, SwinIRConfig, SwinUNetConfig, VideoSwinConfig,
                     list_detection_models, list_models, list_restoration_models, list_segmentation_models,
                     list_video_models)
from .models.swin import SwinTransformer
from .models.backbone import SwinBackbone
from .models.segmentation import SegmentationModel
from .models.unet import SwinUNet
from .models.video import VideoSwinTransformer
from .models.swinir import SwinIR
from .io.convert import convert_segmentation_state_dict, convert_state_dict
from .io.convert_swinir import convert_swinir_state_dict
from .io.convert_unet import load_unet
from .io.checkpoint import load_model, load_segmentation_model, save_model
from .io.detection import convert_detection_state_dict, load_detector, save_detector
from .factory import (create_backbone, create_detector, create_model, create_restoration_model,
                      create_segmentation_model, create_video_model)
from .allocator import tune_cpu_allocator

__version__ = "0.1.0"
__all__ = ["SwinConfig", "SwinTransformer", "create_model", "list_models", "load_model", "save_model",
           "convert_state_dict", "tune_cpu_allocator", "__version__",
           "SwinBackbone", "SegmentationConfig", "SegmentationModel", "create_backbone", "create_segmentation_model",
           "list_segmentation_models", "load_segmentation_model", "convert_segmentation_state_dict",
           "SwinUNet", "SwinUNetConfig", "load_unet",
           "VideoSwinTransformer", "VideoSwinConfig", "create_video_model", "list_video_models",
           "SwinIR", "SwinIRConfig", "create_restoration_model", "list_restoration_models", "convert_swinir_state_dict",
           "DetectionConfig", "create_detector", "list_detection_models", "load_detector", "save_detector",
           "convert_detection_state_dict"]
