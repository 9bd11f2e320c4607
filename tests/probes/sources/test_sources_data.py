"""Prompts files, rewards and the synthetic example data of probes.sources."""

import json

import pytest
import torch

from probes.errors import ProbeError
from probes.sources import RewardModel
from probes.sources.data import candidate_evaluation, preference_pairs, read_records, token_evaluation
from probes.sources.synthetic import addition_evaluation, addition_sources, write_files
from tiny_tokenizers import bpe_fast


@pytest.fixture(scope="module")
def tokenizer():
    return bpe_fast()


def test_bad_lines_are_named(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{oops\n')
    with pytest.raises(ProbeError, match="p.jsonl:2 is not JSON"):
        read_records(path)
    path.write_text('{"text": "a"}\n')
    with pytest.raises(ProbeError, match='p.jsonl:1 needs a "prompt" string'):
        read_records(path)


def test_records_choose_rewards_or_preferred(tokenizer):
    records = addition_evaluation(4)
    assert candidate_evaluation(records, tokenizer).reward_name == "rewards-in-file"
    stripped = [{k: v for k, v in r.items() if k != "rewards"} for r in records]
    assert candidate_evaluation(stripped, tokenizer).reward_name == "preferred-loglik"
    lengths = candidate_evaluation(records, tokenizer, reward=lambda p, r: [float(len(x)) for x in r]).rewards
    assert lengths.shape == (4, 2) and lengths[0, 0] == len(records[0]["candidates"][0])
    with pytest.raises(ProbeError, match="returned nan"):
        candidate_evaluation(records, tokenizer, reward=lambda p, r: [float("nan")] * len(r))
    with pytest.raises(ProbeError, match='no "target"'):
        token_evaluation(records, tokenizer)


def test_synthetic_sources_are_disjoint_from_the_evaluation_and_round_trip(tmp_path, tokenizer):
    sources = addition_sources(n_pairs=12)
    held_out = {r["prompt"] for r in addition_evaluation(16)}
    assert all(r["prompt"] not in held_out for records in sources.values() for r in records)
    harmful, helpful = sources["words"][0], sources["digits"][0]
    assert harmful["chosen"].strip().isalpha() and harmful["rejected"].strip().isdigit()
    assert helpful["chosen"].strip().isdigit() and helpful["rejected"].strip().isalpha()
    paths = write_files(tmp_path, n_pairs=12, n_prompts=8)
    pairs = preference_pairs(read_records(paths[0]), tokenizer)
    assert len(pairs) == 12 and pairs[0].chosen != pairs[0].rejected
    assert len(read_records(tmp_path / "eval.jsonl")) == 8


def test_reward_model_scores_prompt_and_response(tmp_path, tokenizer):
    import transformers as tf

    torch.manual_seed(0)
    model = tf.LlamaForSequenceClassification(tf.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        num_hidden_layers=2, intermediate_size=64, num_labels=1, pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reward = RewardModel(tmp_path)
    scores = reward(["one two", "one two"], [" three", " apple banana"])
    assert len(scores) == 2 and scores[0] != scores[1]
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_labels"] = 2
    config["id2label"] = {"0": "a", "1": "b"}
    config["label2id"] = {"a": 0, "b": 1}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ProbeError, match="has 2 outputs"):
        RewardModel(tmp_path)
