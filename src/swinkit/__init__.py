"""swinkit: Swin Transformer V1 and V2 at any input size."""
from .config import SwinConfig, list_models
from .models.swin import SwinTransformer
from .io.convert import convert_state_dict
from .io.checkpoint import load_model, save_model
from .factory import create_model
from .allocator import tune_cpu_allocator

__version__ = "0.1.0"
__all__ = ["SwinConfig", "SwinTransformer", "create_model", "list_models", "load_model", "save_model",
           "convert_state_dict", "tune_cpu_allocator", "__version__"]
