"""What makes two games the same game: a fingerprint dict and its short, stable id.

Apart from probes/game.py so that the store (probes/store.py), which checks fingerprints, and the
game, which opens a store, do not import each other.
"""

from __future__ import annotations

import hashlib
import json
from typing import Protocol

from probes.errors import ProbeError


def fingerprint_identity(fingerprint: dict) -> dict:
    """The part of a fingerprint that says which game it is.

    "model" is how the user spelled the model (a path, `dir/`, a hub id); when the fingerprint
    carries the weights' digest ("model_digest"), the digest identifies the model and the spelling
    is only a label, so `dir`, `dir/` and `/abs/dir` of the same weights are one game."""
    if fingerprint.get("model_digest") and "model" in fingerprint:
        return {k: v for k, v in fingerprint.items() if k != "model"}
    return dict(fingerprint)


def fingerprint_id(fingerprint: dict) -> str:
    """Stable short id of a JSON-able fingerprint's identity (key order and, when the weights digest
    is present, the spelling of the model path do not matter)."""
    try:
        canonical = json.dumps(fingerprint_identity(fingerprint), sort_keys=True, separators=(",", ":"),
                               allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ProbeError(f"game fingerprint must be a JSON-able dict of plain values: {error}") from error
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class Fingerprinted(Protocol):
    """What a store needs of a game (probes.game.Game has both): its fingerprint and that one's id."""

    fingerprint: dict
    fingerprint_id: str
