"""Registry of architecture adapters. Adding a family = adding one file here and one import line."""

from __future__ import annotations

import torch.nn as nn

from surgery.adapters import bert, gpt2, gpt_neox, llama
from surgery.adapters.base import ArchitectureAdapter
from surgery.errors import UnsupportedArchitectureError

ADAPTERS: tuple[ArchitectureAdapter, ...] = (gpt2.ADAPTER, llama.ADAPTER, gpt_neox.ADAPTER, bert.ADAPTER)

# RoBERTa-style models keep the body under another attribute name; same layout otherwise.
_BODY_ALIASES = {"roberta": "roberta", "xlm-roberta": "roberta"}


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            alias = _BODY_ALIASES.get(model_type)
            if alias:
                adapter = _rebase(adapter, alias, unembed="lm_head")
            _check_paths(model, adapter, model_type)
            return adapter
    families = ", ".join(f"{a.family} ({'/'.join(a.model_types)})" for a in ADAPTERS)
    raise UnsupportedArchitectureError(
        f"no adapter for model_type={model_type!r}. Supported families: {families}. To add one, write "
        f"surgery/adapters/<family>.py declaring an ArchitectureAdapter (module paths of the blocks, "
        f"the attention output projection and the MLP) and register it in surgery/adapters/__init__.py.")


def _rebase(adapter: ArchitectureAdapter, body: str, unembed: str) -> ArchitectureAdapter:
    from dataclasses import replace
    return replace(adapter, body=body, unembed=unembed, layers=adapter.layers.replace("bert.", body + ".", 1))


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


__all__ = ["ArchitectureAdapter", "ADAPTERS", "adapter_for"]
