"""Plans and exports with compensated removal: the export equals mean ablation; plan and manifest
say which removal they are; values from the other ablation are refused; exports keep a dtype."""

import json
import warnings

import numpy as np
import pytest
import torch
from token_batches import token_batch
from safetensors import safe_open

import surgery
from probes.values import values_from_arrays
from pruning.errors import PruningError
from pruning.evaluate import masked_logits
from pruning.export import export_pruned
from pruning.plan import PruningPlan, model_identity
from pruning.policies import head_plan
from surgery.engine import AblationEngine


def scored(loaded, batch):
    engine = AblationEngine(loaded, "layers")
    return engine.logits(torch.ones(1, engine.n_players, dtype=torch.bool), batch)[0]


def head_values(loaded, ablation, seed=0, batch=None):
    """Values as a game under `ablation` would leave them (its batch was its own mean reference)."""
    from probes.model_game import batch_digest, model_digest
    means = np.random.default_rng(seed).normal(size=len(loaded.components.heads))
    return values_from_arrays(loaded.components.heads, means, estimator="given",
                              fingerprint={"model": "tiny", "model_digest": model_digest(loaded), "ablation": ablation,
                                           "batch_digest": batch_digest(batch) if batch else "b" * 16,
                                           "reference_digest": None})


def test_compensated_export_equals_mean_ablation_for_every_family(tiny, tmp_path):
    cal = token_batch(tiny, batch=4, seq=12, seed=7)
    plan = head_plan(head_values(tiny, "mean", batch=cal), tiny, k=4)
    assert plan.removal_mode == "mean_compensated"  # inferred from the values' game
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same calibration as the game: nothing to warn about
        manifest = export_pruned(tiny, plan, tmp_path / "out", calibration=cal)
    assert manifest["removal"]["mode"] == "mean_compensated"
    assert manifest["removal"]["calibration"]["rows"] == 4 and manifest["removal"]["calibration"]["digest"]
    assert manifest["plan"]["removal_mode"] == "mean_compensated"
    assert any("MEAN-COMPENSATED" in note for note in manifest["notes"])
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["removal"] == manifest["removal"]
    reloaded = surgery.load(str(tmp_path / "out"))
    batch = token_batch(tiny)
    expected = masked_logits(tiny, plan, batch, calibration=cal)
    torch.testing.assert_close(scored(reloaded, batch), expected, rtol=0, atol=1e-5)
    zero = masked_logits(tiny, PruningPlan(plan.model, heads=plan.heads), batch)
    assert (zero - expected).abs().max() > 1e-2


def test_gqa_partial_groups_export_compensated(tiny_llama, tmp_path):
    cal = token_batch(tiny_llama, batch=4, seq=12, seed=7)
    plan = PruningPlan(model_identity(tiny_llama), heads=["L0.H0", "L0.H1", "L0.H3", "L1.H5", "L2.H0", "L2.H1",
                                                          "L2.H2"], removal_mode="mean_compensated")
    manifest = export_pruned(tiny_llama, plan, tmp_path / "out", calibration=cal)
    assert manifest["remote_code"]
    reloaded = surgery.load(str(tmp_path / "out"))
    assert reloaded.components.n_kv_heads == [2, 2, 1]
    batch = token_batch(tiny_llama)
    torch.testing.assert_close(scored(reloaded, batch), masked_logits(tiny_llama, plan, batch, calibration=cal),
                               rtol=0, atol=1e-5)


def test_removal_argument_overrides_the_plan_and_text_calibration_is_recorded(tiny_dir, tmp_path):
    loaded = surgery.load(tiny_dir)
    plan = PruningPlan(model_identity(loaded), heads=["L0.H0", "L0.H3", "L1.H0", "L1.H3", "L2.H0", "L2.H3"])
    manifest = export_pruned(loaded, plan, tmp_path / "out", removal="mean", calibration="builtin")
    assert manifest["plan"]["removal_mode"] == "mean_compensated"
    record = manifest["removal"]["calibration"]
    assert record["source"].startswith("builtin:") and record["n"] == 8 and record["seq_len"] == 64
    assert manifest["remote_code"] is False  # even head counts: stock Llama with attention_bias=True
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["attention_bias"] is True
    zero = export_pruned(loaded, plan, tmp_path / "zero")
    assert zero["removal"] == {"mode": "zero", "calibration": None}
    assert any("ZERO-removed" in note for note in zero["notes"])


def test_values_from_the_other_ablation_are_refused_naming_both(tiny_llama, tmp_path):
    zero_values = head_values(tiny_llama, "zero")
    with pytest.raises(PruningError, match="'zero' ablation.*'mean_compensated' removal"):
        head_plan(zero_values, tiny_llama, k=2, removal_mode="mean_compensated")
    with pytest.raises(PruningError, match="'mean' ablation.*'zero' removal"):
        head_plan(head_values(tiny_llama, "mean"), tiny_llama, k=2, removal_mode="zero")
    with pytest.warns(UserWarning, match="'zero' ablation"):
        allowed = head_plan(zero_values, tiny_llama, k=2, removal_mode="mean_compensated", allow_ablation_mismatch=True)
    assert allowed.removal_mode == "mean_compensated"
    # A plan made from zero-ablation values and exported with compensation: refused before writing.
    plan = head_plan(zero_values, tiny_llama, k=2)
    assert plan.removal_mode == "zero" and plan.provenance[0]["values"]["ablation"] == "zero"
    with pytest.raises(PruningError, match="'zero' ablation"):
        export_pruned(tiny_llama, plan, tmp_path / "out", removal="mean_compensated",
                      calibration=token_batch(tiny_llama))
    assert not (tmp_path / "out").exists()


def test_compensation_without_calibration_or_with_layers_is_refused(tiny_llama, tmp_path):
    plan = PruningPlan(model_identity(tiny_llama), heads=["L0.H0"], removal_mode="mean_compensated")
    with pytest.raises(PruningError, match="needs calibration tokens"):
        export_pruned(tiny_llama, plan, tmp_path / "out")
    with pytest.raises(PruningError, match="covers heads only"):
        PruningPlan(model_identity(tiny_llama), heads=["L0.H0"], layers=[2], removal_mode="mean_compensated")
    with pytest.raises(PruningError, match="removal_mode must be"):
        PruningPlan(model_identity(tiny_llama), heads=["L0.H0"], removal_mode="mean")
    with pytest.raises(PruningError, match="removal='median'"):
        export_pruned(tiny_llama, plan, tmp_path / "out", removal="median")
    layers = PruningPlan(model_identity(tiny_llama), layers=[2])
    with pytest.raises(PruningError, match="cannot merge"):
        plan.merged(PruningPlan(model_identity(tiny_llama), heads=["L1.H0"]))
    with pytest.raises(PruningError, match="covers heads only"):
        plan.merged(layers)


def test_plan_json_round_trips_the_removal_mode_and_old_plans_read_as_zero(tiny_llama, tmp_path):
    plan = head_plan(head_values(tiny_llama, "mean"), tiny_llama, k=2)
    assert plan.calibration["digest"] == "b" * 16  # the game's batch was its mean reference
    plan.save(tmp_path / "plan.json")
    again = PruningPlan.load(tmp_path / "plan.json")
    assert (again.removal_mode, again.calibration) == ("mean_compensated", plan.calibration)
    data = json.loads((tmp_path / "plan.json").read_text())
    del data["removal_mode"], data["calibration"]
    assert PruningPlan.from_json_dict(data).removal_mode == "zero"


def test_a_mean_game_records_its_reference_and_the_export_checks_it(tiny_llama, tmp_path):
    from probes.model_game import model_game
    from probes.metrics import make_metric
    cal = token_batch(tiny_llama, batch=4, seq=12, seed=7)
    game = model_game(tiny_llama, token_batch(tiny_llama), make_metric("logprob"), mode="mean", reference=cal)
    values = values_from_arrays(game.players, np.arange(18.0), estimator="given", fingerprint=game.fingerprint)
    plan = head_plan(values, tiny_llama, k=2)
    assert plan.removal_mode == "mean_compensated"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_pruned(tiny_llama, plan, tmp_path / "same", calibration=cal)
    with pytest.warns(UserWarning, match="biases differ from the game's means"):
        export_pruned(tiny_llama, plan, tmp_path / "other", calibration=token_batch(tiny_llama))


@pytest.mark.parametrize("dtype, torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_export_in_a_chosen_dtype_writes_that_dtype_and_reloads(tiny_llama, tmp_path, dtype, torch_dtype):
    plan = PruningPlan(model_identity(tiny_llama), heads=["L0.H0", "L1.H5"])
    manifest = export_pruned(tiny_llama, plan, tmp_path / "out", dtype=dtype)
    assert manifest["dtype"] == str(torch_dtype).removeprefix("torch.")
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["dtype"] == manifest["dtype"]
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch_dtype}
    full = export_pruned(tiny_llama, plan, tmp_path / "fp32")
    assert full["dtype"] == "float32" and manifest["bytes"] < 0.6 * full["bytes"]
    from transformers import AutoModelForCausalLM
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True, dtype="auto")
    assert next(reloaded.parameters()).dtype == torch_dtype
    batch = token_batch(tiny_llama)
    ours = scored(surgery.load(reloaded), batch).float()
    torch.testing.assert_close(ours, masked_logits(tiny_llama, plan, batch), rtol=0, atol=0.1)
    assert next(tiny_llama.model.parameters()).dtype == torch.float32  # the input model is untouched


def test_default_export_keeps_the_model_dtype_and_bad_dtypes_are_refused(tiny_llama, tmp_path):
    import copy
    half = surgery.load(copy.deepcopy(tiny_llama.model).to(torch.bfloat16))
    manifest = export_pruned(half, PruningPlan(model_identity(half), heads=["L0.H0"]), tmp_path / "out")
    assert manifest["dtype"] == "bfloat16"
    with pytest.raises(surgery.SurgeryError, match="dtype 'int8' is not supported"):
        export_pruned(tiny_llama, PruningPlan(model_identity(tiny_llama), heads=["L0.H0"]), tmp_path / "x",
                      dtype="int8")
