"""Append-only on-disk store of evaluated coalitions, keyed by the game fingerprint.

Layout of a store directory (plain files, readable with `cat` and `jq`):

    header.json     {"format", "version", "fingerprint", "fingerprint_id", "n_players"}
    values.jsonl    one record per line: {"c": packed coalition as hex, "v": value, "crc": crc32}
    estimators.json {estimator: version} of the versioned estimators (chain_krr) that ran on it
    lock            the writer lock (flock); holds the pid of the process that has the store open

Why this shape: model evaluations are the expensive thing in this project, so every chunk is
appended and flushed (and fsynced) the moment the value function returns it. A crash can only
tear the final line; each record carries a checksum, so on reopening a torn or garbled *last*
record is dropped (and cut from the file) while damage anywhere else is reported, never guessed
around; `repair_store` (CLI: `surgery store repair --store DIR`) keeps every record whose checksum
verifies and reports what it dropped. Opening the directory with another game's fingerprint is
refused, naming the field that differs.

One writer: opening a store takes an exclusive `flock` on `DIR/lock` for as long as the store
object lives. A second *process* that opens the same directory is refused at once with a message
naming the holder's pid (refusing, not waiting: a waiting run looks hung, and the usual cause is a
duplicate job that should not run at all). Inside one process the lock is shared, so a program may
open the same store twice (a resumed Game in a notebook, a test); the lock goes when the last
store object of that directory is closed or garbage-collected.
"""

from __future__ import annotations

import fcntl
import json
import os
import weakref
import zlib
from dataclasses import dataclass, field
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
import numpy as np

from probes.errors import FingerprintMismatchError, ProbeError, StoreCorruptError, StoreLockedError
from probes.fingerprint import Fingerprinted, fingerprint_id, fingerprint_identity

STORE_FORMAT = "model-surgery.coalition-store"
STORE_VERSION = 1
HEADER = "header.json"
LOG = "values.jsonl"
LOCK = "lock"
ESTIMATORS = "estimators.json"  # {estimator name: version} of the versioned estimators that ran on the store
REPAIR_COMMAND = "surgery store repair --store {path}"

# Locks this process holds: resolved store path -> [fd, number of open store objects, owner pid].
_HELD_LOCKS: dict[str, list] = {}


def _record_checksum(coalition_hex: str, value_repr: str) -> str:
    return format(zlib.crc32(f"{coalition_hex}|{value_repr}".encode()), "08x")


def _describe(fingerprint: dict) -> str:
    shown = {k: v for k, v in fingerprint.items() if k != "players"}
    players = fingerprint.get("players", [])
    return f"{shown} with {len(players)} players"


def describe_difference(stored: dict, current: dict) -> str:
    """The first field in which two fingerprints differ as games, in a few words."""
    stored, current = fingerprint_identity(stored), fingerprint_identity(current)
    for key in sorted(set(stored) | set(current)):
        if stored.get(key) == current.get(key):
            continue
        if key == "players":
            a, b = list(stored.get(key) or []), list(current.get(key) or [])
            if len(a) != len(b):
                return f"players differ ({len(a)} stored, {len(b)} in this game)"
            i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
            return f"players differ (player {i}: stored {a[i]!r}, this game {b[i]!r})"
        return f"field {key!r} differs (stored {stored.get(key)!r}, this game {current.get(key)!r})"
    return "fingerprints differ"


def _acquire_lock(path: Path) -> str:
    """Take (or share, inside this process) the store's writer lock; return its registry key."""
    key = str(path.resolve())
    held = _HELD_LOCKS.get(key)
    if held is not None and held[2] == os.getpid():
        held[1] += 1
        return key
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreLockedError(
            f"store {path} is in use by another process (pid {holder}); one run writes a store at a time. "
            "Wait for that run to finish, or give this run another --store directory"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _HELD_LOCKS[key] = [fd, 1, os.getpid()]
    return key


def _release_lock(key: str) -> None:
    held = _HELD_LOCKS.get(key)
    if held is None or held[2] != os.getpid():
        return
    held[1] -= 1
    if held[1] <= 0:
        del _HELD_LOCKS[key]
        os.close(held[0])  # closing the descriptor releases the flock


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
    def open(cls, path: str | PathLike, game: Fingerprinted | dict, *, durable: bool = True) -> CoalitionStore:
        """Open (or create) the store at `path` for `game` (a Game or its full fingerprint dict).

        durable: fsync after every appended chunk; turn off only for throwaway runs.
        """
        fingerprint = game if isinstance(game, dict) else game.fingerprint
        if "players" not in fingerprint:
            raise ProbeError("a store fingerprint must include the player names under 'players'")
        path = Path(path)
        header_path = path / HEADER
        if not header_path.exists():
            path.mkdir(parents=True, exist_ok=True)
        # Lock before reading anything: the log is cut when its last record is torn, which must never
        # race with another process's append.
        lock_key = _acquire_lock(path)
        try:
            if header_path.exists():
                cls._check_header(path, fingerprint)
            else:
                if any(p.name != LOCK for p in path.iterdir()):
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
            store._finalizer = weakref.finalize(store, _release_lock, lock_key)
            lock_key = None  # the store owns the lock now
            try:
                store._load_log()
            except BaseException:
                store.close()
                raise
        finally:
            if lock_key is not None:
                _release_lock(lock_key)
        return store

    @staticmethod
    def _check_header(path: Path, fingerprint: dict) -> dict:
        header_path = path / HEADER
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
        if fingerprint is not None and fingerprint_id(stored) != fingerprint_id(fingerprint):
            raise FingerprintMismatchError(
                f"store {path} holds values of another game: {describe_difference(stored, fingerprint)}. "
                f"Stored game {_describe(stored)}; use a new store directory for this game."
            )
        return header

    def close(self) -> None:
        """Release this object's share of the writer lock (also done when it is garbage-collected)."""
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()

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
                    f"{log_path} line {number} is damaged (bad JSON or checksum) and is not the last record. "
                    f"Run `{REPAIR_COMMAND.format(path=self.path)}` to keep every record whose checksum "
                    "verifies (it reports what it drops), or move the store aside and start a new one."
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
    def check_matches(self, game: Fingerprinted) -> None:
        if self.fingerprint_id != game.fingerprint_id:
            raise FingerprintMismatchError(
                f"store {self.path} belongs to another game: {describe_difference(self.fingerprint, game.fingerprint)}"
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

    def estimator_versions(self) -> dict[str, int]:
        """{name: version} of the versioned estimators that have run on this store ({} for a store
        made before versions were recorded): a later version may evaluate other coalitions and
        give other values, so it must not silently re-value a run of an earlier one."""
        path = self.path / ESTIMATORS
        if not path.exists():
            return {}
        try:
            return {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as error:
            raise StoreCorruptError(f"{path} is not a JSON object of estimator versions ({error}); "
                                    "delete it to let the next run record its version") from error

    def record_estimator_version(self, name: str, version: int) -> None:
        """Note that `name` at `version` ran on this store (the latest run of each name is kept)."""
        from surgery.atomic_io import write_json_atomic

        versions = self.estimator_versions()
        if versions.get(name) != version:
            write_json_atomic(self.path / ESTIMATORS, {**versions, name: int(version)}, sort_keys=True)

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


@dataclass
class StoreRepair:
    """What `repair_store` did: records kept, lines dropped (1-based, with why), where the original went."""

    path: Path
    kept: int
    dropped: list[tuple[int, str]] = field(default_factory=list)
    backup: Path | None = None

    def summary(self) -> str:
        if not self.dropped:
            return f"store {self.path}: all {self.kept} records verify; nothing to repair"
        shown = ", ".join(f"line {n} ({why})" for n, why in self.dropped[:10])
        more = f" and {len(self.dropped) - 10} more" if len(self.dropped) > 10 else ""
        return (f"store {self.path}: kept {self.kept} verified records, dropped {len(self.dropped)}: {shown}{more}; "
                f"the original log is saved as {self.backup}")


def repair_store(path: str | PathLike) -> StoreRepair:
    """Rewrite a store's log keeping every record whose checksum verifies (first copy of a coalition
    wins), and report what was dropped. The original log is kept beside it as `values.jsonl.damaged`
    (numbered if that exists). Takes the writer lock, so it never races a running job."""
    path = Path(path)
    if not (path / HEADER).exists():
        raise ProbeError(f"{path} is not a coalition store (no {HEADER}); give the --store directory of a run")
    header = CoalitionStore._check_header(path, None)
    n_players = int(header.get("n_players") or len(header.get("fingerprint", {}).get("players", [])))
    n_bytes = (n_players + 7) // 8
    lock_key = _acquire_lock(path)
    try:
        log_path = path / LOG
        raw = log_path.read_bytes() if log_path.exists() else b""
        kept_lines, dropped, values = [], [], {}
        for number, line in enumerate(raw.split(b"\n"), start=1):
            if line == b"":
                continue
            record = CoalitionStore._parse(line, n_bytes)
            if record is None:
                dropped.append((number, "damaged"))
            elif record[0] in values:
                same = values[record[0]] == record[1]
                dropped.append((number, "duplicate" if same else "duplicate with another value"))
            else:
                values[record[0]] = record[1]
                kept_lines.append(line)
        report = StoreRepair(path, len(kept_lines), dropped)
        if not dropped and (raw == b"" or raw.endswith(b"\n")):
            return report
        backup = path / (LOG + ".damaged")
        number = 1
        while backup.exists():
            number += 1
            backup = path / f"{LOG}.damaged.{number}"
        backup.write_bytes(raw)
        tmp = path / (LOG + ".tmp")
        with open(tmp, "wb") as handle:
            handle.write(b"".join(line + b"\n" for line in kept_lines))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, log_path)  # atomic: the log is either the old one or the repaired one
        report.backup = backup
        return report
    finally:
        _release_lock(lock_key)
