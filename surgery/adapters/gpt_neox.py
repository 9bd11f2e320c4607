from surgery.adapters.base import ArchitectureAdapter
from surgery.adapters.registry import register_family

ADAPTER = register_family(ArchitectureAdapter(
    family="gpt_neox",
    model_types=("gpt_neox",),
    body="gpt_neox",
    unembed="lm_head",
    layers="gpt_neox.layers",
    attn_out_proj="attention.dense",
    mlp_out="mlp",
    qkv_layout="fused_interleaved",
    qkv_paths=("attention.query_key_value",),
    attn_bias_attr="attention_bias",
    mlp_in_paths=("mlp.dense_h_to_4h",),
    mlp_down="mlp.dense_4h_to_h",
    attention_attrs=(("attention.head_size", "head_dim"),),
    export_layout="gpt_neox",
))
