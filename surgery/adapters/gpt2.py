from surgery.adapters.base import ArchitectureAdapter
from surgery.adapters.registry import register_family

ADAPTER = register_family(ArchitectureAdapter(
    family="gpt2",
    model_types=("gpt2",),
    body="transformer",
    unembed="lm_head",
    layers="transformer.h",
    attn_out_proj="attn.c_proj",
    mlp_out="mlp",
    qkv_layout="fused_conv1d",
    qkv_paths=("attn.c_attn",),
    out_proj_transposed=True,
    mlp_in_paths=("mlp.c_fc",),
    mlp_down="mlp.c_proj",
    mlp_size_attr="n_inner",
    attention_attrs=(("attn.num_heads", "n_q"), ("attn.head_dim", "head_dim"), ("attn.split_size", "q_width")),
    export_layout="gpt2",
))
