"""Write a (cut) model as a checkpoint that transformers loads, atomically, with checksums.

`save_model` writes safetensors + config.json (+ tokenizer files) + manifest.json into a temporary
directory beside the target, fsyncs every file, then renames it into place. A crash leaves only a
hidden `.<name>.tmp-*` directory, never a half-written `<name>`. Exports are private: directories
0700, files 0600. An existing target is refused unless force=True, and even then only an export of
ours is replaced (manifest.json listing every file in it; see surgery.outputs); the model being
saved is never written over its own source directory. With force the old directory is swapped out
only once the new one is complete.

What loads how:
- plain checkpoint: every layer has the same head counts and the stock config accepts them
  (Llama family), layer removal, masked heads: `from_pretrained(dir)` anywhere.
- remote code: uneven counts per layer, or any head cut in GPT-2 / GPT-NeoX / BERT. The export
  carries `pruned_attention.py` and an `auto_map`, and loads with `trust_remote_code=True` in plain
  transformers; `surgery.load(dir)` verifies the file and builds the class from the installed
  package instead (surgery.remote_code), so it needs no trust.
Masked exports (mask_heads) do not shrink; cut ones do.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from surgery.atomic_io import FileWriteError, fsync_directory, fsync_tree_private
from surgery.errors import SurgeryError
from surgery.export_manifest import CorruptExportError, file_sha256, export_files, verify_export
from surgery.loading import LoadedModel, load, parameter_count
from surgery.modeling.pruned_attention import quiet_global_head_counts
from surgery.outputs import EXPORT_MANIFEST, refuse_overwriting_inputs, refuse_unless_ours
from surgery.remote_code import AUTO_MAP_TARGET, MODELING_FILE, modeling_source, stock_base_class

MANIFEST = EXPORT_MANIFEST
WRITTEN_BY = "model-surgery"
# verify_export and CorruptExportError live in surgery.export_manifest (loading verifies without
# importing the exporter); they stay importable from here, where users found them first.
__all__ = ["CorruptExportError", "save_model", "verify_export", "check_export_target", "model_sources",
           "parse_dtype", "dtype_name"]


def save_model(loaded_or_model, out_dir, *, force: bool = False, manifest: dict | None = None,
               extra_files: dict[str, str | bytes] | None = None, dtype=None,
               progress: Callable[[str], None] | None = None) -> dict:
    """Export to `out_dir`. Returns {"path", "files" {name: sha256}, "file_sizes", "parameters",
    "bytes", "remote_code", "dtype", "written_by"}.

    `dtype`: write the weights in this dtype (torch dtype or "bf16"/"fp16"/"fp32"; default: the
    model's own). The model passed in is not changed: a copy is cast when the dtype differs.

    manifest.json is always written: `manifest` (when given) with that summary merged in, so
    `verify_export` can check the directory later and a later force=True knows the directory is
    ours. `extra_files`: more files to write (name -> text or bytes), checksummed too.
    `progress(stage)` is called as each stage starts (writing, checksumming, syncing).
    """
    loaded = load(loaded_or_model)
    target = check_export_target(out_dir, force=force, sources=model_sources(loaded))
    loaded = _in_dtype(loaded, parse_dtype(dtype))
    report = progress or (lambda stage: None)
    for name in extra_files or {}:
        if name in (MANIFEST, "config.json") or Path(name).is_absolute() or ".." in Path(name).parts:
            raise SurgeryError(f"extra file name {name!r} is reserved or escapes the export directory")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as err:
        raise FileWriteError(target, err) from err
    try:
        report("writing the checkpoint")
        remote = _write_model(loaded, tmp)
        for name, content in (extra_files or {}).items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode() if isinstance(content, str) else content)
        report("checksumming")
        files = {name: file_sha256(tmp / name) for name in export_files(tmp)}
        sizes = {name: (tmp / name).stat().st_size for name in files}
        summary = {"files": files, "file_sizes": sizes, "parameters": parameter_count(loaded.model),
                   "bytes": sum(sizes.values()), "remote_code": remote, "written_by": WRITTEN_BY,
                   "dtype": dtype_name(next(loaded.model.parameters()).dtype)}
        (tmp / MANIFEST).write_text(json.dumps({**(manifest or {}), **summary}, indent=2, sort_keys=True))
        report("syncing to disk")
        fsync_tree_private(tmp)  # durable, and private: 0600 files, 0700 directories
        _swap_into_place(tmp, target)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and not isinstance(err, FileWriteError):
            raise FileWriteError(target, err) from err
        raise
    return {"path": str(target), **summary}


def model_sources(loaded: LoadedModel) -> list:
    """Where a loaded model came from on disk (from_pretrained records its directory as name_or_path)."""
    return [loaded.source, getattr(loaded.model, "name_or_path", None)]


def check_export_target(out_dir, *, force: bool, sources=()) -> Path:
    """Refuse, before any work, an export target that exists (unless force), that is not an export
    of ours (even with force), or that is (or holds) one of `sources`, the model being exported."""
    target = Path(out_dir)
    refuse_overwriting_inputs(target, sources, flag="out_dir")
    if target.exists() or target.is_symlink():
        if not force:
            raise SurgeryError(f"{target} already exists; choose another directory or pass force=True "
                               f"(--force) to replace it")
        if not target.is_dir() or target.is_symlink():
            raise SurgeryError(f"{target} exists and is not a directory; refusing to replace it")
        refuse_unless_ours(target)
    return target


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
        _check_remote_supported(loaded)
    with quiet_global_head_counts():
        model.save_pretrained(directory)
    if loaded.tokenizer is not None and hasattr(loaded.tokenizer, "save_pretrained"):
        loaded.tokenizer.save_pretrained(directory)
    if remote:
        base = stock_base_class(type(model)).__name__  # a re-pruned export: its stock ancestor
        (directory / MODELING_FILE).write_text(modeling_source(base))
        config_path = directory / "config.json"
        data = json.loads(config_path.read_text())
        data["architectures"] = [base]  # as a first export writes it
        auto = "AutoModelForCausalLM" if loaded.adapter.causal else "AutoModelForMaskedLM"
        data["auto_map"] = {auto: AUTO_MAP_TARGET}
        data["allow_global_per_layer_attribute_access"] = True
        config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return remote


def _check_remote_supported(loaded: LoadedModel) -> None:
    """Per-layer counts need the exported modeling file to rebuild this family's blocks from a stock class."""
    from surgery.modeling.pruned_attention import attention_kind
    model, adapter = loaded.model, loaded.adapter
    if adapter.export_layout is None:
        raise SurgeryError(f"the {adapter.family} adapter names no export_layout, so a model of it with per-layer head "
                           f"counts or MLP widths cannot be exported; cut the same heads in every layer, or declare "
                           f"which layout of surgery/modeling/pruned_attention.py rebuilds its blocks")
    if stock_base_class(type(model)) is None:
        raise SurgeryError(f"{type(model).__name__} is not derived from a transformers class; models with per-layer "
                           f"head counts can only be exported from stock transformers classes (Llama family, GPT-2, "
                           f"GPT-NeoX, BERT) and model-surgery's own exports of them")
    for block in adapter.blocks(model):
        try:
            kind = attention_kind(block)
        except TypeError:
            kind = None
        if kind != adapter.export_layout:
            raise SurgeryError(f"the {adapter.family} adapter declares export_layout={adapter.export_layout!r}, but "
                               f"the exported modeling file sees a {type(block).__name__} block as {kind!r}; fix the "
                               f"adapter's export_layout")


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
    fsync_directory(target.parent)
