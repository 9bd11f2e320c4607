"""Append-only on-disk store of evaluated coalitions, keyed by the game fingerprint.

Layout of a store directory (plain files, readable with `cat` and `jq`):

    header.json     {"format", "version", "fingerprint", "fingerprint_id", "n_players"}
    values.jsonl    one record per line: {"c": packed coalition as hex, "v": value, "crc": crc32}

Why this shape: model evaluations are the expensive thing in this project, so every chunk is
appended and flushed (and fsynced) the moment the value function returns it. A crash can only
tear the final line; each record carries a checksum, so on reopening a torn or garbled *last*
record is dropped (and cut from the file) while damage anywhere else is reported, never guessed
around. Opening the directory with another game's fingerprint is refused, naming both games.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from probes.errors import FingerprintMismatchError, ProbeError, StoreCorruptError
from probes.game import fingerprint_id

if TYPE_CHECKING:
    from probes.game import Game

STORE_FORMAT = "model-surgery.coalition-store"
STORE_VERSION = 1
HEADER = "header.json"
LOG = "values.jsonl"


def _record_checksum(coalition_hex: str, value_repr: str) -> str:
    return format(zlib.crc32(f"{coalition_hex}|{value_repr}".encode()), "08x")


def _describe(fingerprint: dict) -> str:
    shown = {k: v for k, v in fingerprint.items() if k != "players"}
    players = fingerprint.get("players", [])
    return f"{shown} with {len(players)} players"


class CoalitionStore:
    """Evaluated coalitions of one game on disk; use `CoalitionStore.open(path, game)`."""

    def __init__(self, path: Path, fingerprint: dict, values: dict[bytes, float], durable: bool) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.fingerprint_id = fingerprint_id(fingerprint)
        self.n_players = len(fingerprint["players"])
        self._values = values
        self.durable = durable
        self.dropped_torn_record = False

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | PathLike, game: Game | dict, *, durable: bool = True) -> CoalitionStore:
        """Open (or create) the store at `path` for `game` (a Game or its full fingerprint dict).

        durable: fsync after every appended chunk; turn off only for throwaway runs.
        """
        fingerprint = game if isinstance(game, dict) else game.fingerprint
        if "players" not in fingerprint:
            raise ProbeError("a store fingerprint must include the player names under 'players'")
        path = Path(path)
        header_path = path / HEADER
        if header_path.exists():
            try:
                header = json.loads(header_path.read_text())
            except json.JSONDecodeError as error:
                raise StoreCorruptError(f"store header {header_path} is not valid JSON: {error}") from error
            if header.get("format") != STORE_FORMAT or header.get("version") != STORE_VERSION:
                raise StoreCorruptError(
                    f"{header_path} is not a coalition store this version reads "
                    f"(format={header.get('format')!r}, version={header.get('version')!r}; "
                    f"expected {STORE_FORMAT!r} version {STORE_VERSION})"
                )
            stored = header.get("fingerprint", {})
            if fingerprint_id(stored) != fingerprint_id(fingerprint):
                raise FingerprintMismatchError(
                    f"store {path} holds values of another game: stored game {_describe(stored)} "
                    f"(id {fingerprint_id(stored)}), this game {_describe(fingerprint)} "
                    f"(id {fingerprint_id(fingerprint)}). Use a new store directory for this game."
                )
        else:
            path.mkdir(parents=True, exist_ok=True)
            if any(path.iterdir()):
                raise ProbeError(f"{path} is a non-empty directory without {HEADER}; refusing to use it as a store")
            header = {
                "format": STORE_FORMAT,
                "version": STORE_VERSION,
                "fingerprint": fingerprint,
                "fingerprint_id": fingerprint_id(fingerprint),
                "n_players": len(fingerprint["players"]),
            }
            from surgery.atomic_io import write_json_atomic
            write_json_atomic(header_path, header, sort_keys=True)  # a header is either whole or absent
        store = cls(path, fingerprint, {}, durable)
        store._load_log()
        return store

    def _load_log(self) -> None:
        log_path = self.path / LOG
        if not log_path.exists():
            return
        n_bytes = (self.n_players + 7) // 8
        pieces = log_path.read_bytes().split(b"\n")
        complete, tail = pieces[:-1], pieces[-1]  # tail: bytes after the last newline, a torn write
        offset = 0
        for number, line in enumerate(complete, start=1):
            record = self._parse(line, n_bytes)
            if record is None:
                if number == len(complete) and tail == b"":
                    tail = line  # a garbled final record: treat like a torn one
                    break
                raise StoreCorruptError(
                    f"{log_path} line {number} is damaged (bad JSON or checksum) and is not the last record; "
                    "the store cannot be trusted. Move it aside and start a new store."
                )
            key, value = record
            self._values[key] = value
            offset += len(line) + 1
        if tail:
            # Torn last write: drop it and cut it from the file so new appends start on a clean line.
            with open(log_path, "r+b") as handle:
                handle.truncate(offset)
            self.dropped_torn_record = True

    @staticmethod
    def _parse(line: bytes, n_bytes: int) -> tuple[bytes, float] | None:
        try:
            record = json.loads(line)
            coalition_hex, value_repr, checksum = record["c"], record["v"], record["crc"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            return None
        if not isinstance(coalition_hex, str) or not isinstance(value_repr, str):
            return None
        if _record_checksum(coalition_hex, value_repr) != checksum or len(coalition_hex) != 2 * n_bytes:
            return None
        try:
            return bytes.fromhex(coalition_hex), float(value_repr)
        except ValueError:
            return None

    # ------------------------------------------------------------------ use
    def check_matches(self, game: Game) -> None:
        if self.fingerprint_id != game.fingerprint_id:
            raise FingerprintMismatchError(
                f"store {self.path} belongs to game {_describe(self.fingerprint)} (id {self.fingerprint_id}), "
                f"not to this game {_describe(game.fingerprint)} (id {game.fingerprint_id})"
            )

    def get(self, key: bytes) -> float | None:
        return self._values.get(key)

    def append(self, keys: Sequence[bytes], values: np.ndarray) -> None:
        """Append evaluated coalitions and flush them to disk before returning."""
        lines = []
        for key, value in zip(keys, values):
            if key in self._values:
                continue
            coalition_hex = key.hex()
            value_repr = repr(float(value))  # repr round-trips a float64 exactly
            lines.append(
                json.dumps({"c": coalition_hex, "v": value_repr, "crc": _record_checksum(coalition_hex, value_repr)})
            )
            self._values[key] = float(value)
        if not lines:
            return
        with open(self.path / LOG, "a", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
            handle.flush()
            if self.durable:
                os.fsync(handle.fileno())

    def coalitions(self) -> tuple[np.ndarray, np.ndarray]:
        """All stored coalitions as (bool[m, n], float[m]), e.g. to train a surrogate."""
        if not self._values:
            return np.zeros((0, self.n_players), dtype=bool), np.zeros(0)
        packed = np.frombuffer(b"".join(self._values), dtype=np.uint8).reshape(len(self._values), -1)
        matrix = np.unpackbits(packed, axis=1, count=self.n_players).astype(bool)
        return matrix, np.fromiter(self._values.values(), dtype=float, count=len(self._values))

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: bytes) -> bool:
        return key in self._values

    def __repr__(self) -> str:
        return f"CoalitionStore({str(self.path)!r}, {len(self)} coalitions, game id {self.fingerprint_id})"
