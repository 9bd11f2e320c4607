"""surgery: reach into a transformer: load it, name its parts, ablate coalitions of them."""

from surgery.adapters import ADAPTERS, ArchitectureAdapter, adapter_for
from surgery.batch import TokenBatch
from surgery.components import Component, ComponentIndex
from surgery.errors import ModelNotFoundError, SurgeryError, UnsupportedArchitectureError
from surgery.loading import LoadedModel, load

__all__ = [
    "ADAPTERS", "ArchitectureAdapter", "adapter_for", "TokenBatch", "Component", "ComponentIndex",
    "ModelNotFoundError", "SurgeryError", "UnsupportedArchitectureError", "LoadedModel", "load",
]
