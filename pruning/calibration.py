"""Calibration tokens for compensated removal (and Wanda): one TokenBatch plus a record of where it
came from, so the plan, the manifest and the game can be compared by digest."""

from __future__ import annotations

import os
from typing import Iterable

from pruning.errors import PruningError
from surgery.batch import TokenBatch, concat_batches

BUILTIN = "builtin"


def calibration_batch(loaded, calibration: TokenBatch | Iterable[TokenBatch] | str | os.PathLike, *, n: int = 8,
                      seq_len: int = 64, seed: int = 0) -> tuple[TokenBatch, dict]:
    """(batch, record). `calibration`: a TokenBatch, several (joined into one, as the engine's mean
    reference is one batch), a text file path, or "builtin" (the built-in documentation text); text is
    cut into n sequences of seq_len tokens chosen with `seed`."""
    from probes.model_game import batch_digest

    if isinstance(calibration, (str, os.PathLike)):
        from probes.tasks import get_task
        path = None if str(calibration) == BUILTIN else str(calibration)
        task = get_task("text", path=path, n=n, seq_len=seq_len)
        batch = task.batch(loaded, seed=seed).tokens
        record = {"source": task.settings["source"], "n": n, "seq_len": seq_len, "seed": seed}
    else:
        try:
            batch = concat_batches(calibration)
        except TypeError:
            raise PruningError(f"calibration must be a TokenBatch, a list of them, a text file path or "
                               f"{BUILTIN!r}, got {type(calibration).__name__}") from None
        record = {"source": "TokenBatch given by the caller"}
    record.update(digest=batch_digest(batch), rows=batch.size, tokens=int(batch.attention_mask.sum()))
    return batch, record
