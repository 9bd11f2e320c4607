from dataclasses import replace

from surgery.adapters.base import ArchitectureAdapter
from surgery.adapters.registry import register_family

# BERT-family encoders scored as masked language models (BertForMaskedLM and relatives).
# Post-LN blocks: the MLP's contribution is the output of `output.dense`, before the residual
# add and LayerNorm inside BertOutput.
ADAPTER = register_family(ArchitectureAdapter(
    family="bert",
    model_types=("bert",),
    body="bert",
    unembed="cls",
    layers="bert.encoder.layer",
    attn_out_proj="attention.output.dense",
    mlp_out="output.dense",
    qkv_layout="separate",
    qkv_paths=("attention.self.query", "attention.self.key", "attention.self.value"),
    causal=False,
    mlp_in_paths=("intermediate.dense",),
    mlp_down="output.dense",
    mlp_post_norm="output.LayerNorm",
    attention_attrs=(("attention.self.num_attention_heads", "n_q"), ("attention.self.attention_head_size", "head_dim"),
                     ("attention.self.all_head_size", "q_width")),
    export_layout="bert",
))

# RoBERTa-style models keep the same blocks under another body name and call the MLM head lm_head.
ROBERTA_ADAPTER = register_family(replace(ADAPTER, model_types=("roberta", "xlm-roberta"), body="roberta",
                                          unembed="lm_head", layers="roberta.encoder.layer"))
