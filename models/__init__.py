"""The model zoo: token mixers, the EfficientViT-Seg variants, and the reference models (registry below)."""
from models import efficientvit, segformer, segnext  # noqa: F401  (each model file registers its models on import)
from models.registry import (ModelInfo, Published, UnknownModelError, build_model, check_model, check_resolution,
                             example_input, get_model_info, list_models, register_model, resolve_models)

__all__ = ["ModelInfo", "Published", "UnknownModelError", "build_model", "check_model", "check_resolution",
           "example_input", "get_model_info", "list_models", "register_model", "resolve_models"]
