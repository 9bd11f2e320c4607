"""What an export directory must hold to be trusted: every file its manifest.json lists, byte for byte.

`verify_export` is what `surgery.load` runs on a model-surgery export before transformers reads
anything, and what `save_model` writes the manifest for. It lives apart from save.py so that
loading (which verifies) does not import the exporter (which loads).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from surgery.errors import SurgeryError
from surgery.outputs import EXPORT_MANIFEST
from surgery.remote_code import OPT_IN, code_files

MANIFEST = EXPORT_MANIFEST


class CorruptExportError(SurgeryError):
    """An export directory whose files do not match its manifest."""


def verify_export(path, *, allow_unlisted_code: bool = False) -> dict:
    """Check every file listed in manifest.json against its sha256; raise naming the bad file.

    A code file (.py, .pyc, .so, ...) the manifest does not list is refused too: it was added after
    the export and nothing vouches for it (allow_unlisted_code=True when the user trusts the
    directory's code anyway)."""
    root = Path(path)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise CorruptExportError(f"{root} has no {MANIFEST}: not a complete model-surgery export "
                                 f"(an interrupted export leaves only a hidden .{root.name}.tmp-* directory)")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' is not a map")
    except (ValueError, KeyError, TypeError) as err:
        raise CorruptExportError(f"{manifest_path} is unreadable or has no 'files' map ({err}); the export "
                                 f"is damaged, export the model again") from None
    sizes = manifest.get("file_sizes", {})
    for name, digest in sorted(files.items()):
        file = root / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise CorruptExportError(f"{manifest_path} lists {name!r}, which lies outside the export")
        if not file.is_file():
            raise CorruptExportError(f"{root}: file {name!r} listed in {MANIFEST} is missing; export again")
        size = file.stat().st_size
        if name in sizes and size != sizes[name]:
            kind = "truncated" if size < sizes[name] else "larger than recorded"
            raise CorruptExportError(f"{root}: {name!r} is {kind} ({size} bytes, expected {sizes[name]}); "
                                     f"the copy is damaged, export or download it again")
        if file_sha256(file) != digest:
            raise CorruptExportError(f"{root}: {name!r} is corrupt (sha256 differs from {MANIFEST}); "
                                     f"export or download it again")
    unlisted = [name for name in code_files(root) if name not in files]
    if unlisted and not allow_unlisted_code:
        raise CorruptExportError(f"{root}: {', '.join(unlisted)} is code that {MANIFEST} does not list (added after "
                                 f"the export, nothing vouches for it); delete it, or {OPT_IN}")
    return manifest


def export_files(root: Path) -> list[str]:
    """Relative names of every file under `root` that the manifest lists (all but the manifest itself)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
