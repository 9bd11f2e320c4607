"""What an output may replace: only something model-surgery wrote, and never one of its inputs.

`--force` (and `save_model(force=True)`) replaces an existing output only when it is recognisably
ours: an export directory whose manifest.json lists every file in it, a JSON file whose "schema" or
"format" is "model-surgery.*" (values, plans, clusters, reports), or a figure carrying our mark in
its metadata. Anything else (a user's thesis.txt, a folder of data) is refused by name, force or
not. And an output is never written over a file or directory the same command reads (compared by
resolved path and inode, so `dir`, `dir/`, `./dir` and a symlink to it are all the same).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from surgery.errors import SurgeryError

PROJECT_PREFIX = "model-surgery."
EXPORT_MANIFEST = "manifest.json"
FIGURE_MARK = "model-surgery figure"
# Which metadata key carries FIGURE_MARK in each figure format matplotlib writes with metadata.
FIGURE_FORMATS = {".png": "Software", ".pdf": "Creator", ".svg": "Creator"}
_FIGURE_MAGIC = {".png": b"\x89PNG", ".pdf": b"%PDF", ".svg": b"<"}
_LARGEST_JSON = 256 * 2**20  # larger "JSON" is not one of our artefacts: do not read it all to find out


class NotOursError(SurgeryError):
    """An existing output that model-surgery did not write (so --force will not replace it)."""


def figure_metadata(path: str | os.PathLike) -> dict:
    """Metadata for savefig that marks the figure as ours (so a later --force may replace it)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FIGURE_FORMATS:
        raise SurgeryError(f"figure {path}: unsupported format {suffix or '(no extension)'!r}; "
                           f"use one of {', '.join(FIGURE_FORMATS)}")
    return {FIGURE_FORMATS[suffix]: FIGURE_MARK}


def why_not_ours(path: str | os.PathLike) -> str | None:
    """None when `path` is something model-surgery wrote; else the reason, for an error message."""
    path = Path(path)
    if path.is_symlink():
        return "it is a symbolic link"
    if path.is_dir():
        return _why_not_our_export(path)
    if not path.is_file():
        return "it is not a regular file or directory"
    suffix = path.suffix.lower()
    if suffix in FIGURE_FORMATS:
        return _why_not_our_figure(path, suffix)
    return _why_not_our_json(path)


def refuse_unless_ours(path: str | os.PathLike, flag: str = "--out") -> None:
    """Raise NotOursError naming `path` when it exists and is not something model-surgery wrote."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    reason = why_not_ours(path)
    if reason is not None:
        raise NotOursError(f"{path} exists and was not written by model-surgery ({reason}); refusing to replace "
                           f"it even with --force/force=True: choose another {flag} or move it away yourself")


def refuse_overwriting_inputs(out: str | os.PathLike, inputs: Iterable, flag: str = "--out") -> None:
    """Raise when `out` is one of `inputs` (paths that exist locally) or a directory holding one, so
    that replacing it would destroy what the command reads. Writing *inside* an input directory is fine."""
    out_path = Path(out)
    for item in inputs:
        if item is None or not isinstance(item, (str, os.PathLike)):
            continue
        source = Path(item)
        if not source.exists():
            continue  # a hub id or an embedded name: nothing on disk to protect
        if same_path(out_path, source) or _inside(source, out_path):
            raise SurgeryError(f"{flag} {out} would overwrite {item}, which this command reads; "
                               f"write to another path")


def same_path(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _inside(child: Path, parent: Path) -> bool:
    return parent.resolve() in child.resolve().parents


def _why_not_our_export(path: Path) -> str | None:
    manifest_path = path / EXPORT_MANIFEST
    if not manifest_path.is_file():
        entries = sorted(p.name for p in path.iterdir())
        if not entries:
            return None  # an empty directory holds nothing to lose
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        return f"a directory without {EXPORT_MANIFEST} holding {shown}"
    try:
        files = json.loads(manifest_path.read_text())["files"]
        if not isinstance(files, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return f"its {EXPORT_MANIFEST} is not a model-surgery manifest (no 'files' map)"
    present = sorted(str(p.relative_to(path)) for p in path.rglob("*")
                     if (p.is_file() or p.is_symlink()) and p != manifest_path)
    foreign = [name for name in present if name not in files]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        return f"an export that also holds files its manifest does not list: {shown}"
    return None


def _why_not_our_json(path: Path) -> str | None:
    if path.stat().st_size > _LARGEST_JSON:
        return "too large to be one of its JSON files"
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        return "not a JSON file"
    tag = data.get("schema") or data.get("format") if isinstance(data, dict) else None
    if not (isinstance(tag, str) and tag.startswith(PROJECT_PREFIX)):
        return f"a JSON file without a \"format\"/\"schema\" of {PROJECT_PREFIX}*"
    return None


def _why_not_our_figure(path: Path, suffix: str) -> str | None:
    if path.stat().st_size > _LARGEST_JSON:
        return "too large to be one of its figures"
    data = path.read_bytes()
    if not data.lstrip().startswith(_FIGURE_MAGIC[suffix]) or FIGURE_MARK.encode() not in data:
        return f"a {suffix[1:]} file without the model-surgery figure mark"
    return None
