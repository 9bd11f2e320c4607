"""Write a (cut) model as a checkpoint that transformers loads, atomically, with checksums.

`save_model` writes safetensors + config.json (+ tokenizer files) into a temporary directory
beside the target, fsyncs every file, then renames it into place. A crash leaves only a hidden
`.<name>.tmp-*` directory, never a half-written `<name>`. An existing target is refused unless
force=True; with force the old directory is swapped out only once the new one is complete.

What loads how:
- plain checkpoint: every layer has the same head counts and the stock config accepts them
  (Llama family), layer removal, masked heads: `from_pretrained(dir)` anywhere.
- remote code: uneven counts per layer, or any head cut in GPT-2 / GPT-NeoX / BERT. The export
  carries `pruned_attention.py` and an `auto_map`, and loads with `trust_remote_code=True`.
Masked exports (mask_heads) do not shrink; cut ones do.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from surgery.cut import parameter_count
from surgery.errors import SurgeryError
from surgery.loading import LoadedModel, load

MANIFEST = "manifest.json"
MODELING_FILE = "pruned_attention.py"
_MODELING_SOURCE = Path(__file__).parent / "modeling" / MODELING_FILE


class CorruptExportError(SurgeryError):
    """An export directory whose files do not match its manifest."""


def save_model(loaded_or_model, out_dir, *, force: bool = False, manifest: dict | None = None,
               extra_files: dict[str, str | bytes] | None = None, dtype=None) -> dict:
    """Export to `out_dir`. Returns {"path", "files" {name: sha256}, "file_sizes", "parameters",
    "bytes", "remote_code", "dtype"}.

    `dtype`: write the weights in this dtype (torch dtype or "bf16"/"fp16"/"fp32"; default: the
    model's own). The model passed in is not changed: a copy is cast when the dtype differs.

    `manifest`: when given, it is written as manifest.json with that summary merged in (keys
    "files", "file_sizes", "parameters", "bytes", "remote_code"), so `verify_export` can check the
    directory later. `extra_files`: more files to write (name -> text or bytes), checksummed too.
    """
    loaded = load(loaded_or_model)
    loaded = _in_dtype(loaded, parse_dtype(dtype))
    target = Path(out_dir)
    if target.exists() and not force:
        raise SurgeryError(f"{target} already exists; choose another directory or pass force=True "
                           f"(--force) to replace it")
    if target.exists() and not target.is_dir():
        raise SurgeryError(f"{target} exists and is not a directory; refusing to replace it")
    for name in extra_files or {}:
        if name in (MANIFEST, "config.json") or Path(name).is_absolute() or ".." in Path(name).parts:
            raise SurgeryError(f"extra file name {name!r} is reserved or escapes the export directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        remote = _write_model(loaded, tmp)
        for name, content in (extra_files or {}).items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode() if isinstance(content, str) else content)
        files = {name: _sha256(tmp / name) for name in _list_files(tmp)}
        sizes = {name: (tmp / name).stat().st_size for name in files}
        summary = {"files": files, "file_sizes": sizes, "parameters": parameter_count(loaded.model),
                   "bytes": sum(sizes.values()), "remote_code": remote,
                   "dtype": dtype_name(next(loaded.model.parameters()).dtype)}
        if manifest is not None:
            (tmp / MANIFEST).write_text(json.dumps({**manifest, **summary}, indent=2, sort_keys=True))
        _fsync_tree(tmp)
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"path": str(target), **summary}


def verify_export(path) -> dict:
    """Check every file listed in manifest.json against its sha256; raise naming the bad file."""
    root = Path(path)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise CorruptExportError(f"{root} has no {MANIFEST}: not a complete model-surgery export "
                                 f"(an interrupted export leaves only a hidden .{root.name}.tmp-* directory)")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise CorruptExportError(f"{manifest_path} is unreadable or has no 'files' map ({err}); the export "
                                 f"is damaged, export the model again") from None
    sizes = manifest.get("file_sizes", {})
    for name, digest in sorted(files.items()):
        file = root / name
        if not file.is_file():
            raise CorruptExportError(f"{root}: file {name!r} listed in {MANIFEST} is missing; export again")
        size = file.stat().st_size
        if name in sizes and size != sizes[name]:
            kind = "truncated" if size < sizes[name] else "larger than recorded"
            raise CorruptExportError(f"{root}: {name!r} is {kind} ({size} bytes, expected {sizes[name]}); "
                                     f"the copy is damaged, export or download it again")
        if _sha256(file) != digest:
            raise CorruptExportError(f"{root}: {name!r} is corrupt (sha256 differs from {MANIFEST}); "
                                     f"export or download it again")
    return manifest


DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}


def parse_dtype(dtype) -> torch.dtype | None:
    """None, a torch floating dtype, or one of the names bf16/fp16/fp32 (bfloat16/float16/float32)."""
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise SurgeryError(f"export dtype {dtype!r} is not supported; use bf16, fp16 or fp32")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------------------------

def _in_dtype(loaded: LoadedModel, dtype: torch.dtype | None) -> LoadedModel:
    """`loaded` itself when it already has `dtype` (or none is asked), else a cast copy."""
    if dtype is None or all(p.dtype == dtype for p in loaded.model.parameters() if p.is_floating_point()):
        return loaded
    model = copy.deepcopy(loaded.model).to(dtype)
    return LoadedModel(model, loaded.tokenizer, loaded.adapter, loaded.components, loaded.source)


def _write_model(loaded: LoadedModel, directory: Path) -> bool:
    """save_pretrained, plus the modeling file and auto_map when layers need their own head counts."""
    model = loaded.model
    config = model.config
    remote = bool(getattr(config, "is_heterogeneous", False))
    if remote:
        _check_remote_supported(model)
    model.save_pretrained(directory)
    if loaded.tokenizer is not None and hasattr(loaded.tokenizer, "save_pretrained"):
        loaded.tokenizer.save_pretrained(directory)
    if remote:
        base = type(model).__name__
        source = _MODELING_SOURCE.read_text().replace('BASE_CLASS = "LlamaForCausalLM"', f'BASE_CLASS = "{base}"')
        (directory / MODELING_FILE).write_text(source)
        config_path = directory / "config.json"
        data = json.loads(config_path.read_text())
        auto = "AutoModelForMaskedLM" if "MaskedLM" in base else "AutoModelForCausalLM"
        data["auto_map"] = {auto: f"{MODELING_FILE[:-3]}.PrunedModel"}
        data["allow_global_per_layer_attribute_access"] = True
        config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return remote


def _check_remote_supported(model) -> None:
    import transformers
    from surgery.modeling.pruned_attention import attention_kind, layer_list
    base = type(model).__name__
    if getattr(transformers, base, None) is not type(model):
        raise SurgeryError(f"{base} is not a transformers class; models with per-layer head counts can only be "
                           f"exported from stock transformers classes (Llama family, GPT-2, GPT-NeoX, BERT)")
    for block in layer_list(model):
        attention_kind(block)  # raises for unsupported blocks


def _list_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    for directory in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_into_place(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(tmp, target)
    else:  # force: move the old one aside, put the new one in, then delete the old one
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(old)
        os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(target.parent)
