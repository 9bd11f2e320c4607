"""Refit every kept block's MLP down-projection so the pruned model's residual stream follows the dense
model's (training-free, closed form, one forward of each model).

The other repairs fit locally: ReplaceMe (surgery/layer_repair.py) maps the block before a dropped span
onto that span's output on the model it was given, the MLP refit (surgery/mlp_repair.py) matches each
narrowed MLP to its own unpruned output. Errors they leave pile up along the depth, and nothing
downstream is asked to take them back. Here each block j of the pruned model, whose original index is
a (blocks a+1..b after it were dropped, b = a when none were), is asked to end where the dense model's
block b ended, y_b. Pre-LN blocks end with h = r + m, m = x W' (+ bias) the down-projection's output
from the MLP's hidden activations x, so with the pruned model's own h on the calibration tokens,

    delta = argmin sum_tokens w || [x, 1] delta - (y_b - h) ||^2 + lam ||delta_weights||^2,

added to W (and the bias, where the down-projection has one; none is added where it has none, so a
stock config stays stock). w = 1 / mean(y_b^2) per token, as in ReplaceMe (the few tokens with massive
activations would otherwise decide the fit), lam = ridge * mean diagonal of the weighted x'x. The fit
runs in flight: block j is refitted when the forward reaches it, and its corrected output is what
block j+1 sees, so every block also takes back what the blocks before it still miss.

It has kept + 1 coefficients per output and overfits with few tokens. Measured on SmolLM2-135M with
4 of 30 layers dropped (ReplaceMe) and 18% of the MLP channels removed (refitted), held-out
perplexity over dense: 1.97 without it and 2.27 with it from 2,048 calibration tokens (1.6 tokens
per coefficient), 1.64 -> 1.49 from 16,384 (13 per coefficient), 1.62 -> 1.38 from 32,768; hence
MIN_TOKENS_PER_COEFFICIENT. Post-LN blocks (BERT: h = LN(a + m)) are refused.

With attention=True each block's attention output projection is refitted first, in the same forward,
so that the block's input plus its attention output matches the dense model's at the block's own
original layer a (the MLP then starts from where the dense MLP started; the down-projection refit
above still ends the block at y_b). Same weighting and ridge. On SmolLM2 at 1.25x (2 layers dropped,
27% of the MLP channels, 35,840 tokens): held-out perplexity over dense 1.310 without it, 1.298 with
it (ridge 0.03: 1.315 / 1.301).
"""

from __future__ import annotations

from contextlib import ExitStack

import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from surgery.batch import TokenBatch, concat_batches
from surgery.errors import SurgeryError
from surgery.linear_refit import add_to_columns, append_config_record, ridge_solve
from surgery.loading import LoadedModel, load
from surgery.reference import run_body

METHOD = "dense_stream_refit"
MIN_TOKENS_PER_COEFFICIENT = 8


def stream_targets(n_dense: int, kept_layers: list[int]) -> list[int]:
    """For each block of the pruned model (kept_layers[j] its original index), the dense block whose
    output it must give: the last one before the next kept block (the model's last for the last)."""
    kept = [int(l) for l in kept_layers]
    if sorted(set(kept)) != kept or not kept or kept[0] < 0 or kept[-1] >= n_dense:
        raise SurgeryError(f"kept_layers {kept_layers} must be increasing original layer indices in 0..{n_dense - 1}")
    return [(kept[j + 1] if j + 1 < len(kept) else n_dense) - 1 for j in range(len(kept))]


def check_stream_refit(dense: LoadedModel, work: LoadedModel, kept_layers: list[int], batch: TokenBatch,
                       ridge: float) -> list[int]:
    """The dense block each pruned block must match, after refusing what cannot be fitted."""
    if ridge < 0:
        raise SurgeryError(f"ridge={ridge} must be >= 0 (a small positive value keeps the fit stable)")
    if work.adapter.mlp_post_norm or not work.adapter.mlp_down:
        raise SurgeryError(f"the stream refit needs pre-LN blocks whose output is (input + attention) + the MLP's "
                           f"down-projection output; {work.adapter.family} blocks end in a norm (or name no "
                           f"down-projection): use the layer and MLP repairs alone")
    if len(kept_layers) != work.components.n_layers:
        raise SurgeryError(f"kept_layers names {len(kept_layers)} blocks, the pruned model has "
                           f"{work.components.n_layers}")
    targets = stream_targets(dense.components.n_layers, kept_layers)
    widest = max(_inputs(_down(work, j)) for j in range(work.components.n_layers)) + 1
    tokens = int(batch.attention_mask.sum())
    if tokens < MIN_TOKENS_PER_COEFFICIENT * widest:
        raise SurgeryError(f"the stream refit solves for {widest} coefficients per output and needs at least "
                           f"{MIN_TOKENS_PER_COEFFICIENT * widest} calibration tokens ({MIN_TOKENS_PER_COEFFICIENT} "
                           f"per coefficient; with fewer it overfits), got {tokens}; give more calibration text "
                           f"(`surgery run --repair-n`, `surgery prune --calibration-n`) or leave the stream refit out")
    return targets


@torch.no_grad()
def refit_to_dense_stream(dense, work: LoadedModel, kept_layers: list[int], calibration, *,
                          ridge: float = 0.1, attention: bool = False) -> LoadedModel:
    """Refit, in place in `work`, every block's down-projection so its output follows the dense model's
    residual stream on `calibration` (a TokenBatch or several, joined). kept_layers[j]: the original
    index of work's block j. attention=True also refits each block's attention output projection to the
    dense residual stream after attention at that layer (see the module docstring). The fit record
    (tokens, ridge, per block the relative error of its output before and after; with attention, per
    block that of its post-attention stream under "attention_outputs") is appended to
    `config.surgery_stream_refit`. Returns `work`."""
    dense = load(dense)
    batch = concat_batches(calibration)
    targets = check_stream_refit(dense, work, kept_layers, batch, ridge)
    mask = batch.attention_mask.bool().to(work.device)
    wanted, wanted_mid = _dense_stream(dense, sorted(set(targets)), kept_layers if attention else [], batch)
    inputs: dict[int, torch.Tensor] = {}
    block_inputs: dict[int, torch.Tensor] = {}
    report: list[dict] = []
    attention_report: list[dict] = []

    def fit(module, x, current, y) -> tuple[torch.Tensor, float, float]:
        """Refit `module` (inputs x [B, T, k]) so current + its change follows y over the real tokens;
        (the change on every position, weighted relative error before, after)."""
        current = current[mask].double()
        y = y.to(current.device).double()
        weight = 1.0 / y.pow(2).mean(-1).clamp_min(1e-12)
        # The Gram matrix in float32: on SmolLM2 (32k tokens x 1,261 columns, 30 blocks) float64 products
        # cost minutes, and the ridge term keeps the solve far from float32's precision limit.
        delta = ridge_solve(x[mask].double(), y - current, ridge, with_bias=module.bias is not None,
                            weight=weight, gram_dtype=torch.float32)
        add_to_columns(module, torch.arange(x.shape[-1]), delta)  # every column is a kept one here
        change = x.double() @ delta[:x.shape[-1]]
        if module.bias is not None:
            change = change + delta[-1]
        scale = float((y * weight.sqrt()[:, None]).norm()) or 1.0
        error = lambda out: float(((y - out) * weight.sqrt()[:, None]).norm()) / scale  # noqa: E731
        return change, error(current), error(current + change[mask])

    def refit_attention(args, output, j):
        x_in = block_inputs.pop(j)
        change, before, after = fit(_attn_out(work, j), args[0], x_in + output,
                                    wanted_mid.pop(int(kept_layers[j])))
        attention_report.append({"block": j, "original_layer": int(kept_layers[j]),
                                 "relative_error_before": before, "relative_error_after": after})
        return output + change.to(output.dtype)

    def refit(block_output, j):
        h = block_output[0] if isinstance(block_output, tuple) else block_output
        # each dense layer is one block's target: popped, so it is freed once fitted
        change, before, after = fit(_down(work, j), inputs.pop(j), h, wanted.pop(targets[j]))
        corrected = h + change.to(h.dtype)
        report.append({"block": j, "original_layer": int(kept_layers[j]), "matches_dense_layer": targets[j],
                       "relative_error_before": before, "relative_error_after": after})
        return (corrected,) + tuple(block_output[1:]) if isinstance(block_output, tuple) else corrected

    blocks = work.adapter.blocks(work.model)
    with ExitStack() as stack:
        for j, block in enumerate(blocks):
            if attention:
                stack.enter_context(block.register_forward_pre_hook(
                    lambda m, a, kw, j=j: block_inputs.__setitem__(j, _hidden_in(a, kw)), with_kwargs=True))
                stack.enter_context(_attn_out(work, j).register_forward_hook(
                    lambda m, a, o, j=j: refit_attention(a, o, j)))
            stack.enter_context(_down(work, j).register_forward_hook(
                lambda m, a, o, j=j: inputs.__setitem__(j, a[0])))
            stack.enter_context(block.register_forward_hook(lambda m, a, o, j=j: refit(o, j)))
        run_body(work, batch)
    append_config_record(work.model.config, "surgery_stream_refit", {
        "method": METHOD, "ridge": float(ridge), "attention": bool(attention),
        "calibration_tokens": int(batch.attention_mask.sum()),
        "kept_layers": [int(l) for l in kept_layers], "blocks": report,
        **({"attention_outputs": attention_report} if attention else {})})
    return work


def _down(work: LoadedModel, j: int) -> nn.Module:
    return work.adapter.blocks(work.model)[j].get_submodule(work.adapter.mlp_down)


def _attn_out(work: LoadedModel, j: int) -> nn.Module:
    return work.adapter.blocks(work.model)[j].get_submodule(work.adapter.attn_out_proj)


def _hidden_in(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _dense_stream(dense: LoadedModel, layers: list[int], mid_layers: list[int], batch: TokenBatch
                  ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """From one dense forward, over the real tokens as [N, hidden] float32: {layer: block output} for
    `layers` and {layer: block input + attention output} for `mid_layers`."""
    seen: dict = {}
    mids: dict = {}
    block_in: dict = {}
    mask = batch.attention_mask.bool().to(dense.device)
    blocks = dense.adapter.blocks(dense.model)

    def keep(output, layer):
        h = output[0] if isinstance(output, tuple) else output
        seen[layer] = h[mask].float()

    with ExitStack() as stack:
        for layer in layers:
            stack.enter_context(blocks[layer].register_forward_hook(lambda m, a, o, layer=layer: keep(o, layer)))
        for layer in set(int(l) for l in mid_layers):
            stack.enter_context(blocks[layer].register_forward_pre_hook(
                lambda m, a, kw, layer=layer: block_in.__setitem__(layer, _hidden_in(a, kw)), with_kwargs=True))
            stack.enter_context(blocks[layer].get_submodule(dense.adapter.attn_out_proj).register_forward_hook(
                lambda m, a, o, layer=layer: mids.__setitem__(layer, (block_in.pop(layer) + o)[mask].float())))
        run_body(dense, batch.to(dense.device))
    return seen, mids


def _inputs(down: nn.Module) -> int:
    return down.weight.shape[0] if isinstance(down, Conv1D) else down.weight.shape[1]  # Conv1D: [in, out]


__all__ = ["refit_to_dense_stream", "stream_targets", "check_stream_refit", "METHOD", "MIN_TOKENS_PER_COEFFICIENT"]
