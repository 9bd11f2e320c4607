"""PruningPlan: which heads go, which layers go, how sparse each layer gets. Plain JSON, replayable.

A plan records the model it was made for (source, weight digest, shape) and what produced it (the
values file and its game fingerprint, the policy and its settings), so `surgery prune` can refuse
a plan made for another model and anyone can rerun the step that made it.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pruning.errors import PruningError
from surgery.atomic_io import write_json_atomic
from surgery.components import parse_head_name
from surgery.errors import SurgeryError
from surgery.loading import LoadedModel

PLAN_FORMAT = "model-surgery.pruning-plan"
PLAN_VERSION = 1
REMOVAL_MODES = ("zero", "mean_compensated")
# The engine's ablation mode each removal equals (what values used for a plan should have assumed).
ABLATION_OF_REMOVAL = {"zero": "zero", "mean_compensated": "mean"}


def model_identity(loaded: LoadedModel) -> dict:
    from probes.model_game import model_digest
    comps = loaded.components
    return {"source": str(loaded.source), "digest": model_digest(loaded), "n_layers": comps.n_layers,
            "n_heads": comps.n_heads, "n_kv_heads": comps.n_kv_heads}


@dataclass
class PruningPlan:
    model: dict
    heads: list[str] = field(default_factory=list)
    layers: list[int] = field(default_factory=list)
    sparsity: dict[int, float] = field(default_factory=dict)
    sparsity_method: str | None = None
    n_m: list[int] | None = None
    head_removal: str = "physical"  # or "masked": zeroed output-projection columns, no size gain
    cornerstones: list[int] = field(default_factory=list)
    provenance: list[dict] = field(default_factory=list)
    # What a removed head leaves behind: "zero" (nothing: zero ablation) or "mean_compensated" (its
    # mean output over calibration tokens, folded into the output bias: mean ablation). `calibration`
    # says which tokens (source, digest); the export records the batch it actually used.
    removal_mode: str = "zero"
    calibration: dict | None = None
    # MLP width (pruning/width.py): intermediate channels removed per layer (original numbering) and
    # what replaces them ("mean_compensated": their calibration mean, in the down-projection bias).
    mlp_channels: dict[int, list[int]] = field(default_factory=dict)
    mlp_removal: str = "mean_compensated"
    # How dropped layers are replaced: None (nothing) or {"method": "replaceme_linear", "ridge": ...};
    # the fitted maps are weights of the export, its manifest records the calibration tokens.
    layer_repair: dict | None = None
    # How the heads that stay take over from removed ones: None (mean compensation only) or
    # {"method": "least_squares_refit", "ridge": ...}: their output-projection columns and the bias
    # refitted on calibration tokens to the dense model's attention outputs (surgery/head_repair.py).
    head_repair: dict | None = None
    # How the MLP channels that stay take over from removed ones: None (mean compensation only) or
    # {"method": "least_squares_refit", "ridge": ...}: their down-projection columns and the bias
    # refitted on calibration tokens to the unpruned layer's MLP outputs (surgery/mlp_repair.py).
    mlp_repair: dict | None = None
    # After everything else: None, or {"method": "dense_stream_refit", "ridge": ..., "attention": bool}:
    # every kept block's down-projection (and attention output projection, when "attention") refitted
    # so the pruned model's residual stream follows the dense model's on the calibration tokens
    # (surgery/stream_refit.py; needs several tokens per MLP channel).
    stream_repair: dict | None = None

    def __post_init__(self):
        self.layers = sorted(int(l) for l in self.layers)
        self.sparsity = {int(k): float(v) for k, v in self.sparsity.items()}
        self.heads = sorted(set(self.heads), key=_head_key)
        if self.head_removal not in ("physical", "masked"):
            raise PruningError(f"head_removal must be 'physical' or 'masked', got {self.head_removal!r}")
        if self.removal_mode not in REMOVAL_MODES:
            raise PruningError(f"removal_mode must be one of {REMOVAL_MODES}, got {self.removal_mode!r}")
        if self.removal_mode == "mean_compensated" and self.layers:
            raise PruningError(f"compensated removal covers heads only, but this plan also drops layers "
                               f"{self.layers}; drop layers in a plan with removal_mode='zero'")
        from pruning.sparsity import check_n_m
        self.n_m = list(check_n_m(self.n_m)) if self.n_m is not None else None
        _check_width_and_repair(self)
        for layer, ratio in self.sparsity.items():
            if not 0.0 <= ratio <= 1.0:
                raise PruningError(f"sparsity of layer {layer} is {ratio}, outside [0, 1]")
        n_layers = int(self.model.get("n_layers", 0))
        bad = [l for l in list(self.layers) + list(self.sparsity) if not 0 <= l < n_layers]
        if bad:
            raise PruningError(f"layers {bad} out of range 0..{n_layers - 1} for the plan's model")
        if n_layers and len(self.layers) >= n_layers:
            raise PruningError(f"the plan removes all {n_layers} layers; keep at least one")
        kept = set(self.layers)
        per_layer = {}
        for name in self.heads:
            layer, head = _head_key(name)
            if not 0 <= layer < n_layers or not 0 <= head < self.model["n_heads"][layer]:
                raise PruningError(f"head {name} does not exist in the plan's model")
            per_layer[layer] = per_layer.get(layer, 0) + 1
        remaining = sum(h - per_layer.get(l, 0) for l, h in enumerate(self.model["n_heads"]) if l not in kept)
        if self.heads and remaining == 0:
            raise PruningError("the plan removes every attention head of the model; keep at least one")

    def merged(self, other: "PruningPlan") -> "PruningPlan":
        """Both plans at once (heads and layers united, sparsity of `other` wins), for the same model."""
        if other.model.get("digest") != self.model.get("digest"):
            raise PruningError("cannot merge plans made for different models")
        modes = {p.removal_mode for p in (self, other) if p.heads}
        if len(modes) > 1:
            raise PruningError(f"cannot merge a plan removing heads with {sorted(modes)[0]!r} removal and one with "
                               f"{sorted(modes)[1]!r}; make both plans with the same removal_mode")
        mode = modes.pop() if modes else self.removal_mode
        return PruningPlan(self.model, self.heads + other.heads, sorted(set(self.layers) | set(other.layers)),
                           {**self.sparsity, **other.sparsity}, other.sparsity_method or self.sparsity_method,
                           other.n_m or self.n_m, self.head_removal, sorted(set(self.cornerstones) | set(other.cornerstones)),
                           self.provenance + other.provenance, mode,
                           self.calibration if self.heads else other.calibration,
                           {**self.mlp_channels, **other.mlp_channels},
                           other.mlp_removal if other.mlp_channels else self.mlp_removal,
                           other.layer_repair or self.layer_repair, other.head_repair or self.head_repair,
                           other.mlp_repair or self.mlp_repair, other.stream_repair or self.stream_repair)

    def check_model(self, loaded: LoadedModel) -> None:
        from probes.model_game import is_legacy_digest
        here = model_identity(loaded)
        if is_legacy_digest(self.model.get("digest")):
            raise PruningError(f"this plan records model {self.model.get('source')!r} by a digest of an older scheme "
                               "that cannot see the order of heads, so it cannot be checked against this model; "
                               "make the plan again with `surgery plan` (from values computed by this version)")
        if here["digest"] != self.model.get("digest"):
            raise PruningError(
                f"this plan was made for model {self.model.get('source')!r} (digest {self.model.get('digest')}), "
                f"not for {here['source']!r} (digest {here['digest']}); make a plan from values of this model")

    def summary(self) -> str:
        parts = []
        if self.heads:
            parts.append(f"remove {len(self.heads)} heads ({self.head_removal}, {self.removal_mode} removal)")
        if self.layers:
            parts.append(f"drop layers {self.layers}")
        if self.mlp_channels:
            parts.append(f"remove {sum(map(len, self.mlp_channels.values()))} MLP channels in "
                         f"{len(self.mlp_channels)} layers ({self.mlp_removal} removal)")
        if self.layer_repair:
            parts.append(f"repair dropped layers ({self.layer_repair.get('method')})")
        if self.head_repair and self.heads:
            parts.append(f"refit kept heads ({self.head_repair.get('method')})")
        if self.mlp_repair and self.mlp_channels:
            parts.append(f"refit kept MLP channels ({self.mlp_repair.get('method')})")
        if self.stream_repair:
            parts.append(f"refit every block to the dense residual stream ({self.stream_repair.get('method')})")
        if self.sparsity:
            mean = sum(self.sparsity.values()) / len(self.sparsity)
            parts.append(f"{self.sparsity_method} sparsity, mean {mean:.2f} over {len(self.sparsity)} layers")
        return "; ".join(parts) or "no change"

    def to_json_dict(self) -> dict:
        data = asdict(self)
        data["sparsity"] = {str(k): v for k, v in self.sparsity.items()}
        data["mlp_channels"] = {str(k): v for k, v in self.mlp_channels.items()}
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, **data}

    def save(self, path) -> Path:
        return write_json_atomic(path, self.to_json_dict())

    @classmethod
    def load(cls, path) -> "PruningPlan":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise PruningError(f"plan file not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise PruningError(f"{path} is not valid JSON ({err}); expected a plan written by `surgery plan`") from None
        return cls.from_json_dict(data, source=str(path))

    @classmethod
    def from_json_dict(cls, data, source: str = "plan") -> "PruningPlan":
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise PruningError(f"{source} is not a pruning plan (missing format={PLAN_FORMAT!r})")
        if data.get("version") != PLAN_VERSION:
            raise PruningError(f"{source}: plan version {data.get('version')} is not supported (expected {PLAN_VERSION})")
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if not isinstance(fields.get("model"), dict) or "n_layers" not in fields["model"]:
            raise PruningError(f"{source}: plan has no 'model' record with n_layers/n_heads")
        try:
            return cls(**fields)
        except (TypeError, ValueError, KeyError) as err:
            if isinstance(err, PruningError):
                raise
            raise PruningError(f"{source}: malformed plan ({err})") from None


def _check_width_and_repair(plan: "PruningPlan") -> None:
    """MLP channels as {layer: sorted unique ints}, a known removal, repair only with dropped layers
    (channel indices are checked against the model when the plan is applied)."""
    try:
        plan.mlp_channels = {int(k): sorted({int(c) for c in v}) for k, v in plan.mlp_channels.items() if v}
    except (TypeError, ValueError, AttributeError):
        raise PruningError("mlp_channels must map layers to lists of channel indices, e.g. {\"3\": [0, 17]}") from None
    if any(c < 0 for v in plan.mlp_channels.values() for c in v):
        raise PruningError("mlp_channels holds a negative channel index")
    if plan.mlp_removal not in REMOVAL_MODES:
        raise PruningError(f"mlp_removal must be one of {REMOVAL_MODES}, got {plan.mlp_removal!r}")
    if plan.layer_repair is not None:
        if not isinstance(plan.layer_repair, dict) or plan.layer_repair.get("method") != "replaceme_linear":
            raise PruningError(f"layer_repair must be None or {{'method': 'replaceme_linear', 'ridge': ..}}, got "
                               f"{plan.layer_repair!r}")
        if not plan.layers:
            raise PruningError("the plan asks for layer repair but drops no layers")
    if plan.stream_repair is not None and (not isinstance(plan.stream_repair, dict)
                                           or plan.stream_repair.get("method") != "dense_stream_refit"):
        raise PruningError(f"stream_repair must be None or {{'method': 'dense_stream_refit', 'ridge': ..}}, got "
                           f"{plan.stream_repair!r}")
    _check_refit_setting(plan.head_repair, "head_repair", "head repair", "removal_mode",
                         not plan.heads or plan.removal_mode == "mean_compensated")
    _check_refit_setting(plan.mlp_repair, "mlp_repair", "MLP repair", "mlp_removal",
                         not plan.mlp_channels or plan.mlp_removal == "mean_compensated")
    n_layers = int(plan.model.get("n_layers", 0))
    bad = [l for l in plan.mlp_channels if not 0 <= l < n_layers]
    if bad:
        raise PruningError(f"mlp_channels for layers {bad} out of range 0..{n_layers - 1} for the plan's model")


def _check_refit_setting(setting, field_name: str, what: str, removal_field: str, compensated: bool) -> None:
    """A refit setting is None or {"method": "least_squares_refit", "ridge": ..} on compensated removal."""
    if setting is None:
        return
    if not isinstance(setting, dict) or setting.get("method") != "least_squares_refit":
        raise PruningError(f"{field_name} must be None or {{'method': 'least_squares_refit', 'ridge': ..}}, got "
                           f"{setting!r}")
    if not compensated:
        raise PruningError(f"{what} refits on top of mean compensation; make the plan with "
                           f"{removal_field}='mean_compensated' or without {field_name}")


def values_ablation(values) -> str | None:
    """The ablation mode a Values object's game used (None when it came from no game, e.g. magnitudes)."""
    return (getattr(values, "fingerprint", None) or {}).get("ablation")


def check_removal_matches(removal_mode: str, ablation: str | None, what: str, *, allow_mismatch: bool = False) -> None:
    """Refuse (or, with allow_mismatch, warn about) values computed under another ablation than the
    removal the plan ships: zero-ablation values rank heads for a removal that leaves nothing behind."""
    expected = ABLATION_OF_REMOVAL[removal_mode]
    if ablation not in ("zero", "mean") or ablation == expected:
        return
    message = (f"{what} computed under {ablation!r} ablation, but the plan asks for {removal_mode!r} removal, "
               f"which equals {expected!r} ablation; recompute the values with mode={expected!r} or use "
               f"removal_mode={_REMOVAL_OF_ABLATION[ablation]!r}")
    if not allow_mismatch:
        raise PruningError(message)
    warnings.warn(message, stacklevel=3)


_REMOVAL_OF_ABLATION = {v: k for k, v in ABLATION_OF_REMOVAL.items()}


def _head_key(name: str) -> tuple[int, int]:
    try:
        return parse_head_name(name)
    except SurgeryError:
        raise PruningError(f"bad head name {name!r} in plan: expected 'L<layer>.H<head>'") from None
