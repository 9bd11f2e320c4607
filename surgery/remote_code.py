"""Which Python code a model directory would make transformers run, and whether we may run it.

transformers imports whatever a directory's `auto_map` names (config.json, tokenizer_config.json)
when asked to trust remote code. model-surgery never asks unless the user opts in
(`surgery.load(..., trust_remote_code=True)`, CLI `--trust-remote-code`). Its own exports with
per-layer head counts still load without opting in, but never by running the directory's file:

- config.json's auto_map must name only `pruned_attention.PrunedModel` (nothing in the tokenizer's),
- manifest.json must list pruned_attention.py (its sha256 is checked by `verify_export`),
- the file must be byte-identical to what this installed version writes for that base class,

and then the class is built from the installed package (`surgery.modeling.pruned_attention`), not
imported from the directory. Anything else is refused with the file named and the way to opt in.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch.nn as nn

from surgery.errors import SurgeryError

MODELING_FILE = "pruned_attention.py"
AUTO_MAP_TARGET = f"{MODELING_FILE[:-3]}.PrunedModel"
OUR_AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModelForMaskedLM")
# Files Python can import or execute: an export may not carry any its manifest does not list.
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyd", ".so", ".dylib", ".dll")
_MODELING_SOURCE = Path(__file__).parent / "modeling" / MODELING_FILE
_BASE_LINE = 'BASE_CLASS = "LlamaForCausalLM"'
_BASE_PATTERN = re.compile(r'^BASE_CLASS = "([A-Za-z_][A-Za-z0-9_]*)"$', re.MULTILINE)
OPT_IN = "pass trust_remote_code=True (CLI: --trust-remote-code) only if you trust that code"


class RemoteCodeError(SurgeryError):
    """Loading would run Python code from the model directory, and the user did not opt in."""


def modeling_source(base_name: str) -> str:
    """The exact pruned_attention.py this version writes into an export of a `base_name` model."""
    source = _MODELING_SOURCE.read_text()
    if _BASE_LINE not in source:  # a guard for whoever edits the modeling file
        raise RuntimeError(f"{_MODELING_SOURCE} lost its line {_BASE_LINE!r}")
    return source.replace(_BASE_LINE, f'BASE_CLASS = "{base_name}"')


def stock_base_class(model_class: type) -> type | None:
    """The transformers class a (possibly Pruned…) model class derives from: itself if stock."""
    import transformers
    for cls in model_class.__mro__:
        if getattr(transformers, cls.__name__, None) is cls and issubclass(cls, nn.Module):
            return cls
    return None


def code_files(root: Path) -> list[str]:
    """Relative names of files under `root` that Python could import or run."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.suffix in CODE_SUFFIXES)


def installed_model_class(path: Path, manifest: dict | None, trust_remote_code: bool) -> type | None:
    """The class to build the model in `path` with.

    None: let transformers' Auto classes decide (no auto_map anywhere, so no code from the
    directory runs, or the user trusts it). A class: this package's Pruned<Base> for a verified
    model-surgery export. Raises RemoteCodeError for any other code the directory would run.
    """
    auto_maps = _auto_maps(path)
    if trust_remote_code or not auto_maps:
        return None
    problems = [f"{name} auto_map names {_targets(amap)}" for name, amap in auto_maps.items()
                if name != "config.json"]
    config_map = auto_maps.get("config.json", {})
    foreign = {k: v for k, v in config_map.items() if not (k in OUR_AUTO_CLASSES and v == AUTO_MAP_TARGET)}
    if foreign:
        problems.append(f"config.json auto_map names {_targets(foreign)}")
    base = None
    if config_map and not foreign:
        base, problem = _verified_base(path, manifest)
        if problem:
            problems.append(problem)
    if problems:
        raise RemoteCodeError(f"{path}: loading it would run Python code from the directory ({'; '.join(problems)}). "
                              f"model-surgery runs a model's own code only when asked: {OPT_IN}")
    from surgery.modeling.pruned_attention import pruned_model_class
    return pruned_model_class(base)


def _verified_base(path: Path, manifest: dict | None) -> tuple[str | None, str | None]:
    """(base class name, None) when pruned_attention.py is exactly ours; else (None, the problem)."""
    if manifest is None:
        return None, f"{MODELING_FILE} cannot be verified: there is no manifest.json"
    if MODELING_FILE not in (manifest.get("files") or {}):
        return None, f"manifest.json does not list {MODELING_FILE}"
    file = path / MODELING_FILE
    if not file.is_file():
        return None, f"{MODELING_FILE} is missing"
    data = file.read_bytes()
    match = _BASE_PATTERN.search(data.decode("utf-8", errors="replace"))
    try:
        expected = modeling_source(match.group(1)).encode() if match else None
        if expected is not None:
            from surgery.modeling.pruned_attention import pruned_model_class
            pruned_model_class(match.group(1))  # the base must be a transformers model class
    except TypeError:
        expected = None
    if expected != data:
        return None, (f"{MODELING_FILE} differs from the modeling code this version of model-surgery writes "
                      f"(edited, or exported by another version: export it again with this version)")
    return match.group(1), None


def _auto_maps(path: Path) -> dict[str, dict]:
    maps = {}
    for name in ("config.json", "tokenizer_config.json"):
        file = path / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text())
        except (ValueError, UnicodeDecodeError):
            continue  # transformers will refuse the unreadable file itself, without running anything
        amap = data.get("auto_map") if isinstance(data, dict) else None
        if amap:
            maps[name] = amap if isinstance(amap, dict) else {"?": amap}
    return maps


def _targets(amap: dict) -> str:
    return ", ".join(f"{k} -> {v}" for k, v in sorted(amap.items(), key=lambda kv: str(kv[0])))
