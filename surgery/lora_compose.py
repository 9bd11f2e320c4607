"""LoRA adapters as players: load n peft adapters onto one base model, read each one's log-probabilities,
and compose a coalition of adapters either by language-model arithmetic or by weight-space merging.

Arithmetic (Tamine, Sakhi, Heymann; Dekoninck et al.): log pi_S = log pi_0 + sum_{l in S} (log pi_l - log pi_0),
up to normalisation, i.e. sum_{l in S} log pi_l - (|S| - 1) log pi_0. It is exact for sequentially
DPO-trained models at convergence, and it only needs the n + 1 models' log-probabilities once, after which
every coalition is one matrix product (`compose_logprobs`).

Merging: the coalition's model is the base plus the sum of its adapters' weight deltas, built by peft's
`add_weighted_adapter(..., combination_type="cat")` (concatenating the low-rank factors, with the adapters'
scalings folded in, is exactly sum_l B_l A_l s_l; "linear" averages the factors and is not). Each coalition
then costs its own forward pass.

peft is an optional dependency (the `adapters` extra); without it every entry point here says how to install it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from surgery.errors import SurgeryError

PEFT_INSTALL = 'pip install "model-surgery[adapters]"'
MERGED_NAME = "__coalition_merge__"


def require_peft():
    """The peft module, or a one-line error naming the install command."""
    try:
        import peft
    except ImportError:
        raise SurgeryError(f"LoRA adapter players need peft, which is not installed: {PEFT_INSTALL}") from None
    return peft


@dataclass
class AdapterSet:
    """A peft model holding the base and n named adapters (the players), plus where each came from."""

    model: nn.Module  # peft.PeftModel
    names: list[str]
    dirs: list[str]
    digests: list[str]

    def target_modules(self, name: str) -> frozenset[str]:
        """Names of the base modules that adapter `name` changes (as injected, not as configured)."""
        from peft.tuners.lora import LoraLayer

        return frozenset(path for path, module in self.model.base_model.model.named_modules()
                         if isinstance(module, LoraLayer) and name in module.lora_A)


def adapter_digest(directory: str | Path) -> str:
    """sha256 (20 hex digits) of an adapter directory's config and weights: its identity in a store."""
    directory = Path(directory)
    h = hashlib.sha256()
    for filename in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        path = directory / filename
        if path.is_file():
            h.update(filename.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:20]


def _adapter_tensors(directory: Path) -> dict[str, torch.Tensor]:
    if (directory / "adapter_model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(directory / "adapter_model.safetensors")
    if (directory / "adapter_model.bin").is_file():
        return torch.load(directory / "adapter_model.bin", map_location="cpu", weights_only=True)
    raise SurgeryError(f"{directory} holds no adapter weights (adapter_model.safetensors); "
                       "give a directory written by peft's save_pretrained")


def _module_io(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a linear-like module (nn.Linear or GPT-2's transposed Conv1D)."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return int(module.in_features), int(module.out_features)
    weight = getattr(module, "weight", None)
    if weight is not None and weight.ndim == 2 and hasattr(module, "nf"):  # transformers Conv1D: [in, out]
        return int(weight.shape[0]), int(weight.shape[1])
    return None


def check_adapter_fits(base: nn.Module, directory: str | Path) -> None:
    """Refuse an adapter trained for another base model: every module it adapts must exist in `base`
    with the shapes its LoRA factors were trained for. peft itself would only warn about missing modules."""
    directory = Path(directory)
    if not (directory / "adapter_config.json").is_file():
        raise SurgeryError(f"{directory} is not a peft adapter directory (no adapter_config.json); "
                           "give directories written by peft's save_pretrained")
    modules = dict(base.named_modules())
    for key, tensor in _adapter_tensors(directory).items():
        for part in (".lora_A.", ".lora_B."):
            if part not in key:
                continue
            path = key.split(part)[0].removeprefix("base_model.model.")
            module = modules.get(path)
            io = _module_io(module) if module is not None else None
            if io is None:
                raise SurgeryError(f"adapter {directory} was trained for another base model: it adapts {path!r}, "
                                   "which this base has no linear module for; load it with its own base model")
            fan = io[0] if part == ".lora_A." else io[1]
            dim = tensor.shape[1] if part == ".lora_A." else tensor.shape[0]
            if dim != fan:
                raise SurgeryError(f"adapter {directory} was trained for another base model: {path} has "
                                   f"{'in' if part == '.lora_A.' else 'out'}_features {fan} here, the adapter expects "
                                   f"{dim}; load it with its own base model")


def load_adapters(base: nn.Module, directories: Sequence[str | Path], names: Sequence[str] | None = None) -> AdapterSet:
    """Wrap `base` (modified in place by peft) with one adapter per directory, named `names` (default:
    the directories' base names). Each directory is checked against the base before anything loads."""
    require_peft()
    from peft import PeftModel

    directories = [Path(d) for d in directories]
    if not directories:
        raise SurgeryError("give at least one adapter directory")
    names = [str(n) for n in (names or [d.resolve().name for d in directories])]
    if len(names) != len(directories) or len(set(names)) != len(names):
        raise SurgeryError(f"adapter names must be unique, one per directory; got {names} (pass names=[...])")
    for directory in directories:
        check_adapter_fits(base, directory)
    model = PeftModel.from_pretrained(base, str(directories[0]), adapter_name=names[0])
    for directory, name in zip(directories[1:], names[1:]):
        model.load_adapter(str(directory), adapter_name=name)
    model.eval()
    return AdapterSet(model, names, [str(d) for d in directories], [adapter_digest(d) for d in directories])


@contextmanager
def active(adapters: AdapterSet, name: str | None) -> Iterator[nn.Module]:
    """The peft model with only adapter `name` active (None: the base, adapters disabled)."""
    if name is None:
        with adapters.model.disable_adapter():
            yield adapters.model
    else:
        adapters.model.set_adapter(name)
        yield adapters.model


def check_same_targets(adapters: AdapterSet) -> None:
    """Merge mode sums weight deltas module by module, so it needs adapters that change the same modules."""
    first = adapters.target_modules(adapters.names[0])
    for name in adapters.names[1:]:
        other = adapters.target_modules(name)
        if other != first:
            differ = sorted(first ^ other)[:3]
            raise SurgeryError(f"merge mode needs adapters with the same target modules; {adapters.names[0]!r} and "
                               f"{name!r} differ (e.g. {differ}); use composition='arithmetic' for such adapters")


@contextmanager
def merged(adapters: AdapterSet, members: Sequence[str]) -> Iterator[nn.Module]:
    """The peft model whose active adapter is the sum of the weight deltas of `members` (peft's "cat"
    weighted merge with weights 1); the base alone for no members. The merged adapter is removed after."""
    members = list(members)
    if not members:
        with active(adapters, None) as model:
            yield model
        return
    model = adapters.model
    model.add_weighted_adapter(members, [1.0] * len(members), MERGED_NAME, combination_type="cat")
    try:
        model.set_adapter(MERGED_NAME)
        yield model
    finally:
        model.set_adapter(adapters.names[0])
        model.delete_adapter(MERGED_NAME)


def compose_logprobs(base: torch.Tensor, per_adapter: torch.Tensor, coalitions: torch.Tensor) -> torch.Tensor:
    """Unnormalised log pi_S for every coalition at once: base + C @ (per_adapter - base).

    base [*shape], per_adapter [n, *shape], coalitions bool/0-1 [m, n] -> [m, *shape]. Normalise over
    the axis the distribution lives on (vocabulary, or the candidate set) afterwards."""
    deltas = (per_adapter - base.unsqueeze(0)).reshape(per_adapter.shape[0], -1)
    mixed = coalitions.to(deltas.dtype) @ deltas
    return base.unsqueeze(0) + mixed.reshape(coalitions.shape[0], *base.shape)
