"""AblationEngine: many coalitions of components, one batched forward, logits only where scored."""

from __future__ import annotations

import hashlib
from contextlib import ExitStack, contextmanager
from typing import Callable, Sequence

import torch

from surgery import hooks
from surgery.batch import TokenBatch
from surgery.errors import SurgeryError
from surgery.loading import LoadedModel, load
from surgery.players import resolve_players
from surgery.reference import SiteValues, record_sites, run_body

MODES = ("zero", "mean", "resample")
IGNORE_TARGET = -100  # a scored position without a target (padding of ragged position lists)
Metric = Callable[[torch.Tensor, TokenBatch], torch.Tensor]


class AblationEngine:
    """Evaluate coalitions of model components under ablation.

    masks: [n_coalitions, n_players], True = the player is present, False = ablated. Float masks in
    [0, 1] act as gates (differentiable; used by gradient-based importance).

    mode:
      zero      ablated sites output 0 (heads: their slice of the output-projection input).
      mean      ablated sites output their mean over the real tokens of `reference` (default: the
                batch being evaluated); computed once per reference batch.
      resample  ablated sites take their activation on another input: `resample_source` (same shape
                as the evaluated batch), by default the evaluated batch rolled by one row.
    A layer player skips its block (the residual passes through; mean/resample add the mean/other
    block update instead); an MLP player removes (or replaces) the MLP's contribution.

    max_rows bounds memory: at most max_rows = coalitions x inputs rows per forward.
    reuse_prefix: blocks below the first ablated layer of a chunk run once on the clean inputs.
    """

    def __init__(self, model, players: str | Sequence = "heads", mode: str = "zero",
                 reference: TokenBatch | None = None, resample_source: TokenBatch | None = None,
                 max_rows: int = 64, reuse_prefix: bool = True):
        if mode not in MODES:
            raise SurgeryError(f"unknown ablation mode {mode!r}: use one of {', '.join(MODES)}")
        if max_rows < 1:
            raise SurgeryError(f"max_rows must be >= 1, got {max_rows}")
        self.loaded: LoadedModel = load(model)
        self.layout = resolve_players(self.loaded.components, players)
        self.mode = mode
        # Private copies: a caller who edits their batch in place after building the engine must not
        # leave the engine with replacement values of the old tokens (or with a changed reference).
        self.reference = _copied(reference)
        self.resample_source = _copied(resample_source)
        self.max_rows = max_rows
        self.reuse_prefix = reuse_prefix
        self._first_layer = self.layout.first_layer_of()
        self._site_cache: tuple[tuple, SiteValues] | None = None

    @property
    def players(self) -> list[str]:
        return list(self.layout.names)

    @property
    def n_players(self) -> int:
        return self.layout.n_players

    @property
    def vocab_size(self) -> int:
        """Rows of the vocabulary projection (padded vocabularies included), else the config's vocab_size."""
        model = self.loaded.model
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        weight = getattr(out, "weight", None)
        if weight is not None and weight.ndim == 2:
            return int(weight.shape[0])
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        return int(config.vocab_size)

    # ----------------------------------------------------------------------------------- checks
    def check_masks(self, masks) -> torch.Tensor:
        masks = torch.as_tensor(masks)
        if masks.ndim == 1:
            masks = masks.unsqueeze(0)
        if masks.ndim != 2 or masks.shape[1] != self.n_players:
            raise SurgeryError(f"mask must have shape [n_coalitions, n_players={self.n_players}], "
                               f"got {tuple(masks.shape)}")
        if masks.shape[0] == 0:
            raise SurgeryError("mask has no coalitions (shape [0, n_players])")
        if masks.dtype != torch.bool and not masks.is_floating_point():
            raise SurgeryError(f"mask dtype must be bool (True = keep) or float gates in [0, 1], got {masks.dtype}")
        if masks.is_floating_point():
            values = masks.detach()
            if not torch.isfinite(values).all():  # NaN compares False with both bounds below
                raise SurgeryError("float mask (gates) holds NaN or infinite entries; gates must lie in [0, 1]")
            if values.min() < 0 or values.max() > 1:
                raise SurgeryError("float mask (gates) must lie in [0, 1]")
        return masks.to(self.loaded.device)

    def check_batch(self, batch: TokenBatch) -> TokenBatch:
        """Token ids and targets must be ids of this model's vocabulary (-100 marks a target-less position).

        An id out of range either crashes deep inside the forward or, for a negative target that a
        metric clamps to 0, silently scores token 0; refuse it by name instead.
        """
        if not isinstance(batch, TokenBatch):
            raise SurgeryError(f"expected a TokenBatch, got {type(batch).__name__}")
        vocab = self.vocab_size
        ids = batch.input_ids
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise SurgeryError(f"input_ids must be token ids in [0, {vocab - 1}] for this model, got range "
                               f"[{int(ids.min())}, {int(ids.max())}]")
        if batch.targets is not None:
            real = batch.targets[batch.targets != IGNORE_TARGET]
            if real.numel() and (int(real.min()) < 0 or int(real.max()) >= vocab):
                raise SurgeryError(f"targets must be token ids in [0, {vocab - 1}] (or {IGNORE_TARGET} for no target), "
                                   f"got range [{int(real.min())}, {int(real.max())}]")
        return batch.to(self.loaded.device)

    # ------------------------------------------------------------------------------ replacements
    def _replacements(self, batch: TokenBatch) -> SiteValues | None:
        if self.mode == "zero":
            return None
        if self.mode == "mean":
            source = self.reference or batch
        else:
            source = self.resample_source or _rolled(batch)
            if source.input_ids.shape != batch.input_ids.shape:
                raise SurgeryError(f"resample_source shape {tuple(source.input_ids.shape)} must equal the "
                                   f"evaluated batch shape {tuple(batch.input_ids.shape)}")
        key = (self.mode, _content_key(source))  # by content: an edited batch is another source
        if self._site_cache is None or self._site_cache[0] != key:
            values = record_sites(self.loaded, self.layout, source, reduce_mean=self.mode == "mean")
            self._site_cache = (key, values)
        return self._site_cache[1]

    # ---------------------------------------------------------------------------------- forward
    def first_ablated_layer(self, masks: torch.Tensor) -> torch.Tensor:
        """Per coalition, the lowest layer holding an ablated player (n_layers if none)."""
        if masks.requires_grad:  # gates under differentiation are live sites even at 1
            ablated = torch.ones_like(masks, dtype=torch.bool)
        else:
            ablated = ~masks if masks.dtype == torch.bool else masks < 1
        return first_ablated_layer(ablated, self._first_layer.to(masks.device), self.loaded.components.n_layers)

    def _chunk_logits(self, masks: torch.Tensor, batch: TokenBatch, replacements) -> torch.Tensor:
        """Logits at the scored positions for c coalitions: [c, B, P, vocab]."""
        c, B = masks.shape[0], batch.size
        keeps = hooks.keep_tensors(self.layout, masks)
        n_layers = self.loaded.components.n_layers
        first = min(keeps) if keeps else n_layers
        with ExitStack() as stack:
            if first >= n_layers:  # every coalition of the chunk is the full model
                hidden = run_body(self.loaded, batch)
            elif self.reuse_prefix:
                hooks.install(stack, self.loaded, keeps, c, B, replacements, expand_from=first)
                hidden = run_body(self.loaded, batch)
            else:
                hooks.install(stack, self.loaded, keeps, c, B, replacements, expand_from=None)
                hidden = run_body(self.loaded, repeat_batch(batch, c))
        positions = batch.score_positions.to(hidden.device)
        rows = hidden.shape[0]
        positions = positions.repeat(rows // B, 1)
        picked = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        logits = self.loaded.model.get_submodule(self.loaded.adapter.unembed)(picked)
        logits = logits.view(rows // B, B, *logits.shape[1:])
        return logits.expand(c, *logits.shape[1:]) if rows == B and c > 1 else logits

    def _chunks(self, masks: torch.Tensor, batch: TokenBatch):
        """Yield (indices, mask chunk), grouping coalitions that share their first ablated layer."""
        per_chunk = max(1, self.max_rows // batch.size)
        order = chunk_order(self.first_ablated_layer(masks))
        for start in range(0, len(order), per_chunk):
            idx = order[start:start + per_chunk]
            yield idx, masks[idx]

    def evaluate(self, masks, batch: TokenBatch, metric: Metric, progress: Callable[[int], None] | None = None
                 ) -> torch.Tensor:
        """metric(logits [c, B, P, vocab], batch) -> [c]; returns [n_coalitions] values (float64)."""
        masks = self.check_masks(masks)
        batch = self.check_batch(batch)
        out = torch.empty(masks.shape[0], dtype=torch.float64)
        replacements = self._replacements(batch)
        with _grad_mode(masks.requires_grad):
            for idx, chunk in self._chunks(masks, batch):
                values = metric(self._chunk_logits(chunk, batch, replacements), batch)
                if values.shape != (chunk.shape[0],):
                    raise SurgeryError(f"metric returned shape {tuple(values.shape)}, expected ({chunk.shape[0]},)")
                out[idx.cpu()] = values.detach().double().cpu()
                if progress:
                    progress(len(idx))
        return out

    def logits(self, masks, batch: TokenBatch) -> torch.Tensor:
        """Logits at the scored positions, [n_coalitions, B, P, vocab]. Differentiable for float masks."""
        masks = self.check_masks(masks)
        batch = self.check_batch(batch)
        replacements = self._replacements(batch)
        parts, order = [], []
        with _grad_mode(masks.requires_grad):
            for idx, chunk in self._chunks(masks, batch):
                parts.append(self._chunk_logits(chunk, batch, replacements))
                order.append(idx)
        result = torch.cat(parts)
        return result[torch.argsort(torch.cat(order))]

    @contextmanager
    def ablated(self, masks, batch: TokenBatch):
        """Hooks for a free-form forward: inside, call the model on `repeat_batch(batch, n)`
        (inputs repeated per coalition, coalition-major) and read any output you like."""
        masks = self.check_masks(masks)
        replacements = self._replacements(batch.to(self.loaded.device))
        with ExitStack() as stack:
            hooks.install(stack, self.loaded, hooks.keep_tensors(self.layout, masks), masks.shape[0], batch.size,
                          replacements, expand_from=None)
            yield



def first_ablated_layer(ablated: torch.Tensor, first_layer: torch.Tensor, n_layers: int) -> torch.Tensor:
    """Per coalition (rows of `ablated` [m, n_players], True = absent), the lowest layer holding an
    absent player, given each player's first layer; n_layers when none is absent. Model-free, so a
    driver that never loads the model (probes.distributed) plans chunks exactly as the engine does."""
    first = first_layer.expand_as(ablated)
    return torch.where(ablated, first, torch.full_like(first, n_layers)).min(dim=1).values


def chunk_order(first_ablated: torch.Tensor) -> torch.Tensor:
    """The order in which the engine evaluates coalitions: by first ablated layer, descending, stable,
    so coalitions that leave the same lower layers untouched run in the same chunks."""
    return torch.argsort(first_ablated, descending=True, stable=True)


def leave_one_out_masks(n_players: int, *, with_empty: bool = False) -> torch.Tensor:
    """Row 0: every player present; (row 1: none, if with_empty); then one row per player without it."""
    eye = torch.eye(n_players, dtype=torch.bool)
    rows = [torch.ones(1, n_players, dtype=torch.bool)]
    if with_empty:
        rows.append(torch.zeros(1, n_players, dtype=torch.bool))
    return torch.cat(rows + [~eye])


def _grad_mode(needed: bool):
    return torch.enable_grad() if needed else torch.inference_mode()


def repeat_batch(batch: TokenBatch, n: int) -> TokenBatch:
    """The batch repeated n times, coalition-major (row = copy * B + input), as the hooks expect."""
    rep = lambda t: None if t is None else t.repeat(n, *([1] * (t.ndim - 1)))
    return TokenBatch(rep(batch.input_ids), rep(batch.attention_mask), rep(batch.score_positions), rep(batch.targets))


def _copied(batch: TokenBatch | None) -> TokenBatch | None:
    if batch is None:
        return None
    copy = lambda t: None if t is None else t.detach().clone()
    return TokenBatch(copy(batch.input_ids), copy(batch.attention_mask), copy(batch.score_positions),
                      copy(batch.targets))


def _content_key(batch: TokenBatch) -> tuple:
    """What the replacement values depend on: the tokens and which of them are real (a few KB to hash)."""
    h = hashlib.sha256()
    for t in (batch.input_ids, batch.attention_mask):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu", torch.long).contiguous().numpy().tobytes())
    return tuple(batch.input_ids.shape), h.hexdigest()


def _rolled(batch: TokenBatch) -> TokenBatch:
    if batch.size < 2:
        raise SurgeryError("resample ablation needs at least 2 inputs in the batch (or pass resample_source=)")
    roll = lambda t: torch.roll(t, 1, dims=0)
    return TokenBatch(roll(batch.input_ids), roll(batch.attention_mask), roll(batch.score_positions))
