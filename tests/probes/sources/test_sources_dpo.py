"""Hand-written DPO and the assumption check, on the tiny Llama."""

import math

import pytest
import torch

pytest.importorskip("peft")

from tiny_lora import make_adapter, random_candidates  # noqa: E402
from probes.sources import CandidateEvaluation  # noqa: E402
from probes.sources.assumption import assumption_check  # noqa: E402
from probes.sources.dpo import PreferencePair, dpo_loss, lora_model, sequential_dpo, train_dpo  # noqa: E402
from surgery.lora_compose import load_adapters  # noqa: E402
from tiny_models import build  # noqa: E402


def pairs(seed=0, n=6):
    prompts, candidates = random_candidates(n_prompts=n, n_candidates=2, seed=seed)
    return [PreferencePair(tuple(p), tuple(c[0]), tuple(c[1])) for p, c in zip(prompts, candidates)]


def margins(model, data):
    evaluation = CandidateEvaluation([p.prompt for p in data], [[p.chosen, p.rejected] for p in data],
                                     preferred=[0] * len(data))
    with torch.no_grad():
        table = evaluation.logprob_table(model)
    return table[:, 0] - table[:, 1]


def test_dpo_loss_is_log2_at_the_reference_and_falls_with_the_margin():
    zero = torch.zeros(3)
    assert dpo_loss(zero, zero, zero, zero, beta=0.1).item() == pytest.approx(math.log(2))
    assert dpo_loss(torch.ones(3), zero, zero, zero, beta=0.1).item() < math.log(2)


def test_train_dpo_starts_at_the_base_and_raises_the_chosen_margin():
    data = pairs()
    base_margin = margins(build("llama"), data)
    model = lora_model(build("llama"), rank=4)
    losses = train_dpo(model, data, epochs=6, lr=2e-2, batch_size=3)
    assert losses[0] == pytest.approx(math.log(2), abs=0.05)  # fresh adapter = reference = base
    assert losses[-1] < losses[0]
    assert (margins(model.eval(), data) - base_margin).mean() > 0


def test_assumption_check_is_zero_for_the_adapter_itself_and_positive_otherwise(tmp_path):
    from peft import PeftModel

    dirs = [make_adapter(tmp_path / "a", seed=1), make_adapter(tmp_path / "b", seed=2)]
    adapters = load_adapters(build("llama"), dirs, ["a", "b"])
    prompts, candidates = random_candidates()
    evaluation = CandidateEvaluation(prompts, candidates, preferred=[0] * len(prompts))
    itself = PeftModel.from_pretrained(build("llama"), str(dirs[0])).eval()
    same = assumption_check(adapters, ["a"], evaluation, itself)
    assert same["kl_candidates"] == pytest.approx(0, abs=1e-6) and same["kl_per_token"] == pytest.approx(0, abs=1e-5)
    assert same["kl_candidates_to_base"] > 1e-4
    other = assumption_check(adapters, ["a", "b"], evaluation, itself)
    assert other["kl_per_token"] > 1e-4


def test_sequential_dpo_trains_every_stage():
    model, histories = sequential_dpo(build("llama"), [pairs(0), pairs(1)], epochs=2, lr=1e-2, batch_size=3)
    assert len(histories) == 2 and all(len(h) == 2 for h in histories)
    assert histories[1][0] == pytest.approx(math.log(2), abs=0.05)  # stage 2's reference is stage 1's model


def test_train_and_check_trains_the_sequential_model_and_measures_it(tmp_path):
    from probes.sources.assumption import train_and_check

    dirs = [make_adapter(tmp_path / "a", seed=1), make_adapter(tmp_path / "b", seed=2)]
    adapters = load_adapters(build("llama"), dirs, ["a", "b"])
    data = {"a": pairs(0, 3), "b": pairs(1, 3)}
    evaluation = CandidateEvaluation([p.prompt for p in data["a"]], [[p.chosen, p.rejected] for p in data["a"]],
                                     preferred=[0] * 3)
    result = train_and_check(build("llama"), adapters, ["a", "b"], data, evaluation, epochs=1, batch_size=3)
    assert len(result["losses"]) == 2 and result["kl_per_token"] > 0 and result["coalition"] == ["a", "b"]
    with pytest.raises(ValueError, match="no preference pairs for"):
        train_and_check(build("llama"), adapters, ["a", "c"], data, evaluation)
