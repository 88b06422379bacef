"""The model zoo: token mixers, the EfficientViT-Seg variants, and the reference models (registry below)."""
import importlib.util

from models import efficientvit  # noqa: F401  (each model file registers its models on import)

for _name in ("segformer", "segnext"):  # being written in parallel; import once the files exist
    if importlib.util.find_spec(f"models.{_name}") is not None:
        importlib.import_module(f"models.{_name}")
from models.registry import (ModelInfo, Published, UnknownModelError, build_model, check_resolution,
                             example_input, get_model_info, list_models, resolve_models)

__all__ = ["ModelInfo", "Published", "UnknownModelError", "build_model", "check_resolution", "example_input",
           "get_model_info", "list_models", "resolve_models"]
