"""Cheap per-head features of one batch: one forward and one backward pass, plus integrated gradients.

    feats = head_features("smollm2-135m", task_batch)      # or (TokenBatch, metric)
    feats.matrix            # [n_heads, n_features], batch-normalised, what the predictor reads
    feats.raw["ap_zero"]    # attribution patching for zero ablation, in metric units
    feats.raw["ig"]         # integrated gradients along the gate diagonal (ig_steps gate settings)

Attribution patching: the engine's float masks are gates x * g + (1 - g) * replacement, so at g = 1
d metric / d g_h = sum over tokens of <dM/dz_h, z_h - replacement_h>, the first-order estimate of
ablating head h. With zero ablation that is the gate gradient itself. For mean ablation the
replacement is the head's mean over the batch's real tokens, so
    ap_mean_h = ap_zero_h - <sum_t dM/dz_h(t), mean_h>
and both come out of the same pass: we record z_h and dM/dz_h at the output projection's input.

Integrated gradients (gate_integrated_gradients): by Owen's formula the Shapley value of a player is
the integral over t in [0, 1] of the gradient of the game's multilinear extension at (t, ..., t).
Putting every head's gate at t (a fractional model, not a random coalition) and averaging the gate
gradients over ig_steps midpoints is the cheap stand-in: all heads from one batched forward/backward
over ig_steps copies of the batch. As steps grow the sum over heads tends to v(all) - v(none), like
the values'; on SmolLM2 the path is rough near t = 0 (layers 0 and 2), so 16 steps miss the sum
while the ranking is already there. benchmarks/amortized.py compares how well it, attribution
patching and leave-one-out track precise head values (its results file holds the numbers).

The same forward runs with eager attention so the attention patterns can be read (entropy, sink,
previous-token and self attention); the backward pass gives the gradients. The metric is used with
the game's sign (loss and perplexity are negated), so a positive attribution means "helps".
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from probes.errors import ProbeError
from probes.metrics import metric_sign, smooth_metric
from surgery.batch import TokenBatch
from surgery.engine import AblationEngine
from surgery.loading import LoadedModel, load

# Columns of HeadFeatures.matrix, in order. Attribution columns are divided by the batch's RMS
# attribution (metrics differ in scale between tasks); ranks are percentiles within the batch.
HEAD_FEATURES = (
    "ap_zero", "ap_mean", "abs_ap_zero", "abs_ap_mean", "rank_ap_zero", "rank_ap_mean",
    "log_out_norm", "log_dev_norm", "log_grad_norm",
    "entropy", "entropy_scored", "max_attention", "first_token_attention", "previous_token_attention",
    "self_attention", "layer_position", "ig", "abs_ig", "rank_ig",
)
# Per-layer aggregates of the head features, for layer-value prediction.
LAYER_FEATURES = (
    "sum_ap_zero", "sum_ap_mean", "max_abs_ap_zero", "rank_sum_ap_zero", "rank_sum_ap_mean",
    "log_sum_out_norm", "mean_entropy", "mean_first_token_attention", "layer_position", "sum_ig", "rank_sum_ig",
)
# Gate settings integrated gradients average over, unless head_features is told otherwise.
IG_STEPS = 16


@dataclass
class HeadFeatures:
    """Features of every head on one batch. raw: unnormalised per-head quantities (metric units)."""

    names: list[str]
    layers: np.ndarray            # layer index of each head
    n_layers: int
    matrix: np.ndarray            # [n_heads, len(HEAD_FEATURES)]
    raw: dict[str, np.ndarray] = field(default_factory=dict)
    full_value: float = float("nan")  # signed metric of the unablated model on this batch
    feature_names: tuple[str, ...] = HEAD_FEATURES
    seconds: float = 0.0          # wall time of the forward/backward passes (attribution and ig)
    ig_steps: int = IG_STEPS

    @property
    def value_scale(self) -> float:
        """RMS of the integrated gradients over heads: the batch's unit of value (their sum tends to
        v(all) - v(none), as the Shapley values' does, so the two share a scale across metrics)."""
        return _rms(self.raw["ig"])

    @property
    def attribution_scale(self) -> float:
        """RMS of the zero-ablation attribution over heads: the batch's unit of head importance."""
        return _rms(self.raw["ap_zero"])

    def column(self, name: str) -> np.ndarray:
        return self.matrix[:, self.feature_names.index(name)]

    def layer_matrix(self) -> np.ndarray:
        """[n_layers, len(LAYER_FEATURES)]: head features summed/averaged per layer."""
        scale = self.attribution_scale
        rows = []
        for layer in range(self.n_layers):
            sel = self.layers == layer
            rows.append([
                self.raw["ap_zero"][sel].sum() / scale, self.raw["ap_mean"][sel].sum() / scale,
                np.abs(self.raw["ap_zero"][sel]).max() / scale, 0.0, 0.0,
                np.log(self.raw["out_norm"][sel].sum() + 1e-12), self.column("entropy")[sel].mean(),
                self.column("first_token_attention")[sel].mean(), layer / max(self.n_layers - 1, 1),
                # The diagonal path is shared, so a layer's IG is exactly the sum of its heads'.
                self.raw["ig"][sel].sum() / self.value_scale, 0.0,
            ])
        out = np.asarray(rows, dtype=float)
        out[:, 3], out[:, 4], out[:, 10] = _percentile(out[:, 0]), _percentile(out[:, 1]), _percentile(out[:, 9])
        return out

    def layer_attribution(self, kind: str = "ap_zero") -> np.ndarray:
        """Attribution patching of each layer's attention (all its heads at once) = sum of its heads."""
        return np.array([self.raw[kind][self.layers == layer].sum() for layer in range(self.n_layers)])

    def as_dict(self) -> dict:
        return {"names": self.names, "layers": self.layers.tolist(), "n_layers": self.n_layers,
                "feature_names": list(self.feature_names), "matrix": self.matrix.tolist(),
                "raw": {k: v.tolist() for k, v in self.raw.items()}, "full_value": self.full_value,
                "seconds": self.seconds, "ig_steps": self.ig_steps}

    @classmethod
    def from_dict(cls, data: dict) -> HeadFeatures:
        if tuple(data.get("feature_names", ())) != HEAD_FEATURES or "ig" not in data.get("raw", {}):
            raise ProbeError(f"these features have columns {data.get('feature_names')}, not this version's "
                             f"{list(HEAD_FEATURES)} (saved before integrated gradients?): recompute them with "
                             "head_features(model, batch)")
        return cls(list(data["names"]), np.asarray(data["layers"], dtype=int), int(data["n_layers"]),
                   np.asarray(data["matrix"], dtype=float), {k: np.asarray(v, dtype=float) for k, v in data["raw"].items()},
                   float(data["full_value"]), tuple(data["feature_names"]), float(data.get("seconds", 0.0)),
                   int(data.get("ig_steps", IG_STEPS)))


def resolve_batch(task, metric=None) -> tuple[TokenBatch, object]:
    """(TokenBatch, metric) from a TaskBatch (+ metric name) or a (TokenBatch, metric) pair.

    A TaskBatch without a metric name gets its natural metric, made differentiable (probes.metrics.smooth_metric)."""
    from probes.tasks import TaskBatch

    if isinstance(task, TaskBatch):
        name = metric if metric is not None else task.default_metric
        if isinstance(name, str):
            name = smooth_metric(name) if metric is None else name
        return task.tokens, task.metric(name)
    if isinstance(task, tuple) and len(task) == 2 and isinstance(task[0], TokenBatch) and callable(task[1]):
        return task
    raise TypeError(f"expected a TaskBatch or (TokenBatch, metric), got {type(task).__name__}")


def head_features(model, task, metric=None, *, ig_steps: int = IG_STEPS, max_rows: int = 64) -> HeadFeatures:
    """Features of every head of `model` on one batch (`task`: TaskBatch or (TokenBatch, metric)).

    ig_steps: gate settings the integrated gradients average over (>= 1); max_rows: sequences per
    forward of the integrated-gradients pass (bounds its memory)."""
    import time

    if int(ig_steps) < 1:
        raise ProbeError(f"ig_steps must be >= 1 (gate settings integrated gradients average over), got {ig_steps}")
    loaded = load(model)
    batch, metric = resolve_batch(task, metric)
    start = time.perf_counter()
    comps, adapter = loaded.components, loaded.adapter
    engine = AblationEngine(loaded, "heads", mode="zero")
    batch = batch.to(loaded.device)
    gates = torch.ones(1, engine.n_players, requires_grad=True, device=loaded.device)
    z, grad, attention = {}, {}, {}
    sign = metric_sign(metric)
    dtype = next(loaded.model.parameters()).dtype
    with ExitStack() as stack, _eager_attention(loaded):
        for layer, block in enumerate(adapter.blocks(loaded.model)):
            H, D = comps.n_heads[layer], comps.head_dim
            # A zero bias keeps the tensor in the graph (so its gradient exists) even for layer 0,
            # whose input depends on no gate; it changes no value.
            bias = torch.zeros(H * D, requires_grad=True, device=loaded.device, dtype=dtype)

            def head_input(module, args, layer=layer, H=H, D=D, bias=bias):
                x = args[0] + bias
                z[layer] = x.detach().view(*x.shape[:2], H, D)
                x.register_hook(lambda g, layer=layer: grad.__setitem__(layer, g.detach().view(*g.shape[:2], H, D)))
                return (x,) + tuple(args[1:])
            # Registered before the engine's own hooks, so this sees the clean (ungated) input.
            stack.enter_context(block.get_submodule(adapter.attn_out_proj).register_forward_pre_hook(head_input))
            for module in block.modules():
                stack.enter_context(module.register_forward_hook(_attention_catcher(attention, layer, H)))
        logits = engine.logits(gates, batch)
        value = sign * metric(logits, batch)
        value.sum().backward()
    ig = gate_integrated_gradients(engine, batch, metric, steps=ig_steps, sign=sign, max_rows=max_rows)
    features = _assemble(loaded, batch, gates.grad[0].detach().cpu().double().numpy(), z, grad, attention, ig)
    features.full_value = float(value.detach().sum())
    features.ig_steps = int(ig_steps)
    features.seconds = time.perf_counter() - start
    return features


def gate_integrated_gradients(engine: AblationEngine, batch: TokenBatch, metric, *, steps: int = IG_STEPS,
                              sign: float = 1.0, max_rows: int = 64) -> np.ndarray:
    """sign * (1/steps) * sum_k d metric / d gates at gates = t_k for every player, t_k = (k + 1/2) / steps.

    The midpoint rule for the integral of the gate gradient along the diagonal from "all ablated"
    to "all kept" (with the engine's ablation mode). Steps are stacked as coalitions, so a chunk of
    them is one forward and one backward; chunks keep at most max_rows sequences in memory."""
    t = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    per_chunk = max(1, max_rows // max(batch.size, 1))
    total = torch.zeros(engine.n_players, dtype=torch.float64)
    for chunk in t.split(per_chunk):
        gates = chunk[:, None].repeat(1, engine.n_players).to(engine.loaded.device).requires_grad_(True)
        value = metric(engine.logits(gates, batch), batch)
        (sign * value).sum().backward()
        total += gates.grad.detach().double().sum(0).cpu()
    return (total / steps).numpy()


def _attention_catcher(store: dict, layer: int, n_heads: int):
    """Forward hook keeping the first [B, H, T, T] tensor a block's submodules return (the pattern)."""
    def hook(module, args, output):
        if layer in store or not isinstance(output, tuple):
            return
        for item in output:
            if torch.is_tensor(item) and item.ndim == 4 and item.shape[1] == n_heads and item.shape[2] == item.shape[3]:
                store[layer] = item.detach()
                return
    return hook


@contextmanager
def _eager_attention(loaded: LoadedModel):
    """Eager attention returns its probabilities; SDPA does not. Restored afterwards."""
    model = loaded.model
    previous = getattr(model.config, "_attn_implementation", None)
    switched = False
    if previous not in (None, "eager") and hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("eager")
            switched = True
        except (ValueError, ImportError, AttributeError):
            switched = False  # no patterns then: attention columns stay 0
    try:
        yield
    finally:
        if switched:
            model.set_attn_implementation(previous)


def _out_weights(loaded: LoadedModel, layer: int) -> torch.Tensor:
    """Output projection of layer `layer` as [H, D, d_model]: head h writes z_h @ W[h]."""
    comps, adapter = loaded.components, loaded.adapter
    proj = adapter.blocks(loaded.model)[layer].get_submodule(adapter.attn_out_proj)
    weight = proj.weight.detach()
    weight = weight if adapter.out_proj_transposed else weight.T  # -> [H*D, d_model]
    return weight.reshape(comps.n_heads[layer], comps.head_dim, -1)


@torch.no_grad()
def _assemble(loaded, batch: TokenBatch, ap_zero, z, grad, attention, ig) -> HeadFeatures:
    comps = loaded.components
    real = batch.attention_mask.to(torch.bool)                     # [B, T]
    w = real.double()
    n_real = w.sum()
    names, layers, raw = [], [], {k: [] for k in ("ap_mean", "out_norm", "dev_norm", "grad_norm")}
    attn_cols = {k: [] for k in ("entropy", "entropy_scored", "max_attention", "first_token_attention",
                                 "previous_token_attention", "self_attention")}
    for layer in range(comps.n_layers):
        H = comps.n_heads[layer]
        zl, gl = z[layer].double(), grad[layer].double()          # [B, T, H, D]
        mean = (zl * w[..., None, None]).sum(dim=(0, 1)) / n_real  # [H, D], as mean ablation computes it
        start = len(names)
        names += [f"L{layer}.H{h}" for h in range(H)]
        layers += [layer] * H
        ap_zero_l = ap_zero[start:start + H]
        raw["ap_mean"] += list(ap_zero_l - (gl.sum(dim=(0, 1)) * mean).sum(-1).cpu().numpy())
        out_w = _out_weights(loaded, layer).double()
        per_token = lambda x: (torch.einsum("bthd,hde->bthe", x, out_w).norm(dim=-1) * w[..., None]).sum(dim=(0, 1)) / n_real
        raw["out_norm"] += per_token(zl).cpu().tolist()
        raw["dev_norm"] += per_token(zl - mean).cpu().tolist()
        raw["grad_norm"] += ((gl.norm(dim=-1) * w[..., None]).sum(dim=(0, 1)) / n_real).cpu().tolist()
        stats = _attention_stats(attention.get(layer), real, batch.score_positions, loaded.adapter.causal, H)
        for key in attn_cols:
            attn_cols[key] += stats[key]
    raw = {k: np.asarray(v, dtype=float) for k, v in raw.items()}
    raw["ap_zero"] = np.asarray(ap_zero, dtype=float)
    raw["ig"] = np.asarray(ig, dtype=float)
    layers = np.asarray(layers, dtype=int)
    scale, ig_scale = _rms(raw["ap_zero"]), _rms(raw["ig"])
    columns = {
        "ap_zero": raw["ap_zero"] / scale, "ap_mean": raw["ap_mean"] / scale,
        "abs_ap_zero": np.abs(raw["ap_zero"]) / scale, "abs_ap_mean": np.abs(raw["ap_mean"]) / scale,
        "rank_ap_zero": _percentile(raw["ap_zero"]), "rank_ap_mean": _percentile(raw["ap_mean"]),
        "log_out_norm": np.log(raw["out_norm"] + 1e-12), "log_dev_norm": np.log(raw["dev_norm"] + 1e-12),
        # Gradient scale depends on the metric: centre it per batch so only the profile over heads remains.
        "log_grad_norm": np.log(raw["grad_norm"] + 1e-12) - np.log(raw["grad_norm"] + 1e-12).mean(),
        **{k: np.asarray(v, dtype=float) for k, v in attn_cols.items()},
        "layer_position": layers / max(comps.n_layers - 1, 1),
        "ig": raw["ig"] / ig_scale, "abs_ig": np.abs(raw["ig"]) / ig_scale, "rank_ig": _percentile(raw["ig"]),
    }
    matrix = np.stack([columns[name] for name in HEAD_FEATURES], axis=1)
    return HeadFeatures(names, layers, comps.n_layers, matrix, raw)


def _attention_stats(pattern, real, score_positions, causal: bool, n_heads: int) -> dict[str, list[float]]:
    """Per head, averages over real query positions (that see at least two keys) of the pattern's
    normalised entropy, its largest weight, and the weight on the first, previous and own token."""
    keys = ("entropy", "entropy_scored", "max_attention", "first_token_attention", "previous_token_attention",
            "self_attention")
    if pattern is None:
        return {k: [0.0] * n_heads for k in keys}
    a = pattern.double()                                           # [B, H, Tq, Tk]
    B, H, T, _ = a.shape
    real = real.to(a.device)
    positions = torch.arange(T, device=a.device)
    visible = (positions + 1).double().expand(B, T) if causal else real.sum(1, keepdim=True).double().expand(B, T)
    queries = real & (visible >= 2)                                # [B, T]
    entropy = -(a * torch.log(a.clamp_min(1e-30))).sum(-1) / torch.log(visible.clamp_min(2))[:, None, :]
    previous = torch.zeros_like(a[..., 0])
    previous[..., 1:] = a[..., positions[1:], positions[1:] - 1]
    per_query = {"entropy": entropy, "max_attention": a.max(-1).values, "first_token_attention": a[..., 0],
                 "previous_token_attention": previous, "self_attention": a.diagonal(dim1=-2, dim2=-1)}

    def average(x, where):                                         # x [B, H, T], where [B, T]
        m = where[:, None, :].double()
        return ((x * m).sum(dim=(0, 2)) / m.sum(dim=(0, 2)).clamp_min(1)).cpu().tolist()

    out = {k: average(v, queries) for k, v in per_query.items()}
    scored = torch.zeros_like(real)
    scored.scatter_(1, score_positions.to(a.device), True)
    out["entropy_scored"] = average(entropy, scored & queries)
    return out


def _rms(x: np.ndarray) -> float:
    value = float(np.sqrt(np.mean(np.square(x)))) if len(x) else 0.0
    return value if value > 0 and np.isfinite(value) else 1.0


def _percentile(x: np.ndarray) -> np.ndarray:
    """Rank of each entry in [0, 1] (ties share their mean rank)."""
    from scipy.stats import rankdata

    x = np.asarray(x, dtype=float)
    return (rankdata(x) - 1) / max(len(x) - 1, 1)
