from surgery.adapters.base import ArchitectureAdapter

# BERT-family encoders scored as masked language models (BertForMaskedLM and relatives).
# Post-LN blocks: the MLP's contribution is the output of `output.dense`, before the residual
# add and LayerNorm inside BertOutput.
ADAPTER = ArchitectureAdapter(
    family="bert",
    model_types=("bert", "roberta", "xlm-roberta"),
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
)
