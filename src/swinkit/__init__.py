"""swinkit: Swin Transformer V1 and V2 at any input size."""
from .config import SwinConfig, list_models
from .model import SwinTransformer, create_model
from .convert import convert_state_dict
from .checkpoint import load_model, save_model
from .allocator import tune_cpu_allocator

__version__ = "0.1.0"
__all__ = ["SwinConfig", "SwinTransformer", "create_model", "list_models", "load_model", "save_model",
           "convert_state_dict", "tune_cpu_allocator", "__version__"]
