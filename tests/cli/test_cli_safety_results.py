"""Through the CLI: no plan from unverifiable values, settings that would make a manifest lie are refused,
short texts and over-long sequences are reported or refused, --metric kl works, binary text is refused."""

import json
import re

import numpy as np
import pytest
from helpers import run_cli

import surgery
from probes.head_values import HeadValues
from probes.model_game import model_digest
from probes.values import Values, values_from_arrays
from pruning.plan import PruningPlan

SENTENCE = "The capital of France is Paris, and the capital of Italy is Rome. "


def one_line_error(code, err):
    assert code == 2, err
    lines = [l for l in err.strip().splitlines() if l.startswith("surgery: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def unverified(tiny_dir, tmp_path_factory):
    """Head and layer values of the right grid that carry no model digest (hand-made or stripped)."""
    d = tmp_path_factory.mktemp("unverified")
    loaded = surgery.load(tiny_dir)
    values_from_arrays(loaded.components.heads, np.arange(18.0)).save(d / "heads.json")
    values_from_arrays(loaded.components.layers, [1.0, 0.0, 0.5],
                       fingerprint={"model": str(tiny_dir), "model_digest": ""}).save(d / "layers.json")
    return d


@pytest.mark.parametrize("kind, file, flags", [
    ("heads", "heads.json", ["--k", "2"]),
    ("layers", "layers.json", ["--k", "1"]),
    ("sparsity", "layers.json", ["--target", "0.5"]),
])
def test_values_without_a_digest_give_no_plan_unless_the_override_is_given_and_recorded(
        tiny_dir, unverified, tmp_path, capsys, kind, file, flags):
    out = tmp_path / "plan.json"
    line = one_line_error(*run_cli(capsys, "plan", kind, "--model", tiny_dir, "--values", unverified / file, *flags,
                                   "--out", out)[::2])
    assert "no model digest" in line and "--allow-unverified-values" in line and not out.exists()
    code, _, err = run_cli(capsys, "plan", kind, "--model", tiny_dir, "--values", unverified / file, *flags,
                           "--allow-unverified-values", "--out", out)
    assert code == 0, err
    record = json.loads(out.read_text())["provenance"][0]
    assert record["allow_unverified_values"] is True and record["values"]["model_check"]["verified"] is False


@pytest.mark.parametrize("flags, message", [
    (["--target", "0.9", "--n-m", "2:4"], "conflicts with 2:4"),
    (["--target", "0.5", "--n-m", "4:2"], "1 <= N < M"),
    (["--target", "0.5", "--n-m", "0:0"], "1 <= N < M"),
    (["--target", "0.5", "--n-m", "2:4", "--allocation", "owl"], "allocation 'uniform'"),
])
def test_n_m_settings_that_would_make_the_manifest_lie_or_crash_are_refused_at_plan_time(
        tiny_dir, tmp_path, capsys, flags, message):
    out = tmp_path / "plan.json"
    line = one_line_error(*run_cli(capsys, "plan", "sparsity", "--model", tiny_dir, "--allocation", "uniform",
                                   *flags, "--out", out)[::2])
    assert message in line and not out.exists()


def test_n_m_plan_says_what_the_export_holds(tiny_dir, tmp_path, capsys):
    out = tmp_path / "plan.json"
    code, stdout, err = run_cli(capsys, "plan", "sparsity", "--model", tiny_dir, "--allocation", "uniform",
                                "--target", "0.5", "--n-m", "2:4", "--method", "magnitude", "--out", out)
    assert code == 0, err
    plan = PruningPlan.load(out)
    assert plan.n_m == [2, 4] and set(plan.sparsity.values()) == {0.5}
    code, stdout, err = run_cli(capsys, "prune", "--model", tiny_dir, "--plan", out, "--out", tmp_path / "e")
    assert code == 0, err
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    from pruning.sparsity import block_linears
    loaded = surgery.load(tiny_dir)
    linear = sum(m.weight.numel() for l in range(3) for m in block_linears(loaded, l).values())
    zeroed = manifest["before"]["nonzero_parameters"] - manifest["after"]["nonzero_parameters"]
    assert zeroed == linear // 2  # exactly the 0.5 the plan states, in the block linears


def test_eval_on_a_short_text_reports_the_sequences_used_and_warns(tiny_dir, tmp_path, capsys):
    text = tmp_path / "short.txt"
    text.write_text(SENTENCE * 12)
    out = tmp_path / "eval.json"
    code, stdout, err = run_cli(capsys, "eval", "--model", tiny_dir, "--task", "factual", "--text", text,
                                "--n", "16", "--seq-len", "64", "--out", out)
    assert code == 0, err
    used = json.loads(out.read_text())["text"]["sequences"]
    assert 1 <= used < 16
    assert re.search(rf"surgery: warning: .*gives only {used} sequence\(s\).*fewer than the 16 asked", err)
    assert f"({used} sequences)" in stdout and f"for {used} x 64 tokens" in stdout and "16 x 64" not in stdout


@pytest.mark.parametrize("argv", [
    ["eval", "--task", "factual", "--seq-len", "100000"],
    ["values", "layers", "--task", "text", "--seq-len", "100000", "--out", "{tmp}/v.json"],
])
def test_a_seq_len_beyond_the_model_context_is_refused_before_any_work(tiny_dir, tmp_path, capsys, argv):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    line = one_line_error(*run_cli(capsys, *argv, "--model", tiny_dir)[::2])
    assert "--seq-len 100000 is longer than the context" in line and "128 tokens" in line


def test_metric_kl_works_from_the_cli(tiny_dir, tmp_path, capsys):
    out = tmp_path / "kl.json"
    code, stdout, err = run_cli(capsys, "values", "layers", "--model", tiny_dir, "--task", "text", "--n", "2",
                                "--seq-len", "32", "--metric", "kl", "--window", "2", "--out", out)
    assert code == 0, err
    values = Values.load(out)
    assert values.fingerprint["task"] == "text:kl" and "'kl'" in values.fingerprint["metric"]
    assert np.isfinite(values.means).all()
    # KL of the full model from itself is 0 and the game is negated (KL: lower is better).
    assert values.full_value == pytest.approx(0.0, abs=1e-5) and values.empty_value < 0
    code, _, err = run_cli(capsys, "values", "heads", "--model", tiny_dir, "--task", "factual", "--n", "4",
                           "--metric", "kl", "--budget", "40", "--out", tmp_path / "kl-heads.json")
    assert code == 0, err
    assert HeadValues.load(tmp_path / "kl-heads.json", model=tiny_dir).fingerprint["task"] == "factual:kl"


def test_a_binary_text_file_is_refused(tiny_dir, tmp_path, capsys):
    binary = tmp_path / "model.safetensors"
    binary.write_bytes((tiny_dir / "model.safetensors").read_bytes()[:4096])
    line = one_line_error(*run_cli(capsys, "eval", "--model", tiny_dir, "--task", "factual", "--text", binary)[::2])
    assert "model.safetensors holds NUL bytes" in line
    line = one_line_error(*run_cli(capsys, "values", "layers", "--model", tiny_dir, "--text", binary,
                                   "--out", tmp_path / "v.json")[::2])
    assert "NUL bytes" in line and not (tmp_path / "v.json").exists()


def test_values_computed_by_the_cli_are_verified(tiny_dir, tmp_path, capsys):
    out = tmp_path / "layers.json"
    code, _, err = run_cli(capsys, "values", "layers", "--model", tiny_dir, "--task", "text", "--n", "2",
                           "--seq-len", "32", "--window", "2", "--out", out)
    assert code == 0, err
    assert Values.load(out).fingerprint["model_digest"] == model_digest(surgery.load(tiny_dir))
    code, _, err = run_cli(capsys, "plan", "layers", "--model", tiny_dir, "--values", out, "--k", "1",
                           "--out", tmp_path / "plan.json")
    assert code == 0, err
    assert json.loads((tmp_path / "plan.json").read_text())["provenance"][0]["values"]["model_check"]["verified"]
