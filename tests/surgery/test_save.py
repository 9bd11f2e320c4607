"""Exports reload with from_pretrained and give the masked model's logits; damage is detected."""

import json

import pytest
import torch
import transformers as tf
from token_batches import token_batch

from surgery.cut import mask_heads, remove_heads, remove_layers
from surgery.errors import SurgeryError
from surgery.save import CorruptExportError, save_model, verify_export


def logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits


def auto_class(tiny):
    return tf.AutoModelForMaskedLM if tiny.adapter.family == "bert" else tf.AutoModelForCausalLM


def export_and_reload(tiny, cut, path, *, remote):
    info = save_model(cut, path, manifest={"source": "tiny"})
    assert info["remote_code"] is remote
    verify_export(path)
    return info, auto_class(tiny).from_pretrained(path, trust_remote_code=remote).eval()


@pytest.mark.parametrize("kind", ["uniform", "uneven"])
def test_head_export_reloads_with_masked_logits(tiny, tmp_path, kind):
    family = tiny.adapter.family
    if kind == "uniform":
        heads = {l: [0, 3] for l in range(3)} if family == "llama" else {l: [1] for l in range(3)}
    else:
        heads = {0: [0, 3], 1: [0, 1, 2]} if family == "llama" else {0: [0], 1: [1, 2], 2: [3]}
    cut = remove_heads(tiny, heads)
    # Plain checkpoint only where the stock class can express the counts (Llama, same counts everywhere).
    remote = not (family == "llama" and kind == "uniform")
    info, reloaded = export_and_reload(tiny, cut, tmp_path / "out", remote=remote)
    batch = token_batch(tiny)
    torch.testing.assert_close(logits(reloaded, batch), logits(mask_heads(tiny, heads).model, batch),
                               rtol=0, atol=1e-5)
    assert info["parameters"] == sum(p.numel() for p in reloaded.parameters())
    assert info["parameters"] < sum(p.numel() for p in tiny.model.parameters())
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert ("auto_map" in config) is remote and ("per_layer_config" in config) is remote
    if not remote:
        assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (4, 2, 8)


def test_gqa_partial_group_export_reloads_exactly(tiny_llama, tmp_path):
    heads = {0: [0, 1], 1: [5], 2: [0, 1, 2]}
    cut = remove_heads(tiny_llama, heads)
    _, reloaded = export_and_reload(tiny_llama, cut, tmp_path / "out", remote=True)
    assert type(reloaded).__name__ == "PrunedLlamaForCausalLM"
    assert [l.self_attn.k_proj.out_features // 8 for l in reloaded.model.layers] == cut.components.n_kv_heads
    batch = token_batch(tiny_llama)
    torch.testing.assert_close(logits(reloaded, batch), logits(mask_heads(tiny_llama, heads).model, batch),
                               rtol=0, atol=1e-5)


def test_uneven_export_needs_trust_remote_code(tiny_llama, tmp_path):
    save_model(remove_heads(tiny_llama, {0: [0]}), tmp_path / "out")
    with pytest.raises(Exception):
        tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=False)


def test_layer_export_is_a_plain_checkpoint(tiny, tmp_path):
    cut = remove_layers(tiny, [0])
    _, reloaded = export_and_reload(tiny, cut, tmp_path / "out", remote=False)
    assert reloaded.config.num_hidden_layers == 2
    batch = token_batch(tiny)
    torch.testing.assert_close(logits(reloaded, batch), logits(cut.model, batch), rtol=0, atol=1e-5)


def test_manifest_has_checksums_sizes_and_counts(tiny_llama, tmp_path):
    info = save_model(tiny_llama, tmp_path / "out", manifest={"plan": {"heads": []}},
                      extra_files={"README.md": "pruned\n"})
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["plan"] == {"heads": []}
    assert {"model.safetensors", "config.json", "README.md"} <= set(manifest["files"])
    assert manifest["files"] == info["files"] and manifest["bytes"] == info["bytes"]
    assert manifest["parameters"] == sum(p.numel() for p in tiny_llama.model.parameters())


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "no_manifest"])
def test_damaged_export_is_detected_naming_the_file(tiny_llama, tmp_path, damage):
    out = tmp_path / "out"
    save_model(tiny_llama, out, manifest={})
    weights = out / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif damage == "delete":
        weights.unlink()
    else:
        (out / "manifest.json").unlink()
    match = {"truncate": "model.safetensors.*truncated", "flip": "model.safetensors.*corrupt",
             "delete": "model.safetensors.*missing", "no_manifest": "no manifest.json"}[damage]
    with pytest.raises(CorruptExportError, match=match):
        verify_export(out)


def test_existing_directory_is_refused_without_force(tiny_llama, tmp_path):
    out = tmp_path / "out"
    save_model(tiny_llama, out, manifest={})
    with pytest.raises(SurgeryError, match="already exists"):
        save_model(remove_layers(tiny_llama, [2]), out)
    assert verify_export(out)["parameters"] == sum(p.numel() for p in tiny_llama.model.parameters())
    save_model(remove_layers(tiny_llama, [2]), out, force=True, manifest={})  # our own export: replaced
    assert verify_export(out)["parameters"] < sum(p.numel() for p in tiny_llama.model.parameters())
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or backup left behind


def test_force_never_replaces_a_users_directory(tiny_llama, tmp_path):
    """The attack: `--out DIR --force` used to delete whatever DIR held (a thesis, a data folder)."""
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.txt").write_text("four years of work")
    (out / "sub" / "data.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SurgeryError, match=r"out exists and was not written by model-surgery.*sub.*thesis.txt"):
        save_model(tiny_llama, out, force=True)
    assert (out / "thesis.txt").read_text() == "four years of work"
    assert (out / "sub" / "data.csv").read_text() == "a,b\n1,2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_force_never_replaces_an_export_holding_a_users_file(tiny_llama, tmp_path):
    out = tmp_path / "out"
    save_model(tiny_llama, out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SurgeryError, match="does not list: notes.txt"):
        save_model(remove_layers(tiny_llama, [2]), out, force=True)
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("spelling", ["same", "trailing_slash", "symlink"])
def test_an_export_never_overwrites_its_own_source_model(tiny_llama, tmp_path, spelling):
    import surgery
    source = tmp_path / "model"
    save_model(tiny_llama, source)
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    (tmp_path / "link").symlink_to(source)
    loaded = surgery.load(str(source))
    out = {"same": source, "trailing_slash": f"{source}/", "symlink": tmp_path / "link"}[spelling]
    with pytest.raises(SurgeryError, match="would overwrite"):
        save_model(remove_layers(loaded, [2]), out, force=True)
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before


def test_exports_are_private_to_the_user(tiny_llama, tmp_path):
    out = tmp_path / "out"
    save_model(remove_heads(tiny_llama, {0: [0]}), out)
    assert out.stat().st_mode & 0o777 == 0o700
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o600}


def test_failed_export_leaves_nothing_that_looks_valid(tiny_llama, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(type(tiny_llama.model), "save_pretrained", boom)
    with pytest.raises(OSError, match="disk full"):
        save_model(tiny_llama, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
