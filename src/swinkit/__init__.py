"""swinkit: Swin Transformer V1 and V2 at any input size."""
from .config import SwinConfig, list_models
from .model import SwinTransformer, create_model

__version__ = "0.1.0"
__all__ = ["SwinConfig", "SwinTransformer", "create_model", "list_models", "__version__"]
