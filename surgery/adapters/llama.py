from surgery.adapters.base import ArchitectureAdapter
from surgery.adapters.registry import register_family

# Llama-family decoders with grouped-query attention: several query heads read one key/value head.
ADAPTER = register_family(ArchitectureAdapter(
    family="llama",
    model_types=("llama", "qwen2", "qwen3", "mistral", "smollm3", "olmo", "olmo2"),
    body="model",
    unembed="lm_head",
    layers="model.layers",
    attn_out_proj="self_attn.o_proj",
    mlp_out="mlp",
    qkv_layout="separate",
    qkv_paths=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    kv_heads_attr="num_key_value_heads",
    attn_bias_attr="attention_bias",
    mlp_in_paths=("mlp.gate_proj", "mlp.up_proj"),
    mlp_down="mlp.down_proj",
    mlp_bias_attr="mlp_bias",
    attention_attrs=(("self_attn.num_key_value_groups", "kv_groups"), ("self_attn.head_dim", "head_dim")),
    export_layout="llama",
))
