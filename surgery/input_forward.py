"""Forward passes over edited inputs: the mechanism behind input players (tokens, spans).

A coalition of input players becomes a row of model inputs: token ids with some tokens replaced,
an attention mask that hides some tokens (position ids kept), or input embeddings with some rows
replaced. `target_logprobs` runs many such rows in one forward and, like the ablation engine,
projects to the vocabulary only at the positions that predict target tokens.
"""

from __future__ import annotations

import copy
import inspect

import torch

from surgery.batch import check_sequence_length
from surgery.errors import SurgeryError
from surgery.loading import LoadedModel

EMBEDDING_MODES = ("zero", "mean", "resample")


def check_causal(loaded: LoadedModel, what: str = "an input game") -> None:
    """Target log-probabilities need a left-to-right language model."""
    if not loaded.adapter.causal:
        raise SurgeryError(f"{what} scores a continuation with a causal language model; {loaded.source} "
                           f"({loaded.adapter.family}) is bidirectional: use a causal LM such as smollm2-135m")


def input_embeddings(loaded: LoadedModel, input_ids: torch.Tensor) -> torch.Tensor:
    """The model's input embeddings of `input_ids` ([..., T] -> [..., T, d])."""
    embed = loaded.model.get_input_embeddings() if hasattr(loaded.model, "get_input_embeddings") else None
    if embed is None:
        raise SurgeryError(f"{type(loaded.model).__name__} exposes no input embedding module "
                           "(get_input_embeddings); use removal='replace' or 'attention'")
    with torch.inference_mode():
        return embed(input_ids.to(loaded.device))


def replaced_embeddings(embeds: torch.Tensor, keep: torch.Tensor, mode: str,
                        reference: torch.Tensor | None = None) -> torch.Tensor:
    """Rows [m, T, d]: `embeds` [T, d] where keep [m, T] is True, the replacement elsewhere.

    zero: 0; mean: the mean embedding of the sequence's own tokens; resample: `reference` [T, d]
    (embeddings of another text at the same positions)."""
    if mode == "zero":
        replacement = torch.zeros_like(embeds)
    elif mode == "mean":
        replacement = embeds.mean(dim=0, keepdim=True).expand_as(embeds)
    elif mode == "resample":
        if reference is None or reference.shape != embeds.shape:
            raise SurgeryError("embedding resample needs reference embeddings of the same shape as the input; "
                               "pass a reference text at least as long as the prompt")
        replacement = reference
    else:
        raise SurgeryError(f"unknown embedding ablation {mode!r}; use one of {', '.join(EMBEDDING_MODES)}")
    keep = keep.to(embeds.device).unsqueeze(-1)
    return torch.where(keep, embeds.unsqueeze(0), replacement.unsqueeze(0))


class SharedPrefix:
    """Keys and values of the first `length` inputs that every row shares, computed once.

    When a removal keeps positions and the first removable token comes late (a chat template, a
    fixed instruction), rows differ only after it; each forward then runs the rows' suffixes
    against copies of this cache instead of recomputing the prefix for every coalition."""

    def __init__(self, loaded: LoadedModel, length: int, input_ids: torch.Tensor | None = None,
                 inputs_embeds: torch.Tensor | None = None):
        self.loaded, self.length = loaded, int(length)
        body = loaded.model.get_submodule(loaded.adapter.body)
        kwargs = ({"input_ids": input_ids[None, :length].to(loaded.device)} if input_ids is not None
                  else {"inputs_embeds": inputs_embeds[None, :length].to(loaded.device)})
        self.cache_argument = "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"
        with torch.inference_mode():
            result = body(use_cache=True, position_ids=torch.arange(length, device=loaded.device)[None], **kwargs)
        # transformers 5 names the output `cache` (reading `past_key_values` warns); older ones do not.
        cache = getattr(result, "cache", None)
        self.cache = cache if cache is not None else result.past_key_values
        if not hasattr(self.cache, "batch_repeat_interleave"):
            raise SurgeryError(f"{type(body).__name__} returns no expandable KV cache; build the game with "
                               "reuse_prefix=False")

    def for_rows(self, rows: int):
        """A private copy of the cache repeated for `rows` rows (the forward appends to it)."""
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows)
        return {self.cache_argument: cache, "use_cache": True}


def target_logprobs(loaded: LoadedModel, *, score_positions: torch.Tensor, targets: torch.Tensor,
                    input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                    attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                    logits_fn=None, prefix: SharedPrefix | None = None) -> torch.Tensor:
    """log p(targets[r, k] | row r up to score_positions[r, k]) for every row: [rows, K] (float64).

    Give input_ids [rows, L] or inputs_embeds [rows, L, d]. logits_fn(logits [rows, K, vocab],
    targets) -> [rows] replaces the log-probabilities by a user metric of the logits. prefix: the
    rows' shared first inputs, already computed (score positions must lie after it)."""
    source = input_ids if input_ids is not None else inputs_embeds
    if source is None:
        raise SurgeryError("target_logprobs needs input_ids or inputs_embeds")
    rows, length = source.shape[:2]
    check_sequence_length(loaded, length, "prompt + target length")
    device, skip = loaded.device, prefix.length if prefix is not None else 0
    if skip and int(score_positions.min()) < skip:
        raise SurgeryError("a scored position lies inside the shared prefix; build the game with reuse_prefix=False")
    kwargs = prefix.for_rows(rows) if prefix is not None else {"use_cache": False}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask.to(device)
    if position_ids is None and skip:
        position_ids = torch.arange(length).expand(rows, length)
    if position_ids is not None:
        kwargs["position_ids"] = position_ids[:, skip:].to(device)
    if input_ids is not None:
        kwargs["input_ids"] = input_ids[:, skip:].to(device)
    else:
        kwargs["inputs_embeds"] = inputs_embeds[:, skip:].to(device)
    body = loaded.model.get_submodule(loaded.adapter.body)
    with torch.inference_mode():
        result = body(**kwargs)
        hidden = result[0] if not hasattr(result, "last_hidden_state") else result.last_hidden_state
        positions = (score_positions - skip).to(device)
        picked = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        logits = loaded.model.get_submodule(loaded.adapter.unembed)(picked).float()
        targets = targets.to(device)
        if logits_fn is not None:
            return torch.as_tensor(logits_fn(logits, targets)).double().cpu()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        return torch.where(targets >= 0, logp, torch.zeros_like(logp)).double().cpu()
