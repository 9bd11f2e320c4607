"""Architecture adapters. A family is one file: it declares an ArchitectureAdapter and passes it to
`register_family`. The built-in families below register themselves on import."""

from __future__ import annotations

from surgery.adapters import bert, gpt2, gpt_neox, llama
from surgery.adapters.base import ArchitectureAdapter
from surgery.adapters.registry import adapter_for, family_of, register_family, registered_families

# The built-in families (registered_families() also lists those registered later).
ADAPTERS: tuple[ArchitectureAdapter, ...] = (gpt2.ADAPTER, llama.ADAPTER, gpt_neox.ADAPTER, bert.ADAPTER,
                                             bert.ROBERTA_ADAPTER)

__all__ = ["ArchitectureAdapter", "ADAPTERS", "adapter_for", "family_of", "register_family", "registered_families"]
