"""Cut heads and layers out of a model physically, or mask heads (the same-size variant).

`remove_heads` shrinks the query/key/value/output matrices (and biases) of every family:
separate projections (Llama/Qwen2/Mistral with GQA, BERT), GPT-2's fused Conv1D `c_attn`
([q | k | v], weights stored [in, out]) and GPT-NeoX's interleaved `query_key_value` (per head
[q_h | k_h | v_h]). The cut model gives the same logits as the original with those heads'
output-projection columns zeroed (`mask_heads`), up to float rounding.

Grouped-query attention. transformers maps query head h to key/value head h // (n_q / n_kv)
(`repeat_kv`, equal groups). A key/value head goes only when every query head reading it goes. When
a group loses only some of its query heads the groups become uneven (say 3, 1 and 2 left), which
`repeat_kv` cannot express. By default (`partial_groups="share"`) such a layer keeps every needed
key/value head once and reads it through a gather map (`SharedKVProjection`, map in
`config.surgery_kv_of_query`): exact, and the model only shrinks, at the price of a remote-code
export. `partial_groups="duplicate"` instead copies shared key/value heads until the groups are
equal again (g = gcd of the kept counts; stock attention, but the copies can make the model
bigger than the original); `partial_groups="error"` refuses.

Layers that lose every head. transformers' attention cannot run with zero heads (it reshapes with
-1), so by default this is refused, pointing at `remove_layers`. `empty_layers="keep_zeroed_head"`
keeps one placeholder head whose output-projection columns are zero: the layer's attention then
adds only the output bias, exactly what the masked model does.

Compensation. `compensate_with=batch` (remove_heads and mask_heads) folds each removed head's mean
output-projection input over the batch's real tokens into the output bias (`surgery/compensation.py`),
so the result equals mean ablation with that batch as reference instead of zero ablation.

Config. When every layer keeps the same counts and the stock config class accepts them (Llama
family: `hidden_size % num_attention_heads == 0`), the config gets `num_attention_heads`,
`num_key_value_heads` and an explicit `head_dim`: a plain checkpoint. Otherwise (uneven counts,
or any head cut in GPT-2 / GPT-NeoX / BERT, whose stock classes derive the head size from
`hidden_size / num_attention_heads`) the global counts stay the original ones and each layer's
counts go into transformers' native `config.per_layer_config`; such a model is exported with
`surgery/modeling/pruned_attention.py` and loads with `trust_remote_code=True`.
"""

from __future__ import annotations

import copy as copy_module
import math
from collections.abc import Iterable

import torch

from surgery.adapters.layouts import head_rows, replace_parameter
from surgery.batch import TokenBatch
from surgery.compensation import enable_output_bias, fold_head_means, head_means
from surgery.components import ComponentIndex, head_name, layer_name
from surgery.config_counts import clear_per_layer, head_counts, write_head_counts
from surgery.errors import SurgeryError
from surgery.loading import LoadedModel, load, parameter_count

# head_counts and parameter_count live in config_counts / loading; callers import them from here too.
__all__ = ["remove_heads", "mask_heads", "remove_layers", "head_counts", "parameter_count", "PARTIAL_GROUPS",
           "EMPTY_LAYERS", "heads_by_layer"]

PARTIAL_GROUPS = ("share", "duplicate", "error")
EMPTY_LAYERS = ("error", "keep_zeroed_head")


def remove_heads(loaded_or_model, heads, *, copy: bool = True, partial_groups: str = "share",
                 empty_layers: str = "error", compensate_with: TokenBatch | None = None) -> LoadedModel:
    """Physically remove attention heads. `heads`: names ["L1.H3", ...] or {layer: [head, ...]}.

    Returns a new LoadedModel (the input is untouched when copy=True) whose components are
    renumbered: the kept heads of each layer are H0.. in their original order.
    compensate_with: a calibration batch; the removed heads' mean output over its real tokens is
    folded into the output-projection bias, so the cut model equals mean ablation
    (`AblationEngine(mode="mean", reference=compensate_with)`) instead of zero ablation.
    """
    if partial_groups not in PARTIAL_GROUPS:
        raise SurgeryError(f"partial_groups={partial_groups!r}: use one of {PARTIAL_GROUPS}")
    if empty_layers not in EMPTY_LAYERS:
        raise SurgeryError(f"empty_layers={empty_layers!r}: use one of {EMPTY_LAYERS}")
    loaded = load(loaded_or_model)
    comps = loaded.components
    drop = heads_by_layer(comps, heads)
    if sum(len(h) for h in drop.values()) == sum(comps.n_heads):
        raise SurgeryError(f"removing all {sum(comps.n_heads)} heads of the model leaves no attention at all; "
                           f"keep at least one head, or remove layers with remove_layers()")
    plans = {}
    for layer, dropped in sorted(drop.items()):
        plans[layer] = _plan_layer(comps, layer, dropped, partial_groups, empty_layers)

    means = head_means(loaded, drop, compensate_with) if compensate_with is not None else None
    model = copy_module.deepcopy(loaded.model) if copy else loaded.model
    adapter = loaded.adapter
    if means is not None:
        enable_output_bias(model, adapter)
    blocks = adapter.blocks(model)
    n_q, n_kv = list(comps.n_heads), list(comps.n_kv_heads)
    kv_maps = dict(comps.kv_maps)
    with torch.no_grad():
        for layer, (keep_q, kv_src, kv_map, placeholder) in plans.items():
            if means is not None:
                fold_head_means(blocks[layer], adapter, comps.head_dim, drop[layer], means[layer])
            _cut_layer(blocks[layer], adapter, comps, layer, keep_q, kv_src, kv_map, placeholder)
            n_q[layer], n_kv[layer] = len(keep_q), len(kv_src)
            kv_maps.pop(layer, None)
            if kv_map is not None:
                kv_maps[layer] = kv_map
    write_head_counts(model, adapter, n_q, n_kv, comps.head_dim, kv_maps)
    return LoadedModel(model, loaded.tokenizer, adapter, ComponentIndex(n_q, n_kv, comps.head_dim, kv_maps),
                       f"{loaded.source} [heads removed: {sum(len(h) for h in drop.values())}]")


def mask_heads(loaded_or_model, heads, *, copy: bool = True, compensate_with: TokenBatch | None = None
               ) -> LoadedModel:
    """The MASKED variant: zero the heads' output-projection columns. Same size, loads anywhere.

    Numerically what zero-ablation does (mean ablation with `compensate_with`, as in remove_heads);
    the file does not shrink. The masked head names are recorded in `config.surgery_masked_heads`
    so an export says what it is.
    """
    loaded = load(loaded_or_model)
    comps, adapter = loaded.components, loaded.adapter
    drop = heads_by_layer(comps, heads)
    means = head_means(loaded, drop, compensate_with) if compensate_with is not None else None
    model = copy_module.deepcopy(loaded.model) if copy else loaded.model
    if means is not None:
        enable_output_bias(model, adapter)
    blocks = adapter.blocks(model)
    with torch.no_grad():
        for layer, dropped in drop.items():
            if means is not None:
                fold_head_means(blocks[layer], adapter, comps.head_dim, dropped, means[layer])
            proj = blocks[layer].get_submodule(adapter.attn_out_proj)
            for head in dropped:
                _zero_out_columns(proj, adapter, head, comps.head_dim)
    previous = list(getattr(model.config, "surgery_masked_heads", None) or [])
    names = [head_name(l, h) for l, hs in sorted(drop.items()) for h in hs]
    model.config.surgery_masked_heads = sorted(set(previous) | set(names))
    return LoadedModel(model, loaded.tokenizer, adapter, comps,
                       f"{loaded.source} [MASKED, same size: {len(names)} heads zeroed]")


def remove_layers(loaded_or_model, layers: Iterable[int | str], *, copy: bool = True) -> LoadedModel:
    """Drop whole blocks. Layer indices (or names 'L5'); later layers are renumbered."""
    loaded = load(loaded_or_model)
    comps, adapter = loaded.components, loaded.adapter
    drop = set()
    for item in ([layers] if isinstance(layers, (int, str)) else layers):
        name = item if isinstance(item, str) else layer_name(item)
        component = comps.parse(name)
        if component.kind != "layer":
            raise SurgeryError(f"remove_layers takes layers ('L5' or 5), got {name!r}")
        drop.add(component.layer)
    if len(drop) == comps.n_layers:
        raise SurgeryError(f"removing all {comps.n_layers} layers leaves no model; keep at least one")
    config = loaded.model.config
    if drop and getattr(config, "scale_attn_by_inverse_layer_idx", False):
        raise SurgeryError("this GPT-2 config scales attention by 1/(layer index + 1); removing layers would "
                           "change the scale of every later layer. Mask them instead (engine ablation).")
    model = copy_module.deepcopy(loaded.model) if copy else loaded.model
    blocks = adapter.blocks(model)
    keep = [i for i in range(comps.n_layers) if i not in drop]
    for new_index, block in enumerate(blocks[i] for i in keep):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    kept_blocks = [blocks[i] for i in keep]
    while len(blocks):
        del blocks[len(blocks) - 1]
    for block in kept_blocks:
        blocks.append(block)
    n_q = [comps.n_heads[i] for i in keep]
    n_kv = [comps.n_kv_heads[i] for i in keep]
    kv_maps = {new: comps.kv_maps[old] for new, old in enumerate(keep) if old in comps.kv_maps}
    cfg = model.config
    layer_types = getattr(cfg, "layer_types", None)
    # per_layer_config is keyed by layer index: clear it before the count changes, rewrite after.
    clear_per_layer(cfg)
    cfg.num_hidden_layers = len(keep)
    if isinstance(layer_types, (list, tuple)) and len(layer_types) == comps.n_layers:
        cfg.layer_types = [layer_types[i] for i in keep]
    write_head_counts(model, adapter, n_q, n_kv, comps.head_dim, kv_maps)
    return LoadedModel(model, loaded.tokenizer, adapter, ComponentIndex(n_q, n_kv, comps.head_dim, kv_maps),
                       f"{loaded.source} [layers removed: {sorted(drop)}]")


# ---------------------------------------------------------------------------------------------

def heads_by_layer(comps: ComponentIndex, heads) -> dict[int, list[int]]:
    """{layer: sorted head indices} from names ["L1.H3", ...] or {layer: [head, ...]}, checked against comps."""
    drop: dict[int, set[int]] = {}
    if isinstance(heads, dict):
        for layer, hs in heads.items():
            for head in hs:
                c = comps.parse(head_name(layer, head))
                drop.setdefault(c.layer, set()).add(c.head)
    else:
        if isinstance(heads, str):
            heads = [heads]
        for name in heads:
            c = comps.parse(name)
            if c.kind != "head":
                raise SurgeryError(f"{name!r} is not a head; use 'L<layer>.H<head>' (or remove_layers for layers)")
            drop.setdefault(c.layer, set()).add(c.head)
    return {layer: sorted(hs) for layer, hs in drop.items() if hs}


def _plan_layer(comps, layer, dropped, partial_groups, empty_layers):
    """(kept query heads, source key/value head of each new kv slot, gather map or None, placeholder?)."""
    keep_q = [h for h in range(comps.n_heads[layer]) if h not in set(dropped)]
    placeholder = False
    if not keep_q:
        if empty_layers == "error":
            raise SurgeryError(
                f"removing all {comps.n_heads[layer]} heads of layer {layer} leaves a zero-width attention, "
                f"which transformers cannot run. Remove the whole layer (remove_layers([{layer}])), keep a "
                f"head, or pass empty_layers='keep_zeroed_head' (one placeholder head with a zero output).")
        keep_q, placeholder = [0], True
    groups = comps.kv_groups(layer)
    kept_per_group = [sum(1 for h in group if h in keep_q) for group in groups]
    partial = any(c and c != len(groups[k]) for k, c in enumerate(kept_per_group))
    if partial and max(len(g) for g in groups) > 1 and partial_groups == "error":
        detail = ", ".join(f"kv head {k}: {c}/{len(groups[k])} query heads kept"
                           for k, c in enumerate(kept_per_group) if c and c != len(groups[k]))
        raise SurgeryError(
            f"layer {layer}: removing only some query heads of a key/value group ({detail}) breaks the uniform "
            f"grouping transformers assumes. Use partial_groups='share' (exact: uneven groups read their "
            f"key/value heads through a gather map) or 'duplicate', remove whole groups {groups}, or mask the "
            f"heads with mask_heads().")
    if partial_groups == "duplicate":
        # Copy shared key/value heads until every group has g query heads (kept heads are group-contiguous).
        g = math.gcd(*[c for c in kept_per_group if c])
        return keep_q, [k for k, c in enumerate(kept_per_group) for _ in range(c // g)], None, placeholder
    kv_of_kept = [comps.kv_head_of(layer, h) for h in keep_q]
    kv_src = sorted(set(kv_of_kept))
    kv_map = [kv_src.index(k) for k in kv_of_kept]
    g = len(keep_q) // len(kv_src)
    if kv_map == [i // g for i in range(len(keep_q))]:
        kv_map = None  # equal contiguous groups: transformers' own repeat_kv layout
    return keep_q, kv_src, kv_map, placeholder


def _cut_layer(block, adapter, comps, layer, keep_q, kv_src, kv_map, placeholder):
    D = comps.head_dim
    adapter.layout.cut(block, adapter.qkv_paths, comps.n_heads[layer], comps.n_kv_heads[layer], D,
                       keep_q, kv_src, kv_map)
    q_rows = head_rows(keep_q, D)
    out = block.get_submodule(adapter.attn_out_proj)
    if adapter.out_proj_transposed:  # Conv1D weight [in, out]
        replace_parameter(out, "weight", out.weight[q_rows])
        out.nx = len(q_rows)
    else:
        replace_parameter(out, "weight", out.weight[:, q_rows])
        out.in_features = len(q_rows)
    if placeholder:
        _zero_out_columns(out, adapter, 0, D)
    adapter.set_attention_counts(block, len(keep_q), len(kv_src), D)


def _zero_out_columns(proj, adapter, head, D):
    cols = slice(head * D, (head + 1) * D)
    if adapter.out_proj_transposed:
        proj.weight[cols, :] = 0
    else:
        proj.weight[:, cols] = 0
