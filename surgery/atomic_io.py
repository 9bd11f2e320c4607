"""One way to write a file: whole or not at all, and an error that names the file.

Every file model-surgery writes (values, plans, reports, clusters, figures, store headers, predictor
weights) goes through `atomic_path` / `atomic_write`: the bytes go to a temporary file in the same
directory, are fsynced, and `os.replace` puts the file in place (atomic within a directory on POSIX).
A crash or a full disk leaves the old file (or none), never a truncated one that a rerun would then
refuse as "already exists". A failed write removes its temporary file and raises `FileWriteError`:
an OSError (errno kept) whose message names the file and the cause, e.g.
"could not write runs/values.json: No space left on device (errno 28)".

New files get the permissions a plain open() would give (0666 less the umask); a replaced file keeps
its mode.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


class FileWriteError(OSError):
    """Writing `filename` failed; the message says which file and why, the errno is the cause's."""

    def __init__(self, path, cause: BaseException):
        errno = getattr(cause, "errno", None)
        reason = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        super().__init__(errno, reason)
        self.filename = str(path)
        self.message = f"could not write {path}: {reason}" + (f" (errno {errno})" if errno else "")

    def __str__(self) -> str:
        return self.message


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file beside `path` for writers that want a file name (savefig, safetensors).

    When the block ends normally the temporary file is fsynced and renamed to `path`; on any error it
    is removed, and an OSError is re-raised as FileWriteError naming `path`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        # O_EXCL: never follow a planted symlink or reuse someone's file; 0o666 lets the umask decide.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        yield tmp
        _keep_mode(path, tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except BaseException as err:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            pass  # the original error matters more than a leftover hidden temporary file
        if isinstance(err, OSError) and not isinstance(err, FileWriteError):
            raise FileWriteError(path, err) from err
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` (text as UTF-8) to `path` atomically; returns the path."""
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            view = memoryview(payload)
            while view:  # os.write may write less than asked (signals, pipes): loop until done
                written = os.write(fd, view)
                view = view[written:]
        finally:
            os.close(fd)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any, *, indent: int | None = 2,
                      sort_keys: bool = False) -> Path:
    """JSON (no NaN/inf: they are not JSON) written atomically, with a final newline."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"
    return atomic_write(path, text)


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename in `directory` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename itself has happened
    finally:
        os.close(fd)


def fsync_tree_private(root: str | os.PathLike) -> None:
    """Make every file under `root` durable and private to the user (files 0600, directories 0700):
    exports and model caches are written this way, before they are renamed into place."""
    root = Path(root)
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, 0o600)
            _fsync_file(path)
    for directory in [root, *[p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()]]:
        os.chmod(directory, 0o700)
        fsync_directory(directory)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _keep_mode(path: Path, tmp: Path) -> None:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return
    os.chmod(tmp, mode)
