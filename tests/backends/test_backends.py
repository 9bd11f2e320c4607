"""The TransformerBridge and nnsight backends give the HF model's numbers under any ablation mask.

Every model is built from a config in memory (no hub access): a tiny Llama with GQA (6 query heads
on 2 key/value heads) and a tiny GPT-2. References are computed on untouched deep copies of the HF
model, with ablations expressed as weight edits, so the tests check the hook site itself.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from surgery.backends import bridge_from_hf, bridge_masked_logits, nnsight_from_hf, nnsight_masked_logits
from surgery.errors import SurgeryError, UnsupportedArchitectureError

VOCAB, LAYERS = 61, 3

# The models keep transformers' default attention (sdpa), as users' models do; the bridge
# recomputes attention itself, which is why its logits match to ~1e-7 rather than bit for bit.


def _llama():
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=LAYERS,
        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64))


def _gpt2():
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=VOCAB, n_embd=48, n_layer=LAYERS, n_head=4, n_positions=64))


class Tiny:
    """One family's reference model plus both wrapped copies of it."""

    def __init__(self, family, build):
        torch.manual_seed(0)
        self.family = family
        self.hf = build().eval()
        cfg = self.hf.config
        self.n_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // self.n_heads
        self.bridge = bridge_from_hf(self.hf)
        self.nn = nnsight_from_hf(copy.deepcopy(self.hf))
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, VOCAB, (3, 9), generator=g)
        self.am = torch.ones_like(self.ids)
        self.am[1, 6:] = 0  # right padding
        self.am[2, :2] = 0  # left padding
        self.real = self.am.bool()

    def out_proj(self, model, layer):
        if self.family == "llama":
            return model.model.layers[layer].self_attn.o_proj
        return model.transformer.h[layer].attn.c_proj

    def zero_head_weights(self, model, layer, head, mean=None):
        """Ablate (layer, head) by editing weights: its z no longer reaches the residual, or reaches
        it as the constant `mean` (folded into the projection bias)."""
        proj, cols = self.out_proj(model, layer), slice(head * self.head_dim, (head + 1) * self.head_dim)
        with torch.no_grad():
            if self.family == "llama":  # Linear: weight [d_model, n_heads*head_dim]
                w = proj.weight[:, cols]
                if mean is not None:
                    if proj.bias is None:
                        proj.bias = torch.nn.Parameter(torch.zeros(proj.weight.shape[0]))
                    proj.bias += w @ mean
                proj.weight[:, cols] = 0
            else:  # Conv1D: weight [n_heads*head_dim, d_model]
                w = proj.weight[cols, :]
                if mean is not None:
                    proj.bias += mean @ w
                proj.weight[cols, :] = 0

    def zero_mlp_weights(self, model, layer):
        with torch.no_grad():
            if self.family == "llama":
                model.model.layers[layer].mlp.down_proj.weight.zero_()
            else:
                model.transformer.h[layer].mlp.c_proj.weight.zero_()
                model.transformer.h[layer].mlp.c_proj.bias.zero_()

    def hf_logits(self, model=None):
        with torch.no_grad():
            return (model or self.hf)(self.ids, attention_mask=self.am).logits

    def mean_z(self):
        """Mean over real tokens of each head's z, read with plain pre-hooks on the HF model."""
        means, handles = [], []
        for layer in range(LAYERS):
            def grab(mod, args):
                z = args[0].reshape(*args[0].shape[:-1], self.n_heads, self.head_dim)
                means.append(z[self.real].mean(0))
            handles.append(self.out_proj(self.hf, layer).register_forward_pre_hook(grab))
        try:
            self.hf_logits()
        finally:
            for h in handles:
                h.remove()
        return torch.stack(means)


BACKENDS = {
    "bridge": lambda t, *a, **k: bridge_masked_logits(t.bridge, t.ids, t.am, *a, **k),
    "nnsight": lambda t, *a, **k: nnsight_masked_logits(t.nn, t.ids, t.am, *a, **k),
}


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny(request):
    return Tiny(request.param, {"llama": _llama, "gpt2": _gpt2}[request.param])


def _coalitions(tiny, n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(LAYERS, tiny.n_heads, generator=g) > 0.4 for _ in range(n)]


def _close(a, b, real, atol):
    # Compare at real tokens: a left-padded row's pad queries see no keys, and what a fully
    # masked softmax returns there is each implementation's own choice.
    diff = (a - b).abs()[real].max().item()
    assert diff <= atol, f"max |diff| at real tokens = {diff:.3g} > {atol}"
    return diff


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_true_mask_reproduces_plain_hf_forward(tiny, backend):
    keep = torch.ones(LAYERS, tiny.n_heads, dtype=torch.bool)
    _close(BACKENDS[backend](tiny, keep), tiny.hf_logits(), tiny.real, 1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_masking_heads_equals_zeroing_their_output_projection_weights(tiny, backend):
    for keep in _coalitions(tiny, 3, seed=2):
        ref_model = copy.deepcopy(tiny.hf)
        for layer, head in (~keep).nonzero().tolist():
            tiny.zero_head_weights(ref_model, layer, head)
        _close(BACKENDS[backend](tiny, keep), tiny.hf_logits(ref_model), tiny.real, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mean_ablation_equals_folding_the_mean_into_the_projection_bias(tiny, backend):
    mean = tiny.mean_z()
    keep = _coalitions(tiny, 1, seed=3)[0]
    ref_model = copy.deepcopy(tiny.hf)
    for layer, head in (~keep).nonzero().tolist():
        tiny.zero_head_weights(ref_model, layer, head, mean=mean[layer, head])
    got = BACKENDS[backend](tiny, keep, replacement=mean)
    _close(got, tiny.hf_logits(ref_model), tiny.real, 1e-5)
    # and it is not the zero ablation
    assert (got - BACKENDS[backend](tiny, keep))[tiny.real].abs().max() > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_mlp_keep_false_equals_zeroing_the_mlp_output_weights(tiny, backend):
    keep = torch.ones(LAYERS, tiny.n_heads, dtype=torch.bool)
    mlp_keep = torch.tensor([True, False, True])
    ref_model = copy.deepcopy(tiny.hf)
    tiny.zero_mlp_weights(ref_model, 1)
    _close(BACKENDS[backend](tiny, keep, mlp_keep=mlp_keep), tiny.hf_logits(ref_model), tiny.real, 1e-5)


def test_bridge_and_nnsight_agree_under_random_coalitions(tiny):
    mean = tiny.mean_z()
    g = torch.Generator().manual_seed(4)
    for i, keep in enumerate(_coalitions(tiny, 3, seed=5)):
        mlp_keep = torch.rand(LAYERS, generator=g) > 0.3
        repl = mean if i % 2 else None
        a = BACKENDS["bridge"](tiny, keep, replacement=repl, mlp_keep=mlp_keep)
        b = BACKENDS["nnsight"](tiny, keep, replacement=repl, mlp_keep=mlp_keep)
        _close(a, b, tiny.real, 1e-4)


def test_bridge_from_hf_leaves_the_callers_model_untouched(tiny):
    # The bridge swaps submodules for its own components in place; bridge_from_hf wraps a copy.
    assert not any(type(m).__module__.startswith("transformer_lens") for m in tiny.hf.modules())
    assert any(type(m).__module__.startswith("transformer_lens") for m in tiny.bridge.modules())


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_masks_are_refused_with_the_expected_shape_in_the_message(tiny, backend):
    run = BACKENDS[backend]
    with pytest.raises(SurgeryError, match="torch.bool"):
        run(tiny, torch.ones(LAYERS, tiny.n_heads))
    # GQA: a mask over key/value heads is the classic mistake
    with pytest.raises(SurgeryError, match=rf"n_heads={tiny.n_heads}"):
        run(tiny, torch.ones(LAYERS, 2, dtype=torch.bool))
    with pytest.raises(SurgeryError, match="replacement"):
        run(tiny, torch.ones(LAYERS, tiny.n_heads, dtype=torch.bool), replacement=torch.zeros(LAYERS, tiny.n_heads))
    with pytest.raises(SurgeryError, match="mlp_keep"):
        run(tiny, torch.ones(LAYERS, tiny.n_heads, dtype=torch.bool), mlp_keep=torch.ones(LAYERS + 1, dtype=torch.bool))


def _word_tokenizer():
    """A tokenizer built in memory (nnsight's TransformersModel needs one object, never a name)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB - 1)} | {"<eos>": VOCAB - 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


def test_nnsight_transformers_model_with_in_memory_tokenizer_gives_the_same_logits(tiny):
    # What a user of nnsight.LanguageModel hands us. It left-pads and derives positions from the
    # mask; the backend passes explicit 0..T-1 positions so it still matches the plain forward.
    from nnsight.modeling.transformers import TransformersModel

    lm = TransformersModel(copy.deepcopy(tiny.hf), tokenizer=_word_tokenizer(), task="text-generation")
    keep = _coalitions(tiny, 1, seed=6)[0]
    got = nnsight_masked_logits(lm, tiny.ids, tiny.am, keep)
    _close(got, BACKENDS["nnsight"](tiny, keep), tiny.real, 0.0)


def test_bridge_with_processed_weights_is_refused(tiny):
    # enable_compatibility_mode folds/centres weights: logits shift (center_unembed) and GPT-2's
    # z loses its value bias (fold_value_biases), so zero ablation would mean something else.
    bridge = bridge_from_hf(tiny.hf, tokenizer=_word_tokenizer())
    bridge.enable_compatibility_mode()
    with pytest.raises(SurgeryError, match="processed weights"):
        bridge_masked_logits(bridge, tiny.ids, tiny.am, torch.ones(LAYERS, tiny.n_heads, dtype=torch.bool))


def test_unsupported_models_are_refused():
    keep = torch.ones(1, 1, dtype=torch.bool)
    ids = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(UnsupportedArchitectureError, match="TransformerBridge"):
        bridge_masked_logits(torch.nn.Linear(2, 2), ids, None, keep)
    with pytest.raises(UnsupportedArchitectureError, match="model_type"):
        nnsight_masked_logits(nnsight_from_hf(torch.nn.Linear(2, 2)), ids, None, keep)
    with pytest.raises(UnsupportedArchitectureError):
        nnsight_masked_logits(torch.nn.Linear(2, 2), ids, None, keep)


def test_nnsight_refuses_module_paths_that_do_not_lead_to_per_head_outputs():
    from dataclasses import replace

    from surgery.adapters import gpt2, register_family

    # Register a "gpt2" adapter pointing at the MLP's output projection (width 4*d_model): caught,
    # not silently reshaped.
    register_family(replace(gpt2.ADAPTER, attn_out_proj="mlp.c_proj"), replace=True)
    try:
        torch.manual_seed(0)
        keep = torch.ones(LAYERS, 4, dtype=torch.bool)
        keep[0, 1] = False
        with pytest.raises(SurgeryError, match="module paths"):
            nnsight_masked_logits(nnsight_from_hf(_gpt2().eval()), torch.zeros(1, 4, dtype=torch.long), None, keep)
    finally:
        register_family(gpt2.ADAPTER, replace=True)
