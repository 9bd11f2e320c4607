"""MLP width pruning: removed channels with their mean folded into the down-projection bias give the
logits of the full model with those channels held at their means, in memory and after export, for
every family; same widths export a plain checkpoint, different widths the remote-code one."""

import pytest
import torch
import transformers as tf
from token_batches import token_batch

import surgery
from surgery.engine import AblationEngine
from surgery.errors import SurgeryError
from surgery.mlp_width import channel_statistics, mask_mlp_channels, mlp_widths, remove_mlp_channels
from surgery.save import save_model, verify_export


def calibration(tiny):
    return token_batch(tiny, batch=4, seq=12, seed=7)


def scored(model, batch):
    engine = AblationEngine(model, "layers")
    return engine.logits(torch.ones(1, engine.n_players, dtype=torch.bool), batch)[0]


def held_at_mean(tiny, channels, cal, batch):
    """Logits of the unchanged model with the channels' down-projection inputs replaced by their
    calibration means, by a hook (independent of the bias folding)."""
    blocks = tiny.adapter.blocks(tiny.model)
    handles = []
    stats = channel_statistics(tiny, cal)  # of the unchanged model, before any hook
    for layer, removed in channels.items():
        mean = stats[layer]["mean"].float()
        idx = torch.tensor(removed)

        def pre(module, args, idx=idx, mean=mean):
            x = args[0].clone()
            x[..., idx] = mean[idx]
            return (x,)
        handles.append(blocks[layer].get_submodule(tiny.adapter.mlp_down).register_forward_pre_hook(pre))
    try:
        return scored(tiny, batch)
    finally:
        for h in handles:
            h.remove()


def channels_for(tiny, kind):
    width = mlp_widths(tiny)[0]
    if kind == "uniform":
        return {l: list(range(l, width, 4)) for l in range(3)}  # width/4 channels in every layer
    return {0: [1, 2, 3], 2: list(range(0, width, 2))}


@pytest.mark.parametrize("kind", ["uniform", "uneven"])
def test_removed_channels_with_compensation_equal_channels_held_at_their_mean(tiny, kind, tmp_path):
    cal, batch = calibration(tiny), token_batch(tiny)
    channels = channels_for(tiny, kind)
    expected = held_at_mean(tiny, channels, cal, batch)
    cut = remove_mlp_channels(tiny, channels, compensate_with=cal)
    masked = mask_mlp_channels(tiny, channels, compensate_with=cal)
    torch.testing.assert_close(scored(cut, batch), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(scored(masked, batch), expected, rtol=0, atol=1e-5)
    width = mlp_widths(tiny)
    assert mlp_widths(cut) == [w - len(channels.get(l, [])) for l, w in enumerate(width)]
    assert mlp_widths(tiny) == width  # the input model is untouched
    # The bias carries something: removal without compensation is measurably elsewhere.
    assert (scored(remove_mlp_channels(tiny, channels), batch) - expected).abs().max() > 1e-3
    info = save_model(cut, tmp_path / "out", manifest={})
    assert info["remote_code"] is (kind == "uneven")
    verify_export(tmp_path / "out")
    auto = tf.AutoModelForMaskedLM if tiny.adapter.family == "bert" else tf.AutoModelForCausalLM
    reloaded = auto.from_pretrained(tmp_path / "out", trust_remote_code=kind == "uneven").eval()
    torch.testing.assert_close(scored(reloaded, batch), expected, rtol=0, atol=1e-5)


def test_llama_gets_stock_mlp_biases(tiny_llama, tmp_path):
    assert tiny_llama.model.model.layers[0].mlp.down_proj.bias is None
    cut = remove_mlp_channels(tiny_llama, {0: [0, 5]}, compensate_with=calibration(tiny_llama))
    mlp = cut.model.model.layers[0].mlp
    assert cut.model.config.mlp_bias is True
    assert torch.count_nonzero(mlp.gate_proj.bias) == 0 and torch.count_nonzero(mlp.up_proj.bias) == 0
    assert torch.count_nonzero(mlp.down_proj.bias) > 0
    assert tiny_llama.model.model.layers[0].mlp.down_proj.bias is None


def test_width_and_heads_together_keep_both_per_layer_fields(tiny_llama, tmp_path):
    from surgery.cut import remove_heads, remove_layers
    cal, batch = calibration(tiny_llama), token_batch(tiny_llama)
    narrow = remove_mlp_channels(tiny_llama, {0: [1, 2], 1: [0]}, compensate_with=cal)
    both = remove_layers(remove_heads(narrow, {0: [0], 2: [5]}), [1])
    assert mlp_widths(both) == [62, 64]
    save_model(both, tmp_path / "out", manifest={})
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    torch.testing.assert_close(scored(reloaded, batch), scored(both, batch), rtol=0, atol=1e-5)


def test_bad_channels_are_refused_before_any_work(tiny_llama):
    width = mlp_widths(tiny_llama)[0]
    with pytest.raises(SurgeryError, match="out of range"):
        remove_mlp_channels(tiny_llama, {0: [width]})
    with pytest.raises(SurgeryError, match="layers 0..2"):
        remove_mlp_channels(tiny_llama, {7: [0]})
    with pytest.raises(SurgeryError, match="leaves no MLP"):
        remove_mlp_channels(tiny_llama, {0: list(range(width))})


def test_mlp_that_cannot_carry_a_bias_is_refused_in_one_line():
    model = tf.Qwen2ForCausalLM(tf.Qwen2Config(vocab_size=97, hidden_size=32, num_attention_heads=4,
                                               num_key_value_heads=2, num_hidden_layers=2, intermediate_size=64,
                                               max_position_embeddings=64)).eval()
    loaded = surgery.load(model)
    with pytest.raises(SurgeryError, match="cannot carry one") as err:
        remove_mlp_channels(loaded, {0: [1]}, compensate_with=calibration(loaded))
    assert "\n" not in str(err.value)
    remove_mlp_channels(loaded, {0: [1]})  # without compensation it works
