"""Training-free repair after removing inputs of a linear layer: refit the columns that stay.

When heads go, the attention output projection loses the columns of their outputs; mean compensation
(surgery/compensation.py) puts the removed heads' average back as a bias. The heads that stay carry
part of what the removed ones did (their outputs correlate), so a least-squares refit of the kept
columns and the bias recovers more (ZipLM and LLM Surgeon update the remaining weights the same way;
here in closed form, no gradients). For every site we solve

    delta = argmin sum_tokens || [x_K, 1] delta - (y_dense - y_work) ||^2 + lam ||delta_weights||^2,

with x_K the kept inputs of the pruned model, y_dense the dense model's output of the same layer on
the same tokens, y_work the pruned layer's current output, and lam = ridge * mean diagonal of x_K'x_K
(scale-free). The bias is not shrunk: as ridge grows the refit tends to plain mean compensation,
which it therefore never does worse than on the calibration tokens.

The fit runs in flight in ONE forward of the pruned model: each site is fitted when the forward
reaches it, and its refitted output is what the next layers see, so later sites also correct the drift
that earlier removals left in the residual stream (the dense targets come from one forward of the
dense model before). Hence the calibration is one batch (join several with surgery.batch.concat_batches).

On SmolLM2-135M with the 27 heads `surgery run` removed (10%), held-out perplexity 29.92 dense: mean
compensation 33.14, refit 31.81 (96 sequences x 64 tokens, ridge 0.1); from 32 sequences 32.10; from 4
sequences (256 tokens, fewer than the 513 coefficients a layer fits) 34.19, worse than compensation,
hence the token minimum below.
"""

from __future__ import annotations

import copy
from contextlib import ExitStack

import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from surgery.batch import TokenBatch
from surgery.errors import SurgeryError
from surgery.loading import LoadedModel
from surgery.reference import run_body

# Site: (layer, module path inside the block); value: the input columns the refit may change (the
# others were removed: zeroed or cut, and stay as they are).
Sites = dict[tuple[int, str], torch.Tensor]


@torch.no_grad()
def refit_kept_inputs(dense: LoadedModel, work: LoadedModel, sites: Sites, batch: TokenBatch, *,
                      ridge: float = 0.1) -> dict[tuple[int, str], dict]:
    """Refit, in place in `work`, each site's kept columns and bias to give the dense model's output.

    dense and work must share the block layout (same layers, same site paths and output sizes).
    Returns {site: {"columns": kept count, "relative_error_before": .., "relative_error_after": ..}},
    the errors ||y_dense - y_work|| / ||y_dense|| over the batch's real tokens, before and after the
    refit (as the forward reached the site, i.e. with earlier sites already refitted).
    """
    check_refit(sites, batch, ridge)
    mask = batch.attention_mask.bool().to(work.device)
    targets = _dense_outputs(dense, sites, batch, mask)
    report: dict = {}
    blocks = work.adapter.blocks(work.model)

    def refit(module, args, output, site):
        x = args[0]
        kept = sites[site].to(x.device)
        y = targets[site].to(x.device)
        current = output[mask].double()
        delta = ridge_solve(x[mask][:, kept].double(), y - current, ridge, with_bias=module.bias is not None)
        add_to_columns(module, kept, delta)
        refitted = _linear(module, x)  # not module(x): that would run this hook again
        after = refitted[mask].double()
        scale = float(y.norm()) or 1.0
        report[site] = {"columns": int(len(kept)), "relative_error_before": float((y - current).norm()) / scale,
                        "relative_error_after": float((y - after).norm()) / scale}
        return refitted

    with ExitStack() as stack:
        for site in sites:
            module = blocks[site[0]].get_submodule(site[1])
            stack.enter_context(_no_reentry(module))
            stack.enter_context(module.register_forward_hook(lambda m, a, o, site=site: refit(m, a, o, site)))
        run_body(work, batch)
    return report


def check_refit(sites: Sites, batch: TokenBatch, ridge: float) -> None:
    """Refuse a negative ridge or fewer calibration tokens than the coefficients a site solves for."""
    if ridge < 0:
        raise SurgeryError(f"ridge={ridge} must be >= 0 (a small positive value keeps the fit stable)")
    tokens = int(batch.attention_mask.sum())
    widest = max((len(cols) + 1 for cols in sites.values()), default=0)
    if tokens < widest:
        raise SurgeryError(f"the refit needs at least {widest} calibration tokens (one per coefficient it solves for "
                           f"per output), got {tokens}; give more calibration text (more or longer sequences)")


def _dense_outputs(dense: LoadedModel, sites: Sites, batch: TokenBatch, mask: torch.Tensor) -> dict:
    seen: dict = {}
    blocks = dense.adapter.blocks(dense.model)
    with ExitStack() as stack:
        for site in sites:
            module = blocks[site[0]].get_submodule(site[1])
            stack.enter_context(module.register_forward_hook(
                lambda m, a, o, site=site: seen.__setitem__(site, o[mask.to(o.device)].double())))
        run_body(dense, batch.to(dense.device))
    return seen


def ridge_solve(x: torch.Tensor, residual: torch.Tensor, ridge: float, *, with_bias: bool,
                weight: torch.Tensor | None = None, gram_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[k (+1), out]: the (token-weighted, when `weight` is given) ridge least-squares map from the
    inputs x [tokens, k] (and a constant) to the residual; lam = ridge * mean diagonal of the Gram
    matrix, the constant's coefficient not shrunk. gram_dtype=float32 makes the big product cheap where
    the ridge keeps the solve far from float32's precision limit (the stream refit)."""
    if with_bias:
        x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], 1)
    weighted = x if weight is None else x * weight[:, None]
    gram = (x.to(gram_dtype).T @ weighted.to(gram_dtype)).to(x.dtype)
    k = gram.shape[0] - int(with_bias)
    lam = ridge * float(torch.diagonal(gram)[:k].mean()) if k else 0.0
    penalty = torch.zeros(gram.shape[0], dtype=gram.dtype, device=gram.device)
    penalty[:k] = lam
    # lstsq tolerates the rank deficiency ridge=0 meets when kept inputs are constant or duplicated.
    return torch.linalg.lstsq(gram + torch.diag(penalty), weighted.T @ residual).solution


def add_to_columns(module: nn.Module, kept: torch.Tensor, delta: torch.Tensor) -> None:
    """Add delta [len(kept) (+1), out] to the `kept` input columns of a Linear or Conv1D (and its bias)."""
    weight = module.weight
    change = delta[:len(kept)]  # [k, out]
    if isinstance(module, Conv1D):  # GPT-2 stores [in, out]
        weight[kept] += change.to(weight.dtype)
    else:
        weight[:, kept] += change.T.to(weight.dtype)
    if module.bias is not None:
        module.bias += delta[len(kept)].to(module.bias.dtype)


def _linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(module, Conv1D):
        out = x @ module.weight
        return out + module.bias if module.bias is not None else out
    return nn.functional.linear(x, module.weight, module.bias)


class _no_reentry:
    """Refuse a site module that the body calls twice per forward (the in-flight fit assumes once)."""

    def __init__(self, module: nn.Module):
        self.module, self.calls, self.handle = module, 0, None

    def __enter__(self):
        def count(m, a):
            self.calls += 1
            if self.calls > 1:
                raise SurgeryError("a refit site ran twice in one forward (shared module?); the in-flight refit "
                                   "needs each site once per forward")
        self.handle = self.module.register_forward_pre_hook(count)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        return False


def head_sites(work: LoadedModel, heads_by_layer: dict[int, list[int]]) -> Sites:
    """Sites for the attention output projections of layers that lost heads: the kept heads' columns
    (in the unpruned numbering, i.e. on a model whose removed heads are masked, not cut)."""
    comps, adapter = work.components, work.adapter
    sites: Sites = {}
    for layer, removed in sorted(heads_by_layer.items()):
        kept = [h for h in range(comps.n_heads[layer]) if h not in set(removed)]
        if not kept:
            continue
        sites[(layer, adapter.attn_out_proj)] = torch.cat(
            [torch.arange(h * comps.head_dim, (h + 1) * comps.head_dim) for h in kept])
    return sites


def restore_config_entry(config, name: str, original) -> None:
    """Set config.<name> back to what `original` (a config) holds, or remove it: a masked model's record
    would misdescribe the cut model made from it."""
    before = getattr(original, name, None)
    setattr(config, name, copy.deepcopy(before))
    if before is None:
        delattr(config, name)


def append_config_record(config, name: str, record: dict) -> None:
    """Append `record` to the list config.<name> (made if missing): one entry per refit, in order."""
    setattr(config, name, list(getattr(config, name, None) or []) + [record])


__all__ = ["refit_kept_inputs", "check_refit", "ridge_solve", "add_to_columns", "head_sites", "Sites",
           "restore_config_entry", "append_config_record"]
