"""Data-source game over tiny LoRA adapters: arithmetic composition, merging, values, bad input."""

import numpy as np
import pytest
import torch

pytest.importorskip("peft")

from tiny_lora import make_adapter, random_candidates  # noqa: E402
from probes.estimators import estimate  # noqa: E402
from probes.sources import CandidateEvaluation, TokenEvaluation, sources_game  # noqa: E402
from surgery.lora_compose import load_adapters  # noqa: E402
from tiny_models import build  # noqa: E402


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return [make_adapter(root / f"a{i}", seed=i) for i in range(3)]


def loaded(dirs, names=None):
    return load_adapters(build("llama"), dirs, names)


def candidates_eval(rewards=True):
    prompts, candidates = random_candidates()
    if rewards:
        table = [[float(k) for k in range(len(c))] for c in candidates]
        return CandidateEvaluation(prompts, candidates, rewards=table)
    return CandidateEvaluation(prompts, candidates, preferred=[0] * len(prompts))


def plain_table(evaluation, model):
    with torch.no_grad():
        return evaluation.logprob_table(model)


def test_empty_coalition_is_the_base_and_singleton_is_its_adapter(adapter_dirs):
    from peft import PeftModel

    evaluation = candidates_eval()
    game = sources_game(loaded(adapter_dirs), evaluation)
    base_value = evaluation.score(plain_table(evaluation, build("llama")).unsqueeze(0))[0]
    assert game.empty_value == pytest.approx(base_value, abs=1e-9)
    alone = PeftModel.from_pretrained(build("llama"), str(adapter_dirs[1])).eval()
    single = np.array([[False, True, False]])
    assert game(single)[0] == pytest.approx(evaluation.score(plain_table(evaluation, alone).unsqueeze(0))[0], abs=1e-6)
    assert game.empty_value != pytest.approx(game(single)[0], abs=1e-4)  # the adapters change something


def test_token_mode_empty_and_singleton(adapter_dirs):
    from peft import PeftModel

    prompts, candidates = random_candidates()
    evaluation = TokenEvaluation(prompts, [c[0] + c[1] for c in candidates])
    game = sources_game(loaded(adapter_dirs), evaluation)
    assert game.empty_value == pytest.approx(evaluation.merged_value(build("llama")), abs=1e-6)
    alone = PeftModel.from_pretrained(build("llama"), str(adapter_dirs[2])).eval()
    assert game(np.array([[False, False, True]]))[0] == pytest.approx(evaluation.merged_value(alone), abs=1e-5)


@pytest.mark.parametrize("rewards", [True, False])
def test_one_operation_equals_coalitions_one_by_one(adapter_dirs, rewards):
    from probes.estimators.exact import all_coalitions

    evaluation = candidates_eval(rewards)
    adapters = loaded(adapter_dirs)
    cache = evaluation.cache(adapters)
    coalitions = all_coalitions(3)
    together = evaluation.arithmetic_values(cache, torch.from_numpy(coalitions))
    for row, value in zip(coalitions, together):
        members = np.flatnonzero(row)
        by_hand = cache.adapters[members].sum(0) - (len(members) - 1) * cache.base  # sum log pi_l - (|S|-1) log pi_0
        assert evaluation.score(by_hand.unsqueeze(0))[0] == pytest.approx(value, abs=1e-9)


def test_exact_values_are_efficient_and_identical_adapters_get_equal_values(adapter_dirs):
    dirs = [adapter_dirs[0], adapter_dirs[1], adapter_dirs[1]]  # sources "b" and "c" are the same adapter
    game = sources_game(loaded(dirs, ["a", "b", "c"]), candidates_eval())
    values = estimate(game, estimator="exact")
    assert values.means.sum() == pytest.approx(game.full_value - game.empty_value, abs=1e-9)
    assert values.means[1] == pytest.approx(values.means[2], abs=1e-9)
    assert abs(values.means[0] - values.means[1]) > 1e-6


def test_merge_mode_equals_peft_merge(adapter_dirs):
    from peft import PeftModel

    evaluation = candidates_eval()
    game = sources_game(loaded(adapter_dirs), evaluation, composition="merge")
    reference = PeftModel.from_pretrained(build("llama"), str(adapter_dirs[0]), adapter_name="a0")
    reference.load_adapter(str(adapter_dirs[2]), adapter_name="a2")
    merged_model = reference.merge_and_unload(adapter_names=["a0", "a2"]).eval()
    expected = evaluation.score(plain_table(evaluation, merged_model).unsqueeze(0))[0]
    assert game(np.array([[True, False, True]]))[0] == pytest.approx(expected, abs=1e-5)
    arithmetic = sources_game(loaded(adapter_dirs), evaluation)
    assert game.empty_value == pytest.approx(arithmetic.empty_value, abs=1e-6)
    assert game(np.array([[True, False, False]]))[0] == pytest.approx(arithmetic(np.array([[True, False, False]]))[0],
                                                                      abs=1e-5)


def test_generation_decodes_the_composed_distribution(adapter_dirs):
    from peft import PeftModel

    from probes.sources import GenerationEvaluation
    from probes.sources.forward import greedy_decode, last_token_logprobs
    from tiny_lora import SpacedTokenizer

    def reward(prompts, responses):  # a reward that tells responses apart
        return [sum(int(t) * (i + 1) for i, t in enumerate(r.split())) % 101 for r in responses]

    prompts, _ = random_candidates()
    generation = GenerationEvaluation(prompts, ["p"] * len(prompts), reward, SpacedTokenizer(), max_new_tokens=3)
    game = sources_game(loaded(adapter_dirs), generation)

    def expected(model):
        with torch.no_grad():
            tokens = greedy_decode(lambda seqs: last_token_logprobs(model, seqs), prompts, 3)
        return float(np.mean(reward(None, [" ".join(map(str, t)) for t in tokens])))
    assert game.empty_value == pytest.approx(expected(build("llama")))
    alone = PeftModel.from_pretrained(build("llama"), str(adapter_dirs[0])).eval()
    assert game(np.array([[True, False, False]]))[0] == pytest.approx(expected(alone))
    merge = sources_game(loaded(adapter_dirs), generation, composition="merge")
    assert merge(np.array([[True, False, False]]))[0] == pytest.approx(expected(alone))
