"""Bad input to the data-source game: one-line errors, and nothing already computed is lost."""

import sys

import numpy as np
import pytest

pytest.importorskip("peft")

from tiny_lora import SpacedTokenizer, make_adapter, narrow_llama, random_candidates  # noqa: E402
from probes.errors import ProbeError, TooManyPlayersError  # noqa: E402
from probes.sources import CandidateEvaluation, GenerationEvaluation, source_values, sources_game  # noqa: E402
from probes.store import CoalitionStore  # noqa: E402
from surgery.errors import SurgeryError  # noqa: E402
from surgery.lora_compose import load_adapters, require_peft  # noqa: E402
from tiny_models import build  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("bad-adapters")


def evaluation():
    prompts, candidates = random_candidates()
    return CandidateEvaluation(prompts, candidates, preferred=[0] * len(prompts))


def test_adapter_of_another_base_is_refused(root):
    other_shape = make_adapter(root / "narrow", seed=0, base=narrow_llama())
    with pytest.raises(SurgeryError, match="another base model.*in_features 48 here, the adapter expects 32"):
        load_adapters(build("llama"), [other_shape])
    other_family = make_adapter(root / "gpt2", seed=0, family="gpt2", targets=("c_attn",))
    with pytest.raises(SurgeryError, match="another base model: it adapts 'transformer.h.0.attn.c_attn'"):
        load_adapters(build("llama"), [other_family])


def test_merge_needs_the_same_target_modules(root):
    qv = make_adapter(root / "qv", seed=1)
    qk = make_adapter(root / "qk", seed=2, targets=("q_proj", "k_proj"))
    with pytest.raises(SurgeryError, match="merge mode needs adapters with the same target modules.*arithmetic"):
        sources_game(load_adapters(build("llama"), [qv, qk]), evaluation(), composition="merge")
    game = sources_game(load_adapters(build("llama"), [qv, qk]), evaluation())  # arithmetic accepts them
    assert np.isfinite(game.full_value)


def test_nan_reward_is_refused(root):
    prompts, candidates = random_candidates()
    rewards = [[0.0] * len(c) for c in candidates]
    rewards[1][2] = float("nan")
    with pytest.raises(ProbeError, match="returned nan for prompt 1, candidate 2"):
        CandidateEvaluation(prompts, candidates, rewards=rewards)


def test_nan_reward_in_generation_keeps_what_was_computed(root, tmp_path):
    calls = []

    def reward(prompts, responses):
        calls.append(1)
        return [float("nan") if len(calls) == 2 else 1.0] * len(responses)

    adapters = load_adapters(build("llama"), [make_adapter(root / "g0", seed=3), make_adapter(root / "g1", seed=4)])
    prompts, _ = random_candidates()
    generation = GenerationEvaluation(prompts, ["p"] * len(prompts), reward, SpacedTokenizer(), max_new_tokens=2)
    game = sources_game(adapters, generation, store=tmp_path / "store")
    with pytest.raises(ProbeError, match="returned nan for prompt 'p'"):
        game(np.array([[True, False], [False, True]]))
    game.store.close()
    resumed = sources_game(adapters, generation, store=tmp_path / "store")
    assert len(resumed.store) == 1  # the coalition scored before the NaN
    assert resumed(np.array([[True, False], [False, True]])).tolist() == [1.0, 1.0]
    assert resumed.n_evaluations == 1  # only the refused one is computed again


def test_exact_refuses_more_sources_than_it_allows(root):
    one = make_adapter(root / "same", seed=5)
    names = [f"s{i}" for i in range(13)]
    game = sources_game(load_adapters(build("llama"), [one] * 13, names), evaluation())
    with pytest.raises(TooManyPlayersError, match="limited to 12 sources.*chain_krr"):
        source_values(game, estimator="exact")
    assert game.n_evaluations == 0


def test_without_peft_the_error_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(SurgeryError, match=r'pip install "model-surgery\[adapters\]"'):
        require_peft()
