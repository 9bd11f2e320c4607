"""surgery: reach into a transformer: load it, name its parts, ablate coalitions of them."""

from surgery.adapters import ADAPTERS, ArchitectureAdapter, adapter_for, register_family
from surgery.atomic_io import FileWriteError
from surgery.batch import TokenBatch
from surgery.components import Component, ComponentIndex, head_name, layer_name, parse_component, parse_head_name
from surgery.errors import ModelNotFoundError, SurgeryError, UnsupportedArchitectureError
from surgery.cut import mask_heads, remove_heads, remove_layers
from surgery.engine import AblationEngine, leave_one_out_masks
from surgery.loading import LoadedModel, load
from surgery.outputs import NotOursError
from surgery.remote_code import RemoteCodeError
from surgery.save import CorruptExportError, save_model, verify_export

__all__ = [
    "ADAPTERS", "ArchitectureAdapter", "adapter_for", "TokenBatch", "Component", "ComponentIndex",
    "ModelNotFoundError", "SurgeryError", "UnsupportedArchitectureError", "LoadedModel", "load",
    "AblationEngine", "mask_heads", "remove_heads", "remove_layers", "CorruptExportError", "save_model",
    "verify_export", "FileWriteError", "NotOursError", "RemoteCodeError", "register_family",
    "head_name", "layer_name", "parse_component", "parse_head_name", "leave_one_out_masks",
]
