"""The same game through the native engine, a TransformerBridge and nnsight gives the same metric."""

import pytest
import torch
from token_batches import token_batch
from tiny_models import build

import surgery
from surgery.backends import bridge_from_hf, nnsight_from_hf
from surgery.backends.engine import engine_for


def logprob_metric(logits, batch):
    logp = logits.log_softmax(-1)
    tgt = batch.targets.expand(logits.shape[0], -1, -1).unsqueeze(-1)
    return logp.gather(-1, tgt).squeeze(-1).mean(dim=(1, 2))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_native_bridge_and_nnsight_agree_on_head_and_mlp_games(family):
    loaded = surgery.load(build(family, seed=3))
    batch = token_batch(loaded, pad_last=False)
    players = loaded.components.heads + loaded.components.mlps
    g = torch.Generator().manual_seed(11)
    masks = torch.rand(5, len(players), generator=g) < 0.7
    masks[0] = True
    native = engine_for(loaded, players).evaluate(masks, batch, logprob_metric)
    bridge = engine_for(bridge_from_hf(loaded.model), players).evaluate(masks, batch, logprob_metric)
    nns = engine_for(nnsight_from_hf(loaded.model), players).evaluate(masks, batch, logprob_metric)
    assert (native[1:] - native[0]).abs().max() > 1e-3  # the coalitions really change the metric
    torch.testing.assert_close(bridge, native, rtol=0, atol=1e-4)
    torch.testing.assert_close(nns, native, rtol=0, atol=1e-4)


def test_backend_refuses_modes_and_players_it_cannot_run():
    loaded = surgery.load(build("llama"))
    nn_model = nnsight_from_hf(loaded.model)
    with pytest.raises(surgery.SurgeryError, match="mode='zero' only"):
        engine_for(nn_model, "heads", mode="mean")
    with pytest.raises(surgery.SurgeryError, match="heads and MLPs only"):
        engine_for(nn_model, ["L0"])
