"""The adapters agree with the modeling file that travels inside exports.

surgery/modeling/pruned_attention.py may import only torch and transformers (it is copied into
exports and its bytes are checked on load), so it recognises block layouts by module names. The
in-memory cut follows the adapter; these tests make sure both describe every built-in family alike,
so a cut model and its reloaded export are built the same way.
"""

import copy

import pytest

from surgery.adapters import ADAPTERS, registered_families
from surgery.adapters.base import ArchitectureAdapter
from surgery.errors import SurgeryError
from surgery.modeling.pruned_attention import MLP_PATHS, MLP_SIZE_ATTR, attention_kind, set_attention_attributes


def test_the_adapter_names_the_export_layout_the_modeling_file_sees(tiny):
    adapter = tiny.adapter
    block = adapter.blocks(tiny.model)[0]
    assert attention_kind(block) == adapter.export_layout
    assert MLP_PATHS[adapter.export_layout] == (adapter.mlp_in_paths, adapter.mlp_down)
    assert MLP_SIZE_ATTR[adapter.export_layout] == adapter.mlp_size_attr


def test_the_adapter_sets_the_attention_attributes_the_modeling_file_sets(tiny):
    comps = tiny.components
    n_q, n_kv, D = comps.n_heads[0] // 2, max(1, comps.n_kv_heads[0] // 2), comps.head_dim // 2
    ours, theirs = (copy.deepcopy(tiny.adapter.blocks(tiny.model)[0]) for _ in range(2))
    tiny.adapter.set_attention_counts(ours, n_q, n_kv, D)
    set_attention_attributes(theirs, n_q, n_kv, D)
    assert ints(ours) == ints(theirs)
    assert ints(ours) != ints(tiny.adapter.blocks(tiny.model)[0])  # the counts did change


def ints(block):
    """Every plain int attribute of every module of a block: what an attention forward can read."""
    return {(name, attr): value for name, module in block.named_modules()
            for attr, value in vars(module).items() if type(value) is int}


def test_every_built_in_family_is_registered():
    assert set(ADAPTERS) <= set(registered_families())


def test_a_bad_declaration_is_refused_when_the_adapter_is_built():
    base = dict(family="x", model_types=("x",), body="m", unembed="h", layers="m.l", attn_out_proj="a.o",
                mlp_out="mlp", qkv_paths=("a.q", "a.k", "a.v"))
    with pytest.raises(SurgeryError, match="unknown qkv_layout 'fused_sideways'"):
        ArchitectureAdapter(qkv_layout="fused_sideways", **base)
    with pytest.raises(SurgeryError, match="unknown attention_attrs quantities"):
        ArchitectureAdapter(qkv_layout="separate", attention_attrs=(("a.heads", "n_heads"),), **base)
    with pytest.raises(SurgeryError, match="export_layout 'phi' is not a layout"):
        ArchitectureAdapter(qkv_layout="separate", export_layout="phi", **base)
