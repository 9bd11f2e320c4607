"""A model family that model-surgery does not ship, added from this one file.

"renamed_phi" is transformers' Phi under a new model_type: its module paths differ from every
built-in family (output projection `self_attn.dense`, MLP `fc1`/`fc2`, final norm inside the body),
so engine, cut and export can only work if they follow the adapter. The file registers the model
with transformers' Auto classes (so an export reloads by name) and the adapter with surgery.
"""

from __future__ import annotations

import transformers as tf

from surgery import ArchitectureAdapter, register_family


class RenamedPhiConfig(tf.PhiConfig):
    model_type = "renamed_phi"


class RenamedPhiForCausalLM(tf.PhiForCausalLM):
    config_class = RenamedPhiConfig


tf.AutoConfig.register("renamed_phi", RenamedPhiConfig, exist_ok=True)
tf.AutoModelForCausalLM.register(RenamedPhiConfig, RenamedPhiForCausalLM, exist_ok=True)

ADAPTER = register_family(ArchitectureAdapter(
    family="renamed_phi",
    model_types=("renamed_phi",),
    body="model",
    unembed="lm_head",
    layers="model.layers",
    attn_out_proj="self_attn.dense",
    mlp_out="mlp",
    qkv_layout="separate",
    qkv_paths=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    kv_heads_attr="num_key_value_heads",
    mlp_in_paths=("mlp.fc1",),
    mlp_down="mlp.fc2",
    attention_attrs=(("self_attn.num_key_value_groups", "kv_groups"), ("self_attn.head_dim", "head_dim")),
), replace=True)  # replace: a re-import (pytest re-collection) registers the same family again
