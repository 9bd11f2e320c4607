"""Speed half of benchmarks/input_values.py: coalitions per second, ours against captum, interleaved.

For one prompt, in each round and for each dtype (float32, bfloat16), in turn: our game on fresh
random coalitions, then captum's LLMAttribution with ShapleyValueSampling and with KernelShap,
each stopped after `captum_calls` model forwards (captum evaluates one coalition per forward:
LLMAttribution takes one input at a time, so perturbations_per_eval must stay 1). Times and
counts add up over the rounds, so a change of machine load hits every tool and dtype alike.
Both wall time and this process's CPU time are taken: on a machine shared with other jobs the wall
time mostly measures the scheduler, while CPU seconds per coalition measure the work (threads that
spin waiting for work count too, which costs captum's many small forwards more).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from probes.inputs import input_game

DTYPES = ("float32", "bfloat16")
CAPTUM_METHODS = ("shapley_value_sampling", "kernel_shap")


class _Enough(Exception):
    """Raised from a forward hook to stop captum once it has run the forwards we time."""


def captum_rate(loaded, prompt: str, target_ids: torch.Tensor, filler: int, method: str,
                calls: int) -> tuple[int, float, float]:
    """(forwards, wall seconds, CPU seconds) of captum's `method` on the prompt's tokens until `calls`
    forwards have run."""
    from captum.attr import KernelShap, LLMAttribution, ShapleyValueSampling, TextTokenInput

    attr_class = {"shapley_value_sampling": ShapleyValueSampling, "kernel_shap": KernelShap}[method]
    kwargs = {"n_samples": 1} if method == "shapley_value_sampling" else {"n_samples": max(16, calls)}
    count = {"n": 0}

    def hook(*_):
        count["n"] += 1
        if count["n"] >= calls:
            raise _Enough

    # captum calls model.forward (hooks on the model itself are skipped), so count at the body.
    handle = loaded.model.get_submodule(loaded.adapter.body).register_forward_hook(hook)
    inp = TextTokenInput(prompt, loaded.tokenizer, baselines=filler)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        LLMAttribution(attr_class(loaded.model), loaded.tokenizer).attribute(
            inp, target=target_ids, forward_in_tokens=False, **kwargs)
    except _Enough:
        pass
    finally:
        handle.remove()
    return count["n"], time.perf_counter() - t0, time.process_time() - c0


def ours_rate(game, coalitions: np.ndarray) -> tuple[int, float, float, np.ndarray]:
    """(coalitions evaluated, wall seconds, CPU seconds, values) of our game on coalitions it has not seen."""
    before, t0, c0 = game.n_evaluations, time.perf_counter(), time.process_time()
    values = game(coalitions)
    return game.n_evaluations - before, time.perf_counter() - t0, time.process_time() - c0, values


def speed_row(models: dict, prompt: str, target: str, *, n_ours: int, captum_calls: int, rounds: int,
              max_rows: int, seed: int = 0) -> dict:
    """Interleaved rounds of ours and captum in both dtypes on one prompt; rates, ratios, bf16 error."""
    games, filler = {}, None
    for dtype, loaded in models.items():
        filler = loaded.tokenizer(" ", add_special_tokens=False)["input_ids"][0]
        games[dtype] = input_game(loaded, prompt, target, players="tokens", removal="replace", filler=filler,
                                  max_rows=max_rows)
        games[dtype](np.random.default_rng(99).random((4, games[dtype].n_players)) < 0.5)  # warm-up, untimed
        for method in CAPTUM_METHODS:
            captum_rate(loaded, prompt, games[dtype].prepared.target, filler, method, 2)  # warm-up, untimed
    first = games[DTYPES[0]]
    totals = {key: [0, 0.0, 0.0] for key in [f"ours_{d}" for d in models] +
              [f"captum_{m}_{d}" for d in models for m in CAPTUM_METHODS]}
    values = {d: [] for d in models}
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        coalitions = rng.random((n_ours, first.n_players)) < 0.5
        for dtype, loaded in models.items():
            *measured, vals = ours_rate(games[dtype], coalitions)
            _add(totals[f"ours_{dtype}"], measured)
            values[dtype].append(vals)
            for method in CAPTUM_METHODS:
                _add(totals[f"captum_{method}_{dtype}"],
                     captum_rate(loaded, prompt, first.prepared.target, filler, method, captum_calls))
    row = {"prompt_tokens": len(first.prepared.ids), "players": first.n_players,
           "target_tokens": len(first.prepared.target), "rounds": rounds}
    for key, (count, seconds, cpu) in totals.items():
        row[f"{key}_coalitions"], row[f"{key}_per_s"], row[f"{key}_per_cpu_s"] = count, count / seconds, count / cpu
    row["ratios"] = ratios(row, list(models))
    row["ratios_cpu_time"] = ratios(row, list(models), "_per_cpu_s")
    if len(models) == 2:
        row["bf16_vs_fp32_coalition_values"] = value_difference(*(np.concatenate(values[d]) for d in DTYPES))
    return row


def _add(total: list, measured) -> None:
    for k, x in enumerate(measured):
        total[k] += x


def ratios(row: dict, dtypes: list[str], rate: str = "_per_s") -> dict:
    """Ours / captum coalitions per (wall or CPU) second: at equal dtype, and ours bf16 against captum fp32."""
    out = {}
    for method in CAPTUM_METHODS:
        for dtype in dtypes:
            out[f"equal_dtype_{dtype}_vs_{method}"] = row[f"ours_{dtype}{rate}"] / row[f"captum_{method}_{dtype}{rate}"]
        if "bfloat16" in dtypes and "float32" in dtypes:
            out[f"ours_bfloat16_vs_{method}_float32"] = (row[f"ours_bfloat16{rate}"]
                                                          / row[f"captum_{method}_float32{rate}"])
    return out


def value_difference(fp32: np.ndarray, bf16: np.ndarray) -> dict:
    """How far the bfloat16 game's coalition values are from float32's, on the same coalitions."""
    diff = bf16 - fp32
    ra, rb = np.argsort(np.argsort(fp32)), np.argsort(np.argsort(bf16))
    return {"coalitions": int(len(fp32)), "max_abs": float(np.max(np.abs(diff))),
            "rms": float(np.sqrt(np.mean(diff ** 2))), "std_over_coalitions_fp32": float(np.std(fp32)),
            "spearman": float(np.corrcoef(ra, rb)[0, 1])}


def drop_padding(loaded, prompt: str, target: str, *, n_coalitions: int, max_rows: int, seed: int = 0) -> dict:
    """Tokens fed to the model in drop mode (word players, random coalitions) with the rows forwarded
    in the estimator's order against sorted by length (what the game does): a count, not a timing."""
    game = input_game(loaded, prompt, target, players="words", removal="drop", max_rows=max_rows)
    coalitions = np.random.default_rng(seed).random((n_coalitions, game.n_players)) < 0.5
    lengths = np.array([len(r) for r in game.removal.drop_rows(coalitions)])

    def fed(order):
        chunks = [lengths[order[i:i + max_rows]] for i in range(0, len(order), max_rows)]
        return int(sum(c.max() * len(c) for c in chunks))

    unsorted, by_length = fed(np.arange(len(lengths))), fed(np.argsort(lengths, kind="stable"))
    return {"prompt_tokens": len(game.prepared.ids), "players": game.n_players, "coalitions": n_coalitions,
            "max_rows": max_rows, "real_tokens": int(lengths.sum()), "fed_tokens_in_given_order": unsorted,
            "fed_tokens_sorted_by_length": by_length, "fed_tokens_saved": 1 - by_length / unsorted}


@torch.inference_mode()
def forward_ceiling(loaded, n_tokens: int, rows: int, repeats: int = 3, seed: int = 0) -> dict:
    """The bare body forward on `rows` rows of `n_tokens` random tokens with the vocabulary projection at
    the last position only (what our game runs per forward, without estimator, game or store work):
    coalitions/s and tokens/s, median of `repeats` after a warm-up. It bounds what batching more rows
    can give ours; captum's batch-1 forwards do the same blocks plus the projection at every position."""
    body = loaded.model.get_submodule(loaded.adapter.body)
    unembed = loaded.model.get_submodule(loaded.adapter.unembed)
    ids = torch.randint(0, int(loaded.model.config.vocab_size), (rows, n_tokens),
                        generator=torch.Generator().manual_seed(seed)).to(loaded.device)
    times = []
    for run in range(repeats + 1):  # run 0 warms up
        t0 = time.perf_counter()
        hidden = body(input_ids=ids, use_cache=False).last_hidden_state
        unembed(hidden[:, -1:]).float().log_softmax(-1)
        if run:
            times.append(time.perf_counter() - t0)
    seconds = sorted(times)[len(times) // 2]
    return {"rows": rows, "tokens": n_tokens, "coalitions_per_s": rows / seconds,
            "tokens_per_s": rows * n_tokens / seconds}


def ceiling_rows(models: dict, n_tokens: int, row_counts=(8, 32)) -> dict:
    """forward_ceiling for each dtype and row count."""
    return {dtype: [forward_ceiling(loaded, n_tokens, rows) for rows in row_counts] for dtype, loaded in models.items()}
