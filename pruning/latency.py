"""Forward latency as users meet it: prefill of a prompt and per-token generation with the KV cache.

Both are medians over `repeats` runs after one warm-up run, on random token ids (a dense forward does
not depend on the token values), on whatever device the model sits on (CUDA timings are synchronised).
Decoding is a plain greedy loop over the cache, so it measures the model and not `generate`'s logic.
The prefill projects only the last position onto the vocabulary where the model's forward takes
`logits_to_keep` (transformers' `generate` asks for exactly that): the projection of every prompt
position is a fixed cost no user pays, and counting it would hide what pruning saves (on SmolLM2 at
128 tokens it is about a fifth of the forward). Encoders (BERT) have no generation: only prefill is
reported for them.
"""

from __future__ import annotations

import inspect
import time

import torch

from pruning.errors import PruningError
from surgery.loading import LoadedModel


@torch.inference_mode()
def measure_latency(loaded: LoadedModel, *, prompt_tokens: int = 128, new_tokens: int = 16, batch_size: int = 1,
                    repeats: int = 3, seed: int = 0) -> dict:
    """{"prefill_ms", "prefill_tokens_per_s", "decode_ms_per_token", "decode_tokens_per_s", settings...}."""
    for name, value in (("prompt_tokens", prompt_tokens), ("batch_size", batch_size), ("repeats", repeats)):
        if int(value) < 1:
            raise PruningError(f"latency: {name} must be >= 1, got {value}")
    if new_tokens < 0:
        raise PruningError(f"latency: new_tokens must be >= 0, got {new_tokens}")
    model, device = loaded.model, loaded.device
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, int(model.config.vocab_size), (batch_size, prompt_tokens), generator=generator).to(device)
    causal = loaded.adapter.causal
    last_only = last_logits_only(model) if causal else {}
    prefill, decode = [], []
    for run in range(repeats + 1):  # run 0 warms up (allocations, lazy init) and is not counted
        start = clock_now(device)
        out = model(input_ids=ids, use_cache=causal, **last_only) if causal else model(input_ids=ids)
        prefill_s = clock_now(device) - start
        decode_s = 0.0
        if causal and new_tokens:
            # transformers 5.x names the cache `cache` (argument and output); older ones past_key_values.
            name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
            cache, token = getattr(out, name), out.logits[:, -1:].argmax(-1)
            start = clock_now(device)
            for _ in range(new_tokens):
                out = model(input_ids=token, use_cache=True, **{name: cache})
                cache, token = getattr(out, name), out.logits[:, -1:].argmax(-1)
            decode_s = (clock_now(device) - start) / new_tokens
        if run:
            prefill.append(prefill_s)
            decode.append(decode_s)
    prefill_s, decode_s = median_of(prefill), median_of(decode)
    result = {"prefill_ms": 1e3 * prefill_s, "prefill_tokens_per_s": batch_size * prompt_tokens / prefill_s,
              "prompt_tokens": prompt_tokens, "batch_size": batch_size, "repeats": repeats,
              "prefill_logits": "last position" if last_only else "every position",
              "device": str(device), "threads": torch.get_num_threads()}
    if causal and new_tokens:
        result.update(decode_ms_per_token=1e3 * decode_s, decode_tokens_per_s=batch_size / decode_s,
                      new_tokens=new_tokens)
    return result


def last_logits_only(model) -> dict:
    """{"logits_to_keep": 1} where the model's forward takes it (what `generate` passes in a prefill), else {}."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def clock_now(device) -> float:
    """perf_counter after the device has finished its queued work (CUDA is asynchronous)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def median_of(values: list[float]) -> float:
    """The middle value (upper middle for an even count): robust to a run slowed by other load."""
    ordered = sorted(values)
    return ordered[len(ordered) // 2]
