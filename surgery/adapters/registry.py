"""Which adapter serves which `config.model_type`: families join by `register_family`, never by
editing a table in place. The built-in families register themselves when `surgery.adapters` is
imported; a family of your own is one file that builds an ArchitectureAdapter and registers it.
"""

from __future__ import annotations

import torch.nn as nn

from surgery.adapters.base import ArchitectureAdapter
from surgery.errors import SurgeryError, UnsupportedArchitectureError

_BY_MODEL_TYPE: dict[str, ArchitectureAdapter] = {}


def register_family(adapter: ArchitectureAdapter, *, replace: bool = False) -> ArchitectureAdapter:
    """Make `adapter` serve every model_type it names; returns it (so a family file can write
    `ADAPTER = register_family(ArchitectureAdapter(...))`).

    A model_type another family already serves is refused unless replace=True (which is how a test
    or a user swaps in different module paths for a known model_type).
    """
    if not isinstance(adapter, ArchitectureAdapter):
        raise SurgeryError(f"register_family takes an ArchitectureAdapter, got {type(adapter).__name__}")
    taken = {t: _BY_MODEL_TYPE[t].family for t in adapter.model_types
             if t in _BY_MODEL_TYPE and _BY_MODEL_TYPE[t] != adapter}
    if taken and not replace:
        raise SurgeryError(f"model_type {', '.join(sorted(taken))} is already served by family "
                           f"{', '.join(sorted(set(taken.values())))}; pass replace=True to register "
                           f"{adapter.family!r} in its place")
    for model_type in adapter.model_types:
        _BY_MODEL_TYPE[model_type] = adapter
    return adapter


def registered_families() -> tuple[ArchitectureAdapter, ...]:
    """Every registered adapter once, in registration order."""
    return tuple(dict.fromkeys(_BY_MODEL_TYPE.values()))


def family_of(model_type: str | None) -> ArchitectureAdapter | None:
    """The adapter serving `model_type`, or None."""
    return _BY_MODEL_TYPE.get(model_type) if model_type is not None else None


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    """The adapter of a transformers model (by `config.model_type`), after checking its paths exist."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    adapter = family_of(model_type)
    if adapter is None:
        families = ", ".join(f"{a.family} ({'/'.join(a.model_types)})" for a in registered_families())
        raise UnsupportedArchitectureError(
            f"no adapter for model_type={model_type!r}. Supported families: {families}. To add one, write "
            f"a file declaring an ArchitectureAdapter (module paths of the blocks, the attention output "
            f"projection and the MLP; see surgery/adapters/llama.py) and pass it to "
            f"surgery.register_family().")
    _check_paths(model, adapter, model_type)
    return adapter


def _check_paths(model: nn.Module, adapter: ArchitectureAdapter, model_type: str) -> None:
    """Fail early with the exact missing path, e.g. a headless BertModel instead of BertForMaskedLM."""
    for path in (adapter.body, adapter.unembed, adapter.layers):
        try:
            model.get_submodule(path)
        except AttributeError:
            raise UnsupportedArchitectureError(
                f"{type(model).__name__} (model_type={model_type!r}) has no module '{path}' that the "
                f"{adapter.family} adapter needs. Load the language-modelling variant of the model "
                f"(e.g. AutoModelForCausalLM, or AutoModelForMaskedLM for encoders).") from None
