"""The engine interface over a user's TransformerBridge or nnsight model.

Same masks, same `evaluate(masks, batch, metric)` / `logits(masks, batch)` as AblationEngine, so a
game can be played through any backend and the numbers compared. One forward per coalition with
full-sequence logits: these backends are for checking and interop, the native engine is the hot loop.
"""

from __future__ import annotations

from typing import Sequence

import torch

from surgery.backends.nnsight_backend import nnsight_dims, nnsight_masked_logits
from surgery.backends.transformer_lens_bridge import bridge_dims, bridge_masked_logits
from surgery.batch import TokenBatch
from surgery.components import ComponentIndex
from surgery.errors import SurgeryError, UnsupportedArchitectureError


def backend_kind(model) -> str | None:
    """'bridge', 'nnsight', or None for anything else (native models)."""
    cls_names = {c.__module__.split(".")[0] + "." + c.__name__ for c in type(model).__mro__}
    if any(n.startswith("transformer_lens.") and "Bridge" in n for n in cls_names):
        return "bridge"
    if any(n.startswith("nnsight.") for n in cls_names):
        return "nnsight"
    return None


class BackendEngine:
    def __init__(self, model, players: str | Sequence[str] = "heads", mode: str = "zero"):
        self.kind = backend_kind(model)
        if self.kind is None:
            raise UnsupportedArchitectureError(f"{type(model).__name__} is neither a TransformerBridge nor an nnsight model")
        if mode != "zero":
            raise SurgeryError(f"the {self.kind} backend supports mode='zero' only; use the native engine "
                               f"(surgery.AblationEngine on the transformers model) for {mode!r} ablation")
        self.model = model
        if self.kind == "bridge":
            n_layers, n_heads, head_dim = bridge_dims(model)
        else:
            _, n_layers, n_heads, head_dim = nnsight_dims(model)
        self.components = ComponentIndex([n_heads] * n_layers, [n_heads] * n_layers, head_dim)
        names = getattr(self.components, players) if isinstance(players, str) and players in ("heads", "mlps") \
            else list(players)
        if isinstance(players, str) and players not in ("heads", "mlps"):
            raise SurgeryError(f"the {self.kind} backend ablates 'heads' and 'mlps', got players={players!r}")
        self.players = names
        self.parsed = [self.components.parse(n) for n in names]
        bad = [n for n, c in zip(names, self.parsed) if c.kind not in ("head", "mlp")]
        if bad:
            raise SurgeryError(f"the {self.kind} backend ablates heads and MLPs only, not {bad}")

    @property
    def n_players(self) -> int:
        return len(self.players)

    def _keeps(self, mask_row: torch.Tensor):
        L = self.components.n_layers
        head_keep = torch.ones(L, self.components.n_heads[0], dtype=torch.bool)
        mlp_keep = torch.ones(L, dtype=torch.bool)
        for keep, comp in zip(mask_row.tolist(), self.parsed):
            if comp.kind == "head":
                head_keep[comp.layer, comp.head] = keep
            else:
                mlp_keep[comp.layer] = keep
        return head_keep, mlp_keep

    def logits(self, masks, batch: TokenBatch) -> torch.Tensor:
        masks = torch.as_tensor(masks)
        if masks.ndim != 2 or masks.shape[1] != self.n_players or masks.dtype != torch.bool:
            raise SurgeryError(f"mask must be bool [n_coalitions, n_players={self.n_players}], "
                               f"got {masks.dtype} {tuple(masks.shape)}")
        run = bridge_masked_logits if self.kind == "bridge" else nnsight_masked_logits
        out = []
        for row in masks:
            head_keep, mlp_keep = self._keeps(row)
            with torch.no_grad():
                full = run(self.model, batch.input_ids, batch.attention_mask, head_keep, mlp_keep=mlp_keep)
            pos = batch.score_positions.to(full.device)
            out.append(full.gather(1, pos.unsqueeze(-1).expand(-1, -1, full.shape[-1])))
        return torch.stack(out)

    def evaluate(self, masks, batch: TokenBatch, metric) -> torch.Tensor:
        return metric(self.logits(masks, batch), batch).double().cpu()


def engine_for(model, players="heads", mode: str = "zero", **settings):
    """AblationEngine for transformers models / names; BackendEngine for a TransformerBridge or nnsight model."""
    if backend_kind(model) is not None:
        if settings:
            raise SurgeryError(f"settings {sorted(settings)} apply to the native engine only")
        return BackendEngine(model, players, mode)
    from surgery.engine import AblationEngine
    return AblationEngine(model, players, mode=mode, **settings)
