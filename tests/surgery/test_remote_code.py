"""No Python code from a model directory runs unless the user opts in (issue 19, item 1); our own
exports load without opting in, from the installed package; a mistyped path fails fast."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from token_batches import token_batch

import surgery
from surgery.cut import mask_heads, remove_heads, remove_layers
from surgery.errors import ModelNotFoundError
from surgery.remote_code import RemoteCodeError
from surgery.export_manifest import file_sha256
from surgery.save import CorruptExportError, save_model, verify_export

EVIL = '''
from pathlib import Path
Path({marker!r}).write_text("pwned")  # runs on import: what an attacker's code would do
from transformers import LlamaForCausalLM


class EvilModel(LlamaForCausalLM):
    pass
'''


def plant(directory: Path, marker: Path, name: str = "evil_model.py", auto_map: bool = True) -> None:
    (directory / name).write_text(EVIL.format(marker=str(marker)))
    if auto_map:
        config = json.loads((directory / "config.json").read_text())
        config["auto_map"] = {"AutoModelForCausalLM": f"{name[:-3]}.EvilModel"}
        (directory / "config.json").write_text(json.dumps(config))


def relist(directory: Path, **changes) -> None:
    """Rewrite manifest.json so its checksums cover the directory as it is now (an attacker can too)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    names = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name != "manifest.json")
    manifest["files"] = {n: file_sha256(directory / n) for n in names}
    manifest["file_sizes"] = {n: (directory / n).stat().st_size for n in names}
    manifest.update(changes)
    (directory / "manifest.json").write_text(json.dumps(manifest))


def logits(loaded, batch):
    with torch.no_grad():
        return loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits


def test_a_planted_auto_map_does_not_run_without_opting_in(tiny_llama, tmp_path):
    model, marker = tmp_path / "model", tmp_path / "pwned"
    tiny_llama.model.save_pretrained(model)
    plant(model, marker)
    with pytest.raises(RemoteCodeError, match=r"evil_model.EvilModel.*trust_remote_code=True.*--trust-remote-code"):
        surgery.load(str(model))
    assert not marker.exists()
    loaded = surgery.load(str(model), trust_remote_code=True)  # opting in runs it, as transformers would
    assert marker.read_text() == "pwned" and type(loaded.model).__name__ == "EvilModel"


def test_an_export_whose_manifest_says_no_remote_code_cannot_smuggle_it(tiny_llama, tmp_path):
    export, marker = tmp_path / "export", tmp_path / "pwned"
    save_model(remove_layers(tiny_llama, [2]), export, manifest={})
    plant(export, marker)
    relist(export, remote_code=False)
    verify_export(export)  # checksums all match: the manifest itself was rewritten
    with pytest.raises(RemoteCodeError, match="evil_model.EvilModel"):
        surgery.load(str(export))
    assert not marker.exists()


def test_an_unlisted_code_file_in_a_genuine_export_is_refused(tiny_llama, tmp_path):
    export, marker = tmp_path / "export", tmp_path / "pwned"
    save_model(remove_heads(tiny_llama, {0: [0]}), export)
    plant(export, marker, name="helper.py", auto_map=False)
    for check in (verify_export, surgery.load):
        with pytest.raises(CorruptExportError, match=r"helper.py is code that manifest.json does not list.*--trust-remote-code"):
            check(str(export))
    assert not marker.exists()
    assert surgery.load(str(export), trust_remote_code=True).components.n_heads[0] == 5


def test_an_edited_modeling_file_is_refused_even_with_matching_checksums(tiny_llama, tmp_path):
    export, marker = tmp_path / "export", tmp_path / "pwned"
    save_model(remove_heads(tiny_llama, {0: [0]}), export)
    modeling = export / "pruned_attention.py"
    modeling.write_text(EVIL.format(marker=str(marker)) + modeling.read_text())
    relist(export)
    with pytest.raises(RemoteCodeError, match="pruned_attention.py differs from the modeling code"):
        surgery.load(str(export))
    assert not marker.exists()


def test_our_uneven_export_loads_without_trust_from_the_installed_package(tiny_llama, tmp_path):
    heads = {0: [0, 3], 1: [5]}
    export = tmp_path / "export"
    save_model(remove_heads(tiny_llama, heads), export)
    loaded = surgery.load(str(export))
    assert type(loaded.model).__module__ == "surgery.modeling.pruned_attention"
    batch = token_batch(tiny_llama)
    torch.testing.assert_close(logits(loaded, batch), logits(mask_heads(tiny_llama, heads), batch), rtol=0, atol=1e-5)


def test_a_pruned_export_can_be_pruned_again(tiny_llama, tmp_path):
    """Used to fail: "PrunedLlamaForCausalLM is not a transformers class"."""
    first, second = tmp_path / "first", tmp_path / "second"
    save_model(remove_heads(tiny_llama, {0: [0]}), first)
    reloaded = surgery.load(str(first))  # heads renumbered: L1 still has all 6, L0 has 5
    save_model(remove_heads(reloaded, {1: [5]}), second)
    again = surgery.load(str(second))
    assert again.components.n_heads == [5, 5, 6]
    batch = token_batch(tiny_llama)
    torch.testing.assert_close(logits(again, batch), logits(mask_heads(tiny_llama, {0: [0], 1: [5]}), batch),
                               rtol=0, atol=1e-5)
    # and plain transformers still loads the re-pruned export with its own copy of the code
    import transformers as tf
    plain = tf.AutoModelForCausalLM.from_pretrained(second, trust_remote_code=True).eval()
    torch.testing.assert_close(plain(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                     use_cache=False).logits, logits(again, batch), rtol=0, atol=0)


def test_loading_an_uneven_export_prints_no_global_attribute_warning(tiny_llama, tmp_path):
    export = tmp_path / "export"
    save_model(remove_heads(tiny_llama, {0: [0, 3], 1: [5]}), export)
    code = f"import surgery; surgery.load({str(export)!r})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr
    assert "Reading global config value for per-layer attribute" not in result.stderr + result.stdout


@pytest.mark.parametrize("name", ["./runs/expor", "~/no-such-model-dir", "runs/expor", "/no/such/dir", "a b"])
def test_a_mistyped_local_path_fails_fast_without_asking_the_hub(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "export").mkdir()
    import transformers

    def no_hub(*args, **kwargs):
        raise AssertionError("a local path was looked up on the hub")
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_hub)
    started = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        surgery.load(name)
    assert time.perf_counter() - started < 2


def test_a_cli_command_refuses_a_planted_auto_map_and_names_the_flag(tiny_llama, tmp_path, capsys):
    from pruning.cli import main
    model, marker = tmp_path / "model", tmp_path / "pwned"
    tiny_llama.model.save_pretrained(model)
    plant(model, marker)
    assert main(["info", "--model", str(model)]) == 2
    err = capsys.readouterr().err
    assert "evil_model.EvilModel" in err and "--trust-remote-code" in err and not marker.exists()
    main(["info", "--model", str(model), "--trust-remote-code"])
    assert marker.exists()
