"""`surgery run` end to end on a tiny model: the default keep-model job ships what its game valued."""

import json

import torch
from helpers import run_cli

import surgery
from pruning.evaluate import masked_logits
from pruning.plan import PruningPlan

ARGS = ["--budget", "24", "--cal-n", "2", "--eval-n", "2", "--seq-len", "16", "--fraction", "0.2"]


def test_unrefitted_run_removes_heads_with_compensation_and_the_export_equals_mean_ablation(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(capsys, "run", "--model", tiny_dir, "--out", out, *ARGS, "--repair-n", "0")
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "keep-model" and report["removal"] == "mean_compensated"
    terms = [t["term"] for t in report["objective"]["terms"]]  # text loss plus every built-in task
    assert terms == ["loss", "induction", "ioi", "factual", "agreement", "greater_than"]
    assert report["game_dtype"] in ("bfloat16", "float32")
    plan = PruningPlan.load(out / "plan.json")
    n_heads = 18
    assert len(plan.heads) == round(0.2 * n_heads) == len(report["heads_removed"])
    steps = plan.provenance[0]["steps"]
    assert len(steps) == 2 and sum(s["new_evaluations"] for s in steps) <= 24  # two steps of at most 10%
    assert "perplexity" in stdout and "mean_compensated" in stdout

    # The export is the mean-ablated model, with the calibration sequences `run` drew as reference.
    from probes.tasks import get_task
    loaded = surgery.load(tiny_dir)
    text = get_task("text", n=4, seq_len=16).batch(loaded, seed=1000)
    calibration, probe = text.rows(2, 4).tokens, text.rows(0, 2).tokens
    reference = masked_logits(loaded, plan, probe, calibration=calibration)
    exported = surgery.load(out / "model")
    positions = probe.score_positions
    logits = exported.model(input_ids=probe.input_ids, attention_mask=probe.attention_mask).logits
    picked = logits.gather(1, positions.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    assert torch.allclose(picked, reference, atol=1e-5)

    # A rerun resumes from the store: nothing is evaluated again.
    code, stdout, stderr = run_cli(capsys, "run", "--model", tiny_dir, "--out", out, "--force", *ARGS, "--repair-n", "0")
    assert code == 0, stderr
    again = PruningPlan.load(out / "plan.json")
    assert again.heads == plan.heads
    assert all(s["new_evaluations"] == 0 for s in again.provenance[0]["steps"])


def test_default_run_refits_the_kept_heads_and_the_export_is_that_model(tiny_dir, tmp_path, capsys):
    from surgery.head_repair import repair_heads
    from probes.tasks import get_task

    out = tmp_path / "run"
    code, stdout, stderr = run_cli(capsys, "run", "--model", tiny_dir, "--out", out, *ARGS, "--repair-n", "6")
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    assert report["calibration"]["repair_sequences"] == 6 and report["head_repair"]["method"] == "least_squares_refit"
    plan = PruningPlan.load(out / "plan.json")
    assert plan.head_repair == {"method": "least_squares_refit", "ridge": 0.1}
    loaded = surgery.load(tiny_dir)
    text = get_task("text", n=10, seq_len=16).batch(loaded, seed=1000)
    # The game's 2 calibration rows and the 6 repair rows after the 2 evaluation rows.
    expected = repair_heads(loaded, plan.heads, text.rows(2, 10).tokens)
    assert report["head_repair"]["calibration_tokens"] == int(text.rows(2, 10).tokens.attention_mask.sum())
    probe = text.rows(0, 2).tokens
    exported = surgery.load(out / "model")
    with torch.no_grad():
        got = exported.model(input_ids=probe.input_ids, attention_mask=probe.attention_mask).logits
        want = expected.model(input_ids=probe.input_ids, attention_mask=probe.attention_mask).logits
    assert torch.allclose(got, want, atol=1e-5)


def test_shapley_method_keeps_the_earlier_job(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, stderr = run_cli(capsys, "run", "--model", tiny_dir, "--out", out, "--method", "shapley", "--task", "ioi",
                              *ARGS)
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "shapley" and report["removal"] == "zero" and (out / "values.json").is_file()
