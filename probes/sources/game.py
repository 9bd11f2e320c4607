"""The data-source game: players are LoRA adapters (one per fine-tuning data source), a coalition's model
is composed from them, and its value is what the evaluation says (expected reward, log-likelihood).

It is a plain probes.Game, so exact Shapley values, every estimator, the coalition store and resume all
apply unchanged. Arithmetic composition reads n + 1 models' log-probabilities once (lazily, on the
first coalitions that are not in the store) and scores each block of coalitions in one tensor operation;
merge composition runs one forward pass per coalition.
"""

from __future__ import annotations

from os import PathLike

import numpy as np
import torch

from probes.errors import ProbeError
from probes.game import Game
from surgery.lora_compose import AdapterSet, check_same_targets, merged

COMPOSITIONS = ("arithmetic", "merge")
GAME_KIND = "data-sources"


def sources_fingerprint(adapters: AdapterSet, evaluation, composition: str, base: str, base_digest: str | None) -> dict:
    """What makes two data-source games the same game: base weights, adapter files, composition, evaluation."""
    return {"kind": GAME_KIND, "model": base, "model_digest": base_digest, "adapters": list(adapters.digests),
            "composition": composition, "evaluation": evaluation.kind, "evaluation_digest": evaluation.digest(),
            "reward": evaluation.reward_name}


class _ArithmeticValues:
    """Value function of arithmetic composition: the n + 1 log-probability tables are read on first use."""

    def __init__(self, adapters: AdapterSet, evaluation) -> None:
        self.adapters, self.evaluation, self.cache = adapters, evaluation, None

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        if self.cache is None:
            self.cache = self.evaluation.cache(self.adapters)
        return self.evaluation.arithmetic_values(self.cache, torch.from_numpy(coalitions))


class _MergedValues:
    """Value function of weight-space merging: one merged model and one pass of the evaluation per coalition."""

    def __init__(self, adapters: AdapterSet, evaluation) -> None:
        self.adapters, self.evaluation = adapters, evaluation

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        values = []
        for row in coalitions:
            members = [name for name, present in zip(self.adapters.names, row) if present]
            with merged(self.adapters, members) as model:
                values.append(self.evaluation.merged_value(model))
        return np.asarray(values)


def sources_game(adapters: AdapterSet, evaluation, *, composition: str = "arithmetic", base: str = "base",
                 base_digest: str | None = None, store: str | PathLike | None = None,
                 batch_size: int | None = None) -> Game:
    """A Game whose players are `adapters.names`.

    evaluation: a CandidateEvaluation, TokenEvaluation or GenerationEvaluation (probes.sources).
    composition: "arithmetic" (log pi_S = sum_{l in S} log pi_l - (|S|-1) log pi_0, the default) or "merge"
        (base weights + the sum of the members' LoRA deltas; needs adapters with the same target modules).
    base, base_digest: the base model's name and weights digest (probes.model_game.model_digest), recorded in
        the fingerprint so a store is never reused with other weights.
    store: directory streaming every evaluated coalition (resumable).
    batch_size: coalitions per value-function call; merge and generation modes default to 1, so every
        coalition reaches the store the moment it is computed."""
    if composition not in COMPOSITIONS:
        raise ProbeError(f"unknown composition {composition!r}; choose one of {list(COMPOSITIONS)}")
    if composition == "merge":
        check_same_targets(adapters)
    slow = composition == "merge" or evaluation.kind == "generation"
    if evaluation.kind == "generation":
        value_function = evaluation.value_function(adapters, composition)
    elif composition == "merge":
        value_function = _MergedValues(adapters, evaluation)
    else:
        value_function = _ArithmeticValues(adapters, evaluation)
    fingerprint = sources_fingerprint(adapters, evaluation, composition, base, base_digest)
    return Game(adapters.names, value_function, fingerprint, batch_size=batch_size or (1 if slow else None),
                store=store)
